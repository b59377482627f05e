#!/usr/bin/env bash
# The main job: build BMonitor, boot it with the demo tenant VMs (or your own
# node config) in the best engine available, show its serial log, and exit 0
# only if every VM stopped with exit code 0.
set -euo pipefail
source "$(dirname "$0")/lib.sh"

usage() {
    cat <<USAGE
usage: scripts/run.sh [--engine bochs|qemu-tcg|qemu-kvm] [--config node.toml] [--timeout SECONDS]

  --engine   emulator to boot in (default: qemu-kvm when the host offers nested
             VT-x/AMD-V, else bochs (VT-x), else qemu-tcg (AMD-V))
  --config   node config (TOML) naming your VMs; default boot/configs/demo.toml
  --timeout  give up after this long (default 300 s)
USAGE
}

engine= config=$ROOT/boot/configs/demo.toml secs=300
while (($#)); do
    case $1 in
    --engine) engine=${2:?--engine needs a value}; shift 2 ;;
    --config) config=${2:?--config needs a file}; shift 2 ;;
    --timeout) secs=${2:?--timeout needs seconds}; shift 2 ;;
    -h | --help) usage; exit 0 ;;
    *) usage >&2; die "unknown argument: $1" ;;
    esac
done
[[ -f $config ]] || die "config file not found: $config"

if [[ -z $engine ]]; then
    if kvm_nested_available; then
        engine=qemu-kvm
    elif command -v bochs >/dev/null 2>&1 || [[ $(id -u) -eq 0 ]]; then
        engine=bochs
    else
        engine=qemu-tcg
    fi
fi
case $engine in bochs | qemu-tcg | qemu-kvm) ;; *) die "unknown engine $engine (bochs, qemu-tcg, qemu-kvm)" ;; esac
[[ $engine == qemu-kvm ]] && ! kvm_nested_available && die "qemu-kvm needs /dev/kvm with nested VT-x or AMD-V on this host"

ensure_rust
build_all
work=$OUT/run-$engine
mkdir -p "$work"
make_bundle "$config" "$work/node.bundle"
say "booting BMonitor in $engine with $(basename "$config") (serial log: $work/serial.log)"
if ! boot_engine "$engine" "$work/node.bundle" "$work/serial.log" "$secs" follow; then
    die "timed out after ${secs}s: BMonitor did not finish (see $work/serial.log)"
fi
log=$work/serial.log
grep -q "HYPERVISOR FAULT\|HYPERVISOR PANIC\|BMonitor: fatal" "$log" && die "BMonitor failed (see $log)"
total=$(grep -c "^vm .* stopped: " "$log" || true)
ok=$(grep -c "^vm .* stopped: exit-code=0 " "$log" || true)
say "$ok of $total VM(s) stopped with exit code 0 ($(grep -o 'backend: [a-z]*' "$log" | head -1))"
grep -q "all VMs stopped (all succeeded)" "$log" || exit 1
