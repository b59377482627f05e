#!/usr/bin/env bash
# shellcheck shell=bash
# A test facility: N BMonitor nodes (QEMU TCG, each with its own disk image
# and, by default, its own TPM 2.0 from swtpm) on one L2 segment inside a
# network namespace this script creates and removes, a real DHCP server
# (dnsmasq) on that segment with reservations in a hosts file, and a real
# 3-member etcd cluster (3.4) for controller tests. All test traffic stays
# inside the namespace.
#
# As a command:
#   scripts/facility.sh up --dir DIR --nodes N --bundle-dir D [--no-tpm] [--reserve] [--wait SECS]
#   scripts/facility.sh down --dir DIR
#   scripts/facility.sh kill-node --dir DIR I | start-node --dir DIR I
#   scripts/facility.sh partition --dir DIR I | heal --dir DIR I
#   scripts/facility.sh reserve --dir DIR MAC IP NAME
#   scripts/facility.sh exec --dir DIR -- CMD...
#   scripts/facility.sh qmp --dir DIR I JSON
#   scripts/facility.sh wait --dir DIR [--timeout SECS]     (every node's DHCP lease)
#   scripts/facility.sh etcd-up --dir DIR | etcd-kill --dir DIR K | etcd-start --dir DIR K
#   scripts/facility.sh etcd-endpoints --dir DIR
#   scripts/facility.sh bundles --dir DIR --nodes N --bundle-dir D --landlord-key KEY [--template FILE]
#   scripts/facility.sh status --dir DIR
# Sourced (bash): the facility_* functions below, each taking DIR first.
#
# Layout: bridge br0 (10.77.0.1/24, the controller's side: `exec` runs
# there) with taps tap1..tapN enslaved to it, all in the namespace
# bmfac-<8 hex of DIR's path>. Node I has MAC 52:54:00:77:00:II (II = I in
# two hex digits) and a QMP socket DIR/nodeI.qmp (`qmp`: set_link, quit).
# dnsmasq serves 10.77.0.100-199 and the reservations in DIR/dhcp-hosts,
# one per line `MAC,IP,NAME` (dnsmasq --dhcp-hostsfile; re-read on SIGHUP,
# which facility_reserve sends; a controller writing the file itself sends
# SIGHUP to the pid in DIR/dnsmasq.pid). etcd members K=1..3 listen on
# http://10.77.0.1:2379K (clients) and :2380K (peers).
#
# Files in DIR: netns (namespace name), nodes (N), bundle-dir, tpm (1|0),
# nodeI.img (raw disk, created when missing, FAC_DISK_MIB MiB), nodeI.log
# (serial), nodeI.qemu.out, nodeI.pid, nodeI.qmp, nodeI.iso (GRUB ISO, TPM
# mode), nodeI.started (epoch seconds of the last start), tpmI/ (swtpm
# state, swtpm.sock, swtpm.pid, swtpm.log), dhcp-hosts, dnsmasq.leases,
# dnsmasq.pid, dnsmasq.log, etcdK/ (data), etcdK.pid, etcdK.log.
# `down` stops everything those files name and removes the namespace; it
# is idempotent. Disks, TPM state and logs stay (a later `up` reuses them).
#
# Environment: FAC_BM_ELF (default target/x86_64-unknown-none/release/bmonitor
# under CARGO_TARGET_DIR or the repository), FAC_QEMU_MEM (768),
# FAC_DISK_MIB (256), FAC_TPM (1; 0 = no TPM, what --no-tpm sets).
#
# Why the TPM boots through a GRUB ISO: with a tpm-tis device QEMU's ACPI
# tables grow and its -initrd placement collides with them (BMonitor then
# finds no ACPI tables, hence no ECAM and no NIC), as in lib.sh's
# qemu-tcg-disk-iso. Without a TPM the node boots -kernel/-initrd directly.

FAC_ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
declare -F ensure_cmds >/dev/null || source "$FAC_ROOT/scripts/lib.sh"
if declare -p PKG_FOR >/dev/null 2>&1; then
    PKG_FOR[dnsmasq]=dnsmasq-base
    PKG_FOR[etcd]=etcd-server
    PKG_FOR[etcdctl]=etcd-client
    PKG_FOR[swtpm]="swtpm swtpm-tools"
