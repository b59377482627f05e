#!/usr/bin/env bash
# Benchmarks. System: boots the hcbench guest in each engine and reports the
# cost of one hypercall and one port read (TSC ticks per round trip, as the
# guest measures them) with BMonitor's exit counters for the run; a VM-to-VM
# transfer, an encrypted disk, the management console under hostile
# clients, and the guest agent (QEMU TCG). Host:
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
    # SMP scaling (QEMU, multi-threaded TCG, two CPUs): the total work two
    # CPU-bound VMs (cpuwork, 3 s each) get done when BMonitor places them
    # on both CPUs, divided by the same with both pinned to CPU 0 (the
    # ideal is 2). Then the cross-CPU kick latency BMonitor measured
    # (sender's TSC to the receiver's handler) in a VM-to-VM transfer
    # between VMs on different CPUs, and the wake-up latency a 2-vCPU Linux
    # guest sees between its CPUs.
    dir=$OUT/bench-smp
    mkdir -p "$dir"
    smp_work() { # NAME PIN(0|1) -> total Mturns of both VMs
        sed -e "s|\.\./\.\./target|$ROOT/target|" -e 's|ms=1500|ms=3000|' tests/e2e/smp-pair.toml >"$dir/$1.toml"
        if [[ $2 == 1 ]]; then
            sed -i 's|^memory_mib = 8$|memory_mib = 8\ncpus = [0]|' "$dir/$1.toml"
        fi
        make_bundle "$dir/$1.toml" "$dir/$1.bundle"
        BM_QEMU_SMP=2 boot_engine qemu-tcg "$dir/$1.bundle" "$dir/$1.log" 120 || die "SMP benchmark ($1) timed out"
        grep -o 'cpuwork done: work=[0-9]*' "$dir/$1.log" | grep -o '[0-9]*$' | awk '{s += $1; n++} END {if (n == 2) print s}'
    }
    two=$(smp_work two-cpus 0)
    one=$(smp_work one-cpu 1)
    [[ -n $two && -n $one && $one -gt 0 ]] || die "SMP benchmark: no result (see $dir/*.log)"
    echo "smp scaling: $(awk "BEGIN {printf \"%.2f\", $two / $one}") (two CPU-bound VMs: ${two} Mturns on 2 CPUs, ${one} on 1)"
    sed -e "s|\.\./\.\./target|$ROOT/target|" tests/e2e/bulk.toml >"$dir/bulk.toml"
    make_bundle "$dir/bulk.toml" "$dir/bulk.bundle"
    BM_QEMU_SMP=2 boot_engine qemu-tcg "$dir/bulk.bundle" "$dir/bulk.log" 300 || die "SMP kick benchmark timed out"
    grep '^vm .*: placed on CPU' "$dir/bulk.log" | sed 's/^/smp kick: /'
    grep '^smp: CPU [0-9]*: kicks=' "$dir/bulk.log" | sed 's/^smp: /smp kick latency: /' || echo "smp kick latency: no kicks (see $dir/bulk.log)"
    # The same seen from inside: a 2-vCPU Linux VM wakes a thread on its
    # other CPU from idle 200 times (tests/linux/probes/src/ipi_latency.rs).
    "$ROOT/scripts/linux-guest.sh" >/dev/null || die "could not build the Linux guest"
    sed -e "s|\.\./\.\./target|$ROOT/target|" tests/e2e/smp-linux.toml >"$dir/linux.toml"
    make_bundle "$dir/linux.toml" "$dir/linux.bundle"
    BM_QEMU_SMP=2 boot_engine qemu-tcg "$dir/linux.bundle" "$dir/linux.log" 300 || die "SMP Linux benchmark timed out"
    echo "smp kick as the guest sees it: $(grep -o 'ipi-latency: .*' "$dir/linux.log" || echo "no result (see $dir/linux.log)")"
fi

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

if [[ " $engines " == *" qemu-tcg "* ]]; then
    # The guest agent (the agent-qemu end-to-end scenario, in its own output
    # directory): `bmctl tenant exec VM true` round trip against `bmctl
    # tenant status`, file copy into the guest against an image upload over
    # the console, and VM exits per MiB copied.
    say "guest agent benchmark (agent-qemu scenario, about 4 minutes)"
    dir=$OUT/bench-agent
    rm -rf "$dir"
    if ! BM_OUT=$dir tests/e2e/run.sh --engines qemu-tcg --only agent-qemu >"$dir.log" 2>&1; then
        echo "agent: the agent-qemu scenario failed (see $dir.log):"
        grep -A20 '^FAIL' "$dir.log" | sed 's/^/  /'
    fi
    f=$dir/e2e/agent-qemu/figures.txt
    if [[ -s $f ]]; then sed 's/^/agent: /' "$f"; else echo "agent: no figures (see $dir.log)"; fi
fi

