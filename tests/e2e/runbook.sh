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
    cp "$RB_K/agent-v2/vmlinuz" "$dir/img/vmlinuz-v2"
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
    FA=("$B" facility --store "$dir/state.json" --key landlord --images "$dir/img" ${RB_HEALTH_ARGS:-})
    for i in 1 2 3; do
        grep -q "DHCP lease 10\.77\.0\.1$i/" "$fdir/node$i.log" ||
            { fail "n$i did not get its reserved address 10.77.0.1$i: $(grep -m1 'DHCP lease' "$fdir/node$i.log")"; return 1; }
        fleet_ctl node add "n$i" --addr "10.77.0.1$i:7700" --node-key "$(facility_node_key "$fdir" "$i")" \
            --vcpus 4 --memory "${RB_NODE_MEM:-640}" --disk 160 >>"$dir/ops.log" 2>&1 ||
            { fail "node add n$i failed: $(tail -1 "$dir/ops.log")"; return 1; }
        "$B" profile add "ll-n$i" --node "10.77.0.1$i:7700" --node-key "$(facility_node_key "$fdir" "$i")" \
            --role landlord --key landlord >>"$dir/ops.log" 2>&1 || { fail "profile ll-n$i failed"; return 1; }
    done
    fleet_serve "$dir/serve.log" --listen 127.0.0.1:8091
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
rb_wait_state() { # (checked at least once, also with SECS 0)
    local until=$((SECONDS + $3)) s
    while :; do
        s="$(rb_vm_field "$1" node):$(rb_vm_field "$1" state)"
        [[ $s =~ $2 ]] && return 0
        ((SECONDS < until)) || return 1
        sleep 1
    done
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

# rb_write_data NODE VM TAG: 2 MiB of random data onto
# the VM's /dev/vda through its agent; prints its sha256.
rb_write_data() {
    rb_exec "$1" "$2" --cmd-timeout 120 -- sh -c "
        dd if=/dev/urandom of=/tmp/data bs=65536 count=32 2>/dev/null &&
        dd if=/tmp/data of=/dev/vda bs=65536 count=32 conv=fsync 2>/dev/null && sync &&
        dd if=/dev/vda bs=65536 count=32 2>/dev/null | sha256sum | cut -d' ' -f1"
}
# rb_read_sum NODE VM: the sha256 of the first 2 MiB of the VM's /dev/vda.
rb_read_sum() {
    rb_exec "$1" "$2" --cmd-timeout 120 -- sh -c 'echo 3 >/proc/sys/vm/drop_caches; dd if=/dev/vda bs=65536 count=32 iflag=direct 2>/dev/null | sha256sum | cut -d" " -f1'
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

# --- runs ----------------------------------------------------------------
# rb_doc OUT [HOSTS] [POLICY]: db.json with alice's key; HOSTS (a JSON list)
# replaces the allow-listed hosts; POLICY makes migrate's verify check a
# service that does not exist (nosuch, 2 s) under that on_failure.
# RB_VERIFY_TIMEOUT (90) bounds the other verify steps.
rb_doc() {
    python3 - "$RB_T/db.json" "$1" "$rb_alice" "${2:-}" "${3:-}" "${RB_VERIFY_TIMEOUT:-90}" <<'PY'
import json, sys
src, out, key, hosts, policy, vt = sys.argv[1:7]
d = json.loads(open(src).read().replace("ALICE_PUBLIC_KEY", key))
if hosts:
    d["allow"]["hosts"] = json.loads(hosts)
for steps in d["actions"].values():
    for s in steps:
        if s["step"] == "verify":
            s["timeout_s"] = int(vt)
if policy:
    for s in d["actions"]["migrate"]:
        if s["step"] == "verify":
            s.update(services=["nosuch"], timeout_s=2, on_failure=policy)
open(out, "w").write(json.dumps(d, indent=1) + "\n")
PY
}
# rb_set_doc NAME [HOSTS] [POLICY]: writes $dir/NAME.json and stores it.
rb_set_doc() {
    rb_doc "$dir/$1.json" "${2:-}" "${3:-}" || { fail "cannot write runbook $1"; return 1; }
    fleet_ctl runbook set "$dir/$1.json" >"$dir/runbook-set-$1.txt" 2>&1 ||
        { fail "runbook set $1 failed: $(tail -2 "$dir/runbook-set-$1.txt" | tr '\n' ' ')"; return 1; }
    rb_contract "runbook-set-$1" "^runbook for db stored$" "^runbook for"
    grep -q "^runbook for db stored" "$dir/runbook-set-$1.txt" ||
        fail "runbook set $1 did not say 'runbook for db stored': $(head -1 "$dir/runbook-set-$1.txt")"
}
# rb_run TAG ARGS...: `bmctl facility run ARGS...` (bounded), output in
# $dir/run-TAG.txt; sets rb_rc (exit status), rb_id_run (its run number),
# rb_secs_run (the run's own duration from its final line, if it gave one).
rb_run() {
    local tag=$1
    shift
    facility_exec "$fdir" timeout "${RB_RUN_TIMEOUT:-300}" "${FA[@]}" run "$@" >"$dir/run-$tag.txt" 2>&1
    rb_rc=$?
    rb_id_run=$(grep -m1 -o '^run [0-9]*' "$dir/run-$tag.txt" | cut -d' ' -f2)
    rb_secs_run=$(grep -Eo '^run [0-9]+ succeeded( with [0-9]+ warning\(s\))? in [0-9.]+s' "$dir/run-$tag.txt" | tail -1 | grep -Eo '[0-9.]+s$' | tr -d s)
    echo "== run $tag: bmctl facility run $* -> exit $rb_rc" >>"$dir/runs.log"
    cat "$dir/run-$tag.txt" >>"$dir/runs.log"
}
# rb_in TAG ERE: the run's output has a line matching ERE (else a failure
# naming the run, the line wanted and its last line).
rb_in() {
    grep -Eq -- "$2" "$dir/run-$1.txt" ||
        fail "run $1: no line matching '$2' (exit $rb_rc; last line: $(tail -1 "$dir/run-$1.txt"))"
}
rb_exit() { # TAG WANT
    [[ $rb_rc == "$2" ]] || fail "run $1 exited $rb_rc, not $2: $(tail -2 "$dir/run-$1.txt" | tr '\n' ' ')"
}
# rb_step_json ID STEP_INDEX FIELD: a field of one step of run ID (`runs --json`).
rb_step_json() {
    fleet_ctl --json runs 2>/dev/null | python3 -c '
import json, sys
rid, i, f = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
d = json.load(sys.stdin)
runs = d if isinstance(d, list) else d.get("runs", [])
for r in runs:
    if r.get("id") == rid:
        print(r["steps"][i].get(f))' "$1" "$2" "$3" 2>/dev/null
}

# rb_contract NAME ERE WORDS: the exact line the contract gives is in
# $dir/NAME.txt (an output file); else the lines with WORDS that the command
# printed instead go to $dir/contract.txt (the check itself accepts both).
rb_contract() {
    grep -Eq -- "$2" "$dir/$1.txt" && return 0
    echo "$1: no line matching the contract's '$2'; printed: $(grep -E -- "$3" "$dir/$1.txt" | head -2 | tr '\n' '|')" >>"$dir/contract.txt"
}

# rb_wait_synced VM SECS: until the controller's log, after the line count
# in $dir/serve.mark, says VM's replica caught up (0 blocks pending).
rb_serve_mark() { wc -l <"$dir/serve.log" >"$dir/serve.mark"; }
rb_wait_synced() {
    local until=$((SECONDS + $2)) from
    from=$(cat "$dir/serve.mark" 2>/dev/null || echo 0)
    while ((SECONDS < until)); do
        tail -n +"$((from + 1))" "$dir/serve.log" | grep -q "^replication lag $1: 0 block(s) pending" && return 0
        sleep 1
    done
    return 1
}
# rb_wait_client NODE VM FROM N SECS: until the client has N replies after
# its uptime FROM.
rb_wait_client() {
    local until=$((SECONDS + $5)) n
    while ((SECONDS < until)); do
        n=$(rb_probe_ok_since "$1" "$2" "$3")
        ((${n:-0} >= $4)) && return 0
        sleep 1
    done
    return 1
}

# --- runbook-dr-qemu --------------------------------------------------------
run_runbook_dr() {
    RB_NODE_MEM=${RB_NODE_MEM:-640} rb_setup || { rb_stop; return; }
    : >"$dir/figures.txt"
    local t_all
    t_all=$(rb_now)
    rb_dr_body
    fleet_ctl status >"$dir/status.txt" 2>&1
    fleet_ctl runs >"$dir/runs-list.txt" 2>&1
    fleet_ctl audit >"$dir/facility-audit.txt" 2>&1
    rb_stop
    echo "runbook-dr: whole scenario after the facility was up: $(rb_secs "$t_all") s" >>"$dir/figures.txt"
    local log=$dir/serial.log
    no_hypervisor_fault
}

rb_dr_body() {
    # Operators: alice (on db's allow-list) and mallory (not).
    local out
    out=$(fleet_ctl operator-key alice --out "$dir/alice.key" 2>&1)
    rb_alice=$(sed -n 's/^operator alice public-key \([0-9a-f]\{64\}\)$/\1/p' <<<"$out")
    [[ -n $rb_alice ]] || { fail "operator-key alice did not print 'operator alice public-key HEX': $out"; return; }
    [[ $(stat -c %a "$dir/alice.key") == 600 ]] || fail "alice's key file has mode $(stat -c %a "$dir/alice.key"), not 600"
    grep -Eqx '[0-9a-f]{64}' "$dir/alice.key" || fail "alice's key file is not 64 hex digits"
    out=$(fleet_ctl operator-key mallory --out "$dir/mallory.key" 2>&1)
    grep -q "^operator mallory public-key [0-9a-f]\{64\}$" <<<"$out" || { fail "operator-key mallory: $out"; return; }

    # db (protected, its data on /dev/vda) on n1; the client on n3.
    rb_vm_create db 1 web-v1.img 10 --disk 4 --protected || { fail "vm create db failed: $(tail -2 "$dir/ops.log")"; return; }
    rb_vm_create client 3 web-v1.img 20 || { fail "vm create client failed: $(tail -2 "$dir/ops.log")"; return; }
    rb_wait_agent 1 db 180 || { fail "db's agent did not answer within 180 s on n1: $(grep -a '^\[db\]' "$(fleet_nlog 1)" | tail -1)"; return; }
    rb_wait_agent 3 client 180 || { fail "the client's agent did not answer within 180 s on n3"; return; }
    local partner sum now_sum
    partner=$(rb_vm_field db partner)
    echo "runbook-dr: db on n1, partner ${partner:-none}; client on n3" >>"$dir/figures.txt"
    sum=$(rb_write_data 1 db 7)
    [[ $sum =~ ^[0-9a-f]{64}$ ]] || { fail "writing db's data through its agent failed: '$sum'"; return; }
    echo "$sum" >"$dir/db.sha256"
    rb_probe_start 3 client 10.0.0.10 || { fail "could not start the client's probe loop"; return; }
    local m0
    m0=$(rb_probe_mark 3 client)
    rb_wait_client 3 client "$m0" 3 60 || { fail "the client on n3 never reached db's httpd at 10.0.0.10:8080 within 60 s"; return; }
    rb_serve_mark
    rb_wait_synced db 150 || { fail "db's replica did not catch up within 150 s"; return; }

    rb_dr_gates || return
    # b. The policies that let a run finish first: a run that dies after
    # its start step leaves db busy (see rb_dr_policy), and every later run
    # would be refused at gate 2; the two that die come after e.
    rb_dr_policy "retry 1 then warn" || return
    rb_dr_policy "warn" || return
    rb_dr_migrate || return
    rb_dr_takeover || return
    rb_dr_failback || return
    rb_dr_policy "die" || return
    rb_dr_policy "retry 2 then die" || return
    rb_dr_after_die
}

# rb_settled SECS: db Running (no intent working on it) within SECS; else
# a failure naming db's state and the controller's last word on it.
rb_settled() {
    rb_wait_state db ":Running$" "$1" && return 0
    fail "db is still $(rb_vm_field db state) on $(rb_vm_field db node) $1 s after $2; the controller's last line on it: $(grep -E "intent|db" "$dir/serve.log" | grep -v "replication lag" | tail -1)"
    return 1
}
# a. Gates: each refused (exit 2, the gate named), with no node command.
rb_dr_gates() {
    rb_set_doc gates '["n1", "n2"]' || return 1
    rb_audit_mark
    local t
    t=$(rb_now)
    rb_run gate-operator db migrate --operator mallory --operator-key "$dir/mallory.key" --wait 30
    rb_exit gate-operator 2
    rb_in gate-operator "^run [0-9]+: refused at gate 1 \(allow-list\): .*mallory"
    rb_run gate-host db migrate --param to=n3 --operator alice --operator-key "$dir/alice.key" --wait 30
    rb_exit gate-host 2
    rb_in gate-host "^run [0-9]+: refused at gate 1 \(allow-list\): .*n3"
    rb_run gate-state db failback --operator alice --operator-key "$dir/alice.key" --wait 30
    rb_exit gate-state 2
    rb_in gate-state "^run [0-9]+: refused at gate 2 \(state\)"
    rb_run gate-schema db migrate --param bogus=1 --operator alice --operator-key "$dir/alice.key" --wait 30
    rb_exit gate-schema 2
    rb_in gate-schema "^run [0-9]+: refused at gate 3 \(schema\)"
    rb_run gate-auth db migrate --operator alice --operator-key "$dir/mallory.key" --wait 30
    rb_exit gate-auth 2
    rb_in gate-auth "^run [0-9]+: refused at gate 4 \(authentication\)"
    local gates_s
    gates_s=$(rb_secs "$t")
    sleep 2 # anything a refused run might still send would be in the logs by now
    local n
    n=$(rb_audit_since "$dir/audit-gates.txt")
    awk '{print $1, $3}' "$dir/audit-gates.txt" | sort | uniq -c | sed 's/^ */runbook-dr: audit during the gates: /' >>"$dir/figures.txt"
    [[ $n == 0 ]] || fail "refused runs sent node commands ($n audit entries that are not background traffic): $(awk -v re="$RB_BACKGROUND" '$3 !~ re' "$dir/audit-gates.txt" | head -5 | tr '\n' ';')"
    [[ -s $dir/audit-gates.txt ]] || fail "no landlord audit entries read at all during the gates (heartbeats expected): the audit check saw nothing"
    echo "runbook-dr: 5 gate refusals in $gates_s s; landlord commands other than background traffic during them: $n" >>"$dir/figures.txt"
    fleet_ctl runs >"$dir/runs-gates.txt" 2>&1
    local c
    c=$(grep -c "Refused" "$dir/runs-gates.txt")
    ((c >= 5)) || fail "bmctl facility runs lists $c refused runs, not 5: $(head -3 "$dir/runs-gates.txt" | tr '\n' ';')"
    [[ $(rb_node_of db) == 1 && $(rb_vm_field db state) == Running ]] || fail "db moved or stopped during the refused runs: $(rb_vm_field db node) $(rb_vm_field db state)"
}

# b. Failure policies: a migrate run whose verify checks a service that
# does not exist, under policy P; db goes to the other of n1 and n2 (each
# run moves it: verify comes after start, as the step order requires).
rb_dr_policy() {
    local p=$1 tag to from attempts st
    tag=policy-${p// /-}
    from=$(rb_node_of db)
    rb_set_doc "$tag" "" "$p" || return 1
    # To db's replica partner (the default target).
    rb_run "$tag" db migrate --operator alice --operator-key "$dir/alice.key" --wait 240
    to=$(sed -n 's/^run [0-9]*: gates passed .* from n[0-9] to \(n[0-9]\)$/\1/p' "$dir/run-$tag.txt")
    rb_last_from=$from
    # The verify step is step 6 of 9 (index 5).
    attempts=$(grep -Ec "^run [0-9]+ step 6/9 verify: attempt [0-9]+ failed: .*; retrying \([0-9]+ of [0-9]+\)" "$dir/run-$tag.txt")
    st=$(rb_step_json "$rb_id_run" 5 attempts)
    case $p in
    die)
        rb_exit "$tag" 1
        rb_in "$tag" "^run [0-9]+ step 6/9 verify: failed( after [0-9]+ attempt\(s\))?: .*; die: run stops"
        rb_in "$tag" "^run [0-9]+ failed at step 6 \(verify\): "
        ((attempts == 0)) || fail "run $tag: $attempts retries, want none"
        [[ $st == 1 ]] || fail "run $tag: the verify step's record says ${st:-no} attempts, want 1"
        ;;
    "retry 2 then die")
        rb_exit "$tag" 1
        rb_in "$tag" "^run [0-9]+ step 6/9 verify: attempt 1 failed: .*; retrying \(1 of 2\)"
        rb_in "$tag" "^run [0-9]+ step 6/9 verify: attempt 2 failed: .*; retrying \(2 of 2\)"
        rb_in "$tag" "^run [0-9]+ step 6/9 verify: failed( after [0-9]+ attempt\(s\))?: .*; die: run stops"
        rb_in "$tag" "^run [0-9]+ failed at step 6 \(verify\): "
        [[ $st == 3 ]] || fail "run $tag: the verify step's record says ${st:-no} attempts, want 3"
        ;;
    warn)
        rb_exit "$tag" 0
        rb_in "$tag" "^run [0-9]+ step 6/9 verify: failed( after [0-9]+ attempt\(s\))?: .*; warn: continuing"
        rb_in "$tag" "^run [0-9]+ step 9/9 notify: done"
        rb_in "$tag" "^run [0-9]+ succeeded with 1 warning\(s\) in [0-9.]+s"
        [[ $st == 1 ]] || fail "run $tag: the verify step's record says ${st:-no} attempts, want 1"
        ;;
    "retry 1 then warn")
        rb_exit "$tag" 0
        rb_in "$tag" "^run [0-9]+ step 6/9 verify: attempt 1 failed: .*; retrying \(1 of 1\)"
        rb_in "$tag" "^run [0-9]+ step 6/9 verify: failed( after [0-9]+ attempt\(s\))?: .*; warn: continuing"
        rb_in "$tag" "^run [0-9]+ step 9/9 notify: done"
        rb_in "$tag" "^run [0-9]+ succeeded with 1 warning\(s\) in [0-9.]+s"
        [[ $st == 2 ]] || fail "run $tag: the verify step's record says ${st:-no} attempts, want 2"
        ;;
    esac
    rb_contract "run-$tag" "^run [0-9]+ step 6/9 verify: failed: .*; (die: run stops|warn: continuing)$" "step 6/9 verify: failed"
    if [[ $p == *die ]]; then
        # A run that dies stops there: nothing after the failed step ran.
        grep -Eq "^run [0-9]+ step [789]/9 .*: (started|done)" "$dir/run-$tag.txt" &&
            fail "run $tag: steps after the failed verify ran: $(grep -Em1 "^run [0-9]+ step [789]/9 " "$dir/run-$tag.txt")"
    fi
    echo "runbook-dr: policy '$p' (migrate n$from -> ${to:-?}): exit $rb_rc, $((attempts + 1)) verify attempt(s) in the output (step record: ${st:-?}); $(tail -1 "$dir/run-$tag.txt")" >>"$dir/figures.txt"
    # The facility re-protects db after a run that died (a new replica);
    # a deposed copy must not be in the way of it.
    rb_settled 120 "run $rb_id_run ($p)" || return 1
    echo "runbook-dr: after the '$p' run db is $(rb_vm_field db state) on $(rb_vm_field db node)" >>"$dir/figures.txt"
}