fi

FAC_SUBNET=10.77.0
FAC_BRIDGE_IP=$FAC_SUBNET.1
FAC_ETCD_MEMBERS=3

_fac_say() { printf 'facility: %s\n' "$*" >&2; }
_fac_err() { printf 'facility: error: %s\n' "$*" >&2; return 1; }
_fac_now() { date +%s.%N; }
_fac_since() { awk -v a="$1" -v b="$(_fac_now)" 'BEGIN { printf "%.1f", b - a }'; }

# facility_ns DIR: the namespace name for DIR (stable per path).
facility_ns() {
    local d
    d=$(realpath -m "$1") || return 1
    printf 'bmfac-%s\n' "$(printf '%s' "$d" | sha1sum | cut -c1-8)"
}

facility_node_mac() { printf '52:54:00:77:00:%02x\n' "$1"; }
# facility_node_reserved_ip I: the address --reserve gives node I (10.77.0.1I for I < 10).
facility_node_reserved_ip() { printf '%s.%d\n' "$FAC_SUBNET" $((10 + $1)); }

facility_exec() { # DIR CMD...
    local ns
    ns=$(facility_ns "$1") && shift && ip netns exec "$ns" "$@"
}

# _fac_alive PIDFILE MARKER: the pid in PIDFILE runs and its command line
# contains MARKER (so a reused pid is never taken for ours).
_fac_alive() {
    local pid
    [[ -s $1 ]] || return 1
    pid=$(<"$1")
    [[ $pid =~ ^[0-9]+$ ]] || return 1
    [[ -r /proc/$pid/cmdline ]] || return 1
    tr '\0' ' ' <"/proc/$pid/cmdline" | grep -qF -- "$2"
}
# _fac_gone PID: no such process, or only a zombie left.
_fac_gone() {
    [[ -e /proc/$1 ]] || return 0
    [[ $(awk '/^State:/ {print $2}' "/proc/$1/status" 2>/dev/null) == Z ]]
}
# _fac_kill PIDFILE MARKER [SIGNAL]: signals it, waits up to 5 s, then -9;
# then up to 3 s for the zombie to be reaped (by this shell when it is its
# child, else by init), so `pgrep` right after sees nothing.
_fac_kill() {
    local pid sig=${3:-TERM} i
    _fac_alive "$1" "$2" || { rm -f "$1"; return 0; }
    pid=$(<"$1")
    kill -s "$sig" "$pid" 2>/dev/null
    for i in $(seq 50); do _fac_gone "$pid" && break; sleep 0.1; done
    if ! _fac_gone "$pid"; then
        kill -9 "$pid" 2>/dev/null
        for i in $(seq 20); do _fac_gone "$pid" && break; sleep 0.1; done
    fi
    wait "$pid" 2>/dev/null
    for i in $(seq 30); do [[ -e /proc/$pid ]] || break; sleep 0.1; done
    rm -f "$1"
    return 0
}

facility_ensure_tools() { # [etcd]
    local cmds=(qemu-system-x86_64 ip dnsmasq python3)
    [[ ${FAC_TPM:-1} == 1 ]] && cmds+=(swtpm grub-mkrescue)
    [[ ${1:-} == etcd ]] && cmds=(etcd etcdctl curl)
    ensure_cmds "${cmds[@]}"
}

