# A fleet of nodes end to end (QEMU TCG), sourced by tests/e2e/run.sh: the
# `fleet-…` scenarios. Each starts three BMonitor nodes on one L2 segment
# in a network namespace (scripts/facility.sh: bridge, taps, dnsmasq with
# the reservations `bmctl facility reserve` writes, swtpm per node) and the
# facility controller (`bmctl facility serve`), then breaks something and
# checks what the nodes' serial logs and the controller say. They run one
# at a time, after the other scenarios (three emulators at once), and
# write what they measured to figures.txt.

source "$ROOT/scripts/facility.sh"

# fleet_setup [etcd]: facility up with three nodes enrolled; sets fdir
# (facility), B (bmctl), FA (bmctl facility ... with the store), TA/TB
# (tenant console keys) and fleet_node_ip.
fleet_setup() {
    B="$TARGET_DIR/release/bmctl"
    fdir=$dir/facility
    export BMCTL_CONFIG_DIR=$dir/bmctl
    rm -rf "$fdir" "$dir/bmctl" "$dir/img" "$dir/state.json" "$dir"/serve*.log
    mkdir -p "$fdir" "$dir/img"
    cp "$TARGET_DIR/x86_64-unknown-none/release/diskprobe" "$TARGET_DIR/x86_64-unknown-none/release/netprobe" "$dir/img/"
    local kl
    kl=$(fleet_key landlord) && TA=$(fleet_key tenant-a) && TB=$(fleet_key tenant-b) || { fail "bmctl keygen failed"; return 1; }
    facility_bundles "$fdir" "$dir/bundles" 3 "$kl" "$ROOT/tests/e2e/fleet/fleet-node.toml" || { fail "node bundles failed"; return 1; }
    local i
    for i in 1 2 3; do
        "$B" facility reserve "n$i" --mac "$(facility_node_mac "$i")" --ip "10.77.0.1$i" --hosts "$fdir/dhcp-hosts" >/dev/null ||
            { fail "bmctl facility reserve n$i failed"; return 1; }
    done
    facility_up "$fdir" 3 "$dir/bundles" --wait 150 >"$dir/up.out" 2>&1 || { fail "facility up failed: $(tail -3 "$dir/up.out")"; return 1; }
    if [[ ${1:-} == etcd ]]; then
        facility_etcd_up "$fdir" >"$dir/etcd-up.out" 2>&1 || { fail "etcd cluster did not start: $(tail -2 "$dir/etcd-up.out")"; return 1; }
        FA=("$B" facility --etcd "$(facility_etcd_endpoints "$fdir")" --key landlord --images "$dir/img")
    else
        FA=("$B" facility --store "$dir/state.json" --key landlord --images "$dir/img")
    fi
    for i in 1 2 3; do
        cp /dev/null "$dir/n$i.serial" 2>/dev/null
        grep -q "DHCP lease 10\.77\.0\.1$i/" "$fdir/node$i.log" || { fail "n$i did not get its reserved address 10.77.0.1$i: $(grep -m1 'DHCP lease' "$fdir/node$i.log")"; return 1; }
        fleet_ctl node add "n$i" --addr "10.77.0.1$i:7700" --node-key "$(facility_node_key "$fdir" "$i")" \
            --vcpus 4 --memory 300 --disk 100 >>"$dir/ops.log" 2>&1 || { fail "node add n$i failed: $(tail -1 "$dir/ops.log")"; return 1; }
    done
}

fleet_key() { "$B" --json keygen "$1" | sed -n 's/.*"public_key": *"\([0-9a-f]*\)".*/\1/p'; }
# fleet_ctl ARGS...: a bmctl facility command inside the namespace.
fleet_ctl() { facility_exec "$fdir" timeout 180 "${FA[@]}" "$@"; }
# fleet_serve LOG [ARGS...]: the controller in the background; sets serve_pid.
fleet_serve() {
    local log=$1
    shift
    facility_exec "$fdir" "${FA[@]}" serve "$@" >"$log" 2>&1 &
    serve_pid=$!
}
fleet_nlog() { echo "$fdir/node$1.log"; }
# fleet_where VM: the node (1..3) whose log last started VM.
fleet_where() {
    local i best='' n
    for i in 1 2 3; do
        n=$(grep -ac "^\[$1\] .* start" "$(fleet_nlog "$i")")
        ((n > 0)) && best=$i
    done
    echo "$best"
}
fleet_stop_all() {
    [[ -n ${serve_pids:-} ]] && kill $serve_pids 2>/dev/null
    pkill -f "bmctl facility .*serve" 2>/dev/null
    facility_down "$fdir" >/dev/null 2>&1
    for i in 1 2 3; do [[ -f $(fleet_nlog "$i") ]] && tr -d '\r' <"$(fleet_nlog "$i")" >"$dir/n$i.serial"; done
    cat "$dir"/n?.serial >"$dir/serial.log" 2>/dev/null
    unset BMCTL_CONFIG_DIR
}
# Seconds since the epoch, with milliseconds.
fleet_now() { date +%s.%3N; }
fleet_ms() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%d", (b - a) * 1000 }'; }

