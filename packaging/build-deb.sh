#!/usr/bin/env bash
# Builds the .deb with cargo-deb, then sets its libc6 dependency to what the binary needs: the
# highest GLIBC_x.y version it references, the oldest glibc whose dynamic linker will load it.
#
#     bash packaging/build-deb.sh                                     # for this machine (amd64)
#     bash packaging/build-deb.sh --target aarch64-unknown-linux-gnu  # arm64, cross-built
#     bash packaging/build-deb.sh --profile dev                       # quick, for checks only
#
# Prints the .deb's path on its last line, as cargo deb does. Honours CARGO_TARGET_DIR.
#
# Why not cargo-deb's `$auto` alone: it asks dpkg-shlibdeps, which on a native build computes the
# minimum per symbol from libc6's symbols file, but on a cross build finds only the cross libc's
# shlibs file, and that pins the build machine's glibc: Debian 12's libc6-arm64-cross gives
# `libc6:arm64 (>= 2.36)`, which apt refuses on Ubuntu 22.04 (glibc 2.35) though the binary
# needs 2.34. So `$auto` stays in Cargo.toml (other libraries it finds are kept) and its libc6
# entry is replaced here, the same way for every architecture.
set -euo pipefail

# The highest GLIBC_x.y in the binary's version-needs section (.gnu.version_r): the versions
# ld.so checks at load time. readelf reads any architecture's ELF.
glibc_need() {
    readelf --version-info --wide "$1" \
        | sed -n 's/^ *0x[0-9a-f]*: *Name: GLIBC_\([0-9][0-9.]*\) .*/\1/p' \
        | sort -uV | tail -n 1
}

# A Depends value with every libc6 entry (`libc6 (>= 2.36)`, `libc6:arm64 (>= 2.36)`) replaced by
# `libc6 (>= $2)`.
with_libc6() {
    local depends=$1 version=$2 entry out=()
    local IFS=,
    for entry in $depends; do
        entry=$(echo "$entry" | sed 's/^ *//; s/ *$//')
        case "$entry" in
            libc6 | libc6\ * | libc6:*) ;;
            "") ;;
            *) out+=("$entry") ;;
        esac
    done
    out+=("libc6 (>= $version)")
    local joined
    joined=$(printf '%s, ' "${out[@]}")
    echo "${joined%, }"
}

main() {
    cd "$(dirname "$0")/.."
    local options=() usage="usage: $0 [--target TRIPLE] [--profile PROFILE]"
    while [ $# -gt 0 ]; do
        case "$1" in
            --target) [ -n "${2:-}" ] || { echo "$usage" >&2; exit 2; }
                      options+=(--target "$2"); shift 2 ;;
            # A profile other than release builds a package for checking the packaging only
            # (files, modes, account, unit): not for shipping, so it is compressed fast.
            --profile) [ -n "${2:-}" ] || { echo "$usage" >&2; exit 2; }
                       [ "$2" = release ] || options+=(--profile "$2" --fast); shift 2 ;;
            *) echo "$usage" >&2; exit 2 ;;
        esac
    done
    command -v readelf >/dev/null || { echo "build-deb: readelf missing (apt install binutils)" >&2; exit 1; }

    local deb
    deb=$(cargo deb --locked "${options[@]}" | tail -n 1)
    [ -f "$deb" ] || { echo "build-deb: cargo deb did not print the package path (got: $deb)" >&2; exit 1; }

    # Unpack, edit the control file, pack again. umask: an unpacking non-root user must not
    # narrow the files' modes.
    umask 022
    work=$(mktemp -d)
    trap 'rm -rf "$work"' EXIT
    dpkg-deb --raw-extract "$deb" "$work/root"
    local need
    need=$(glibc_need "$work/root/usr/bin/leafgate")
    [ -n "$need" ] || { echo "build-deb: no GLIBC_ version needed by usr/bin/leafgate?" >&2; exit 1; }
    local control=$work/root/DEBIAN/control before after
    before=$(sed -n 's/^Depends: //p' "$control")
    after=$(with_libc6 "$before" "$need")
    awk -v depends="$after" '/^Depends: / { print "Depends: " depends; next } { print }' \
        "$control" >"$work/control" && cat "$work/control" >"$control"
    # Every entry keeps cargo-deb's timestamp (unpacking gave the directories new ones).
    SOURCE_DATE_EPOCH=$(stat -c %Y "$work/root/usr/bin/leafgate") \
        dpkg-deb --root-owner-group -Zxz --build "$work/root" "$deb" >/dev/null
    echo "build-deb: Depends: $before -> $after (the binary needs GLIBC_$need)" >&2
    echo "$deb"
}

# Sourced (check-deb.sh uses the functions): define only.
if [ "${BASH_SOURCE[0]}" = "$0" ]; then
    main "$@"
fi
