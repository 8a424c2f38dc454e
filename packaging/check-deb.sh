#!/usr/bin/env bash
# Builds the .deb (packaging/build-deb.sh: cargo-deb, then the libc6 dependency from the binary),
# inspects it, installs it on this machine with dpkg and checks the result: account, files,
# modes, conffile handling on reinstall/remove/purge, the default config, the unit
# (systemd-analyze verify and security). Run as root on a Debian/Ubuntu box (CI does, from
# .ci/run); it installs what it needs. Leaves the package installed.
#
#     sudo bash packaging/check-deb.sh
#
# The arm64 package is cross-built and inspected too (not installed) when the cross toolchain is
# there (`rustup target add aarch64-unknown-linux-gnu`, `apt install gcc-aarch64-linux-gnu
# libc6-dev-arm64-cross`); CHECK_DEB_ARM64=yes requires it, =no skips it. CI has no cross
# toolchain, so it checks amd64 only.
#
# CHECK_DEB_PROFILE=dev packages the unoptimised binary instead of the release one (CI does:
# the release build takes minutes and what is checked here is the packaging, not the code).
#
# Honours CARGO_TARGET_DIR. systemd need not be running (it is not PID 1 in CI): the unit is
# checked offline, and the service behaviour (notify socket, signals, reload) is tested through
# the binary by `cargo test` (tests/service.rs).
set -euo pipefail
cd "$(dirname "$0")/.."

# Raise it only with a reason: the exposure score may only go down. systemd-analyze's
# threshold is the score times 10.
SECURITY_THRESHOLD=15
CARGO_DEB_VERSION=3.8.0
UNIT=/usr/lib/systemd/system/leafgate.service
CONFIG=/etc/leafgate/leafgate.toml
# The oldest glibc among the releases the README supports (Ubuntu 22.04; Debian 12 has 2.36):
# the package must install there.
OLDEST_GLIBC=2.35
ARM64_TARGET=aarch64-unknown-linux-gnu
CHECK_DEB_ARM64=${CHECK_DEB_ARM64:-auto}
CHECK_DEB_PROFILE=${CHECK_DEB_PROFILE:-release}

step() { printf '\n== %s (%ds)\n' "$*" "$SECONDS"; }
fail() { echo "check-deb: FAIL: $*" >&2; exit 1; }

[ "$(id -u)" = 0 ] || fail "run as root (dpkg -i)"