# Tenant A's cluster 1 leased on every node, and A approving the three
# nodes as replica partners on each (its consent: a node seals a disk's key
# only for a partner the tenant named).
fleet_tenant_a() {
    fleet_ctl lease --tenant-key "$TA" --cluster 1 >"$dir/lease-a.txt" 2>>"$dir/ops.log" ||
        { fail "facility lease for tenant A failed: $(tail -2 "$dir/ops.log")"; return 1; }
    local keys node addr lease ut
    keys=$(awk '{print $8}' "$dir/lease-a.txt" | tr '\n' ' ')
    while read -r node addr _ lease _ ut _; do
        "$B" profile add "ta-$node" --node "$addr" --node-key "$ut" --role "tenant:$lease" --key tenant-a >>"$dir/ops.log" 2>&1 &&
            # shellcheck disable=SC2086
            facility_exec "$fdir" timeout 60 "$B" -p "ta-$node" tenant replica-partners $keys >>"$dir/ops.log" 2>&1 ||
            { fail "tenant A could not approve its replica partners on $node: $(tail -2 "$dir/ops.log")"; return 1; }
    done <"$dir/lease-a.txt"
    [[ $(wc -l <"$dir/lease-a.txt") == 3 ]] || { fail "facility lease listed $(wc -l <"$dir/lease-a.txt") nodes, not 3"; return 1; }
}

# The protected database and a web server of tenant A on n1.
fleet_create_vms() {
    fleet_tenant_a || return 1
    fleet_ctl vm create db --tenant a --tenant-key "$TA" --cluster 1 --image diskprobe \
        --cmdline "role=fleet seed=7 sectors=256 stream_sectors=64 pause_ms=250" --memory 16 --disk 8 --protected --on n1 \
        >>"$dir/ops.log" 2>&1 || { fail "vm create db failed: $(tail -2 "$dir/ops.log")"; return 1; }
    fleet_ctl vm create web --tenant a --tenant-key "$TA" --cluster 1 --image netprobe \
        --cmdline "role=server ip=10.1.0.10/16 duration_ms=100000000" --memory 16 --ip 10.1.0.10 --on n1 \
        >>"$dir/ops.log" 2>&1 || { fail "vm create web failed: $(tail -2 "$dir/ops.log")"; return 1; }
    wait_log "$(fleet_nlog 1)" "^\[db\] diskprobe fleet: fresh 256 sectors" 60
    db_sum=$(tr -d '\r' <"$(fleet_nlog 1)" | sed -n 's/^\[db\] diskprobe fleet: fresh 256 sectors seed=7 sum=\([0-9a-f]*\)$/\1/p' | head -1)
    [[ -n $db_sum ]] || { fail "db did not write its data on n1: $(grep -a '^\[db\]' "$(fleet_nlog 1)" | tail -1)"; return 1; }
    wait_log "$(fleet_nlog 1)" "^\[web\] netprobe server ready" 60
}

# fleet_wait_synced LOG SECS: until the controller reports db's replica
# caught up (no block pending).
fleet_wait_synced() {
    local until=$((SECONDS + $2))
    until grep -q "^replication lag db: 0 block(s) pending" "$1" || ((SECONDS > until)); do sleep 0.5; done
    grep -q "^replication lag db: 0 block(s) pending" "$1"
}

