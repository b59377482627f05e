# Disaster-recovery runbooks and rolling upgrades end to end (issue 15),
# sourced by tests/e2e/run.sh after fleet.sh: the `runbook-…` scenarios.
# Each starts three BMonitor nodes (scripts/facility.sh, as the fleet-…
# scenarios do) and `bmctl facility serve`, runs Linux agent VMs of tenant A
# on them (target/linux/agent-v1 and agent-v2: the agent image whose web
# service, busybox httpd on 8080, serves /srv/www/version = v1 or v2), and
# drives the operator commands of docs/runbook contract (runbooks, runs,
# service versions and rolling upgrades). Root only (network namespace).
# Figures go to figures.txt; every wait is bounded and says what it waited for.
#
# runbook-dr-qemu: a protected service `db` (its data written through the
#   agent onto /dev/vda, checksum kept) on n1 with partner n2, a client VM on
#   n3 probing db's httpd every ~0.2 s; the five gates each refuse a run with
#   no node command sent (the nodes' landlord audit logs before and after);
#   the four failure policies; migrate, takeover after a node is killed,
#   failback after it is back; the client's longest time without a reply
#   is each operation's downtime.
# runbook-rolling-qemu: service `web` (v1, v2) with update domains 0, 1, 2
#   (web-0 and web-2 on n1, web-1 on n2); `service upgrade web --to v2` runs
#   in the background and n1 is killed while domain 1 upgrades: the healed
#   web-0 reports v2, the healed web-2 v1 (its domain not reached) with its
#   data; upgrade-domain is refused while healing (forced: audited); the
#   rollout finishes with every VM on v2.

RB_T=$ROOT/tests/e2e/runbook
RB_K=$ROOT/target/linux
# Guest memory of a Linux agent VM (MiB) and its disk.
RB_VM_MEM=${RB_VM_MEM:-192}
RB_VM_DISK=${RB_VM_DISK:-16}

rb_now() { date +%s.%3N; }
rb_secs() { awk -v a="$1" -v b="${2:-$(rb_now)}" 'BEGIN { printf "%.1f", b - a }'; }

# rb_setup: a facility of three nodes with room for Linux VMs, enrolled, the
# controller running (serve_pid, $dir/serve.log), tenant A leased on each
# node with its replica partners approved (profiles ta-n1..ta-n3), landlord
# profiles ll-n1..ll-n3 (for the nodes' audit logs), images in $dir/img.
# Sets B, fdir, FA, TA, TB (as fleet_setup does).
rb_setup() {
    B="$TARGET_DIR/release/bmctl"
    fdir=$dir/facility
    export BMCTL_CONFIG_DIR=$dir/bmctl
    rm -rf "$fdir" "$dir/bmctl" "$dir/img" "$dir/state.json" "$dir"/serve*.log
    mkdir -p "$fdir" "$dir/img"
    local v
    for v in v1 v2; do
        [[ -s $RB_K/agent-$v/initrd.img && -s $RB_K/agent-$v/vmlinuz ]] ||
            { fail "no agent image $RB_K/agent-$v: scripts/linux-guest.sh did not build it"; return 1; }
        cp "$RB_K/agent-$v/initrd.img" "$dir/img/web-$v.img"
    done
    cp "$RB_K/agent-v1/vmlinuz" "$dir/img/vmlinuz"
    local kl
    kl=$(fleet_key landlord) && TA=$(fleet_key tenant-a) && TB=$(fleet_key tenant-b) || { fail "bmctl keygen failed"; return 1; }
    facility_bundles "$fdir" "$dir/bundles" 3 "$kl" "$ROOT/tests/e2e/fleet/fleet-node.toml" || { fail "node bundles failed"; return 1; }
    local i
    for i in 1 2 3; do
        "$B" facility reserve "n$i" --mac "$(facility_node_mac "$i")" --ip "10.77.0.1$i" --hosts "$fdir/dhcp-hosts" >/dev/null ||
            { fail "bmctl facility reserve n$i failed"; return 1; }
    done
    FAC_QEMU_MEM=${RB_QEMU_MEM:-1024} facility_up "$fdir" 3 "$dir/bundles" --wait 150 >"$dir/up.out" 2>&1 ||
        { fail "facility up failed: $(tail -3 "$dir/up.out")"; return 1; }
    FA=("$B" facility --store "$dir/state.json" --key landlord --images "$dir/img")
    for i in 1 2 3; do
        grep -q "DHCP lease 10\.77\.0\.1$i/" "$fdir/node$i.log" ||
            { fail "n$i did not get its reserved address 10.77.0.1$i: $(grep -m1 'DHCP lease' "$fdir/node$i.log")"; return 1; }
        fleet_ctl node add "n$i" --addr "10.77.0.1$i:7700" --node-key "$(facility_node_key "$fdir" "$i")" \
            --vcpus 4 --memory "${RB_NODE_MEM:-640}" --disk 160 >>"$dir/ops.log" 2>&1 ||
            { fail "node add n$i failed: $(tail -1 "$dir/ops.log")"; return 1; }
        "$B" profile add "ll-n$i" --node "10.77.0.1$i:7700" --node-key "$(facility_node_key "$fdir" "$i")" \
            --role landlord --key landlord >>"$dir/ops.log" 2>&1 || { fail "profile ll-n$i failed"; return 1; }
    done
    fleet_serve "$dir/serve.log"
    rb_serve_pid=$serve_pid
    fleet_tenant_a || return 1
}