# After the runs that died: db can go back to the node the last one left
# (a run that dies after switch_lock must not leave that node unusable).
rb_dr_after_die() {
    local back=$rb_last_from
    rb_set_doc db || return 1
    rb_run back-after-die db migrate --param "to=n$back" --operator alice --operator-key "$dir/alice.key" --wait 240
    rb_exit back-after-die 0
    rb_in back-after-die "^run [0-9]+ succeeded( with [0-9]+ warning\(s\))? in [0-9.]+s"
    echo "runbook-dr: migrate back to n$back, the source of the run that died last: exit $rb_rc; $(tail -1 "$dir/run-back-after-die.txt")" >>"$dir/figures.txt"
}

# c. migrate db to n2 (from n1): same data, same address, the client's view
# of the downtime.
rb_dr_migrate() {
    local from to m1 m2 gap s
    from=$(rb_node_of db)
    to=2
    [[ $from == 2 ]] && to=1
    rb_set_doc db || return 1
    rb_settled 120 "the policy runs" || return 1
    rb_wait_agent "$from" db 120 || { fail "db's agent on n$from does not answer before the migrate"; return 1; }
    m1=$(rb_probe_mark 3 client)
    rb_run migrate db migrate --param "to=n$to" --operator alice --operator-key "$dir/alice.key" --wait 240
    rb_exit migrate 0
    echo "runbook-dr: migrate output: $(tr '\n' '|' <"$dir/run-migrate.txt")" >>"$dir/figures.txt"
    rb_in migrate "^run [0-9]+: gates passed \(allow-list, state, schema, authentication\)"
    rb_in migrate "^run [0-9]+ succeeded( with [0-9]+ warning\(s\))? in [0-9.]+s"
    rb_in migrate "^run [0-9]+ step 6/9 verify: done in [0-9.]+s"
    [[ $(rb_node_of db) == "$to" ]] || { fail "after migrate db is on $(rb_vm_field db node), not n$to"; return 1; }
    m2=$(rb_probe_mark 3 client)
    rb_wait_client 3 client "$m2" 3 120 || fail "the client did not reach db (10.0.0.10) again within 120 s of the migrate"
    gap=$(rb_probe_gap 3 client "$m1")
    rb_wait_agent "$to" db 120 || { fail "db's agent on n$to does not answer after the migrate"; return 1; }
    s=$(rb_read_sum "$to" db)
    [[ $s == "$(cat "$dir/db.sha256")" ]] || fail "db's data after the migrate: sha256 '$s', not $(cat "$dir/db.sha256")"
    echo "runbook-dr: migrate n$from -> n$to: downtime seen by the client ${gap} ms; the run's own duration ${rb_secs_run:-?} s; data sha256 $([[ $s == "$(cat "$dir/db.sha256")" ]] && echo identical || echo DIFFERENT)" >>"$dir/figures.txt"
    rb_dr_dashboard "$rb_id_run"
}