# fleet_probe NAME CLUSTER TENANT_KEY IP NODE CHECKS: a netprobe client VM
# placed on NODE; waits for its verdict line.
fleet_probe() {
    local name=$1 cluster=$2 key=$3 ip=$4 node=$5 checks=$6
    fleet_ctl vm create "$name" --tenant t --tenant-key "$key" --cluster "$cluster" --image netprobe \
        --cmdline "role=client ip=$ip/16 checks=$checks timeout_ms=3000" --memory 16 --ip "$ip" --on "n$node" \
        >>"$dir/ops.log" 2>&1 || { fail "vm create $name failed: $(tail -2 "$dir/ops.log")"; return 1; }
    wait_log "$(fleet_nlog "$node")" "^\[$name\] \(netprobe client done\|FAIL\)" 120
}

# --- fleet-heal: a node dies; its VMs run elsewhere ------------------------
run_fleet_heal() {
    fleet_setup || { fleet_stop_all; return; }
    fleet_serve "$dir/serve.log"
    serve_pids=$serve_pid
    fleet_create_vms || { fleet_stop_all; return; }
    local mac_before
    mac_before=$(tr -d '\r' <"$(fleet_nlog 1)" | sed -n 's/^\[web\] netprobe server start ip=10\.1\.0\.10\/16 mac=\([0-9a-f:]*\)$/\1/p' | head -1)
    fleet_wait_synced "$dir/serve.log" 120 || { fail "db's replica did not catch up within 120 s: $(grep '^replication lag db' "$dir/serve.log" | tail -1)"; fleet_stop_all; return; }
    sleep 3 # the steady write load goes on
    local t_kill t_run last_pass
    t_kill=$(fleet_now)
    facility_node_kill "$fdir" 1
    last_pass=$(grep -a "^\[db\] diskprobe stream pass" "$(fleet_nlog 1)" | tail -1 | tr -d '\r' | awk '{print $5}')
    local healed='' i until=$((SECONDS + 90))
    while [[ -z $healed ]] && ((SECONDS < until)); do
        for i in 2 3; do
            grep -aq "^\[db\] diskprobe fleet: intact" "$(fleet_nlog "$i")" && healed=$i
        done
        sleep 0.1
    done
    t_run=$(fleet_now)
    [[ -n $healed ]] || { fail "db did not run again on n2 or n3 within 90 s of n1's death (controller: $(tail -2 "$dir/serve.log" | tr '\n' ' '))"; fleet_stop_all; return; }
    wait_log "$dir/serve.log" "healed web on" 60
    local web_at
    web_at=$(grep -o "healed web on n[0-9]" "$dir/serve.log" | tail -1 | grep -o "[0-9]$")
    [[ -n $web_at ]] && wait_log "$(fleet_nlog "$web_at")" "^\[web\] netprobe server ready" 60
    # Intra-cluster across nodes works; a cross-cluster probe is dropped.
    local other=2
    [[ $web_at == 2 ]] && other=3
    fleet_probe peer 1 "$TA" 10.1.0.20 "$other" "ping:10.1.0.10:ok,tcp:10.1.0.10:80:ok"
    fleet_probe cross 2 "$TB" 10.1.0.30 "$other" "ping:10.1.0.10:blocked,tcp:10.1.0.10:80:blocked"
    sleep 1
    fleet_ctl status >"$dir/status.txt" 2>&1
    fleet_stop_all
    # What the figures say.
    local stream_pass unread
    stream_pass=$(sed -n 's/^\[db\] diskprobe fleet: stream region at pass \([0-9]*\) .*/\1/p' "$dir/n$healed.serial" | tail -1)
    unread=$(sed -n 's/^\[db\] diskprobe fleet: stream region at pass [0-9]* (.*, \([0-9]*\) unreadable)/\1/p' "$dir/n$healed.serial" | tail -1)
    {
        echo "fleet-heal: detection bound (interval 1000 ms x 5 misses + 1000 ms probe): 6000 ms"
        echo "fleet-heal: n1 killed -> db running on n$healed with its data checked: $(fleet_ms "$t_kill" "$t_run") ms (below: n1's silence when declared dead, and each heal from plan to started)"
        grep -h "declared dead\|healed \|reprogrammed" "$dir/serve.log" | sed 's/^/fleet-heal: controller: /'
        echo "fleet-heal: replication: last stream pass written on n1 $last_pass, found on the replica ${stream_pass:-?} (a pass every ~0.3 s), ${unread:-?} of 64 stream sectors unreadable"
        grep -h "^replication lag" "$dir/serve.log" | head -3 | sed 's/^/fleet-heal: initial copy: /'
    } >"$dir/figures.txt"
    local mac_after
    mac_after=$(sed -n 's/^\[web\] netprobe server start ip=10\.1\.0\.10\/16 mac=\([0-9a-f:]*\)$/\1/p' "$dir/n${web_at:-0}.serial" 2>/dev/null | tail -1)
    heal_checks "$healed" "$web_at" "$mac_before" "$mac_after"
}