# rb_stop: the controller (by its pid), the facility, serial logs kept.
rb_stop() {
    [[ -n ${rb_bg_pids:-} ]] && kill $rb_bg_pids 2>/dev/null
    [[ -n ${rb_serve_pid:-} ]] && kill "$rb_serve_pid" 2>/dev/null
    [[ -n ${rb_serve_pid:-} ]] && wait "$rb_serve_pid" 2>/dev/null
    rb_serve_pid='' rb_bg_pids=''
    facility_down "$fdir" >/dev/null 2>&1
    local i
    for i in 1 2 3; do [[ -f $(fleet_nlog "$i") ]] && tr -d '\r' <"$(fleet_nlog "$i")" >"$dir/n$i.serial"; done
    cat "$dir"/n?.serial >"$dir/serial.log" 2>/dev/null
    unset BMCTL_CONFIG_DIR
}

# rb_bm ARGS...: bmctl inside the namespace, bounded.
rb_bm() { facility_exec "$fdir" timeout "${RB_BM_TIMEOUT:-60}" "$B" "$@"; }

# rb_state: the facility state (JSON) as the controller stored it.
rb_state() { fleet_ctl --json status 2>/dev/null; }
# rb_vm_field VM FIELD: node | partner | epoch | state (state: Running,
# Moving, or the Waiting reason prefixed with "Waiting: ").
rb_vm_field() {
    rb_state | python3 -c '
import json, sys
vm, f = sys.argv[1], sys.argv[2]
try:
    st = json.load(sys.stdin)
except Exception:
    sys.exit(1)
r = st.get("vms", {}).get(vm)
if r is None:
    sys.exit(1)
v = r.get(f)
if f == "state" and isinstance(v, dict):
    k, x = next(iter(v.items()))
    v = f"{k}: {x}"
print("" if v is None else v)' "$1" "$2"
}
# rb_node_of VM: 1..3, the node the facility has it on.
rb_node_of() { local n; n=$(rb_vm_field "$1" node) && echo "${n#n}"; }

