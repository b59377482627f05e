#!/usr/bin/env bash
# The main job: build everything and show the product on one node. BMonitor
# boots in QEMU (KVM with nested virtualization when the host has it, else
# TCG) with an uplink and a disk; the landlord leases a VM to tenant-a and
# uploads the agent Linux image; the tenant starts the VM, waits for its
# guest agent, runs a command in it, copies a file in and back out, restarts
# a service, and sets a policy that restarts it when it fails (seen with
# bmctl watch); the landlord shuts the node down. Exit 0 only if every step
# worked.
#
# With --demo (or --config, or --engine bochs): the earlier demo, BMonitor
# with the 4 test-guest VMs (or your node config), exit 0 if every VM
# stopped with exit code 0.
set -euo pipefail
source "$(dirname "$0")/lib.sh"

usage() {
    cat <<USAGE
usage: scripts/run.sh [--engine qemu-tcg|qemu-kvm] [--timeout SECONDS]
       scripts/run.sh --demo [--engine bochs|qemu-tcg|qemu-kvm] [--config node.toml] [--timeout SECONDS]

  (default)  the product on QEMU: a landlord, a tenant, a Linux VM with the
             guest agent, all through bmctl (Bochs has no NIC for bmctl)
  --demo     the test-guest demo: 4 VMs, each must exit 0
  --engine   emulator (default: qemu-kvm when the host offers nested
             VT-x/AMD-V; else qemu-tcg, or for --demo bochs (VT-x) when
             installed, else qemu-tcg (AMD-V))
  --config   node config (TOML) naming your VMs (implies --demo); default
             boot/configs/demo.toml
  --timeout  give up after this long (default 300 s for --demo, 900 s otherwise)
USAGE
}

engine= config= secs= demo=
while (($#)); do
    case $1 in
    --demo) demo=1; shift ;;
    --engine) engine=${2:?--engine needs a value}; shift 2 ;;
    --config) config=${2:?--config needs a file}; demo=1; shift 2 ;;
    --timeout) secs=${2:?--timeout needs seconds}; shift 2 ;;
    -h | --help) usage; exit 0 ;;
    *) usage >&2; die "unknown argument: $1" ;;
    esac
done
if [[ $engine == bochs && -z $demo ]]; then
    say "Bochs has no NIC, so bmctl cannot reach the node there: running the test-guest demo (--demo)"
    demo=1
fi
case ${engine:-auto} in auto | bochs | qemu-tcg | qemu-kvm) ;; *) die "unknown engine $engine (bochs, qemu-tcg, qemu-kvm)" ;; esac
[[ $engine == qemu-kvm ]] && ! kvm_nested_available && die "qemu-kvm needs /dev/kvm with nested VT-x or AMD-V on this host"

# ---------------------------------------------------------------- --demo

run_demo() {
    config=${config:-$ROOT/boot/configs/demo.toml}
    secs=${secs:-300}
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
    ensure_rust
    build_all
    local work=$OUT/run-$engine
    mkdir -p "$work"
    make_bundle "$config" "$work/node.bundle"
    say "booting BMonitor in $engine with $(basename "$config") (serial log: $work/serial.log)"
    if ! boot_engine "$engine" "$work/node.bundle" "$work/serial.log" "$secs" follow; then
        die "timed out after ${secs}s: BMonitor did not finish (see $work/serial.log)"
    fi
    local log=$work/serial.log total ok
    grep -q "HYPERVISOR FAULT\|HYPERVISOR PANIC\|BMonitor: fatal" "$log" && die "BMonitor failed (see $log)"
    total=$(grep -c "^vm .* stopped: " "$log" || true)
    ok=$(grep -c "^vm .* stopped: exit-code=0 " "$log" || true)
    say "$ok of $total VM(s) stopped with exit code 0 ($(grep -o 'backend: [a-z]*' "$log" | head -1))"
    grep -q "all VMs stopped (all succeeded)" "$log" || exit 1
}

if [[ -n $demo ]]; then
    run_demo
    exit $?
fi

# ---------------------------------------------------------------- the product

secs=${secs:-900}
if [[ -z $engine ]]; then
    engine=qemu-tcg
    kvm_nested_available && engine=qemu-kvm
fi
[[ $engine == bochs ]] && die "the product run needs QEMU (Bochs has no NIC)"
command -v python3 >/dev/null 2>&1 || die "python3 not found: run.sh reads bmctl's --json output with it (apt-get install python3)"

WORK=$OUT/run-product
rm -rf "$WORK"
mkdir -p "$WORK"
LOG=$WORK/serial.log
BMCTL=$TARGET_DIR/release/bmctl
export BMCTL_CONFIG_DIR=$WORK/bmctl
BOOT_PID=
STEP=