if [[ " $engines " == *" qemu-tcg "* && $(id -u) == 0 ]]; then
    # A facility (fleet-heal and fleet-partition, 3 QEMU nodes in a network
    # namespace; root): a node's death to its VMs running elsewhere against
    # the detection bound, the filter blast, replication lag and the first
    # copy's rate, and a partitioned node fencing itself.
    say "facility benchmark (fleet-heal and fleet-partition scenarios, about 3 minutes)"
    dir=$OUT/bench-fleet
    rm -rf "$dir"
    if ! BM_OUT=$dir tests/e2e/run.sh --engines qemu-tcg --only "fleet-heal fleet-partition" >"$dir.log" 2>&1; then
        echo "fleet: a fleet scenario failed (see $dir.log):"
        grep -A20 '^FAIL' "$dir.log" | sed 's/^/  /'
    fi
    for s in fleet-heal-qemu fleet-partition-qemu; do
        f=$dir/e2e/$s/figures.txt
        if [[ -s $f ]]; then cat "$f"; else echo "$s: no figures (see $dir.log)"; fi
    done
fi

if [[ " $engines " == *" qemu-tcg "* ]]; then
    # Linux (QEMU TCG, AMD-V backend): the stock Debian kernel and busybox
    # initramfs of scripts/linux-guest.sh. Boot time from VM start to the
    # initramfs's first line under BMonitor against the same kernel and
    # initramfs booted directly by QEMU TCG (from QEMU's start, firmware
    # included); VM exits per second of a guest idle in its initramfs; and
    # iperf3 between two Linux VMs.
    say "Linux guest benchmarks (about 3 minutes)"
    "$ROOT/scripts/linux-guest.sh" >/dev/null || die "could not build the Linux guest"
    dir=$OUT/bench-linux
    mkdir -p "$dir"
    linux_vm() { # ROLE -> a one-VM node config
        printf '[[vm]]\nname = "linux"\nmemory_mib = 144\nkernel = "%s"\nmodule = "%s"\ncmdline = "console=ttyS0"\n' \
            "$ROOT/target/linux/vmlinuz" "$ROOT/target/linux/initrd-$1.img" >"$dir/$1.toml"
        make_bundle "$dir/$1.toml" "$dir/$1.bundle"
    }
    # Seconds from the VM's load line to its first userspace line.
    boot_seconds() { # ROLE
        local log=$dir/$1.log t0= t1=
        boot_engine qemu-tcg "$dir/$1.bundle" "$log" 180 &
        local pid=$!
        while kill -0 "$pid" 2>/dev/null; do
            [[ -z $t0 ]] && grep -q '^vm linux loaded' "$log" && t0=$(date +%s.%N)
            [[ -n $t0 && -z $t1 ]] && grep -q 'BMLINUX userspace up' "$log" && t1=$(date +%s.%N)
            sleep 0.05
        done
        wait "$pid" || true
        [[ -n $t1 ]] && awk "BEGIN {printf \"%.2f\", $t1 - $t0}"
    }
    exits_of() { grep -o '^vm linux stopped: exit-code=[-0-9]* exits=[0-9]*' "$dir/$1.log" | grep -o '[0-9]*$'; }
    linux_vm hello
    linux_vm idle
    direct=$("$ROOT/scripts/linux-guest.sh" --no-fetch --machine pc --qemu-direct hello 2>/dev/null |
        grep -o 'first-userspace-seconds: [0-9.]*' | grep -o '[0-9.]*$') || direct=
    under=$(boot_seconds hello) || under=
    if [[ -n $direct && -n $under ]]; then
        echo "linux boot: ${under}s under BMonitor, ${direct}s directly on QEMU TCG: ratio $(awk "BEGIN {printf \"%.2f\", $under/$direct}") (goal <= 1.15)"
    else
        echo "linux boot: no result (direct: ${direct:-none}, BMonitor: ${under:-none}; see $dir)"
    fi
    boot_seconds idle >/dev/null || true
    hello_exits=$(exits_of hello) idle_exits=$(exits_of idle)
    if [[ -n $hello_exits && -n $idle_exits ]]; then
        # The idle run is the hello run plus 30 s asleep in the shell's sleep.
        echo "linux idle: $(awk "BEGIN {printf \"%.1f\", ($idle_exits - $hello_exits) / 30}") VM exits/s over 30 s idle (idle run ${idle_exits} exits, hello run ${hello_exits}; goal <= 20)"
        grep '^vm linux stopped' "$dir/idle.log" | sed 's/^/  idle run: /'
    else
        echo "linux idle: no result (see $dir)"
    fi
    sed -e "s|\.\./\.\./target|$ROOT/target|" tests/e2e/linux-bench.toml >"$dir/iperf.toml"
    make_bundle "$dir/iperf.toml" "$dir/iperf.bundle"
    BM_QEMU_MEM=1024 boot_engine qemu-tcg "$dir/iperf.bundle" "$dir/iperf.log" 240 || true
    echo "linux iperf3 VM->VM: $(grep -o 'BMLINUX iperf3 [0-9.]* Mbits/sec' "$dir/iperf.log" | grep -o '[0-9.]* Mbits/sec' || echo "no result (see $dir/iperf.log)")"
fi

if [[ -z $system_only ]]; then
    say "criterion benchmarks of the pure crates"
    cargo bench --quiet --workspace --exclude hypervisor --exclude test-guests 2>&1 | grep -E "time:|thrpt:|^[a-z].*/" || true
fi
