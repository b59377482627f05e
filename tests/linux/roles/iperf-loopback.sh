# iperf3 against itself over lo: checks the binary and its libraries and
# gives a CPU-bound baseline.
. /lib/bm/common.sh
iperf3 -s -D -1 -B 127.0.0.1 >/dev/null 2>&1
sleep 0.5
iperf3 -c 127.0.0.1 -t "${IPERF_SECONDS:-3}" -f m >/tmp/iperf.out 2>&1
v=$(bm_mbits </tmp/iperf.out)
[ -n "$v" ] || bm_prefix iperf3-loopback </tmp/iperf.out
echo "BMLINUX iperf3-loopback ${v:-fail}${v:+ Mbits/sec}"
