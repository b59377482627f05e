. /lib/bm/common.sh
bm_wait_host "$PEER"
if ping -c 3 -W 2 "$PEER" >/tmp/ping.out 2>&1; then r=ok; else r=fail; fi
grep -E 'transmitted|min/avg' /tmp/ping.out | bm_prefix ping-stats
echo "BMLINUX ping $PEER $r"