# The controller's dashboard (headless Chromium, in the facility's netns)
# shows run ID, then a new run appears without a reload: a failback with
# no takeover behind it, refused at gate 2 (no node command).
rb_dr_dashboard() {
    local next=$(($1 + 1))
    local trigger="BMCTL_CONFIG_DIR=$dir/bmctl timeout 60 ${FA[*]} run db failback --operator alice --operator-key $dir/alice.key --wait 30 >$dir/run-dashboard.txt 2>&1; test \$? = 2"
    facility_exec "$fdir" python3 "$ROOT/scripts/dashboard-check.py" "http://127.0.0.1:8091/" --expect "run $1" \
        --trigger "$trigger" --then-expect "run $next" --timeout 90 >"$dir/dashboard.txt" 2>&1
    case $? in
    0) echo "runbook-dr: dashboard: run $1 shown, run $next (refused) appeared live: $(tail -1 "$dir/dashboard.txt")" >>"$dir/figures.txt" ;;
    2) fail "dashboard check could not run (chromium missing?): $(tail -2 "$dir/dashboard.txt")" ;;
    *) fail "dashboard check failed: $(tail -2 "$dir/dashboard.txt" | tr '\n' ' ') (run: $(tail -1 "$dir/run-dashboard.txt"))" ;;
    esac
}

