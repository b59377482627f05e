#!/usr/bin/env bash
# End-to-end tests: boot BMonitor in Bochs (Intel VT-x) and QEMU TCG (AMD-V)
# and check what the guests and the hypervisor print on the serial line.
# Each boot is bounded by a timeout and every failed check names the
# expected line and the log to read. Two emulators run at a time.
#
# usage: tests/e2e/run.sh [--engines "bochs qemu-tcg"] [--only NAME]
set -uo pipefail
source "$(cd "$(dirname "$0")/../.." && pwd)/scripts/lib.sh"

engines="bochs qemu-tcg"
only=
while (($#)); do
    case $1 in
    --engines) engines=$2; shift 2 ;;
    --only) only=$2; shift 2 ;;
    *) die "unknown argument $1" ;;
    esac
done

E2E=$OUT/e2e
rm -rf "$E2E"
mkdir -p "$E2E"
BOOT_TIMEOUT=${BOOT_TIMEOUT:-120}

# --- expectations --------------------------------------------------------
# Each check_* reads $log and calls fail "why" for each broken expectation.

fail() { echo "$1" >>"$result"; }
want() { grep -Eq -- "$1" "$log" || fail "missing line matching: $1"; }
refuse() { ! grep -Eq -- "$1" "$log" || fail "unexpected line: $(grep -Em1 -- "$1" "$log")"; }
# before A B: the first line matching A comes before the first matching B.
before() {
    local a b
    a=$(grep -Enm1 -- "$1" "$log" | cut -d: -f1)
    b=$(grep -Enm1 -- "$2" "$log" | cut -d: -f1)
    [[ -n $a && -n $b && $a -lt $b ]] || fail "expected '$1' (line ${a:-none}) before '$2' (line ${b:-none})"
}
stopped() { # NAME CODE [REASON-REGEX]
    want "^vm $1 stopped: exit-code=$2 exits=[0-9]+ \(io=[0-9]+ hypercall=[0-9]+ msr=[0-9]+ cpuid=[0-9]+ .*\) cpu-time=[0-9]+ms console-bytes=[0-9]+ reason=\"${3:-.*}\""
}
no_hypervisor_fault() { refuse "HYPERVISOR (FAULT|PANIC)|BMonitor: fatal"; }

backend_for() { case $1 in bochs) echo vmx ;; *) echo svm ;; esac; }

check_demo() {
    no_hypervisor_fault
    want "^backend: $(backend_for "$engine")$"
    want "^scheduler: running 4 VM\(s\)"
    want "^net: no uplink \(.*\); VMs switch among themselves only$"
    stopped web-1 0 "exit hypercall \(0\)"
    stopped web-2 0 "exit hypercall \(0\)"
    stopped probe 0 "exit hypercall \(0\)"
    stopped legacy 0 "isa-debug-exit \(0\)"
    want "^\[web-1\] hello from web-1 \(vm 0, 16 MiB\)$"
    want "^\[web-2\] hello from web-2 \(vm 1, 16 MiB\)$"
    want "^\[web-1\] cmdline: role=web replica=1$"
    want "^\[web-1\] console_write ok$"
    want "^\[web-1\] compute ok 104729$"
    want "^\[probe\] cpu-probe ok$"
    want "^\[legacy\] cmdline: mb1-probe verbose$"
    want "^\[legacy\] module: module.txt 29 bytes$"
    refuse "FAIL"
    # Side by side: the second VM starts before the first one finishes.
    before "^\[web-2\] hello start" "^vm web-1 stopped"
    want "all VMs stopped \(all succeeded\)"
}

check_containment() {
    no_hypervisor_fault
    want "^backend: $(backend_for "$engine")$"
    stopped good 0 "exit hypercall \(0\)"
    stopped oob -1 "read outside guest memory at gpa 0x40000000"
    stopped tf -1 "triple fault"
    stopped badentry -1 "VM entry failed.*"
    stopped badcall 0 "exit hypercall \(0\)"
    want "^\[badcall\] bad-hypercall ok$"
    stopped spinner -1 "CPU time limit of 2000 ms reached"
    stopped off 0 "guest power-off"
    refuse "FAIL"
    # The spinner (interrupts off, no exits) did not starve the others.
    before "^\[spinner\] spinner start" "^vm good stopped"
    before "^vm good stopped" "^vm spinner stopped"
    want "all VMs stopped \(some failed\)"
}

check_iso_multiboot2() {
    want "^boot: multiboot2 loader"
    check_demo
}

check_pvh() {
    want "^boot: pvh loader"
}