# rb_id NODE VM: VM's id on node NODE (tenant A's view), empty if none.
rb_id() {
    rb_bm -p "ta-n$1" --json tenant vms 2>/dev/null | python3 -c '
import json, sys
try:
    d = json.load(sys.stdin)
except Exception:
    sys.exit(1)
for v in d if isinstance(d, list) else d.get("vms", []):
    if v.get("spec", {}).get("name") == sys.argv[1]:
        print(v["id"] if not isinstance(v["id"], dict) else list(v["id"].values())[0])
        break' "$2"
}
# rb_exec NODE VM [--cmd-timeout S] -- CMD...: a command in VM through its agent.
rb_exec() {
    local node=$1 vm=$2 id
    shift 2
    id=$(rb_id "$node" "$vm")
    [[ -n $id ]] || { echo "rb_exec: no VM $vm on n$node" >&2; return 125; }
    rb_bm -p "ta-n$node" tenant exec "$id" "$@"
}
# rb_wait_agent NODE VM SECS: until VM's agent on NODE runs a command.
rb_wait_agent() {
    local node=$1 vm=$2 until=$((SECONDS + $3)) id=''
    while ((SECONDS < until)); do
        [[ -n $id ]] || id=$(rb_id "$node" "$vm")
        if [[ -n $id ]] && RB_BM_TIMEOUT=20 rb_bm -p "ta-n$node" tenant exec "$id" -- true >/dev/null 2>&1; then
            return 0
        fi
        sleep 1
    done
    return 1
}
# rb_wait_state VM ERE SECS: until VM's facility state (node:state) matches.
rb_wait_state() {
    local until=$((SECONDS + $3)) s
    while ((SECONDS < until)); do
        s="$(rb_vm_field "$1" node):$(rb_vm_field "$1" state)"
        [[ $s =~ $2 ]] && return 0
        sleep 1
    done
    return 1
}

# rb_vm_create NAME NODE INITRD LAST_OCTET [ARGS...]: a Linux agent VM of
# tenant A, cluster 1, on node NODE. Its address is 10.0.0.LAST_OCTET: the
# guest's init takes 10.0.0.<last byte of the MAC>, so the MAC ends in it.
rb_vm_create() {
    local name=$1 node=$2 initrd=$3 o=$4
    shift 4
    fleet_ctl vm create "$name" --tenant a --tenant-key "$TA" --cluster 1 --image vmlinuz --initrd "$initrd" \
        --cmdline "console=ttyS0" --memory "$RB_VM_MEM" --mac "$(printf '02:4d:00:00:00:%02x' "$o")" --ip "10.0.0.$o" \
        --on "n$node" "$@" >>"$dir/ops.log" 2>&1
}

# rb_write_data NODE VM SEED: 4 MiB of pseudo-random data (from SEED) onto
# the VM's /dev/vda through its agent; prints its sha256.
rb_write_data() {
    rb_exec "$1" "$2" --cmd-timeout 120 -- sh -c "
        i=0; while [ \$i -lt 64 ]; do echo $3-\$i | sha256sum; i=\$((i + 1)); done >/tmp/seed &&
        dd if=/dev/urandom of=/tmp/data bs=65536 count=64 2>/dev/null &&
        dd if=/tmp/data of=/dev/vda bs=65536 count=64 conv=fsync 2>/dev/null && sync &&
        dd if=/dev/vda bs=65536 count=64 2>/dev/null | sha256sum | cut -d' ' -f1"
}
# rb_read_sum NODE VM: the sha256 of the first 4 MiB of the VM's /dev/vda.
rb_read_sum() {
    rb_exec "$1" "$2" --cmd-timeout 120 -- sh -c 'echo 3 >/proc/sys/vm/drop_caches; dd if=/dev/vda bs=65536 count=64 iflag=direct 2>/dev/null | sha256sum | cut -d" " -f1'
}
# rb_version NODE VM: what VM's own httpd serves as /version.
rb_version() {
    rb_exec "$1" "$2" --cmd-timeout 20 -- timeout 10 wget -q -O - http://127.0.0.1:8080/version 2>/dev/null | tr -d '\r\n'
}

