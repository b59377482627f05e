#!/usr/bin/env bash
# The whole suite: formatting, lints, host unit/property tests, a short fuzz
# smoke run of every fuzz target (nightly and cargo-fuzz are installed when
# missing; FUZZ_SECONDS=0 or --fuzz-seconds 0 skips it), and the end-to-end
# boots in Bochs (VT-x) and QEMU TCG (AMD-V).
#
# usage: scripts/test.sh [--host-only] [--fuzz-seconds N]
set -euo pipefail
source "$(dirname "$0")/lib.sh"
cd "$ROOT"

host_only= fuzz_secs=${FUZZ_SECONDS:-10}
while (($#)); do
    case $1 in
    --host-only) host_only=1; shift ;;
    --fuzz-seconds) fuzz_secs=${2:?--fuzz-seconds needs a number of seconds}; shift 2 ;;
    *) die "unknown argument $1 (use --host-only, --fuzz-seconds N)" ;;
    esac
done
[[ $fuzz_secs =~ ^[0-9]+$ ]] || die "fuzz seconds must be a whole number of seconds, not '$fuzz_secs'"

start=$SECONDS
ensure_rust
say "toolchain: $(rustc --version) with target x86_64-unknown-none, rustfmt and clippy"

say "cargo fmt --check"
cargo fmt --all -- --check || die "code is not formatted: run cargo fmt --all"
rustfmt --edition 2021 --check fuzz/fuzz_targets/*.rs fuzz/fuzz_targets/common/*.rs fuzz/examples/*.rs || die "fuzz targets are not formatted: run cargo fmt in fuzz/"

say "layering (docs/architecture.md)"
scripts/check-layers.sh || die "an import runs upward: see docs/architecture.md"

say "clippy (host crates, then bare-metal crates)"
cargo clippy --quiet --all-targets -- -D warnings
cargo clippy --quiet --release -p hypervisor -p test-guests --target x86_64-unknown-none -- -D warnings

say "host tests (unit and property tests of the pure crates)"
mkdir -p "$OUT"
if ! cargo test --quiet >"$OUT/host-tests.log" 2>&1; then
    cat "$OUT/host-tests.log"
    die "host tests failed"
fi
grep -E "^test result" "$OUT/host-tests.log" | awk '{p+=$4; f+=$6} END {print "host tests: " p " passed, " f " failed"}'

if ((fuzz_secs == 0)); then
    say "fuzz smoke skipped: fuzz seconds is 0 (FUZZ_SECONDS=0 or --fuzz-seconds 0)"
else
    ensure_fuzz
    say "fuzz smoke: every target for ${fuzz_secs}s (scripts/fuzz.sh)"
    "$ROOT/scripts/fuzz.sh" --seconds "$fuzz_secs" ||
        die "fuzz smoke failed: $(cat "$OUT/fuzz/failures" 2>/dev/null || echo "see the errors above")"
fi

if [[ -z $host_only ]]; then
    # chromium: the monitor scenarios load the bmctl watch dashboard headless.
    ensure_cmds qemu-system-x86_64 bochs grub-mkrescue swtpm chromium
    build_all
    say "Linux guest: Debian's cloud kernel and a busybox initramfs (scripts/linux-guest.sh)"
    "$ROOT/scripts/linux-guest.sh" || die "could not build the Linux guest (scripts/linux-guest.sh)"
    say "end-to-end tests"
    tests/e2e/run.sh
fi
say "suite finished in $((SECONDS - start))s"