# Every failure names the step and where to look; the node is stopped.
cleanup() {
    local rc=$?
    if [[ -n $BOOT_PID ]] && kill -0 "$BOOT_PID" 2>/dev/null; then
        pkill -f "file=$WORK/node.img," 2>/dev/null || true
        wait "$BOOT_PID" 2>/dev/null || true
    fi
    if ((rc != 0)); then
        printf 'run.sh: FAILED%s (node serial log: %s; bmctl output: %s)\n' "${STEP:+ at: $STEP}" "$LOG" "$WORK" >&2
    fi
}
trap cleanup EXIT

step() { STEP=$*; say "$*"; }
bm() { BMCTL_TIMEOUT=30 timeout 300 "$BMCTL" "$@"; }
# run_bm FILE ARGS...: bmctl with its output shown and kept; fails the step.
run_bm() {
    local f=$1
    shift
    if ! bm "$@" 2>&1 | tee "$WORK/$f" | sed 's/^/    /'; then
        die "bmctl $* failed: $(tail -1 "$WORK/$f")"
    fi
}
jget() { python3 -c 'import sys, json; print(json.loads(sys.argv[1])[sys.argv[2]])' "$1" "$2"; }

ensure_rust
build_all
step "building the Linux guest with the agent (scripts/linux-guest.sh: Debian's cloud kernel, busybox, bm-agent)"
"$ROOT/scripts/linux-guest.sh" >"$WORK/linux-guest.log" 2>&1 || die "scripts/linux-guest.sh failed: $(tail -3 "$WORK/linux-guest.log")"
IMG=$ROOT/target/linux/agent
[[ -s $IMG/vmlinuz && -s $IMG/initrd.img ]] || die "no agent image in $IMG"

step "landlord: generating the console keys of the landlord and of tenant-a"
KL=$(bm --json keygen landlord | python3 -c 'import sys, json; print(json.load(sys.stdin)["public_key"])') || die "bmctl keygen landlord failed"
KA=$(bm --json keygen tenant-a | python3 -c 'import sys, json; print(json.load(sys.stdin)["public_key"])') || die "bmctl keygen tenant-a failed"
cat >"$WORK/node.toml" <<TOML
# The product run: a node the landlord manages with bmctl.
[node]
keep_running = true
landlord_console_key = "$KL"

# The landlord's own check VM (the node config needs one): says hello, stops.
[[vm]]
name = "hello"
memory_mib = 8
kernel = "$TARGET_DIR/x86_64-unknown-none/release/hello"
TOML
make_bundle "$WORK/node.toml" "$WORK/node.bundle" 2>>"$WORK/bmimage.err"
truncate -s 256M "$WORK/node.img"
PORT=$(free_port)
step "booting BMonitor in $engine with an uplink (management port on 127.0.0.1:$PORT) and a 256 MiB node disk"
BM_QEMU_MEM=1024 BM_DISK_IMAGE=$WORK/node.img BM_MGMT_PORT=$PORT \
    boot_engine "${engine}-net-disk" "$WORK/node.bundle" "$LOG" "$secs" &
BOOT_PID=$!
until grep -q "landlord node key" "$LOG" 2>/dev/null; do
    kill -0 "$BOOT_PID" 2>/dev/null || die "the node stopped while booting: $(tail -1 "$LOG")"
    ((SECONDS < secs)) || die "the node did not come up"
    sleep 0.5
done
NK=$(grep -o "landlord node key [0-9a-f]*" "$LOG" | awk '{print $4}')
grep -E "^(BMonitor|backend|net: DHCP|disk:|mgmt:)" "$LOG" | sed 's/^/    node: /'

step "landlord: connecting to the node (Noise IK, node key ${NK:0:16}...)"
bm profile add landlord --node "127.0.0.1:$PORT" --node-key "$NK" --role landlord --key landlord >/dev/null
run_bm status.txt -p landlord landlord status

step "landlord: creating a lease for tenant-a (cluster 1)"
LEASE_JSON=$(bm -p landlord --json landlord lease create --tenant-key "$KA" --cluster 1) || die "lease create failed: $LEASE_JSON"
LEASE=$(jget "$LEASE_JSON" lease)
bm profile add tenant-a --node "127.0.0.1:$PORT" --node-key "$(jget "$LEASE_JSON" tenant_node_key)" \
    --role "tenant:$LEASE" --key tenant-a >/dev/null
echo "    lease $LEASE; tenant-a's profile is set up with the lease's node key"

step "landlord: uploading the agent Linux image (kernel $(du -k "$IMG/vmlinuz" | cut -f1) KiB, initrd $(du -k "$IMG/initrd.img" | cut -f1) KiB)"
run_bm up-kernel.txt -p landlord landlord image upload "$IMG/vmlinuz" --name linux-agent
run_bm up-initrd.txt -p landlord landlord image upload "$IMG/initrd.img" --name linux-agent-initrd