# facility_net_up DIR N: namespace, br0 (10.77.0.1/24), tap1..tapN, dnsmasq.
facility_net_up() {
    local dir=$1 n=$2 ns i
    mkdir -p "$dir" || return 1
    ns=$(facility_ns "$dir")
    echo "$ns" >"$dir/netns"
    echo "$n" >"$dir/nodes"
    if ! ip netns list | grep -qw "^$ns"; then
        ip netns add "$ns" || return 1
    fi
    facility_exec "$dir" ip link set lo up
    facility_exec "$dir" sysctl -qw net.ipv6.conf.all.disable_ipv6=1 net.ipv6.conf.default.disable_ipv6=1 >/dev/null 2>&1
    if ! facility_exec "$dir" ip link show br0 >/dev/null 2>&1; then
        facility_exec "$dir" ip link add br0 type bridge stp_state 0 forward_delay 0 || return 1
        facility_exec "$dir" ip addr add "$FAC_BRIDGE_IP/24" dev br0 || return 1
    fi
    facility_exec "$dir" ip link set br0 up || return 1
    for ((i = 1; i <= n; i++)); do
        if ! facility_exec "$dir" ip link show "tap$i" >/dev/null 2>&1; then
            facility_exec "$dir" ip tuntap add dev "tap$i" mode tap || return 1
        fi
        facility_exec "$dir" ip link set "tap$i" master br0 up || return 1
    done
    facility_dhcp_start "$dir"
}

# facility_dhcp_start DIR: dnsmasq on br0 (idempotent).
facility_dhcp_start() {
    local dir=$1 ns
    ns=$(facility_ns "$dir")
    touch "$dir/dhcp-hosts" "$dir/dnsmasq.leases"
    _fac_alive "$dir/dnsmasq.pid" "$dir/dnsmasq.pid" && return 0
    ip netns exec "$ns" dnsmasq --conf-file=/dev/null --user=root --group=root \
        --port=0 --no-resolv --no-hosts --dhcp-authoritative \
        --dhcp-range="$FAC_SUBNET.100,$FAC_SUBNET.199,255.255.255.0,12h" \
        --dhcp-hostsfile="$dir/dhcp-hosts" --dhcp-leasefile="$dir/dnsmasq.leases" \
        --pid-file="$dir/dnsmasq.pid" --log-dhcp --log-facility="$dir/dnsmasq.log" \
        --bind-interfaces --interface=br0 || return 1
    local i
    for i in $(seq 50); do _fac_alive "$dir/dnsmasq.pid" "$dir/dnsmasq.pid" && return 0; sleep 0.1; done
    _fac_err "dnsmasq did not start (see $dir/dnsmasq.log)"
}

# facility_reserve DIR MAC IP NAME: a DHCP reservation (replaces any line
# for that MAC); dnsmasq re-reads the file on SIGHUP.
facility_reserve() {
    local dir=$1 mac=${2,,} ip=$3 name=$4 tmp
    touch "$dir/dhcp-hosts"
    tmp=$(mktemp "$dir/dhcp-hosts.XXXXXX") || return 1
    grep -vi "^$mac," "$dir/dhcp-hosts" >"$tmp"
    printf '%s,%s,%s\n' "$mac" "$ip" "$name" >>"$tmp"
    mv "$tmp" "$dir/dhcp-hosts"
    if _fac_alive "$dir/dnsmasq.pid" "$dir/dnsmasq.pid"; then
        kill -HUP "$(<"$dir/dnsmasq.pid")"
    fi
}

# facility_bundles DIR BUNDLE_DIR N LANDLORD_KEY [TEMPLATE]: one config and
# bundle per node (BUNDLE_DIR/nodeI/node.toml, BUNDLE_DIR/nodeI.bundle; each
# node its own seal secret) from tests/e2e/fleet/node.toml (LANDLORD_KEY and
# the target directory filled in).
facility_bundles() {
    local dir=$1 bdir=$2 n=$3 key=$4 tmpl=${5:-$FAC_ROOT/tests/e2e/fleet/node.toml} i
    local tdir=${CARGO_TARGET_DIR:-$FAC_ROOT/target}
    for ((i = 1; i <= n; i++)); do
        mkdir -p "$bdir/node$i"
        sed -e "s|\.\./\.\./\.\./target|$tdir|" -e "s|LANDLORD_KEY|$key|" -e "s|NODE_NAME|node$i|" "$tmpl" >"$bdir/node$i/node.toml"
        "$BMIMAGE" bundle --config "$bdir/node$i/node.toml" --out "$bdir/node$i.bundle" 2>>"$dir/bmimage.err" ||
            { _fac_err "bmimage rejected $bdir/node$i/node.toml (see $dir/bmimage.err)"; return 1; }
    done
}

_fac_bm_elf() { echo "${FAC_BM_ELF:-$BM_ELF}"; }