# d. Kill db's node: db waits for an operator; takeover.
rb_dr_takeover() {
    local from m1 t_kill t_wait gap s to p
    from=$(rb_node_of db)
    # The replica must be complete before the primary dies.
    p=$(rb_vm_field db partner)
    local until=$((SECONDS + 60))
    while [[ -z $p ]] && ((SECONDS < until)); do sleep 1; p=$(rb_vm_field db partner); done
    [[ -n $p ]] || { fail "db has no partner 60 s after the migrate"; return 1; }
    rb_serve_mark
    rb_wait_synced db 150 || { fail "db's replica on $p did not catch up within 150 s"; return 1; }
    m1=$(rb_probe_mark 3 client)
    t_kill=$(rb_now)
    facility_node_kill "$fdir" "$from"
    rb_wait_state db "^n$from:Waiting: .*awaiting.*takeover" 60 ||
        { fail "db did not become Waiting(... awaiting takeover) within 60 s of n$from's death: $(rb_vm_field db node) $(rb_vm_field db state)"; return 1; }
    t_wait=$(rb_now)
    sleep 3 # not healed by itself: still waiting
    echo "runbook-dr: db's state while waiting: $(rb_vm_field db state)" >>"$dir/figures.txt"
    rb_vm_field db state >"$dir/waiting.txt"
    rb_contract waiting "awaiting takeover" "Waiting"
    rb_wait_state db "^n$from:Waiting: .*awaiting.*takeover" 1 || fail "db did not stay waiting for takeover: $(rb_vm_field db node) $(rb_vm_field db state)"
    grep -q "healed db on" "$dir/serve.log" && fail "the controller healed db by itself: $(grep -m1 'healed db on' "$dir/serve.log")"
    rb_run takeover db takeover --operator alice --operator-key "$dir/alice.key" --wait 240
    rb_exit takeover 0
    rb_in takeover "^run [0-9]+ succeeded( with [0-9]+ warning\(s\))? in [0-9.]+s"
    rb_in takeover "^run [0-9]+ step 4/7 verify: done in [0-9.]+s"
    to=$(rb_node_of db)
    [[ "n$to" == "$p" ]] || fail "takeover put db on n$to, not its partner $p"
    rb_wait_client 3 client "$m1" 3 150 || fail "the client did not reach db again within 150 s of the takeover"
    gap=$(rb_probe_gap 3 client "$m1")
    rb_wait_agent "$to" db 120 || { fail "db's agent on n$to does not answer after the takeover"; return 1; }
    s=$(rb_read_sum "$to" db)
    [[ $s == "$(cat "$dir/db.sha256")" ]] || fail "db's data after the takeover: sha256 '$s', not $(cat "$dir/db.sha256")"
    echo "runbook-dr: n$from killed -> db Waiting for takeover after $(rb_secs "$t_kill" "$t_wait") s; takeover to n$to: the run's own duration ${rb_secs_run:-?} s; downtime seen by the client (kill to first reply, the operator's 3 s included) ${gap} ms; data sha256 $([[ $s == "$(cat "$dir/db.sha256")" ]] && echo identical || echo DIFFERENT)" >>"$dir/figures.txt"
    rb_killed=$from
}

