. /lib/bm/common.sh
echo "BMLINUX iperf3-server listening on ${BM_IP:-?}:5201"
iperf3 -s -1 -f m --forceflush 2>&1 | tee /tmp/iperf.out | bm_prefix iperf3-server
v=$(bm_mbits </tmp/iperf.out)
echo "BMLINUX iperf3-server ${v:-fail}${v:+ Mbits/sec}"