# facility_node_start DIR I: boots node I (its swtpm first, in TPM mode).
facility_node_start() {
    local dir=$1 i=$2 ns bdir bundle tpm elf
    ns=$(facility_ns "$dir")
    bdir=$(<"$dir/bundle-dir") || return 1
    bundle=$bdir/node$i.bundle
    [[ -f $bundle ]] || { _fac_err "no bundle $bundle"; return 1; }
    elf=$(_fac_bm_elf)
    [[ -f $elf ]] || { _fac_err "no BMonitor image $elf (cargo build --release --target x86_64-unknown-none -p hypervisor)"; return 1; }
    tpm=$(cat "$dir/tpm" 2>/dev/null || echo "${FAC_TPM:-1}")
    if _fac_alive "$dir/node$i.pid" "$dir/node$i.log"; then
        _fac_say "node$i already runs"
        return 0
    fi
    [[ -f $dir/node$i.img ]] || truncate -s "${FAC_DISK_MIB:-256}M" "$dir/node$i.img" || return 1
    local boot=(-kernel "$elf" -initrd "$bundle") tpmargs=()
    if [[ $tpm == 1 ]]; then
        "$BMIMAGE" iso --hypervisor "$elf" --bundle "$bundle" --out "$dir/node$i.iso" >"$dir/node$i.iso.out" 2>&1 ||
            { _fac_err "ISO build failed for node$i (see $dir/node$i.iso.out)"; return 1; }
        boot=(-cdrom "$dir/node$i.iso" -boot d)
        local t=$dir/tpm$i
        mkdir -p "$t"
        if ! _fac_alive "$t/swtpm.pid" "$t"; then
            rm -f "$t/swtpm.sock" "$t/swtpm.pid"
            swtpm socket --daemon --tpm2 --tpmstate "dir=$t" --ctrl "type=unixio,path=$t/swtpm.sock" \
                --pid "file=$t/swtpm.pid" --log "file=$t/swtpm.log" || { _fac_err "swtpm failed for node$i"; return 1; }
            local k
            for k in $(seq 50); do [[ -S $t/swtpm.sock ]] && break; sleep 0.1; done
        fi
        # shellcheck disable=SC2054
        tpmargs=(-chardev "socket,id=chrtpm,path=$t/swtpm.sock" -tpmdev emulator,id=tpm0,chardev=chrtpm -device tpm-tis,tpmdev=tpm0)
    fi
    rm -f "$dir/node$i.qmp"
    : >"$dir/node$i.log"
    _fac_now >"$dir/node$i.started"
    ip netns exec "$ns" qemu-system-x86_64 -machine q35 -accel tcg -cpu qemu64,+svm,+npt,+rdrand \
        -m "${FAC_QEMU_MEM:-768}" -smp 1 -display none -no-reboot \
        -serial "file:$dir/node$i.log" \
        -netdev "tap,id=u,ifname=tap$i,script=no,downscript=no" \
        -device "virtio-net-pci,netdev=u,mac=$(facility_node_mac "$i")" \
        -drive "file=$dir/node$i.img,format=raw,if=none,id=d,cache=writeback" -device virtio-blk-pci,drive=d \
        "${tpmargs[@]}" "${boot[@]}" \
        -qmp "unix:$dir/node$i.qmp,server=on,wait=off" \
        -name "bmfac-node$i" -pidfile "$dir/node$i.pid" -daemonize \
        </dev/null >"$dir/node$i.qemu.out" 2>&1 ||
        { _fac_err "QEMU for node$i failed: $(tail -3 "$dir/node$i.qemu.out")"; return 1; }
}

# facility_node_kill DIR I: kill -9 of node I's QEMU (its swtpm stays).
facility_node_kill() {
    _fac_kill "$1/node$2.pid" "$1/node$2.log" KILL
}
facility_node_alive() { _fac_alive "$1/node$2.pid" "$1/node$2.log"; }

facility_partition() { facility_exec "$1" ip link set "tap$2" down; }
facility_heal() { facility_exec "$1" ip link set "tap$2" up; }

