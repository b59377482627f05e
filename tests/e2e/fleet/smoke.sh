#!/usr/bin/env bash
# Smoke test of the fleet facility (scripts/facility.sh): N nodes (default
# 3) with swtpm on the namespace's segment get their reserved DHCP leases
# (node I: 10.77.0.(10+I)), answer `bmctl landlord status` from inside the
# namespace, a partitioned node goes silent while the others answer and
# answers again once healed, the etcd cluster answers put/range on its v3
# JSON gateway and keeps doing so with its leader killed, and `down`
# leaves no namespace, QEMU, swtpm, dnsmasq or etcd of this run behind.
# Needs root and the release builds (hypervisor, test-guests, bmimage,
# mgmt-console). Exit 0 only if every check passed.
#
# usage: tests/e2e/fleet/smoke.sh [--nodes N] [--dir DIR] [--no-tpm]
# ok and fail report and never fail themselves: `check && ok || fail` is meant.
# shellcheck disable=SC2015
set -uo pipefail
source "$(cd "$(dirname "$0")/../../.." && pwd)/scripts/facility.sh"

nodes=3 dir=${BM_OUT:-$ROOT/out}/fleet-smoke tpm=()
while (($#)); do
    case $1 in
    --nodes) nodes=$2; shift 2 ;;
    --dir) dir=$2; shift 2 ;;
    --no-tpm) tpm=(--no-tpm); shift ;;
    *) die "unknown argument $1" ;;
    esac
done

BMCTL=$TARGET_DIR/release/bmctl
for f in "$BM_ELF" "$BMIMAGE" "$BMCTL" "$TARGET_DIR/x86_64-unknown-none/release/hello"; do
    [[ -x $f || -f $f ]] || die "missing $f: cargo build --release --target x86_64-unknown-none -p hypervisor -p test-guests && cargo build --release -p bmimage -p mgmt-console"
done

facility_down "$dir"
rm -rf "$dir"
mkdir -p "$dir"
dir=$(realpath "$dir")
facility_cleanup_on_exit "$dir"
export BMCTL_CONFIG_DIR=$dir/bmctl
failures=0
fail() { printf 'FAIL: %s\n' "$*" >&2; failures=$((failures + 1)); }
ok() { printf 'ok: %s\n' "$*" >&2; }
status_of() { # I [TIMEOUT]: bmctl landlord status to node I from inside the namespace
    facility_exec "$dir" "$BMCTL" -p "n$1" --timeout "${2:-10}" landlord status >"$dir/status$1.out" 2>&1
}

key=$("$BMCTL" --json keygen landlord | python3 -c 'import sys, json; print(json.load(sys.stdin)["public_key"])') ||
    die "bmctl keygen failed"
facility_bundles "$dir" "$dir/bundles" "$nodes" "$key" || die "bundles failed"
facility_up "$dir" "$nodes" "$dir/bundles" --reserve --wait 180 "${tpm[@]}" || die "facility up failed"

for ((i = 1; i <= nodes; i++)); do
    ip=$(facility_node_ip "$dir" "$i")
    want=$(facility_node_reserved_ip "$i")
    [[ $ip == "$want" ]] && ok "node$i leased its reserved $ip" || fail "node$i leased '${ip:-nothing}', reserved $want"
    nk=$(facility_node_key "$dir" "$i")
    [[ -n $nk ]] || { fail "node$i logged no landlord node key"; continue; }
    "$BMCTL" profile add "n$i" --node "$want:7700" --node-key "$nk" --role landlord --key landlord >/dev/null
    if status_of "$i" && grep -q '^BMonitor .* up' "$dir/status$i.out"; then
        ok "node$i answers landlord status"
    else
        fail "node$i: landlord status: $(head -c 300 "$dir/status$i.out")"
    fi
done

p=$(((nodes + 1) / 2))
facility_partition "$dir" "$p"
status_of "$p" 3 && fail "partitioned node$p still answers" || ok "partitioned node$p is silent (rc $?)"
for ((i = 1; i <= nodes; i++)); do
    ((i == p)) && continue
    status_of "$i" && ok "node$i answers during the partition" || fail "node$i silent during node$p's partition"
done
facility_heal "$dir" "$p"
status_of "$p" 10 && ok "healed node$p answers" || fail "healed node$p: $(head -c 300 "$dir/status$p.out")"

facility_etcd_up "$dir" || fail "etcd did not come up"
IFS=, read -ra eps <<<"$(facility_etcd_endpoints "$dir")"
kv_put() { facility_exec "$dir" curl -sf --max-time 5 -X POST "$1/v3/kv/put" -d "{\"key\":\"Zm9v\",\"value\":\"$2\"}" >/dev/null; }
kv_get() { # EP: the value of key foo (base64), via the JSON gateway
    facility_exec "$dir" curl -sf --max-time 5 -X POST "$1/v3/kv/range" -d '{"key":"Zm9v"}' |
        python3 -c 'import sys, json; print(json.load(sys.stdin)["kvs"][0]["value"])' 2>/dev/null
}
kv_put "${eps[0]}" YmFy || fail "etcd put via ${eps[0]}"
for ep in "${eps[@]}"; do
    [[ $(kv_get "$ep") == YmFy ]] && ok "etcd range via $ep" || fail "etcd range via $ep"
done
leader=$(facility_exec "$dir" curl -sf --max-time 5 -X POST "${eps[0]}/v3/maintenance/status" -d '{}' |
    python3 -c 'import sys, json; print(json.load(sys.stdin)["leader"])')
for ((k = 1; k <= 3; k++)); do
    id=$(facility_exec "$dir" curl -sf --max-time 5 -X POST "${eps[k - 1]}/v3/maintenance/status" -d '{}' |
        python3 -c 'import sys, json; print(json.load(sys.stdin)["header"]["member_id"])')
    [[ $id == "$leader" ]] && lk=$k
done
facility_etcd_kill "$dir" "${lk:-1}"
t0=$SECONDS
other=$((${lk:-1} % 3))
until kv_put "${eps[other]}" YmF6 || ((SECONDS - t0 > 30)); do sleep 0.3; done
for ((k = 1; k <= 3; k++)); do
    ((k == ${lk:-1})) && continue
    [[ $(kv_get "${eps[k - 1]}") == YmF6 ]] && ok "etcd put/range via ${eps[k - 1]} with leader e${lk:-1} killed" ||
        fail "etcd via ${eps[k - 1]} with e${lk:-1} killed"
done

facility_down "$dir"
ns=$(<"$dir/netns")
ip netns list | grep -qw "^$ns" && fail "namespace $ns left after down" || ok "namespace $ns removed"
for f in "$dir"/node*.pid "$dir"/tpm*/swtpm.pid "$dir"/etcd*.pid "$dir"/dnsmasq.pid; do
    [[ -e $f ]] && fail "pid file $f left after down"
done
left=$(pgrep -af "qemu-system|swtpm|dnsmasq|etcd" | grep -F -- "$dir" || true)
[[ -z $left ]] && ok "no QEMU, swtpm, dnsmasq or etcd of this run left" || fail "left after down: $left"

((failures == 0)) && { echo "fleet smoke: all checks passed"; exit 0; }
echo "fleet smoke: $failures check(s) failed (logs in $dir)"
exit 1