heal_checks() {
    local healed=$1 web_at=$2 mac_before=$3 mac_after=$4 log
    log=$dir/serve.log
    want "node n1 declared dead: [0-9]+ heartbeats missed"
    want "healed db on n$healed from n1 in [0-9]+ms \(epoch 2\)"
    want "filters \([0-9]+ clusters\) reprogrammed on 2 nodes in [0-9]+ms"
    log=$dir/n$healed.serial
    want "^\[db\] diskprobe fleet: intact 256 sectors seed=7 sum=$db_sum$"
    refuse "^\[db\] FAIL"
    # Bounded lag: the replica held one of the last passes n1 wrote (a pass
    # every ~0.3 s; 10 passes is 3 s, three replication rounds).
    local at_kill found
    at_kill=$(grep "^\[db\] diskprobe stream pass" "$dir/n1.serial" | tail -1 | awk '{print $5}')
    found=$(sed -n 's/^\[db\] diskprobe fleet: stream region at pass \([0-9]*\) .*/\1/p' "$log" | tail -1)
    [[ -n $at_kill && -n $found ]] && ((at_kill - found <= 10)) ||
        fail "replication lag: n1 wrote pass ${at_kill:-?} last, the replica held pass ${found:-?} (more than 10 behind)"
    [[ -n $web_at && $web_at != 1 ]] || fail "web was not healed on n2 or n3"
    [[ -n $mac_before && $mac_before == "$mac_after" ]] || fail "web's MAC changed across healing: ${mac_before:-none} -> ${mac_after:-none}"
    local other=2
    [[ $web_at == 2 ]] && other=3
    log=$dir/n$other.serial
    want "^\[peer\] check ping:10\.1\.0\.10:ok: ok ok$"
    want "^\[peer\] check tcp:10\.1\.0\.10:80:ok: ok ok$"
    want "^\[cross\] check ping:10\.1\.0\.10:blocked: blocked ok$"
    want "^\[cross\] check tcp:10\.1\.0\.10:80:blocked: blocked ok$"
    log=$dir/serial.log
    no_hypervisor_fault
    # Each VM runs once: db started twice in all (n1, then its healed copy).
    local starts
    starts=$(grep -ac "^\[db\] diskprobe fleet start" "$dir/serial.log")
    ((starts == 2)) || fail "db started $starts times across the nodes (want 2: on n1, then once healed)"
}

