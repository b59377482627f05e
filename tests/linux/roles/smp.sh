# SMP: how many processors the kernel brought up (the VM's config gives
# it `vcpus`), then work on every one at once: one busy loop per CPU for
# two seconds, each pinned with taskset, and how far each got; then the
# cross-CPU wake-up latency (ipi-latency).
n=$(grep -c '^processor' /proc/cpuinfo)
echo "BMLINUX cpus $n online $(cat /sys/devices/system/cpu/online 2>/dev/null)"
pin=""
command -v taskset >/dev/null 2>&1 && pin=taskset
i=0
while [ $i -lt "$n" ]; do
    ${pin:+taskset -c $i} sh -c 'end=$(($(cut -d. -f1 /proc/uptime) + 2)); c=0; while [ "$(cut -d. -f1 /proc/uptime)" -lt $end ]; do c=$((c + 1)); done; echo "BMLINUX cpu '$i' loops $c"' &
    i=$((i + 1))
done
wait
# The cross-CPU wake-up latency the guest sees (tests/linux/probes).
if [ "$n" -ge 2 ] && [ -x /usr/bin/ipi-latency ]; then
    echo "BMLINUX $(/usr/bin/ipi-latency 200)"
fi
echo "BMLINUX smp done"