# A node with a NIC: wait for its address, then reach the management port
# from the host through QEMU's forwarded port.
check_uplink() {
    no_hypervisor_fault
    want "^net: uplink virtio-net "
    want "$UPLINK_LINE"
    want "^vm solo stopped: exit-code=0 "
    want "^node: all VMs stopped; staying up"
    [[ $(cat "$dir/banner" 2>/dev/null) == "BMonitor management port: ready" ]] ||
        fail "management port: expected banner, got '$(cat "$dir/banner" 2>/dev/null)'"
}

# boot_with_client: boots in the background, waits for the address line,
# reads the banner from the forwarded management port, then stops the node.
boot_with_client() {
    local port=$((20000 + RANDOM % 20000))
    BM_MGMT_PORT=$port boot_engine qemu-tcg-net "$dir/node.bundle" "$dir/serial.log" "$BOOT_TIMEOUT" &
    local boot=$!
    local deadline=$((SECONDS + 60))
    until grep -Eq "$UPLINK_LINE" "$dir/serial.log" 2>/dev/null && grep -q "staying up" "$dir/serial.log"; do
        ((SECONDS > deadline)) && break
        sleep 0.5
    done
    timeout 10 bash -c "exec 3<>/dev/tcp/127.0.0.1/$port && head -n1 <&3" >"$dir/banner" 2>/dev/null || true
    pkill -f "hostfwd=tcp:127.0.0.1:$port-" 2>/dev/null
    wait "$boot"
    return 0
}

# Two tenants on one L2 segment: boundaries, a sub-boundary, a partial
# rule with refusals, and a spoofing guest (tests/e2e/network.toml).
check_network() {
    no_hypervisor_fault
    want "^backend: $(backend_for "$engine")$"
    want "^config: 6 VM\(s\), 2 cluster\(s\), 2 rule\(s\)$"
    refuse "FAIL"
    want "^\[a-cli\] check ping:10\.0\.0\.11:ok: ok ok$"
    want "^\[a-cli\] check udp:10\.0\.0\.11:7:ok: ok ok$"
    want "^\[a-cli\] check tcp:10\.0\.0\.11:80:ok: ok ok$"
    want "^\[a-cli\] check ping:10\.0\.0\.21:blocked: blocked ok$"
    want "^\[a-cli\] check tcp:10\.0\.0\.21:80:blocked: blocked ok$"
    want "^\[b-cli\] check ping:10\.0\.0\.11:blocked: blocked ok$"
    want "^\[a-iso\] check ping:10\.0\.0\.11:blocked: blocked ok$"
    want "^\[a-iso\] check ping:10\.0\.0\.12:ok: ok ok$"
    want "^\[b-cli\] check tcp:10\.0\.0\.21:80:ok: ok ok$"
    want "^\[b-cli\] check tcp:10\.0\.0\.21:8080:refused: refused ok$"
    want "^\[a-spoof\] spoof: no reply \(dropped\)$"
    want "^vm a-spoof net: .* spoofed=[1-9][0-9]* "
    for vm in a-srv a-cli a-iso a-spoof b-srv b-cli; do stopped "$vm" 0 "exit hypercall \(0\)"; done
    want "^net: switched=[0-9]+ dropped=[0-9]+ boundary-drops=[1-9][0-9]*$"
    want "^net: rule\[0\] matched=[1-9][0-9]*$"
    want "^net: rule\[1\] matched=[1-9][0-9]*$"
    want "all VMs stopped \(all succeeded\)"
}

# Boundaries enforced against a peer beyond the uplink.
check_uplink_boundary() {
    no_hypervisor_fault
    want "^net: uplink virtio-net "
    want "^\[a-out\] check ping:10\.0\.2\.2:blocked: blocked ok$"
    want "^\[a-out\] check tcp:10\.0\.2\.2:80:blocked: blocked ok$"
    want "^\[b-out\] check ping:10\.0\.2\.2:ok: ok ok$"
    refuse "FAIL"
    stopped a-out 0 "exit hypercall \(0\)"
    stopped b-out 0 "exit hypercall \(0\)"
}

# Bulk TCP between two VMs through the switch.
check_bulk() {
    no_hypervisor_fault
    want "^\[bulk\] bulk: 4194304 bytes in [0-9]+ ms = [0-9]+ KiB/s$"
    want "^\[sink\] sink: 4194304 bytes from 10\.0\.0\.12:"
    want "^vm bulk net: tx-frames=[0-9]+ .* dropped=0 spoofed=0 exits-per-packet=[0-9.]+ device-exits-per-packet=0\.[0-9]+$"
    stopped bulk 0 "exit hypercall \(0\)"
    stopped sink 0 "exit hypercall \(0\)"
}