# facility_qmp DIR I JSON: one QMP command to node I; prints the answer.
# e.g. '{"execute":"set_link","arguments":{"name":"u","up":false}}', '{"execute":"quit"}'
facility_qmp() {
    python3 - "$1/node$2.qmp" "$3" <<'PY'
import json, socket, sys
s = socket.socket(socket.AF_UNIX)
s.settimeout(10)
s.connect(sys.argv[1])
f = s.makefile("rw")
def answer():
    while True:
        m = json.loads(f.readline())
        if "return" in m or "error" in m:
            return m
f.readline()  # greeting
f.write('{"execute":"qmp_capabilities"}\n'); f.flush(); answer()
f.write(sys.argv[2] + "\n"); f.flush()
try:
    m = answer()
except (ValueError, OSError):
    m = {"return": {}}  # quit closes the socket
print(json.dumps(m))
sys.exit(1 if "error" in m else 0)
PY
}

# facility_wait_log DIR I ERE SECS: until node I's serial log has a line
# matching ERE; fails on timeout or when its QEMU is gone.
facility_wait_log() {
    local dir=$1 i=$2 re=$3 until=$((SECONDS + $4))
    until tr -d '\r' <"$dir/node$i.log" 2>/dev/null | grep -Eq -- "$re"; do
        ((SECONDS > until)) && return 1
        facility_node_alive "$dir" "$i" || { sleep 0.3; tr -d '\r' <"$dir/node$i.log" 2>/dev/null | grep -Eq -- "$re"; return; }
        sleep 0.2
    done
}
# facility_node_ip DIR I: the address of node I's last DHCP lease (serial log).
facility_node_ip() {
    tr -d '\r' <"$1/node$2.log" 2>/dev/null | sed -n 's|^net: DHCP lease \([0-9.]*\)/.*|\1|p' | tail -1
}
# facility_node_key DIR I: node I's landlord node key (serial log).
facility_node_key() {
    tr -d '\r' <"$1/node$2.log" 2>/dev/null | sed -n 's/^mgmt: landlord node key \([0-9a-f]*\)$/\1/p' | tail -1
}

# facility_wait_leases DIR SECS: every node has logged a DHCP lease and its
# node key; prints one line per node with the seconds since its start.
facility_wait_leases() {
    local dir=$1 secs=${2:-180} n i ok=0
    n=$(<"$dir/nodes")
    for ((i = 1; i <= n; i++)); do
        if facility_wait_log "$dir" "$i" '^net: DHCP lease ' "$secs"; then
            facility_wait_log "$dir" "$i" '^mgmt: landlord node key ' 30
            _fac_say "node$i: DHCP lease $(facility_node_ip "$dir" "$i") after $(_fac_since "$(<"$dir/node$i.started")") s since its start; node key $(facility_node_key "$dir" "$i")"
        else
            _fac_say "node$i: no DHCP lease within ${secs}s (see $dir/node$i.log)"
            ok=1
        fi
    done
    return $ok
}