step "tools"
need=()
command -v systemd-analyze >/dev/null || need+=(systemd)
command -v lintian >/dev/null || need+=(lintian)
command -v dpkg-shlibdeps >/dev/null || need+=(dpkg-dev)
command -v adduser >/dev/null || need+=(adduser)
command -v runuser >/dev/null || need+=(util-linux)
if [ ${#need[@]} -gt 0 ]; then
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi
if [ "$(cargo deb --version 2>/dev/null || true)" != "$CARGO_DEB_VERSION" ]; then
    cargo install cargo-deb --locked --version "$CARGO_DEB_VERSION"
fi

# with_libc6: how build-deb.sh rewrites the Depends that cargo-deb's $auto produced.
# shellcheck source=packaging/build-deb.sh
source packaging/build-deb.sh

# Checks that DEB's libc6 dependency is exactly what its binary needs, read here from the
# binary's undefined dynamic symbols (build-deb.sh reads the version-needs section), and that
# the oldest supported release can satisfy it. Returns non-zero with the reason on stderr.
check_libc6() {
    local deb=$1 dir need depends entry declared="" qualified=""
    dir=$(mktemp -d)
    dpkg-deb --fsys-tarfile "$deb" | tar -xf - -C "$dir" ./usr/bin/leafgate
    need=$(readelf --dyn-syms --wide "$dir/usr/bin/leafgate" \
        | awk '$7 == "UND" { print $8 }' \
        | sed -n 's/.*@GLIBC_\([0-9][0-9.]*\)$/\1/p' | sort -uV | tail -n 1)
    rm -r "$dir"
    [ -n "$need" ] || { echo "no GLIBC_ symbol versions in usr/bin/leafgate of $deb" >&2; return 1; }
    depends=$(dpkg-deb -f "$deb" Depends)
    local IFS=,
    for entry in $depends; do
        entry=${entry# }
        case "$entry" in
            adduser) ;;
            "libc6 (>= "*")" | "libc6:"*" (>= "*")")
                [ -z "$declared" ] || { echo "two libc6 entries: $depends" >&2; return 1; }
                [ "${entry#libc6:}" = "$entry" ] || qualified=$entry
                declared=${entry#*(>= }; declared=${declared%)} ;;
            *) echo "unexpected dependency '$entry' in '$depends' (cross builds take versions from" \
                    "the build machine's cross packages: check it holds for arm64 too)" >&2; return 1 ;;
        esac
    done
    [ -n "$declared" ] || { echo "Depends: $depends has no plain 'libc6 (>= x.y)'" >&2; return 1; }
    if dpkg --compare-versions "$declared" gt "$need"; then
        echo "Depends: $depends, but the binary needs only GLIBC_$need: apt refuses the package" \
             "where glibc is $need or newer but older than $declared (Ubuntu 22.04: 2.35), though" \
             "it would run there" >&2
        return 1
    fi
    if dpkg --compare-versions "$declared" lt "$need"; then
        echo "Depends: $depends, but the binary needs GLIBC_$need: it would install where it" \
             "cannot start" >&2
        return 1
    fi
    if [ -n "$qualified" ]; then
        echo "Depends: $qualified: the architecture qualifier comes from the cross libc's shlibs" \
             "file; the package's own architecture is meant, so plain libc6" >&2
        return 1
    fi
    if ! dpkg --compare-versions "$need" le "$OLDEST_GLIBC"; then
        echo "the binary needs glibc $need; Ubuntu 22.04 has $OLDEST_GLIBC: build on an older release" >&2
        return 1
    fi
    echo "Depends: $depends (the binary needs GLIBC_$need; installs down to glibc $OLDEST_GLIBC)"
}

# mode uid/gid path, for every file (directories are dpkg's business). Numeric ids: what dpkg
# applies when it unpacks.
contents() {
    dpkg-deb --fsys-tarfile "$1" | tar -tv --numeric-owner | awk '$1 !~ /^d/ { print $1, $2, $6 }' \
        | sort -k3
}

step "build"
deb=$(bash packaging/build-deb.sh --profile "$CHECK_DEB_PROFILE" | tail -n 1)
[ -f "$deb" ] || fail "build-deb.sh did not print the package path (got: $deb)"
echo "$deb"

step "inspect: control"
info=$(dpkg-deb -I "$deb")
echo "$info"
field() { dpkg-deb -f "$deb" "$1"; }
[ "$(field Package)" = leafgate ] || fail "Package"
field Depends | grep -q 'adduser' || fail "Depends lacks adduser"
field Depends | grep -q 'libc6' || fail "Depends lacks libc6"
conffiles=$(dpkg-deb --ctrl-tarfile "$deb" | tar -xOf - ./conffiles)
[ "$conffiles" = "$CONFIG" ] || fail "conffiles: got '$conffiles'"
for script in postinst prerm postrm; do
    dpkg-deb --ctrl-tarfile "$deb" | tar -tf - "./$script" >/dev/null || fail "no $script"
done

step "inspect: libc6 dependency"
check_libc6 "$deb" || fail "libc6 dependency of $deb"
# The check is not hollow: the same package declaring the build machine's glibc is refused.
doctored=$(mktemp -d)
dpkg-deb --raw-extract "$deb" "$doctored/root"
sed -i 's/^Depends: .*/Depends: adduser, libc6 (>= 2.36)/' "$doctored/root/DEBIAN/control"
dpkg-deb --root-owner-group -Zgzip -z1 --build "$doctored/root" "$doctored/doctored.deb" >/dev/null
if check_libc6 "$doctored/doctored.deb" 2>/dev/null; then
    fail "check_libc6 accepted libc6 (>= 2.36) for a binary that needs less"
fi
rm -r "$doctored"
# The rewrite of the cross build's entry (arm64 is built below only with a cross toolchain).
got=$(with_libc6 "adduser, libc6:arm64 (>= 2.36)" 2.34)
[ "$got" = "adduser, libc6 (>= 2.34)" ] || fail "with_libc6 rewrote the arm64 Depends to '$got'"

step "inspect: files and modes"
files=$(contents "$deb")
echo "$files"
expected=$(sort -k3 <<'EOF'
-rw-r----- 0/0 ./etc/leafgate/leafgate.toml
-rwxr-xr-x 0/0 ./usr/bin/leafgate
-rw-r--r-- 0/0 ./usr/lib/systemd/system/leafgate.service
-rw-r--r-- 0/0 ./usr/share/doc/leafgate/README.md
-rw-r--r-- 0/0 ./usr/share/doc/leafgate/changelog.Debian.gz
-rw-r--r-- 0/0 ./usr/share/doc/leafgate/copyright
-rw-r--r-- 0/0 ./usr/share/doc/leafgate/examples/demo.toml
-rw-r--r-- 0/0 ./usr/share/doc/leafgate/examples/leafgate.toml
-rw-r--r-- 0/0 ./usr/share/lintian/overrides/leafgate
-rw-r--r-- 0/0 ./usr/share/man/man1/leafgate.1.gz
EOF
)
[ "$files" = "$expected" ] || fail "package contents differ; expected:
$expected"

step "lintian"
# Every override in packaging/lintian/leafgate says why.
lintian --fail-on error,warning "$deb"

step "install (fresh)"
if dpkg -s leafgate >/dev/null 2>&1; then
    dpkg --purge leafgate >/dev/null
fi
dpkg -i "$deb"

check_installed() {
    getent passwd leafgate >/dev/null || fail "no leafgate user"
    [ "$(getent passwd leafgate | cut -d: -f7)" = /usr/sbin/nologin ] || fail "leafgate has a login shell"
    id -nG leafgate | tr ' ' '\n' | grep -qx dialout || fail "leafgate not in dialout"
    [ "$(stat -c '%a %U:%G' /etc/leafgate)" = "750 root:leafgate" ] || fail "/etc/leafgate: $(stat -c '%a %U:%G' /etc/leafgate)"
    [ "$(stat -c '%a %U:%G' /etc/leafgate/conf.d)" = "750 root:leafgate" ] || fail "conf.d"
    [ "$(stat -c '%a %U:%G' /etc/leafgate/keys)" = "750 root:leafgate" ] || fail "keys"
    [ "$(stat -c '%a %U:%G' $CONFIG)" = "640 root:leafgate" ] || fail "$CONFIG: $(stat -c '%a %U:%G' $CONFIG)"
    [ "$(stat -c '%a %U:%G' /usr/bin/leafgate)" = "755 root:root" ] || fail "/usr/bin/leafgate"
    [ "$(stat -c '%a %U:%G' /var/lib/leafgate)" = "700 leafgate:leafgate" ] || fail "/var/lib/leafgate: $(stat -c '%a %U:%G' /var/lib/leafgate)"
    [ -L /etc/systemd/system/multi-user.target.wants/leafgate.service ] || fail "unit not enabled"
}
check_installed
id leafgate

step "the installed default config"
# As the service user, as the unit runs it.
runuser -u leafgate -- leafgate check -c "$CONFIG"
# ExecCondition: no device yet, so the service is skipped (exit 1), not failed.
set +e
runuser -u leafgate -- leafgate check --has-devices -c "$CONFIG"
rc=$?
set -e
[ $rc = 1 ] || fail "check --has-devices on the default config exited $rc, expected 1"
# Nobody else may read it.
if runuser -u nobody -- cat "$CONFIG" >/dev/null 2>&1; then fail "nobody can read $CONFIG"; fi
# With a device in a drop-in, the condition passes.
install -m 0640 -g leafgate /dev/stdin /etc/leafgate/conf.d/10-test.toml <<'EOF'
[[bus]]
id = "plc"
kind = "modbus_tcp"
address = "127.0.0.1:502"
[[device]]
id = "pump-1"
shared_access_key_file = "/etc/leafgate/keys/pump-1.key"
bus = "plc"
unit = 1
raw_methods = true
EOF
echo "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=" \
    | install -m 0640 -g leafgate /dev/stdin /etc/leafgate/keys/pump-1.key
runuser -u leafgate -- leafgate check --has-devices -c "$CONFIG"
rm /etc/leafgate/conf.d/10-test.toml /etc/leafgate/keys/pump-1.key

step "systemd-analyze verify"
verify_err=$(cd / && systemd-analyze verify "$UNIT" 2>&1 >/dev/null) || fail "verify exited non-zero: $verify_err"
[ -z "$verify_err" ] || fail "systemd-analyze verify complained: $verify_err"
# It exits 0 on unknown keys: make sure it at least prints them here, or the check is hollow.
bogus=$(mktemp -d)/leafgate.service
sed 's/^\[Service\]$/[Service]\nNoSuchKey=1/' "$UNIT" >"$bogus"
bogus_err=$(cd / && systemd-analyze verify "$bogus" 2>&1 >/dev/null || true)
[ -n "$bogus_err" ] || fail "systemd-analyze verify is silent on an unknown key; this check cannot work here"
rm -r "$(dirname "$bogus")"

step "systemd-analyze security"
security=$(cd / && systemd-analyze security --offline=yes --threshold=$SECURITY_THRESHOLD "$UNIT") \
    || { echo "$security"; fail "exposure above $SECURITY_THRESHOLD/10"; }
echo "$security" | grep -v '✓'
score=$(echo "$security" | sed -n 's/.*Overall exposure level for leafgate.service: \([0-9.]*\).*/\1/p')

step "reinstall keeps an edited config"
echo "# edited by check-deb.sh" >>"$CONFIG"
dpkg -i "$deb" >/dev/null
grep -q 'edited by check-deb.sh' "$CONFIG" || fail "reinstall overwrote the edited config"
check_installed

step "remove keeps config, store and account; purge deletes config and store"
dpkg --remove leafgate >/dev/null
[ ! -e /usr/bin/leafgate ] || fail "binary left after remove"
[ -f "$CONFIG" ] || fail "remove deleted the config"
getent passwd leafgate >/dev/null || fail "remove deleted the account"
[ -d /var/lib/leafgate ] || fail "remove deleted the telemetry store's directory"
dpkg --purge leafgate >/dev/null
[ ! -e /etc/leafgate ] || fail "purge left /etc/leafgate"
[ ! -e /var/lib/leafgate ] || fail "purge left /var/lib/leafgate"
[ ! -e /etc/systemd/system/multi-user.target.wants/leafgate.service ] || fail "purge left the unit enabled"

step "install again (account exists)"
dpkg -i "$deb" >/dev/null
check_installed
if grep -q 'edited by check-deb.sh' "$CONFIG"; then fail "purge did not reset the config"; fi

step "arm64 package (cross-built, inspected, not installed)"
have_cross() {
    command -v aarch64-linux-gnu-gcc >/dev/null \
        && rustup target list --installed 2>/dev/null | grep -qx "$ARM64_TARGET"
}
deb_arm64=""
if [ "$CHECK_DEB_ARM64" = no ] || { [ "$CHECK_DEB_ARM64" = auto ] && ! have_cross; }; then
    echo "skipped (CHECK_DEB_ARM64=$CHECK_DEB_ARM64): needs rustup target $ARM64_TARGET and" \
         "apt gcc-aarch64-linux-gnu libc6-dev-arm64-cross"
else
    have_cross || fail "CHECK_DEB_ARM64=yes, but no cross toolchain (rustup target $ARM64_TARGET, aarch64-linux-gnu-gcc)"
    export CARGO_TARGET_AARCH64_UNKNOWN_LINUX_GNU_LINKER=aarch64-linux-gnu-gcc
    export CC_aarch64_unknown_linux_gnu=aarch64-linux-gnu-gcc
    deb_arm64=$(bash packaging/build-deb.sh --target "$ARM64_TARGET" | tail -n 1)
    [ -f "$deb_arm64" ] || fail "build-deb.sh --target $ARM64_TARGET did not print the package path"
    echo "$deb_arm64"
    [ "$(dpkg-deb -f "$deb_arm64" Architecture)" = arm64 ] || fail "arm64: Architecture"
    arm64_dir=$(mktemp -d)
    dpkg-deb --fsys-tarfile "$deb_arm64" | tar -xf - -C "$arm64_dir" ./usr/bin/leafgate
    readelf -h "$arm64_dir/usr/bin/leafgate" | grep -q 'Machine: *AArch64' || fail "arm64: the binary is not AArch64"
    rm -r "$arm64_dir"
    check_libc6 "$deb_arm64" || fail "libc6 dependency of $deb_arm64"
    [ "$(contents "$deb_arm64")" = "$expected" ] || fail "arm64 package contents differ; expected:
$expected"
    [ "$(dpkg-deb --ctrl-tarfile "$deb_arm64" | tar -xOf - ./conffiles)" = "$CONFIG" ] || fail "arm64: conffiles"
    lintian --fail-on error,warning "$deb_arm64"
fi

step "figures"
echo "package:        $(basename "$deb") (profile $CHECK_DEB_PROFILE)"
echo "deb size:       $(stat -c %s "$deb") bytes"
echo "installed size: $(field Installed-Size) KiB"
echo "exposure:       $score (threshold $SECURITY_THRESHOLD/10)"
echo "depends:        $(field Depends)"
if [ -n "$deb_arm64" ]; then
    echo "arm64 package:  $(basename "$deb_arm64"), $(stat -c %s "$deb_arm64") bytes, depends: $(dpkg-deb -f "$deb_arm64" Depends)"
else
    echo "arm64 package:  not built (CHECK_DEB_ARM64=$CHECK_DEB_ARM64; see the arm64 step)"
fi
echo "check-deb: ok in ${SECONDS}s"