# The encrypted disk across reboots, tampering, a tenant-key reset, a
# power cut and another node's secret. Several boots of one node disk.
disk_bundle() { # NAME CMDLINE [TENANT_EPOCH] [SECRET]
    sed -e "s|\.\./\.\./target|$ROOT/target|" -e "s|^cmdline = .*|cmdline = \"$2\"|" \
        -e "s|^tenant_key = true|tenant_key = true\ntenant_key_epoch = ${3:-0}|" \
        "$ROOT/tests/e2e/disk.toml" >"$dir/$1.toml"
    "$BMIMAGE" bundle --config "$dir/$1.toml" --out "$dir/$1.bundle" \
        --seal-secret "${4:-$ROOT/tests/e2e/node.secret}" 2>>"$dir/bmimage.err"
}
disk_boot() { # NAME [KILL_AFTER_PATTERN]
    local log=$dir/$1.log
    if [[ -n ${2:-} ]]; then
        { BM_DISK_IMAGE=$dir/node.img boot_engine qemu-tcg-disk "$dir/$1.bundle" "$log" "$BOOT_TIMEOUT"; } 2>/dev/null &
        local pid=$! deadline=$((SECONDS + 60))
        until grep -q -- "$2" "$log" 2>/dev/null || ((SECONDS > deadline)); do sleep 0.2; done
        pkill -KILL -f "file=$dir/node.img," 2>/dev/null
        wait "$pid"
    else
        BM_DISK_IMAGE=$dir/node.img boot_engine qemu-tcg-disk "$dir/$1.bundle" "$log" "$BOOT_TIMEOUT" ||
            fail "$1: timed out after ${BOOT_TIMEOUT}s"
    fi
    cat "$log" >>"$dir/serial.log"
}
in_log() { grep -Eq -- "$2" "$dir/$1.log" || fail "$1: missing line matching: $2 (log: $dir/$1.log)"; }
run_disk() {
    rm -f "$dir/node.img"
    truncate -s 64M "$dir/node.img"
    cp "$dir/node.img" "$dir/empty.img"
    disk_bundle write "role=write seed=7 sectors=512"
    disk_boot write
    in_log write "^disk: formatted an empty node disk$"
    in_log write "^\[disk-a\] diskprobe write ok: 512 sectors seed=7$"
    in_log write "^vm disk-a stopped: exit-code=0 "
    grep -q -a "BMDISKPATTERN" "$dir/node.img" && fail "plaintext of the guest's data found in the raw disk image"
    cp "$dir/node.img" "$dir/written.img"

    disk_bundle verify "role=verify seed=7 sectors=512 expect=ok"
    disk_boot verify
    in_log verify "^\[disk-a\] diskprobe verify: ok$"
    grep -q "formatted" "$dir/verify.log" && fail "verify: the disk was formatted again instead of reopened"

    python3 "$ROOT/tests/e2e/flipbit.py" "$dir/empty.img" "$dir/written.img" "$dir/node.img" >"$dir/flip.txt" ||
        fail "could not flip a bit in the image"
    disk_bundle tampered "role=verify seed=7 sectors=512 expect=ioerror"
    disk_boot tampered
    in_log tampered "^\[disk-a\] diskprobe verify: ioerror$"
    in_log tampered "^vm disk-a disk: .* integrity-errors=[1-9][0-9]*$"

    cp "$dir/written.img" "$dir/node.img"
    disk_bundle reset "role=verify seed=7 sectors=512 expect=zero" 1
    disk_boot reset
    in_log reset "^disk: tenant key of cluster tenant-a regenerated \(epoch 2\): its volumes crypto-erased$"
    in_log reset "^\[disk-a\] diskprobe verify: zero$"

    cp "$dir/written.img" "$dir/node.img"
    head -c 32 /dev/urandom >"$dir/other.secret"
    disk_bundle moved "role=verify seed=7 sectors=512 expect=ok" 0 "$dir/other.secret"
    disk_boot moved
    in_log moved "^disk: unavailable: cannot open the node disk: .*"
    in_log moved "^vm disk-a stopped: exit-code=-1 .*reason=\"load failed: the node's disk storage is unavailable"

    cp "$dir/written.img" "$dir/node.img"
    disk_bundle prepare "role=write seed=9 sectors=2048 chunk=64"
    disk_boot prepare
    disk_bundle stream "role=stream seed=9 sectors=2048 chunk=64"
    disk_boot stream "diskprobe stream pass 3"
    in_log stream "diskprobe stream pass 3"
    disk_bundle versions "role=verify seed=9 sectors=2048 expect=versions"
    disk_boot versions
    in_log versions "^\[disk-a\] diskprobe verify: versions$"
    in_log versions "^vm disk-a disk: .* integrity-errors=0$"
}
check_disk() { no_hypervisor_fault; }