# e. The killed node comes back; failback returns db to it.
rb_dr_failback() {
    local back=$rb_killed m1 gap s t0
    t0=$(rb_now)
    rb_serve_mark
    facility_node_start "$fdir" "$back" >>"$dir/ops.log" 2>&1 || { fail "n$back did not start again: $(tail -1 "$dir/ops.log")"; return 1; }
    local until=$((SECONDS + 180))
    until tail -n +"$(($(cat "$dir/serve.mark") + 1))" "$dir/serve.log" | grep -q "node n$back rejoined" || ((SECONDS > until)); do sleep 1; done
    tail -n +"$(($(cat "$dir/serve.mark") + 1))" "$dir/serve.log" | grep -q "node n$back rejoined" ||
        { fail "n$back did not rejoin within 180 s of its restart: $(tail -2 "$dir/serve.log" | tr '\n' ' ')"; return 1; }
    echo "runbook-dr: n$back restarted -> rejoined after $(rb_secs "$t0") s" >>"$dir/figures.txt"
    rb_settled 120 "n$back rejoined" || return 1
    m1=$(rb_probe_mark 3 client)
    rb_run failback db failback --operator alice --operator-key "$dir/alice.key" --wait 240
    rb_exit failback 0
    rb_in failback "^run [0-9]+ succeeded( with [0-9]+ warning\(s\))? in [0-9.]+s"
    rb_in failback "^run [0-9]+ step 6/9 verify: done in [0-9.]+s"
    [[ $(rb_node_of db) == "$back" ]] || { fail "after failback db is on $(rb_vm_field db node), not n$back"; return 1; }
    rb_wait_client 3 client "$m1" 3 150 || fail "the client did not reach db again within 150 s of the failback"
    gap=$(rb_probe_gap 3 client "$m1")
    rb_wait_agent "$back" db 120 || { fail "db's agent on n$back does not answer after the failback"; return 1; }
    s=$(rb_read_sum "$back" db)
    [[ $s == "$(cat "$dir/db.sha256")" ]] || fail "db's data after the failback: sha256 '$s', not $(cat "$dir/db.sha256")"
    echo "runbook-dr: failback to n$back: downtime seen by the client ${gap} ms; the run's own duration ${rb_secs_run:-?} s; data sha256 $([[ $s == "$(cat "$dir/db.sha256")" ]] && echo identical || echo DIFFERENT)" >>"$dir/figures.txt"
}

