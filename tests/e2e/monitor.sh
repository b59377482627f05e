# Monitoring end to end (QEMU TCG), sourced by tests/e2e/run.sh: the
# `monitor-…` scenarios. Each runs `bmctl watch` for the consoles involved
# and checks what they see (events, /metrics, /api/state, the dashboard in
# headless Chromium, notify commands), and writes the measured detection-
# to-action times to figures.txt.

# mon_setup NODE_TOML: boots a node (uplink, disk, QEMU monitor socket),
# creates leases A (cluster 1) and B (cluster 2) and the profiles ll, ta, tb.
mon_setup() {
    B="$TARGET_DIR/release/bmctl"
    port=$(mon_free_port)
    export BMCTL_CONFIG_DIR=$dir/bmctl
    local kl ka kb la lb nk
    kl=$(mon_key landlord) && ka=$(mon_key tenant-a) && kb=$(mon_key tenant-b) || { fail "bmctl keygen failed"; return 1; }
    sed -e "s|\.\./\.\./target|$ROOT/target|" -e "s|LANDLORD_KEY|$kl|" "$1" >"$dir/node.toml"
    "$BMIMAGE" bundle --config "$dir/node.toml" --out "$dir/node.bundle" 2>>"$dir/bmimage.err" || { fail "bmimage rejected $1"; return 1; }
    rm -f "$dir/node.img" "$dir/qemu.mon"
    truncate -s 256M "$dir/node.img"
    BM_QEMU_MEM=${MONITOR_QEMU_MEM:-1024} BM_DISK_IMAGE=$dir/node.img BM_MGMT_PORT=$port BM_QEMU_MONITOR=$dir/qemu.mon \
        boot_engine qemu-tcg-net-disk "$dir/node.bundle" "$dir/serial.log" "$BOOT_TIMEOUT" &
    boot=$!
    wait_log "$dir/serial.log" "staying up" 90
    nk=$(grep -o "landlord node key [0-9a-f]*" "$dir/serial.log" | awk '{print $4}')
    [[ -n $nk ]] || { fail "the node did not come up: $(tail -1 "$dir/serial.log")"; kill "$boot" 2>/dev/null; wait "$boot"; return 1; }
    mon_bm profile add ll --node "127.0.0.1:$port" --node-key "$nk" --role landlord --key landlord >/dev/null
    la=$(mon_bm -p ll --json landlord lease create --tenant-key "$ka" --cluster 1) || { fail "lease create (a) failed: $la"; return 1; }
    lb=$(mon_bm -p ll --json landlord lease create --tenant-key "$kb" --cluster 2) || { fail "lease create (b) failed: $lb"; return 1; }
    lease_a=$(mon_jget "$la" lease) lease_b=$(mon_jget "$lb" lease)
    mon_bm profile add ta --node "127.0.0.1:$port" --node-key "$(mon_jget "$la" tenant_node_key)" --role "tenant:$lease_a" --key tenant-a >/dev/null
    mon_bm profile add tb --node "127.0.0.1:$port" --node-key "$(mon_jget "$lb" tenant_node_key)" --role "tenant:$lease_b" --key tenant-b >/dev/null
    : >"$dir/figures.txt"
}
mon_bm() { BMCTL_TIMEOUT=30 timeout 200 "$B" "$@"; }
# A free TCP port below the ephemeral range (scripts/lib.sh).
mon_free_port() { free_port; }
mon_key() { mon_bm --json keygen "$1" | python3 -c 'import sys, json; print(json.load(sys.stdin)["public_key"])'; }
mon_jget() { python3 -c 'import sys, json; print(json.loads(sys.argv[1])[sys.argv[2]])' "$1" "$2" 2>/dev/null; }
# mon_watch NAME PROFILE HTTP_PORT [ARGS...]: a watch in the background,
# JSON events to NAME.jsonl; its pid in watch_pids.
mon_watch() {
    local name=$1 profile=$2 hport=$3
    shift 3
    BMCTL_TIMEOUT=10 timeout 900 "$B" --json watch "$profile" --interval-ms 1000 --listen "127.0.0.1:$hport" --for 800 "$@" \
        >"$dir/$name.jsonl" 2>"$dir/$name.err" &
    watch_pids+=($!)
}
# mon_wait_event FILE SECONDS PYTHON-CONDITION-ON-e: until a JSON line of
# FILE satisfies the condition; prints that line.
mon_wait_event() {
    python3 - "$@" <<'EOF'
import json, sys, time
path, secs, cond = sys.argv[1], float(sys.argv[2]), sys.argv[3]
end = time.time() + secs
while time.time() < end:
    try:
        lines = open(path).read().splitlines()
    except OSError:
        lines = []
    for l in lines:
        try:
            e = json.loads(l)
        except ValueError:
            continue
        if eval(cond, {}, {"e": e}):
            print(l)
            sys.exit(0)
    time.sleep(0.3)
sys.exit(1)
EOF
}
mon_get() { python3 -c 'import sys, urllib.request; print(urllib.request.urlopen(sys.argv[1], timeout=10).read().decode())' "$1"; }
# mon_metrics URL: the scrape, checked against the text exposition format
# (every sample line is NAME{LABELS} VALUE, every name has a TYPE).
mon_metrics() {
    mon_get "$1" | python3 -c '
import re, sys
text = sys.stdin.read()
types, bad = set(), []
sample = re.compile(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{([a-zA-Z_][a-zA-Z0-9_]*=\"([^\"\\\\]|\\\\.)*\",?)*\})? (-?[0-9.eE+]+|NaN|[+-]Inf)$")
for l in text.splitlines():
    if l.startswith("# TYPE "):
        types.add(l.split()[2])
    elif l.startswith("#") or not l:
        continue
    else:
        m = sample.match(l)
        if not m or m.group(1) not in types:
            bad.append(l)
if bad:
    print("BAD " + bad[0])
print(text)'
}
mon_end() {
    mon_bm -p ll landlord shutdown >/dev/null 2>&1 || fail "landlord shutdown failed"
    wait "$boot"
    local p
    for p in "${watch_pids[@]}"; do kill -TERM "$p" 2>/dev/null; done
    for p in "${watch_pids[@]}"; do wait "$p" 2>/dev/null; done
    unset BMCTL_CONFIG_DIR
}

# monitor-guest-qemu: tenant A's Linux VM with its agent. A's policy
# restarts a killed service through the agent and restarts the VM when its
# agent stops sending heartbeats; A's dashboard shows the VM and the hung
# agent live; tenant B and the landlord see nothing of A's software.
run_monitor_guest() {
    local B port boot lease_a lease_b watch_pids=()
    local K=$ROOT/target/linux/agent
    [[ -s $K/vmlinuz && -s $K/initrd.img ]] || { fail "no agent image in $K: scripts/linux-guest.sh did not build it"; return; }
    mon_setup "$ROOT/tests/e2e/agent.toml" || return
    local hp_a hp_b hp_l
    hp_a=$(mon_free_port) hp_b=$(mon_free_port) hp_l=$(mon_free_port)
    mon_bm -p ll landlord image upload "$K/vmlinuz" --name agent-kernel >"$dir/up.txt" 2>&1 || fail "kernel upload failed: $(tail -1 "$dir/up.txt")"
    mon_bm -p ll landlord image upload "$K/initrd.img" --name agent-initrd >>"$dir/up.txt" 2>&1 || fail "initrd upload failed: $(tail -1 "$dir/up.txt")"
    local out vm
    out=$(mon_bm -p ll --json landlord vm create --lease "$lease_a" --name mon-a1 --image agent-kernel \
        --initrd agent-initrd --memory 320 --cmdline "console=ttyS0" 2>&1) || { fail "vm create failed: $out"; mon_end; return; }
    vm=$(mon_jget "$out" vm)
    cat >"$dir/policy-a.toml" <<EOF
[[rule]]
name = "ticker-down"
when = { service-failing = { service = "ticker", count = 1, window-secs = 60 } }
action = "restart-service"
notify = true
backoff-secs = 0
max-repeats = 5
window-secs = 600

[[rule]]
name = "hung-guest"
when = { heartbeat-missed = { secs = 8 } }
action = "restart-vm"
notify = true
backoff-secs = 0
max-repeats = 2
window-secs = 600
EOF
    mon_bm -p ta tenant policy set --cluster 1 "$dir/policy-a.toml" >"$dir/policy-set.txt" 2>&1 ||
        fail "tenant a could not set its policy: $(tail -1 "$dir/policy-set.txt")"
    mon_bm -p ta tenant policy get --cluster 1 >"$dir/policy-get.txt" 2>&1 || fail "policy get failed: $(tail -1 "$dir/policy-get.txt")"
    grep -q 'name = "hung-guest"' "$dir/policy-get.txt" || fail "policy get does not show the rule: $(head -3 "$dir/policy-get.txt")"
    # A tenant may not reboot the node, nor set another cluster's policy.
    printf '[[rule]]\nname = "x"\nwhen = { vm-stopped-abnormally = {} }\naction = "reboot-node"\n' >"$dir/bad.toml"
    mon_bm -p ta tenant policy set --cluster 1 "$dir/bad.toml" >"$dir/bad.txt" 2>&1 && fail "a tenant policy with reboot-node was accepted"
    mon_bm -p tb tenant policy set --cluster 1 "$dir/policy-a.toml" >"$dir/bad-b.txt" 2>&1 && fail "tenant b set a policy for tenant a's cluster"
    mon_watch watch-a ta "$hp_a" --notify "cat >>'$dir/notify-a.jsonl'"
    mon_watch watch-b tb "$hp_b"
    mon_watch watch-l ll "$hp_l"
    mon_bm -p ta tenant start "$vm" >/dev/null || fail "tenant a could not start its VM"
    local t0=$SECONDS
    mon_bm -p ta tenant agent "$vm" --wait 150 >"$dir/agent.txt" 2>&1 || fail "no agent within 150 s: $(tail -1 "$dir/agent.txt")"
    echo "agent ready $((SECONDS - t0)) s after start" >>"$dir/figures.txt"
    mon_wait_event "$dir/watch-a.jsonl" 20 'e["kind"] == "agent-attached"' >/dev/null || fail "tenant a's watch did not see the agent attach"

    # 1. A service killed inside the guest is restarted by the tenant's policy.
    mon_bm -p ta tenant service "$vm" define ticker --restart never -- sh -c 'while true; do sleep 1; done' >"$dir/svc.txt" 2>&1 ||
        fail "service define failed: $(tail -1 "$dir/svc.txt")"
    mon_wait_event "$dir/watch-a.jsonl" 20 'e["kind"] == "service" and "ticker: started pid" in e["text"]' >/dev/null ||
        fail "the watch did not see the service start"
    local spid
    spid=$(mon_bm -p ta --json tenant service "$vm" status ticker | python3 -c 'import sys, json; print(json.load(sys.stdin)[0]["pid"])' 2>/dev/null)
    [[ $spid =~ ^[0-9]+$ ]] || fail "service ticker has no pid: $(mon_bm -p ta tenant service "$vm" status ticker 2>&1 | tail -2)"
    mon_bm -p ta tenant exec "$vm" -- kill -9 "$spid" >"$dir/kill.txt" 2>&1 ||
        fail "kill -9 of the service in the guest failed: $(tail -2 "$dir/kill.txt")"
    local kill_ev act_ev
    kill_ev=$(mon_wait_event "$dir/watch-a.jsonl" 30 'e["kind"] == "service" and "ticker: killed by signal 9" in e["text"]') ||
        fail "the watch did not see the service killed: $(tail -3 "$dir/watch-a.jsonl")"
    act_ev=$(mon_wait_event "$dir/watch-a.jsonl" 30 'e["kind"] == "action" and e["event"]["kind"]["Action"]["action"] == "RestartService" and e["event"]["kind"]["Action"]["ok"]') ||
        fail "the tenant's policy did not restart the service: $(grep -E '"(action|suppressed)"' "$dir/watch-a.jsonl" | tail -2)"
    if [[ -n $kill_ev && -n $act_ev ]]; then
        python3 - "$kill_ev" "$act_ev" >>"$dir/figures.txt" <<'EOF'
import json, sys
k, a = (json.loads(x) for x in sys.argv[1:3])
print(f"service failure to restart-service done: {a['node_time_ms'] - k['node_time_ms']} ms (node clock; bound: agent report + 500 ms, backoff 0)")
EOF
    fi
    mon_bm -p ta tenant service "$vm" status ticker >"$dir/svc-status.txt" 2>&1
    grep -q "running" "$dir/svc-status.txt" || fail "service ticker is not running again: $(cat "$dir/svc-status.txt")"
    [[ -s $dir/notify-a.jsonl ]] && grep -q '"notify"' "$dir/notify-a.jsonl" || fail "the notify command did not receive the rule's notification"

    # 2. The dashboard (headless Chromium) shows the VM, then the agent hung
    # without a reload; the hung guest is restarted by the policy.
    mon_bm -p ta tenant agent "$vm" --heartbeat-ms 500 --timeout-ms 3000 >/dev/null 2>&1 || fail "setting the heartbeat failed"
    local trigger="BMCTL_CONFIG_DIR=$dir/bmctl timeout 60 $B -p ta tenant exec $vm -- sh -c 'setsid sh -c \"sleep 1; kill -STOP \\\$(pidof bm-agent)\" </dev/null >/dev/null 2>&1 &'"
    python3 "$ROOT/scripts/dashboard-check.py" "http://127.0.0.1:$hp_a/" --expect "mon-a1" --trigger "$trigger" \
        --then-expect "HUNG" --timeout 90 >"$dir/dashboard.txt" 2>&1
    case $? in
    0) ;;
    2) fail "dashboard check could not run (chromium missing?): $(tail -2 "$dir/dashboard.txt")" ;;
    *) fail "dashboard check failed: $(tail -2 "$dir/dashboard.txt")" ;;
    esac
    local hung_ev restart_ev
    hung_ev=$(mon_wait_event "$dir/watch-a.jsonl" 30 'e["kind"] == "agent-hung"') || fail "the watch did not see the agent hung"
    restart_ev=$(mon_wait_event "$dir/watch-a.jsonl" 40 'e["kind"] == "action" and e["event"]["kind"]["Action"]["action"] == "RestartVm"') ||
        fail "the hung guest was not restarted by the policy: $(grep -E '"(action|suppressed)"' "$dir/watch-a.jsonl" | tail -2)"
    if [[ -n $hung_ev && -n $restart_ev ]]; then
        python3 - "$hung_ev" "$restart_ev" >>"$dir/figures.txt" <<'EOF'