# Encrypted volumes in memory when there is no physical disk (Bochs).
check_disk_mem() {
    no_hypervisor_fault
    want "^backend: vmx$"
    want "^disk: no physical disk \(.*\); volumes in memory \([0-9]+ MiB\), same encryption path$"
    want "^disk: tenant key set for cluster tenant-a: its disks now need K_L and K_T$"
    want "^\[disk-a\] diskprobe write ok: 512 sectors seed=7$"
    want "^vm disk-a disk: reads=[1-9][0-9]* writes=[1-9][0-9]* .* integrity-errors=0$"
    stopped disk-a 0 "exit hypercall \(0\)"
}

check_bad_bundle() {
    want "^bundle: "
    want "^BMonitor: fatal: boot module is not a valid node bundle"
    refuse "HYPERVISOR (FAULT|PANIC)"
}

# --- scenarios: NAME ENGINE CONFIG CHECK -----------------------------------
scenarios=()
for engine in $engines; do
    scenarios+=("demo-$engine $engine $ROOT/boot/configs/demo.toml check_demo")
    scenarios+=("containment-$engine $engine $ROOT/tests/e2e/containment.toml check_containment")
    scenarios+=("network-$engine $engine $ROOT/tests/e2e/network.toml check_network")
    [[ $engine == bochs ]] && scenarios+=("disk-mem-bochs bochs $ROOT/tests/e2e/disk-mem.toml check_disk_mem")
done
if [[ " $engines " == *" qemu-tcg "* ]]; then
    scenarios+=("grub-iso-qemu qemu-tcg-iso $ROOT/boot/configs/demo.toml check_iso_multiboot2")
    scenarios+=("bad-bundle-qemu qemu-tcg GARBAGE check_bad_bundle")
    scenarios+=("bulk-qemu qemu-tcg $ROOT/tests/e2e/bulk.toml check_bulk")
    scenarios+=("disk-qemu qemu-tcg-disk $ROOT/tests/e2e/disk.toml check_disk")
    scenarios+=("uplink-boundary-qemu qemu-tcg-net $ROOT/tests/e2e/uplink-boundary.toml check_uplink_boundary")
    scenarios+=("uplink-dhcp-qemu qemu-tcg-net $ROOT/tests/e2e/uplink.toml check_uplink")
    scenarios+=("uplink-static-qemu qemu-tcg-net $ROOT/tests/e2e/uplink-static.toml check_uplink")
fi

run_scenario() {
    local name=$1 engine=$2 config=$3 check=$4
    local dir=$E2E/$name
    mkdir -p "$dir"
    if [[ $config == GARBAGE ]]; then
        head -c 4096 /dev/urandom >"$dir/node.bundle"
    else
        make_bundle "$config" "$dir/node.bundle" 2>"$dir/bmimage.err" || {
            echo "bmimage failed: $(cat "$dir/bmimage.err")" >"$dir/result"
            return
        }
    fi
    local start=$SECONDS rc=0
    case $name in
    uplink-dhcp*) UPLINK_LINE="^net: DHCP lease 10\.0\.2\.15/24 gateway 10\.0\.2\.2" ;;
    uplink-static*) UPLINK_LINE="^net: static management address 10\.0\.2\.15/24" ;;
    esac
    if [[ $name == disk-qemu ]]; then
        log=$dir/serial.log result=$dir/result
        : >"$log"
        : >"$result"
        run_disk
    elif [[ $name == uplink-dhcp* || $name == uplink-static* ]]; then
        boot_with_client
    else
        boot_engine "${engine}" "$dir/node.bundle" "$dir/serial.log" "$BOOT_TIMEOUT" || rc=$?
    fi
    log=$dir/serial.log result=$dir/result
    [[ $name == disk-qemu ]] || : >"$result"
    if [[ $rc == 124 ]]; then
        fail "timed out after ${BOOT_TIMEOUT}s (last line: $(tail -n1 "$log"))"
    fi
    [[ $engine == qemu-tcg-iso ]] && engine=qemu-tcg
    $check
    echo "$((SECONDS - start))" >"$dir/seconds"
}

pids=()
for s in "${scenarios[@]}"; do
    read -r name engine config check <<<"$s"
    [[ -n $only && $name != *"$only"* ]] && continue
    # At most two emulators at once: each uses one core.
    while (($(jobs -rp | wc -l) >= 2)); do wait -n; done
    run_scenario "$name" "$engine" "$config" "$check" &
done
wait

passed=0 failed=0
for s in "${scenarios[@]}"; do
    read -r name _ <<<"$s"
    [[ -n $only && $name != *"$only"* ]] && continue
    dir=$E2E/$name
    if [[ -s $dir/result ]]; then
        failed=$((failed + 1))
        echo "FAIL $name (serial log: $dir/serial.log)"
        sed 's/^/     /' "$dir/result"
    else
        passed=$((passed + 1))
        echo "PASS $name ($(cat "$dir/seconds" 2>/dev/null || echo ?)s)"
    fi
done
echo "e2e: $passed passed, $failed failed"
((failed == 0))
