#!/usr/bin/env bash
# The whole suite: formatting, lints, host unit/property tests, a short fuzz
# smoke run (when cargo-fuzz and a nightly toolchain are present), and the
# end-to-end boots in Bochs (VT-x) and QEMU TCG (AMD-V).
#
# usage: scripts/test.sh [--host-only] [--fuzz-seconds N]
set -euo pipefail
source "$(dirname "$0")/lib.sh"
cd "$ROOT"

host_only= fuzz_secs=${FUZZ_SECONDS:-10}
while (($#)); do
    case $1 in
    --host-only) host_only=1; shift ;;
    --fuzz-seconds) fuzz_secs=$2; shift 2 ;;
    *) die "unknown argument $1 (use --host-only, --fuzz-seconds N)" ;;
    esac
done

start=$SECONDS
command -v cargo >/dev/null || die "cargo not found: install Rust with rustup"
say "toolchain: $(rustc --version) (rust-toolchain.toml installs the x86_64-unknown-none target)"
rustup target list --installed 2>/dev/null | grep -q x86_64-unknown-none || rustup target add x86_64-unknown-none

say "cargo fmt --check"
cargo fmt --all -- --check || die "code is not formatted: run cargo fmt --all"
rustfmt --edition 2021 --check fuzz/fuzz_targets/*.rs || die "fuzz targets are not formatted: run cargo fmt in fuzz/"

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

if command -v cargo-fuzz >/dev/null 2>&1 && rustup toolchain list | grep -q nightly && ((fuzz_secs > 0)); then
    say "fuzz smoke: each target for ${fuzz_secs}s"
    for t in $(cargo +nightly fuzz list --fuzz-dir fuzz 2>/dev/null); do
        cargo +nightly fuzz run --fuzz-dir fuzz "$t" -- -max_total_time="$fuzz_secs" >"$OUT/fuzz-$t.log" 2>&1 ||
            die "fuzz target $t failed (see $OUT/fuzz-$t.log)"
        echo "fuzz $t: $(grep -o 'Done [0-9]* runs' "$OUT/fuzz-$t.log" | tail -1)"
    done
else
    say "fuzz smoke skipped (needs cargo-fuzz and a nightly toolchain; see fuzz/README.md)"
fi

if [[ -z $host_only ]]; then
    ensure_cmds qemu-system-x86_64 bochs grub-mkrescue swtpm
    build_all
    say "end-to-end tests"
    tests/e2e/run.sh
fi
say "suite finished in $((SECONDS - start))s"
