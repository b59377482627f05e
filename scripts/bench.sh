#!/usr/bin/env bash
# Benchmarks. System: boots the hcbench guest in each engine and reports the
# cost of one hypercall and one port read (TSC ticks per round trip, as the
# guest measures them) with BMonitor's exit counters for the run; a VM-to-VM
# transfer, an encrypted disk, and the management console under hostile
# clients (QEMU TCG). Host:
# criterion benchmarks of the pure crates (skipped with --system-only).
# Timings here are noisy: compare ratios within one run.
#
# usage: scripts/bench.sh [--system-only] [--engines "bochs qemu-tcg"]
set -euo pipefail
source "$(dirname "$0")/lib.sh"
cd "$ROOT"
engines="bochs qemu-tcg" system_only=
while (($#)); do
    case $1 in
    --system-only) system_only=1; shift ;;
    --engines) engines=$2; shift 2 ;;
    *) die "unknown argument $1" ;;
    esac
done

build_all
for engine in $engines; do
    dir=$OUT/bench-$engine
    mkdir -p "$dir"
    make_bundle tests/e2e/bench.toml "$dir/node.bundle"
    boot_engine "$engine" "$dir/node.bundle" "$dir/serial.log" 120 || die "$engine: benchmark boot timed out"
    hc=$(grep -o 'hcbench hypercall: [0-9]*' "$dir/serial.log" | grep -o '[0-9]*$') || die "$engine: no result (see $dir/serial.log)"
    io=$(grep -o 'hcbench port-read: [0-9]*' "$dir/serial.log" | grep -o '[0-9]*$')
    tsc=$(grep -o 'TSC [0-9]* MHz' "$dir/serial.log" | grep -o '[0-9]*')
    backend=$(grep -o 'backend: [a-z]*' "$dir/serial.log")
    stop=$(grep '^vm bench stopped' "$dir/serial.log")
    echo "$engine ($backend, TSC ${tsc} MHz): hypercall round trip ${hc} TSC ticks, port read ${io} TSC ticks (ratio $(awk "BEGIN {printf \"%.2f\", $io/$hc}"))"
    echo "  counters: ${stop#*: }"
done

for engine in $engines; do
    dir=$OUT/bench-net-$engine
    mkdir -p "$dir"
    make_bundle tests/e2e/bulk.toml "$dir/node.bundle"
    boot_engine "$engine" "$dir/node.bundle" "$dir/serial.log" 300 || die "$engine: network benchmark timed out"
    bulk=$(grep -o 'bulk: [0-9]* bytes in [0-9]* ms = [0-9]* KiB/s' "$dir/serial.log" | head -1)
    net=$(grep '^vm bulk net:' "$dir/serial.log")
    echo "$engine: VM-to-VM TCP through the switch: ${bulk:-no result (see $dir/serial.log)}"
    echo "  sender: ${net#*net: }"
done

if [[ " $engines " == *" qemu-tcg "* ]]; then
    # Guest-visible throughput of an encrypted disk (QEMU TCG, virtio-blk
    # node disk): diskprobe writes then reads 8 MiB in 64 KiB requests.
    dir=$OUT/bench-disk
    mkdir -p "$dir"
    sed -e "s|\.\./\.\./target|$ROOT/target|" -e 's|^cmdline = .*|cmdline = "role=bench sectors=16384"|' \
        -e 's|^size_mib = .*|size_mib = 16|' tests/e2e/disk.toml >"$dir/disk.toml"
    "$BMIMAGE" bundle --config "$dir/disk.toml" --out "$dir/node.bundle" --seal-secret "$dir/node.secret" 2>/dev/null ||
        die "bmimage failed for the disk benchmark"
    rm -f "$dir/node.img"
    truncate -s 128M "$dir/node.img"
    BM_DISK_IMAGE=$dir/node.img boot_engine qemu-tcg-disk "$dir/node.bundle" "$dir/serial.log" 300 ||
        die "disk benchmark timed out"
    echo "qemu-tcg: encrypted guest disk: $(grep -o 'diskprobe bench: .*' "$dir/serial.log" || echo "no result (see $dir/serial.log)")"
fi

if [[ " $engines " == *" qemu-tcg "* ]]; then
    # The management console under hostile clients (the mgmt-hostile
    # end-to-end scenario, in its own output directory): landlord latency
    # with 100 hostile connections open, 16 looping clients, and console
    # upload throughput against raw TCP to the node's discard port.
    say "console benchmark (mgmt-hostile scenario, about 3 minutes)"
    dir=$OUT/bench-console
    rm -rf "$dir"
    if ! BM_OUT=$dir HOSTILE_LOOP_SECONDS=60 tests/e2e/run.sh --engines qemu-tcg --only mgmt-hostile >"$dir.log" 2>&1; then
        echo "console: the mgmt-hostile scenario failed (see $dir.log):"
        grep -A20 '^FAIL' "$dir.log" | sed 's/^/  /'
    fi
    f=$dir/e2e/mgmt-hostile-qemu/figures.txt
    [[ -s $f ]] || die "console benchmark: no figures (see $dir.log)"
    sed 's/^/console: /' "$f"
fi

if [[ -z $system_only ]]; then
    say "criterion benchmarks of the pure crates"
    cargo bench --quiet --workspace --exclude hypervisor --exclude test-guests 2>&1 | grep -E "time:|thrpt:|^[a-z].*/" || true
fi