# facility_up DIR N BUNDLE_DIR [--no-tpm] [--reserve] [--wait SECS]
# Network, DHCP server, then N nodes. --reserve: node I gets
# 10.77.0.(10+I) (written before any node boots). On failure (or SIGINT/
# SIGTERM while starting) everything is taken down again.
facility_up() {
    local dir=$1 n=$2 bdir=$3 reserve=0 wait='' i
    shift 3
    local FAC_TPM=${FAC_TPM:-1}
    while (($#)); do
        case $1 in
        --no-tpm) FAC_TPM=0; shift ;;
        --reserve) reserve=1; shift ;;
        --wait) wait=$2; shift 2 ;;
        *) _fac_err "up: unknown option $1"; return 2 ;;
        esac
    done
    if ! [[ $n =~ ^[1-9][0-9]*$ ]] || ((n > 99)); then _fac_err "up: --nodes must be 1..99"; return 2; fi
    [[ -d $bdir ]] || { _fac_err "up: no bundle directory $bdir"; return 2; }
    facility_ensure_tools || return 1
    mkdir -p "$dir" && dir=$(realpath "$dir") || return 1
    realpath "$bdir" >"$dir/bundle-dir"
    echo "$FAC_TPM" >"$dir/tpm"
    local saved
    saved=$(trap -p INT TERM)
    # shellcheck disable=SC2064
    trap "facility_down '$dir'; exit 130" INT TERM
    local t0 rc=0
    t0=$(_fac_now)
    facility_net_up "$dir" "$n" || rc=1
    if ((rc == 0 && reserve)); then
        for ((i = 1; i <= n; i++)); do
            facility_reserve "$dir" "$(facility_node_mac "$i")" "$(facility_node_reserved_ip "$i")" "node$i"
        done
    fi
    for ((i = 1; rc == 0 && i <= n; i++)); do
        facility_node_start "$dir" "$i" || rc=1
    done
    ((rc == 0)) && _fac_say "up: namespace $(<"$dir/netns"), $n node(s) started in $(_fac_since "$t0") s (TPM: $([[ $FAC_TPM == 1 ]] && echo swtpm || echo none))"
    if ((rc == 0)) && [[ -n $wait ]]; then
        facility_wait_leases "$dir" "$wait" || rc=1
    fi
    trap - INT TERM
    [[ -n $saved ]] && eval "$saved"
    if ((rc)); then
        _fac_say "up failed; taking the facility down"
        facility_down "$dir"
        return 1
    fi
}

# facility_cleanup_on_exit DIR: facility_down DIR on EXIT (after any EXIT
# trap already set), for scripts that source this file.
facility_cleanup_on_exit() {
    local prev
    prev=$(trap -p EXIT | sed -e "s/^trap -- '//" -e "s/' EXIT$//")
    # shellcheck disable=SC2064
    trap "${prev:+$prev; }facility_down '$1'" EXIT
}

# --- etcd ----------------------------------------------------------------
facility_etcd_endpoints() { # DIR
    local k eps=()
    for ((k = 1; k <= FAC_ETCD_MEMBERS; k++)); do eps+=("http://$FAC_BRIDGE_IP:2379$k"); done
    local IFS=,
    echo "${eps[*]}"
}
_fac_etcd_cluster() {
    local k m=()
    for ((k = 1; k <= FAC_ETCD_MEMBERS; k++)); do m+=("e$k=http://$FAC_BRIDGE_IP:2380$k"); done
    local IFS=,
    echo "${m[*]}"
}

# facility_etcd_start DIR K: member K (a new cluster when its data dir is
# empty; otherwise it rejoins from its data).
facility_etcd_start() {
    local dir=$1 k=$2 ns
    ns=$(facility_ns "$dir")
    [[ -f $dir/netns ]] || { _fac_err "no facility in $dir (run up first)"; return 1; }
    _fac_alive "$dir/etcd$k.pid" "$dir/etcd$k" && return 0
    mkdir -p "$dir/etcd$k"
    chmod 700 "$dir/etcd$k"
    # sh writes its own pid, then execs ip, which execs etcd: one pid.
    # shellcheck disable=SC2016
    setsid sh -c 'echo $$ >"$1"; shift; exec "$@"' sh "$dir/etcd$k.pid" \
        ip netns exec "$ns" etcd --name "e$k" --data-dir "$dir/etcd$k" \
        --listen-client-urls "http://$FAC_BRIDGE_IP:2379$k" --advertise-client-urls "http://$FAC_BRIDGE_IP:2379$k" \
        --listen-peer-urls "http://$FAC_BRIDGE_IP:2380$k" --initial-advertise-peer-urls "http://$FAC_BRIDGE_IP:2380$k" \
        --initial-cluster "$(_fac_etcd_cluster)" --initial-cluster-state new \
        --initial-cluster-token "$ns" --heartbeat-interval 200 --election-timeout 2000 \
        --logger zap --log-outputs stderr \
        </dev/null >>"$dir/etcd$k.log" 2>&1 &
    disown "$!" 2>/dev/null # no "Killed" job notice when etcd-kill ends it
    local i
    for i in $(seq 50); do [[ -s $dir/etcd$k.pid ]] && return 0; sleep 0.1; done
    _fac_err "etcd member $k did not start (see $dir/etcd$k.log)"
}
facility_etcd_kill() { _fac_kill "$1/etcd$2.pid" "$1/etcd$2" KILL; }