# --- runbook-rolling-qemu ---------------------------------------------------
# rb_web_create NAME DOMAIN NODE LAST_OCTET: a VM of service web (its
# image: the service's current version), protected.
rb_web_create() {
    fleet_ctl vm create "$1" --service web --domain "$2" --tenant a --tenant-key "$TA" --cluster 1 \
        --memory "$RB_VM_MEM" --disk 4 --protected --on "n$3" \
        --mac "$(printf '02:4d:00:00:00:%02x' "$4")" --ip "10.0.0.$4" >>"$dir/ops.log" 2>&1
}
# rb_boot_versions NODE VM: the versions VM's boots on NODE said on the
# console, in order ("v1 v2").
rb_boot_versions() {
    tr -d '\r' <"$(fleet_nlog "$1")" 2>/dev/null | sed -n "s/^\[$2\] .*BMLINUX web version \(v[0-9]*\)$/\1/p" | tr '\n' ' ' | sed 's/ $//'
}

run_runbook_rolling() {
    # Detection after 3 missed heartbeats 1.2 s apart, not 5 x 1 s (fencing
    # lease 3 s, margin 0.5 s: 3 x 1.2 s > 3.5 s as the controller
    # requires): with two protected VMs on the dead node each round costs
    # seconds of connect timeouts; at 5 misses n1 was declared dead after
    # 22 s of silence, at 4 after 17-19 s, while domain 1 took 15-19 s. A
    # 2 s lease made nodes fence their protected VMs while loading a VM.
    RB_HEALTH_ARGS=${RB_HEALTH_ARGS:---interval-ms 1200 --misses 3 --margin-ms 500} \
        RB_NODE_MEM=${RB_NODE_MEM:-640} rb_setup || { rb_stop; return; }
    : >"$dir/figures.txt"
    local t_all
    t_all=$(rb_now)
    rb_rolling_body
    [[ -n ${rb_up_pid:-} ]] && { kill "$rb_up_pid" 2>/dev/null; wait "$rb_up_pid" 2>/dev/null; }
    fleet_ctl status >"$dir/status.txt" 2>&1
    fleet_ctl service status web >"$dir/service-status.txt" 2>&1
    fleet_ctl audit >"$dir/facility-audit.txt" 2>&1
    rb_stop
    echo "runbook-rolling: whole scenario after the facility was up: $(rb_secs "$t_all") s" >>"$dir/figures.txt"
    local log=$dir/serial.log
    no_hypervisor_fault
}