step "landlord: creating a VM for tenant-a (256 MiB, the agent image, console=ttyS0)"
VM_JSON=$(bm -p landlord --json landlord vm create --lease "$LEASE" --name web --image linux-agent \
    --initrd linux-agent-initrd --memory 256 --cmdline "console=ttyS0") || die "vm create failed: $VM_JSON"
VM=$(jget "$VM_JSON" vm)
echo "    VM $VM (web)"

step "tenant-a: starting VM $VM"
run_bm start.txt -p tenant-a tenant start "$VM"

step "tenant-a: waiting for the VM's guest agent (Linux boots first; up to 300 s)"
T0=$SECONDS
if ! bm -p tenant-a tenant agent "$VM" --wait 300 >"$WORK/agent.txt" 2>&1; then
    grep "^\[web\]" "$LOG" | tail -5 | sed 's/^/    /'
    die "the agent did not come up: $(tail -1 "$WORK/agent.txt")"
fi
sed 's/^/    /' "$WORK/agent.txt"
echo "    (agent ready $((SECONDS - T0)) s after the start)"

step "tenant-a: running 'uname -a' in the VM through the agent"
run_bm uname.txt -p tenant-a tenant exec "$VM" -- uname -a

step "tenant-a: copying a 4 MiB file into the VM and back out"
head -c $((4 << 20)) /dev/urandom >"$WORK/file.bin"
SHA=$(sha256sum "$WORK/file.bin" | cut -d' ' -f1)
run_bm cp-in.txt -p tenant-a tenant cp --no-progress "$WORK/file.bin" "$VM:/root/file.bin"
run_bm cp-out.txt -p tenant-a tenant cp --no-progress "$VM:/root/file.bin" "$WORK/file.back"
BACK=$(sha256sum "$WORK/file.back" | cut -d' ' -f1)
[[ $BACK == "$SHA" ]] || die "the file copied back has sha256 $BACK, the original $SHA"
echo "    sha256 in and back: $SHA (equal)"

step "tenant-a: the VM's services (the image's web service: busybox httpd on port 8080)"
run_bm svc1.txt -p tenant-a tenant service "$VM" status
step "tenant-a: restarting service web"
run_bm svc-restart.txt -p tenant-a tenant service "$VM" restart web
ST=
for _ in $(seq 1 20); do
    ST=$(bm -p tenant-a tenant service "$VM" status web 2>/dev/null | awk '$1 == "web" {print $2}')
    [[ $ST == running ]] && break
    sleep 1
done
run_bm svc2.txt -p tenant-a tenant service "$VM" status web
[[ $ST == running ]] || die "service web is '$ST' after the restart, not running"
run_bm wget.txt -p tenant-a tenant exec "$VM" -- wget -q -O - http://127.0.0.1:8080/index.html
grep -q "hello from a BMonitor tenant VM" "$WORK/wget.txt" || die "the web service does not answer after its restart"
run_bm agent-log.txt -p tenant-a tenant agent-log "$VM"

step "tenant-a: a corrective-action policy (restart web when it fails) and bmctl watch on its events"
cat >"$WORK/policy.toml" <<'EOF2'
[[rule]]
name = "web-down"
when = { service-failing = { service = "web", count = 1, window-secs = 60 } }
action = "restart-service"
notify = true
backoff-secs = 0
EOF2
run_bm policy.txt -p tenant-a tenant policy set "$WORK/policy.toml"
BMCTL_TIMEOUT=10 timeout 60 "$BMCTL" -p tenant-a watch --no-listen --for 40 >"$WORK/watch.txt" 2>"$WORK/watch.err" &
WATCH_PID=$!
sleep 2
WEB_PID=$(bm -p tenant-a --json tenant service "$VM" status web | python3 -c 'import sys, json; print(json.load(sys.stdin)[0]["pid"])')
echo "    killing web (pid $WEB_PID) with SIGKILL inside the VM"
run_bm kill.txt -p tenant-a tenant exec "$VM" -- kill -9 "$WEB_PID"
for _ in $(seq 1 30); do
    grep -q "restarted by the agent" "$WORK/watch.txt" && break
    sleep 1
done
kill -TERM "$WATCH_PID" 2>/dev/null
wait "$WATCH_PID" 2>/dev/null
sed 's/^/    /' "$WORK/watch.txt"
grep -q "restarted by the agent" "$WORK/watch.txt" || die "the policy did not restart web within 30 s (watch: $WORK/watch.txt)"

step "landlord: shutting the node down"
run_bm shutdown.txt -p landlord landlord shutdown
wait "$BOOT_PID" || true
BOOT_PID=
grep -q "HYPERVISOR FAULT\|HYPERVISOR PANIC\|BMonitor: fatal" "$LOG" && die "BMonitor failed (see $LOG)"
grep -q "^node: shutdown requested by the landlord" "$LOG" || die "the node did not log the landlord's shutdown"
STEP=
say "done: every step worked ($engine, $(grep -o 'backend: [a-z]*' "$LOG" | head -1); serial log $LOG)"