# rb_probe_start NODE VM TARGET_IP: a loop in VM fetching
# http://TARGET_IP:8080/version every ~0.2 s (1 s timeout), appending
# "<uptime seconds> <answer>" to /tmp/ok for each success.
rb_probe_start() {
    rb_exec "$1" "$2" -- sh -c "rm -f /tmp/ok; setsid sh -c '
        while :; do
            if v=\$(timeout 1 wget -q -O - http://$3:8080/version 2>/dev/null); then
                echo \"\$(cut -d\" \" -f1 /proc/uptime) \$v\" >>/tmp/ok
            fi
            sleep 0.2
        done' </dev/null >/dev/null 2>&1 &"
}
# rb_probe_mark NODE VM: the client VM's uptime now (a mark in its clock).
rb_probe_mark() { rb_exec "$1" "$2" -- cut -d' ' -f1 /proc/uptime 2>/dev/null; }
# rb_probe_gap NODE VM FROM [TO]: from the client's successes after uptime
# FROM (and before TO), the longest time without a reply, in ms, including
# FROM to the first success; "none" when there was no success at all.
rb_probe_gap() {
    rb_exec "$1" "$2" -- cat /tmp/ok 2>/dev/null >"$dir/probe-$2.txt"
    awk -v from="$3" -v to="${4:-1e12}" '
        $1 >= from && $1 <= to { if (last == "") gap = $1 - from; else if ($1 - last > gap) gap = $1 - last; last = $1; n++ }
        END { if (!n) print "none"; else printf "%d\n", gap * 1000 }' "$dir/probe-$2.txt"
}
# rb_probe_ok_since NODE VM FROM: replies after uptime FROM.
rb_probe_ok_since() {
    rb_exec "$1" "$2" -- cat /tmp/ok 2>/dev/null | awk -v from="$3" '$1 > from { n++ } END { print n + 0 }'
}

# --- the nodes' landlord audit logs -----------------------------------------
# Background traffic that is not a run's node command: the controller's
# heartbeats (fleet-heartbeat), replication rounds (replica-pull on the
# primary, replica-push on the partner), lease lookups (list-leases), the
# sessions it opens (connect), and our own reads of the log (read-audit,
# node-status, list-vms). Everything else the landlord role does (fleet-
# create-vm, fleet-start-vm, stop-vm, destroy-vm, fence-vm, promote-replica,
# replica-key, replica-create, set-cluster-members, notify-tenant, upload-*,
# ...) would be a step of a run.
RB_BACKGROUND='^(fleet-heartbeat|replica-pull|replica-push|list-leases|connect|read-audit|node-status|list-vms)$'
# rb_audit_read I FROM: node I's audit entries from index FROM (JSON);
# a read from where the last one ended is short (the whole log is
# thousands of entries: heartbeats, replication).
rb_audit_read() { rb_bm -p "ll-n$1" --json landlord audit --from "$2" 2>/dev/null; }
# rb_audit_mark: each node's next audit index into $dir/audit-mark.
rb_audit_mark() {
    local i n from
    : >"$dir/audit-mark.new"
    for i in 1 2 3; do
        from=$(awk -v n="n$i" '$1 == n { print $2 }' "$dir/audit-mark" 2>/dev/null)
        n=$(rb_audit_read "$i" "${from:-0}" | python3 -c 'import json, sys; print(json.load(sys.stdin)["next"])' 2>/dev/null)
        echo "n$i ${n:-${from:-0}}" >>"$dir/audit-mark.new"
    done
    mv "$dir/audit-mark.new" "$dir/audit-mark"
}
# rb_audit_since OUT: each node's landlord-role entries since the mark, one
# line "nI INDEX ACTION OUTCOME", into OUT; prints the count of entries that
# are not background traffic.
rb_audit_since() {
    local out=$1 i from
    : >"$out"
    for i in 1 2 3; do
        from=$(awk -v n="n$i" '$1 == n { print $2 }' "$dir/audit-mark")
        rb_audit_read "$i" "${from:-0}" | python3 -c '
import json, sys
node, frm = sys.argv[1], int(sys.argv[2])
d = json.load(sys.stdin)
for x in d if isinstance(d, list) else d.get("entries", []):
    role = x.get("role")
    if x["index"] >= frm and (role == "Landlord" or role == "landlord" or (isinstance(role, dict) and "Landlord" in role)):
        print(node, x["index"], x["action"], x["outcome"].replace(" ", "_"))' "n$i" "${from:-0}" >>"$out"
    done
    awk -v re="$RB_BACKGROUND" '$3 !~ re' "$out" | wc -l
}