# --- fleet-partition: a node is cut off; it fences itself and rejoins ------
run_fleet_partition() {
    fleet_setup || { fleet_stop_all; return; }
    fleet_serve "$dir/serve.log"
    serve_pids=$serve_pid
    fleet_create_vms || { fleet_stop_all; return; }
    fleet_wait_synced "$dir/serve.log" 120 || { fail "db's replica did not catch up within 120 s"; fleet_stop_all; return; }
    local t_cut t_fenced t_other healed="" i moved=""
    t_cut=$(fleet_now)
    facility_partition "$fdir" 1
    wait_log "$(fleet_nlog 1)" "^fleet: no heartbeat from the facility controller within the fencing lease: protected VM db stopped" 30
    t_fenced=$(fleet_now)
    local until=$((SECONDS + 90))
    while [[ -z $healed ]] && ((SECONDS < until)); do
        for i in 2 3; do grep -aq "^\[db\] diskprobe fleet start" "$(fleet_nlog "$i")" && healed=$i; done
        sleep 0.1
    done
    t_other=$(fleet_now)
    [[ -n $healed ]] && wait_log "$(fleet_nlog "$healed")" "^\[db\] diskprobe fleet: intact" 60
    # The partition heals: n1 hears the controller again.
    sleep 2
    facility_heal "$fdir" 1
    wait_log "$dir/serve.log" "node n1 rejoined" 60
    sleep 3
    # Lifecycle: drain the node db healed on (a move: copied while it
    # runs, stopped, copied to the end, fenced, promoted, started), then
    # remove it.
    fleet_ctl node drain "n$healed" >>"$dir/ops.log" 2>&1 || fail "node drain n$healed failed: $(tail -2 "$dir/ops.log")"
    wait_log "$dir/serve.log" "node n$healed drained" 120
    fleet_ctl node remove "n$healed" >>"$dir/ops.log" 2>&1 || fail "node remove n$healed failed: $(tail -2 "$dir/ops.log")"
    moved=$(grep -o "moved db on n[0-9] from n$healed" "$dir/serve.log" | tail -1 | cut -c14)
    [[ -n $moved ]] && wait_log "$(fleet_nlog "$moved")" "^\[db\] diskprobe fleet: intact" 60
    fleet_ctl status >"$dir/status.txt" 2>&1
    fleet_stop_all
    {
        echo "fleet-partition: n1 cut off -> its db stopped itself after $(fleet_ms "$t_cut" "$t_fenced") ms (fencing lease 3000 ms)"
        echo "fleet-partition: n1 cut off -> db started on n${healed:-?} after $(fleet_ms "$t_cut" "$t_other") ms"
        grep -h "declared dead\|healed \|rejoin\|fenced\|destroy\|drain\|moved \|removed" "$dir/serve.log" | sed 's/^/fleet-partition: controller: /'
    } >"$dir/figures.txt"
    local log=$dir/serve.log
    want "node n1 declared dead"
    want "healed db on n$healed from n1 in [0-9]+ms \(epoch 2\)"
    want "node n1 rejoined after [0-9.]+s dead: fenced [1-9][0-9]* stale copies"
    want "fenced stale copy of db on n1 \(epoch 1 < 2"
    [[ -n $healed ]] || fail "db did not start on n2 or n3 while n1 was cut off"
    awk -v a="$t_fenced" -v b="$t_other" 'BEGIN { exit !(a < b) }' ||
        fail "db started elsewhere before n1's copy had stopped itself (double writer)"
    log=$dir/n1.serial
    # After its copy stopped, n1 never wrote for db again, and never ran
    # it again after rejoining.
    local fence_line last_write
    fence_line=$(grep -an "^fleet: no heartbeat .*protected VM db stopped" "$log" | head -1 | cut -d: -f1)
    last_write=$(grep -an "^\[db\] diskprobe stream pass" "$log" | tail -1 | cut -d: -f1)
    [[ -n $fence_line && -n $last_write ]] && ((last_write < fence_line)) ||
        fail "n1's db wrote after it was fenced (last write line ${last_write:-none}, fence line ${fence_line:-none})"
    local starts_n1
    starts_n1=$(grep -ac "^\[db\] diskprobe fleet start" "$log")
    ((starts_n1 == 1)) || fail "db started $starts_n1 times on n1 (want 1: a rejoining node runs no second copy)"
    want "^mgmt: landlord fence-vm: ok$"
    log=$dir/n$healed.serial
    want "^\[db\] diskprobe fleet: intact 256 sectors seed=7 sum=$db_sum$"
    # The drain moved db with all of its disk (the final copy is taken with
    # the VM stopped: nothing unreadable), and n$healed left the facility.
    log=$dir/ops.log
    want "^draining n$healed: [1-9][0-9]* VM\(s\) to move"
    want "^node n$healed removed$"
    log=$dir/serve.log
    want "moved db on n[0-9] from n$healed in [0-9]+ms \(epoch 3\)"
    want "node n$healed drained"
    if [[ -n ${moved:-} ]]; then
        log=$dir/n$moved.serial
        want "^\[db\] diskprobe fleet: intact 256 sectors seed=7 sum=$db_sum$"
        want "^\[db\] diskprobe fleet: stream region at pass [0-9]+ \(64 of 64 sectors written, 0 unreadable\)$"
    else
        fail "db was not moved off n$healed"
    fi
    grep -q "^node n$healed .* Removed" "$dir/status.txt" || fail "status does not list n$healed as removed: $(grep "^node n$healed" "$dir/status.txt")"
    grep -q "^vm db on n${moved:-?} .*epoch 3 Running" "$dir/status.txt" || fail "status: $(grep '^vm db' "$dir/status.txt")"
    log=$dir/serial.log
    no_hypervisor_fault
}

