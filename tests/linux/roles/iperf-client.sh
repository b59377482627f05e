. /lib/bm/common.sh
bm_wait_host "$PEER" || echo "BMLINUX iperf3 peer $PEER does not answer pings"
v=
n=0
while [ $n -lt 10 ]; do
    if iperf3 -c "$PEER" -t "${IPERF_SECONDS:-5}" -f m >/tmp/iperf.out 2>&1; then
        v=$(bm_mbits </tmp/iperf.out)
        break
    fi
    n=$((n + 1))
    sleep 1 # the server may not listen yet
done
bm_prefix iperf3-client </tmp/iperf.out
if [ -n "$v" ]; then echo "BMLINUX iperf3 $v Mbits/sec"; else echo "BMLINUX iperf3 fail"; fi
