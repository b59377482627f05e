# First boot: record a boot count on the disk and reboot (BMonitor restarts
# the VM from its image); second boot: report it and power off.
. /lib/bm/common.sh
[ -b /dev/vda ] || { echo "BMLINUX disk none"; exit 1; }
magic=$(dd if=/dev/vda bs=1 skip=1080 count=2 2>/dev/null | hexdump -e '1/2 "%04x"')
if [ "$magic" != ef53 ]; then
    /sbin/mke2fs -t ext4 -F -q /dev/vda >/tmp/mkfs.out 2>&1 || { bm_prefix mkfs </tmp/mkfs.out; exit 1; }
fi
mount -t ext4 /dev/vda /mnt || { echo "BMLINUX disk mount failed"; exit 1; }
boots=$(cat /mnt/boots 2>/dev/null || echo 0)
boots=$((boots + 1))
echo "$boots" >/mnt/boots
sync
umount /mnt
echo "BMLINUX restart boot $boots"
if [ "$boots" -lt 2 ]; then
    sleep 0.3
    reboot -f
    sleep 5
fi