# --- fleet-etcd: three controllers on etcd; the leader dies mid-healing ----
run_fleet_etcd() {
    fleet_setup etcd || { fleet_stop_all; return; }
    # c1 leads first and crashes after 1 step of healing (fault injection:
    # exits without resigning); c2 and c3 wait for its lease to run out.
    local k leader=1
    fleet_serve "$dir/serve1.log" --id c1 --leader-ttl 3 --crash-after-steps 1
    serve_pids=$serve_pid
    wait_log "$dir/serve1.log" "became leader" 30
    grep -q "became leader" "$dir/serve1.log" || { fail "c1 did not become leader: $(tail -2 "$dir/serve1.log")"; fleet_stop_all; return; }
    for k in 2 3; do
        fleet_serve "$dir/serve$k.log" --id "c$k" --leader-ttl 3
        serve_pids="$serve_pids $serve_pid"
    done
    fleet_create_vms || { fleet_stop_all; return; }
    local until
    until=$((SECONDS + 150))
    until grep -q "^replication lag db: 0 block(s) pending" "$dir/serve$leader.log" || ((SECONDS > until)); do sleep 0.5; done
    local t_kill
    t_kill=$(fleet_now)
    facility_node_kill "$fdir" 1
    wait_log "$dir/serve1.log" "crashing on purpose" 60
    local next='' healed='' i
    until=$((SECONDS + 120))
    while [[ -z $healed ]] && ((SECONDS < until)); do
        for i in 2 3; do grep -aq "^\[db\] diskprobe fleet: intact" "$(fleet_nlog "$i")" && healed=$i; done
        sleep 0.2
    done
    local t_run
    t_run=$(fleet_now)
    for k in 1 2 3; do ((k != leader)) && grep -q "became leader" "$dir/serve$k.log" && next=$k; done
    wait_log "$(fleet_nlog 2)" "^\[web\] netprobe server ready" 30
    wait_log "$(fleet_nlog 3)" "^\[web\] netprobe server ready" 1
    sleep 5
    fleet_ctl status >"$dir/status.txt" 2>&1
    fleet_stop_all
    {
        echo "fleet-etcd: leader c1 crashed 1 step into healing (db promoted, not started); c${next:-?} took over"
        echo "fleet-etcd: n1 killed -> db running on n${healed:-?}: $(fleet_ms "$t_kill" "$t_run") ms"
        grep -H "became leader\|declared dead\|healed \|reprogrammed\|crashing" "$dir"/serve?.log | sed "s|^$dir/||; s/^/fleet-etcd: /"
    } >"$dir/figures.txt"
    [[ -n $next ]] || fail "no other controller became leader after c1 crashed"
    [[ -n $healed ]] || fail "db did not run again on n2 or n3 within 120 s"
    local log=$dir/serve1.log
    want "node n1 declared dead"
    want "crashing on purpose"
    refuse "healed db on"
    log=$dir/serve${next:-1}.log
    want "became leader: [1-9][0-9]* unfinished intents"
    want "healed db on n$healed from n1"
    log=$dir/serial.log
    no_hypervisor_fault
    local starts
    # Once healed: on n2 or n3 each VM starts exactly once.
    starts=$(cat "$dir/n2.serial" "$dir/n3.serial" | grep -ac "^\[db\] diskprobe fleet start")
    ((starts == 1)) || fail "db started $starts times on n2 and n3 (want 1: healed once)"
    starts=$(cat "$dir/n2.serial" "$dir/n3.serial" | grep -ac "^\[web\] netprobe server start")
    ((starts == 1)) || fail "web started $starts times on n2 and n3 (want 1: healed once)"
    log=$dir/n$healed.serial
    want "^\[db\] diskprobe fleet: intact 256 sectors seed=7 sum=$db_sum$"
    grep -q "^vm db on n$healed .*epoch 2 Running" "$dir/status.txt" || fail "status does not show db running on n$healed at epoch 2: $(grep '^vm db' "$dir/status.txt")"
    grep -q "^intent" "$dir/status.txt" && fail "unfinished intents left: $(grep '^intent' "$dir/status.txt" | tr '\n' ' ')"
}

check_fleet() { :; }