rb_rolling_body() {
    local out
    fleet_ctl service define web --version v1 --image vmlinuz --initrd web-v1.img --cmdline "console=ttyS0" --check web \
        >"$dir/svc-define.txt" 2>&1 || { fail "service define web failed: $(tail -2 "$dir/svc-define.txt" | tr '\n' ' ')"; return; }
    # v2 ships its own kernel file (the same bytes as vmlinuz): each domain's
    # upgrade uploads it to nodes that lack it, so domain 1 lasts longer than
    # the detection of n1's death (about 17 s with 4 misses under load) and
    # healing begins while domain 1 is still being upgraded.
    fleet_ctl service add-version web v2 --image vmlinuz-v2 --initrd web-v2.img --cmdline "console=ttyS0" \
        >"$dir/svc-add.txt" 2>&1 || { fail "service add-version web v2 failed: $(tail -2 "$dir/svc-add.txt" | tr '\n' ' ')"; return; }
    # web-0 and web-2 on n1 (domains 0 and 2), web-1 on n2 (domain 1).
    rb_web_create web-0 0 1 40 || { fail "vm create web-0 failed: $(tail -2 "$dir/ops.log" | tr '\n' ' ')"; return; }
    rb_web_create web-1 1 2 41 || { fail "vm create web-1 failed: $(tail -2 "$dir/ops.log" | tr '\n' ' ')"; return; }
    rb_web_create web-2 2 1 42 || { fail "vm create web-2 failed: $(tail -2 "$dir/ops.log" | tr '\n' ' ')"; return; }
    local v n w sum
    declare -A at=([web-0]=1 [web-1]=2 [web-2]=1)
    for w in web-0 web-1 web-2; do
        rb_wait_agent "${at[$w]}" "$w" 180 || { fail "$w's agent did not answer within 180 s on n${at[$w]}"; return; }
        v=$(rb_version "${at[$w]}" "$w")
        [[ $v == v1 ]] || fail "$w reports version '$v' before the upgrade, not v1"
        sum=$(rb_write_data "${at[$w]}" "$w" "$w")
        [[ $sum =~ ^[0-9a-f]{64}$ ]] || { fail "writing $w's data failed: '$sum'"; return; }
        echo "$sum" >"$dir/$w.sha256"
    done
    fleet_ctl service status web >"$dir/service-status-before.txt" 2>&1
    grep -Eq "^vm web-1 domain 1 version v1 on n2 Running" "$dir/service-status-before.txt" ||
        fail "service status before the upgrade: $(tr '\n' ';' <"$dir/service-status-before.txt")"
    rb_serve_mark
    for w in web-0 web-1 web-2; do
        rb_wait_synced "$w" 150 || { fail "$w's replica did not catch up within 150 s"; return; }
    done
    echo "runbook-rolling: partners: web-0 $(rb_vm_field web-0 partner), web-1 $(rb_vm_field web-1 partner), web-2 $(rb_vm_field web-2 partner)" >>"$dir/figures.txt"

    # The rollout in the background; n1 dies while domain 1 upgrades.
    local t_up t_kill
    t_up=$(rb_now)
    facility_exec "$fdir" timeout 900 "${FA[@]}" service upgrade web --to v2 --wait 800 >"$dir/upgrade.txt" 2>&1 &
    rb_up_pid=$!
    local until=$((SECONDS + 300))
    until grep -q "^rollout web v1 -> v2: domain 1: upgrading web-1" "$dir/upgrade.txt" || ((SECONDS > until)); do
        kill -0 "$rb_up_pid" 2>/dev/null || break
        sleep 0.5
    done
    grep -q "^rollout web v1 -> v2: domain 1: upgrading web-1" "$dir/upgrade.txt" ||
        { fail "the rollout did not reach domain 1 within 300 s: $(tail -2 "$dir/upgrade.txt" | tr '\n' ' ')"; return; }
    t_kill=$(rb_now)
    facility_node_kill "$fdir" 1
    echo "runbook-rolling: n1 killed $(rb_secs "$t_up" "$t_kill") s into the rollout, while domain 1 upgraded" >>"$dir/figures.txt"

    # While healing: upgrade-domain refused without --force; forced, audited.
    local refused='' rc
    until=$((SECONDS + 90))
    while ((SECONDS < until)); do
        if grep -Eq "^rollout web( v1 -> v2)?: paused: web-[02] is being healed" "$dir/upgrade.txt"; then
            facility_exec "$fdir" timeout 60 "${FA[@]}" service upgrade-domain web --domain 1 --to v2 >"$dir/upgrade-domain.txt" 2>&1
            rc=$?
            refused=$rc
            break
        fi
        sleep 0.3
    done
    if [[ -z $refused ]]; then
        fail "the rollout never said 'paused: web-0/web-2 is being healed' within 90 s of n1's death: $(tail -2 "$dir/upgrade.txt" | tr '\n' ' ')"
    else
        ((refused == 2)) || fail "upgrade-domain during healing exited $refused, not 2: $(tr '\n' ' ' <"$dir/upgrade-domain.txt")"
        grep -q "refused" "$dir/upgrade-domain.txt" && grep -q "healing" "$dir/upgrade-domain.txt" ||
            fail "upgrade-domain during healing does not say refused ... healing: $(tr '\n' ' ' <"$dir/upgrade-domain.txt")"
        facility_exec "$fdir" timeout 240 "${FA[@]}" service upgrade-domain web --domain 1 --to v2 --force >"$dir/upgrade-domain-force.txt" 2>&1 &
        rb_bg_pids="${rb_bg_pids:-} $!"
        rb_force_pid=$!
    fi

    # The healed VMs: web-0 (domain 0, done) on v2, web-2 (domain 2, not
    # reached) on v1 with its data; each asked through its own httpd.
    local w0 w2 v0 v2 reached s t_h0='' t_h2=''
    until=$((SECONDS + 150))
    while ((SECONDS < until)) && [[ -z $t_h0 || -z $t_h2 ]]; do
        [[ -z $t_h0 ]] && rb_wait_state web-0 "^n[23]:Running$" 0 && t_h0=$(rb_now)
        [[ -z $t_h2 ]] && rb_wait_state web-2 "^n[23]:Running$" 0 && t_h2=$(rb_now)
        sleep 0.5
    done
    [[ -n $t_h0 && -n $t_h2 ]] || { fail "web-0/web-2 not running on n2 or n3 within 150 s of n1's death: web-0 $(rb_vm_field web-0 node) $(rb_vm_field web-0 state), web-2 $(rb_vm_field web-2 node) $(rb_vm_field web-2 state)"; return; }
    w0=$(rb_node_of web-0) w2=$(rb_node_of web-2)
    echo "runbook-rolling: n1 killed -> web-0 running on n$w0 after $(rb_secs "$t_kill" "$t_h0") s, web-2 on n$w2 after $(rb_secs "$t_kill" "$t_h2") s" >>"$dir/figures.txt"
    fleet_ctl service status web >"$dir/service-status-healed.txt" 2>&1
    # What the controller planned for each (its log: "heal planned: VM
    # from n1 to nX ..., version vN"), and whether the rollout had already
    # reached domain 2 when healing began (then domain 2 is "being
    # upgraded" and v2 is right for web-2: the case this scenario is after,
    # a domain not yet reached, did not happen).
    local plan0 plan2 early=0 pl ul
    plan0=$(sed -n 's/.*heal planned: web-0 from n1 .*version \(v[0-9]*\).*/\1/p' "$dir/serve.log" | head -1)
    plan2=$(sed -n 's/.*heal planned: web-2 from n1 .*version \(v[0-9]*\).*/\1/p' "$dir/serve.log" | head -1)
    pl=$(grep -Enm1 "^rollout web( v1 -> v2)?: paused" "$dir/upgrade.txt" | cut -d: -f1)
    # (Once domain 1 is healthy the rollout's position is domain 2.)
    ul=$(grep -Enm1 "domain 1 healthy in|domain 2: upgrading web-2" "$dir/upgrade.txt" | cut -d: -f1)
    [[ -n $ul && -n $pl ]] && ((ul < pl)) && early=1
    echo "runbook-rolling: controller: $(grep -m1 "node n1 declared dead" "$dir/serve.log" | sed 's/^\[ *[0-9.]*s\] //'); heal planned web-0 ${plan0:-?}, web-2 ${plan2:-?}; rollout at domain 2 before healing: $( ((early)) && echo yes || echo no)" >>"$dir/figures.txt"
    if ((early)); then
        fail "premise not met: domain 1 was done (the rollout at domain 2) before n1 was declared dead ($(grep -m1 "node n1 declared dead" "$dir/serve.log" | sed 's/^\[ *[0-9.]*s\] //'); domain 1 took $(sed -n 's/.*domain 1 healthy in \([0-9.]*s\).*/\1/p' "$dir/upgrade.txt")): a healed VM of a domain not yet reached was not seen"
    else
        [[ $plan2 == v1 ]] || fail "healing planned web-2 (domain 2, not yet reached) at version '${plan2:-?}', not v1"
    fi
    [[ $plan0 == v2 ]] || fail "healing planned web-0 (domain 0, upgraded) at version '${plan0:-?}', not v2"
    # What each healed VM runs: its own console line at boot, its httpd.
    rb_wait_agent "$w2" web-2 150 || fail "healed web-2's agent on n$w2 did not answer within 150 s"
    v2=$(rb_version "$w2" web-2)
    reached=0
    grep -q "domain 2: upgrading web-2" "$dir/upgrade.txt" && ((!early)) && reached=1
    n=$(rb_boot_versions "$w2" web-2)
    [[ -n $plan2 && ${n%% *} == "$plan2" ]] ||
        fail "healed web-2's first boot on n$w2 said version '${n%% *}' on its console, but healing planned '${plan2:-?}' (boots there: $n)"
    if ((!early && !reached)); then
        [[ $v2 == "${plan2:-v1}" ]] || fail "healed web-2 reports '$v2' through its httpd before the rollout reached its domain, not ${plan2:-v1}"
    fi
    grep -Eq "^vm web-2 domain 2 version ${plan2:-v1} on n$w2 " "$dir/service-status-healed.txt" ||
        fail "service status right after healing: $(grep '^vm web-2' "$dir/service-status-healed.txt")"
    s=$(rb_read_sum "$w2" web-2)
    [[ $s == "$(cat "$dir/web-2.sha256")" ]] || fail "healed web-2's data: sha256 '$s', not $(cat "$dir/web-2.sha256")"
    rb_wait_agent "$w0" web-0 150 || fail "healed web-0's agent on n$w0 did not answer within 150 s"
    v0=$(rb_version "$w0" web-0)
    [[ $v0 == v2 ]] || fail "healed web-0 (domain 0, already upgraded) reports '$v0' through its httpd, not v2 (the facility says $(grep '^vm web-0' "$dir/service-status-healed.txt"))"
    n=$(rb_boot_versions "$w0" web-0)
    [[ ${n%% *} == v2 ]] || fail "healed web-0's first boot on n$w0 said version '${n%% *}' on its console, not v2"
    s=$(rb_read_sum "$w0" web-0)
    [[ $s == "$(cat "$dir/web-0.sha256")" ]] || fail "healed web-0's data: sha256 '$s', not $(cat "$dir/web-0.sha256")"
    echo "runbook-rolling: right after healing: web-0 says $v0 (httpd; console at boot: $(rb_boot_versions "$w0" web-0)), web-2 says ${v2:-nothing} (httpd; console at boot: $(rb_boot_versions "$w2" web-2); the rollout had $( ((reached || early)) && echo "already" || echo "not yet") reached domain 2); the facility says: $(grep -E '^vm web-[02]' "$dir/service-status-healed.txt" | tr '\n' ';')" >>"$dir/figures.txt"

    # The rollout resumes and finishes.
    wait "$rb_up_pid"
    rc=$?
    rb_up_pid=''
    ((rc == 0)) || fail "service upgrade exited $rc: $(tail -2 "$dir/upgrade.txt" | tr '\n' ' ')"
    local log=$dir/upgrade.txt
    want "^rollout web v1 -> v2: domain 0: upgrading web-0"
    want "^rollout web v1 -> v2: domain 0 healthy in [0-9.]+s"
    want "^rollout web v1 -> v2: domain 1 healthy in [0-9.]+s"
    want "^rollout web v1 -> v2: domain 2: upgrading web-2"
    want "^rollout web v1 -> v2: domain 2 healthy in [0-9.]+s"
    # (The contract's words; the lines the command printed instead, if any,
    # are in contract.txt.)
    want "^rollout web( v1 -> v2)?: paused: web-[02] is being healed"
    want "^rollout web( v1 -> v2)?: resumed"
    want "^rollout web v1 -> v2:? done in [0-9.]+s"
    rb_contract upgrade "^rollout web: paused: web-[02] is being healed$" "paused: web-[02] is being healed"
    rb_contract upgrade "^rollout web: resumed$" "resumed"
    rb_contract upgrade "^rollout web v1 -> v2 done in [0-9.]+s$" "done"
    sed -n 's/^rollout web v1 -> v2: \(domain [0-9] healthy in [0-9.]*s\)$/runbook-rolling: \1/p; s/^rollout web v1 -> v2:\{0,1\} \(done in [0-9.]*s\)$/runbook-rolling: rollout \1/p' "$dir/upgrade.txt" >>"$dir/figures.txt"
    echo "runbook-rolling: rollout wall time from the command's start: $(rb_secs "$t_up") s" >>"$dir/figures.txt"
    [[ -n ${rb_force_pid:-} ]] && { wait "$rb_force_pid"; rc=$?; ((rc == 0)) || fail "the forced upgrade-domain exited $rc: $(tr '\n' ' ' <"$dir/upgrade-domain-force.txt")"; }
    fleet_ctl audit >"$dir/facility-audit.txt" 2>&1
    grep -i "force" "$dir/facility-audit.txt" | grep -q "web" ||
        fail "the facility audit log has no forced upgrade-domain of web: $(tail -3 "$dir/facility-audit.txt" | tr '\n' ';')"
    # Every VM on v2, through its own httpd; web-2's data carried.
    for w in web-0 web-1 web-2; do
        n=$(rb_node_of "$w")
        rb_wait_agent "$n" "$w" 150 || { fail "$w's agent on n$n did not answer after the rollout"; continue; }
        v=$(rb_version "$n" "$w")
        [[ $v == v2 ]] || fail "after the rollout $w (on n$n) reports '$v', not v2"
    done
    s=$(rb_read_sum "$(rb_node_of web-2)" web-2)
    [[ $s == "$(cat "$dir/web-2.sha256")" ]] || fail "web-2's data after its upgrade: sha256 '$s', not $(cat "$dir/web-2.sha256")"
    fleet_ctl service status web >"$dir/service-status-after.txt" 2>&1
    for w in web-0 web-1 web-2; do
        grep -Eq "^vm $w domain [0-2] version v2 on n[23] Running" "$dir/service-status-after.txt" ||
            fail "service status after the rollout: $(grep "^vm $w" "$dir/service-status-after.txt")"
    done
}

check_runbook() { :; }
