. /lib/bm/common.sh
for ip in ${ISOLATED_PEERS:-10.0.0.2 10.0.0.3}; do
    if ping -c "${ISOLATED_PINGS:-3}" -W 1 "$ip" >/dev/null 2>&1; then r=yes; else r=no; fi
    echo "BMLINUX reach $ip $r"
done