import json, sys
h, a = (json.loads(x) for x in sys.argv[1:3])
# The relay reports hung 3000 ms after the last heartbeat.
silent = a["node_time_ms"] - (h["node_time_ms"] - 3000)
print(f"last heartbeat to restart-vm: {silent} ms (configured 8000 ms, bound 8500 ms)")
EOF
    fi
    mon_wait_event "$dir/watch-a.jsonl" 20 'e["kind"] == "vm-started" and "start 2" in e["text"]' >/dev/null || fail "the VM did not start again"
    t0=$SECONDS
    mon_bm -p ta tenant agent "$vm" --wait 150 >"$dir/agent2.txt" 2>&1 || fail "no agent after the policy restart: $(tail -1 "$dir/agent2.txt")"
    echo "agent back $((SECONDS - t0)) s after the policy restart" >>"$dir/figures.txt"

    # 3. Metrics: A's scrape parses and shows its VM, its service and the
    # actions; B's and the landlord's show nothing of A's software.
    local m_a m_b m_l st_b
    m_a=$(mon_metrics "http://127.0.0.1:$hp_a/metrics") || fail "scraping tenant a's metrics failed"
    echo "$m_a" >"$dir/metrics-a.txt"
    grep -q "^BAD " <<<"$m_a" && fail "tenant a's metrics do not parse: $(grep '^BAD ' <<<"$m_a")"
    grep -Eq '^bmonitor_vm_starts_total\{.*name="mon-a1".*\} 2$' <<<"$m_a" || fail "metrics: no bmonitor_vm_starts_total 2 for mon-a1"
    grep -Eq '^bmonitor_actions_total\{.*action="restart-service".*\} [1-9]' <<<"$m_a" || fail "metrics: no restart-service action counted"
    grep -Eq '^bmonitor_actions_total\{.*action="restart-vm".*\} [1-9]' <<<"$m_a" || fail "metrics: no restart-vm action counted"
    m_b=$(mon_metrics "http://127.0.0.1:$hp_b/metrics") || fail "scraping tenant b's metrics failed"
    echo "$m_b" >"$dir/metrics-b.txt"
    grep -q "mon-a1" <<<"$m_b" && fail "tenant b's metrics name tenant a's VM"
    st_b=$(mon_get "http://127.0.0.1:$hp_b/api/state") || fail "tenant b's /api/state failed"
    grep -q "mon-a1\|ticker" <<<"$st_b" && fail "tenant b's /api/state shows tenant a's VM or service"
    grep -q "\"vm\": *$vm\b\|mon-a1" "$dir/watch-b.jsonl" && fail "tenant b's watch received an event about tenant a's VM"
    m_l=$(mon_metrics "http://127.0.0.1:$hp_l/metrics") || fail "scraping the landlord's metrics failed"
    echo "$m_l" >"$dir/metrics-l.txt"
    grep -Eq '^bmonitor_vm_running\{.*name="mon-a1"' <<<"$m_l" || fail "the landlord's metrics do not show the VM"
    grep -q 'bmonitor_service_up{' <<<"$m_l" && fail "the landlord's metrics show a tenant's services"
    grep -q '"kind": *"service"\|"kind":"service"' "$dir/watch-l.jsonl" && fail "the landlord's watch received a tenant's service event"

    # 4. The cost of monitoring to an idle guest: its exits per second with
    # the three subscriptions, then with none (10 s each).
    mon_exit_rate() {
        local a b
        a=$(mon_bm -p ta --json tenant counters "$vm") && sleep 10 && b=$(mon_bm -p ta --json tenant counters "$vm") || return 1
        python3 -c '
import json, sys
c = lambda s: next(x["value"] for x in json.loads(s) if x["name"] == "exits.total")
print(f"{(c(sys.argv[2]) - c(sys.argv[1])) / 10:.1f}")' "$a" "$b"
    }
    local with without p
    with=$(mon_exit_rate) || fail "reading the VM's counters failed"
    for p in "${watch_pids[@]}"; do kill -TERM "$p" 2>/dev/null; done
    for p in "${watch_pids[@]}"; do wait "$p" 2>/dev/null; done
    watch_pids=()
    without=$(mon_exit_rate) || fail "reading the VM's counters failed"
    echo "idle Linux guest: $with exits/s with 3 subscriptions at 1 s, $without exits/s with none" >>"$dir/figures.txt"
    mon_end
}
check_monitor_guest() {
    no_hypervisor_fault
    want "^monitor: agent-hung no heartbeat"
    want "^mgmt: tenant [0-9]+ set-policy: ok"
}

