#!/usr/bin/env bash
# The crate boundaries are the layers: the daemon library (crates/leafgate) must never depend on
# the IoT Hub emulator, the simulators, the demo, the test kit or the bench, nor on what only
# they need (hyper's HTTP server, rcgen's certificate generator). Neither may the shipped binary
# built without its `demo` feature. Fails, naming the crates, when one of them creeps in.
# Run by .ci/run; by hand: scripts/check-layers.sh
set -euo pipefail
cd "$(dirname "$0")/.."

forbidden='^(leafgate-(emulator|sim|demo|testkit|bench)|hyper|hyper-util|http-body-util|rcgen) '
status=0
check() {
    local what=$1
    shift
    local tree bad
    tree=$(cargo tree --locked -e normal --prefix none "$@")
    bad=$(grep -E "$forbidden" <<<"$tree" | sort -u || true)
    if [ -n "$bad" ]; then
        echo "check-layers: $what depends on test tooling it must never ship:" >&2
        sed 's/^/  /' <<<"$bad" >&2
        echo "  (cargo tree -e normal $* -i <crate> shows the path)" >&2
        status=1
    else
        echo "check-layers: $what: $(sort -u <<<"$tree" | wc -l) crates, none of the emulator, simulators, demo, test kit, bench, hyper or rcgen"
    fi
}
check "the daemon library (leafgate)" -p leafgate
check "the leafgate binary without the demo feature" -p leafgate-cli --no-default-features
exit $status