# facility_etcd_up DIR [SECS]: the 3 members, then waits until every member
# reports healthy (/health) and the cluster has a leader.
facility_etcd_up() {
    local dir=$1 secs=${2:-60} k t0 until ep
    FAC_TPM=0 facility_ensure_tools etcd || return 1
    t0=$(_fac_now)
    for ((k = 1; k <= FAC_ETCD_MEMBERS; k++)); do facility_etcd_start "$dir" "$k" || return 1; done
    until=$((SECONDS + secs))
    local eps
    read -ra eps <<<"$(facility_etcd_endpoints "$dir" | tr , ' ')"
    for ep in "${eps[@]}"; do
        until facility_exec "$dir" curl -sf --max-time 2 "$ep/health" 2>/dev/null | grep -q '"health":"true"'; do
            ((SECONDS > until)) && { _fac_err "etcd $ep not healthy within ${secs}s (see $dir/etcd*.log)"; return 1; }
            sleep 0.3
        done
    done
    _fac_say "etcd: 3 members healthy after $(_fac_since "$t0") s: $(facility_etcd_endpoints "$dir")"
}

# --- down / status ---------------------------------------------------------
# facility_down DIR: stops every node, swtpm, dnsmasq and etcd member this
# DIR names, anything else left in the namespace, and removes the namespace
# (taps and bridge go with it). Idempotent.
facility_down() {
    local dir=$1 ns i k n f pids
    [[ -d $dir ]] || return 0
    ns=$(cat "$dir/netns" 2>/dev/null || facility_ns "$dir")
    for f in "$dir"/node*.pid; do
        [[ -e $f ]] || continue
        i=${f##*/node}
        i=${i%.pid}
        _fac_kill "$f" "$dir/node$i.log" TERM
    done
    for f in "$dir"/tpm*/swtpm.pid; do
        [[ -e $f ]] || continue
        _fac_kill "$f" "${f%/swtpm.pid}" TERM
    done
    for ((k = 1; k <= FAC_ETCD_MEMBERS; k++)); do
        _fac_kill "$dir/etcd$k.pid" "$dir/etcd$k" TERM
    done
    _fac_kill "$dir/dnsmasq.pid" "$dir/dnsmasq.pid" TERM
    if ip netns list 2>/dev/null | grep -qw "^$ns"; then
        pids=$(ip netns pids "$ns" 2>/dev/null)
        if [[ -n $pids ]]; then
            _fac_say "down: killing what is left in $ns: $(echo "$pids" | tr '\n' ' ')"
            # shellcheck disable=SC2086
            kill -9 $pids 2>/dev/null
            sleep 0.3
        fi
        ip netns del "$ns" 2>/dev/null || _fac_err "down: cannot delete namespace $ns"
    fi
    n=$(cat "$dir/nodes" 2>/dev/null || echo 0)
    for ((i = 1; i <= n; i++)); do rm -f "$dir/node$i.qmp"; done
    return 0
}

facility_status() { # DIR
    local dir=$1 ns n i k st link ip ep
    ns=$(cat "$dir/netns" 2>/dev/null) || { echo "no facility in $dir"; return 1; }
    n=$(cat "$dir/nodes" 2>/dev/null || echo 0)
    if ip netns list | grep -qw "^$ns"; then echo "netns $ns: present"; else echo "netns $ns: absent"; fi
    if _fac_alive "$dir/dnsmasq.pid" "$dir/dnsmasq.pid"; then st="running pid $(<"$dir/dnsmasq.pid")"; else st=stopped; fi
    echo "dnsmasq: $st; reservations: $(grep -c , "$dir/dhcp-hosts" 2>/dev/null || echo 0); leases: $(wc -l <"$dir/dnsmasq.leases" 2>/dev/null || echo 0)"
    for ((i = 1; i <= n; i++)); do
        if facility_node_alive "$dir" "$i"; then st="running pid $(<"$dir/node$i.pid")"; else st=stopped; fi
        link=$(facility_exec "$dir" ip -br link show "tap$i" 2>/dev/null | awk '{print $2}')
        ip=$(facility_node_ip "$dir" "$i")
        echo "node$i: $st; mac $(facility_node_mac "$i"); tap$i ${link:-absent}; lease ${ip:-none}; node key $(facility_node_key "$dir" "$i")"
    done
    for ((k = 1; k <= FAC_ETCD_MEMBERS; k++)); do
        [[ -e $dir/etcd$k ]] || continue
        ep=http://$FAC_BRIDGE_IP:2379$k
        if _fac_alive "$dir/etcd$k.pid" "$dir/etcd$k"; then st="running pid $(<"$dir/etcd$k.pid")"; else st=stopped; fi
        echo "etcd e$k $ep: $st; $(facility_exec "$dir" curl -s --max-time 2 "$ep/health" 2>/dev/null || echo 'no answer')"
    done
}

# --- command line ------------------------------------------------------------
_fac_usage() {
    sed -n '/^# As a command:/,/^# Sourced/p' "${BASH_SOURCE[0]}" | sed -e 's/^# \{0,1\}//' -e '/^Sourced/d' >&2
}

facility_main() {
    local cmd=${1:-} dir=${FAC_DIR:-} nodes='' bdir='' key='' tmpl='' timeout=180 args=() opts=()
    (($#)) && shift
    while (($#)); do
        case $1 in
        --dir) dir=$2; shift 2 ;;
        --nodes) nodes=$2; shift 2 ;;
        --bundle-dir) bdir=$2; shift 2 ;;
        --landlord-key) key=$2; shift 2 ;;
        --template) tmpl=$2; shift 2 ;;
        --timeout) timeout=$2; shift 2 ;;
        --wait) opts+=(--wait "$2"); shift 2 ;;
        --no-tpm | --reserve) opts+=("$1"); shift ;;
        --) shift; args+=("$@"); break ;;
        -h | --help) _fac_usage; return 0 ;;
        *) args+=("$1"); shift ;;
        esac
    done
    [[ -n $cmd ]] || { _fac_usage; return 2; }
    case $cmd in -h | --help | help) _fac_usage; return 0 ;; esac
    [[ -n $dir ]] || { _fac_err "$cmd: --dir DIR is required"; return 2; }
    local need=0
    case $cmd in
    kill-node | start-node | partition | heal | etcd-kill | etcd-start) need=1 ;;
    qmp) need=2 ;;
    reserve) need=3 ;;
    esac
    ((${#args[@]} >= need)) || { _fac_err "$cmd: missing argument(s)"; _fac_usage; return 2; }
    case $cmd in
    up) facility_up "$dir" "${nodes:?--nodes N}" "${bdir:?--bundle-dir D}" "${opts[@]}" ;;
    down) facility_down "$dir" ;;
    kill-node) facility_node_kill "$dir" "${args[0]}" ;;
    start-node) facility_node_start "$dir" "${args[0]}" ;;
    partition) facility_partition "$dir" "${args[0]}" ;;
    heal) facility_heal "$dir" "${args[0]}" ;;
    reserve) facility_reserve "$dir" "${args[@]:0:3}" ;;
    exec) facility_exec "$dir" "${args[@]}" ;;
    qmp) facility_qmp "$dir" "${args[0]}" "${args[1]}" ;;
    wait) facility_wait_leases "$dir" "$timeout" ;;
    etcd-up) facility_etcd_up "$dir" ;;
    etcd-kill) facility_etcd_kill "$dir" "${args[0]}" ;;
    etcd-start) facility_etcd_start "$dir" "${args[0]}" ;;
    etcd-endpoints) facility_etcd_endpoints "$dir" ;;
    bundles) mkdir -p "$dir" && facility_bundles "$dir" "${bdir:?--bundle-dir D}" "${nodes:?--nodes N}" "${key:?--landlord-key KEY}" ${tmpl:+"$tmpl"} ;;
    status) facility_status "$dir" ;;
    *) _fac_err "unknown command $cmd"; _fac_usage; return 2 ;;
    esac
}

if [[ ${BASH_SOURCE[0]} == "$0" ]]; then
    set -uo pipefail
    facility_main "$@"
    exit $?
fi