# monitor-node-qemu: a VM that triple-faults, restarted by the landlord's
# policy until the repeat limit, then left faulted with a notification; the
# uplink's link dropped in QEMU is reported (after the watch reconnects);
# the idle cost of monitoring.
run_monitor_node() {
    local B port boot lease_a lease_b watch_pids=()
    mon_setup "$ROOT/tests/e2e/agent.toml" || return
    local hp_l hp_a
    hp_l=$(mon_free_port) hp_a=$(mon_free_port)
    cat >"$dir/policy-l.toml" <<EOF
[[rule]]
name = "faulting-vm"
when = { vm-stopped-abnormally = {} }
action = "restart-vm"
backoff-secs = 1
max-repeats = 3
window-secs = 600

[[rule]]
name = "link"
when = { probe-failing = { probe = "nic-link", count = 2 } }
action = "notify"
backoff-secs = 0
max-repeats = 10
window-secs = 600
EOF
    mon_bm -p ll landlord policy set --cluster 1 "$dir/policy-l.toml" >"$dir/policy-set.txt" 2>&1 ||
        fail "the landlord could not set its policy: $(tail -1 "$dir/policy-set.txt")"
    # Idle cost: exits and push bytes over 10 s with two subscriptions.
    local s0 s1
    s0=$(mon_bm -p ll --json landlord status)
    mon_watch watch-l ll "$hp_l" --notify "cat >>'$dir/notify-l.jsonl'"
    mon_watch watch-a ta "$hp_a"
    sleep 10
    s1=$(mon_bm -p ll --json landlord status)
    python3 - "$s0" "$s1" >>"$dir/figures.txt" <<'EOF' || fail "node status has no monitor counters"
import json, sys
a, b = (json.loads(x) for x in sys.argv[1:3])
def c(s, n):
    return next(x["value"] for x in s["counters"] if x["name"] == n)
dt = (b["uptime_secs"] - a["uptime_secs"]) or 1
print(f"idle node, two subscriptions at 1 s: {(c(b, 'monitor.push_bytes') - c(a, 'monitor.push_bytes')) / dt:.0f} management bytes/s, "
      f"{(c(b, 'vm.exits') - c(a, 'vm.exits')) / dt:.1f} VM exits/s (over {dt} s)")
EOF
    mon_bm -p ll landlord image upload "$ROOT/target/x86_64-unknown-none/release/triple-fault" --name tf >/dev/null 2>&1 || fail "upload failed"
    local out vm
    out=$(mon_bm -p ll --json landlord vm create --lease "$lease_a" --name tf-1 --image tf --memory 8 2>&1) || fail "vm create failed: $out"
    vm=$(mon_jget "$out" vm)
    mon_bm -p ta tenant start "$vm" >/dev/null || fail "tenant a could not start its VM"
    local give_up
    give_up=$(mon_wait_event "$dir/watch-l.jsonl" 60 'e["kind"] == "suppressed" and "given up" in e["text"]') ||
        fail "the faulting VM was not given up after the repeat limit: $(grep -E '"(action|suppressed|vm-faulted)"' "$dir/watch-l.jsonl" | tail -3)"
    python3 - "$dir/watch-l.jsonl" >>"$dir/figures.txt" <<'EOF' || fail "the faulting VM was not restarted exactly 3 times before the limit"
import json, sys
ev = [json.loads(l) for l in open(sys.argv[1]) if l.strip()]
faults = [e for e in ev if e["kind"] == "vm-faulted"]
acts = [e for e in ev if e["kind"] == "action" and e["event"]["kind"]["Action"]["action"] == "RestartVm"]
if len(acts) != 3 or len(faults) != 4:
    print(f"faults={len(faults)} restarts={len(acts)}", file=sys.stderr)
    sys.exit(1)
gaps = [a["node_time_ms"] - f["node_time_ms"] for f, a in zip(faults, acts)]
print(f"triple fault to restart-vm: {', '.join(str(g) for g in gaps)} ms (backoff 0, 1 s, 2 s; bound backoff + 500 ms)")
EOF
    sleep 2
    grep -q "given up" "$dir/notify-l.jsonl" 2>/dev/null || fail "no notification when the rule gave up"
    mon_bm -p ta --json tenant vms >"$dir/list.txt" 2>&1
    grep -q '"faulted"\|Faulted' "$dir/list.txt" || fail "the VM is not shown faulted: $(head -c 300 "$dir/list.txt")"
    mon_wait_event "$dir/watch-a.jsonl" 5 'e["kind"] == "vm-faulted"' >/dev/null || fail "tenant a did not see its VM fault"

    # The uplink's link drops (QEMU set_link) for 6 s.
    python3 - "$dir/qemu.mon" <<'EOF' || fail "could not talk to QEMU's monitor"
import socket, sys, time
def cmd(c):
    s = socket.socket(socket.AF_UNIX); s.connect(sys.argv[1]); time.sleep(0.3); s.recv(4096)
    s.sendall((c + "\n").encode()); time.sleep(0.5); s.close()
cmd("set_link uplink off"); time.sleep(6); cmd("set_link uplink on")
EOF
    local down up
    down=$(mon_wait_event "$dir/watch-l.jsonl" 60 'e["kind"] == "probe-failed" and "nic-link" in e["detail"]') ||
        fail "the landlord's watch was not told of the link drop: $(tail -2 "$dir/watch-l.err")"
    up=$(mon_wait_event "$dir/watch-l.jsonl" 30 'e["kind"] == "probe-recovered" and "nic-link" in e["detail"]') || fail "no link recovery event"
    if [[ -n $down && -n $up ]]; then
        python3 - "$down" "$up" >>"$dir/figures.txt" <<'EOF'
import json, sys
d, u = (json.loads(x) for x in sys.argv[1:3])
print(f"link down for {u['node_time_ms'] - d['node_time_ms']} ms as the node saw it (set_link off for 6 s; probe every 1 s)")
EOF
    fi
    mon_wait_event "$dir/notify-l.jsonl" 5 'e["kind"] == "notify" and e["event"]["kind"]["Notify"]["rule"] == "link"' >/dev/null ||
        fail "the link rule did not notify"
    # The probes' results are in the landlord's status too.
    mon_bm -p ll landlord status >"$dir/status.txt" 2>&1 || fail "landlord status failed: $(tail -1 "$dir/status.txt")"
    local pr
    for pr in memory nic-link disk; do
        grep -Eq "^ +probe\.$pr +1$" "$dir/status.txt" || fail "landlord status does not show probe $pr passing: $(grep probe "$dir/status.txt" | tr '\n' ' ')"
    done
    grep -q "nic up" "$dir/status.txt" || fail "landlord status does not show the NIC up after the link came back"
    grep -q "nic-link" "$dir/watch-a.jsonl" && fail "tenant a saw a hardware probe event"
    mon_end
}
check_monitor_node() {
    no_hypervisor_fault
    want "^monitor: probe-failed uplink link down"
    want "^monitor: vm-faulted tf-1 stopped: triple fault"
}
