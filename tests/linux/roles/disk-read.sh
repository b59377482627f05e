. /lib/bm/common.sh
[ -b /dev/vda ] || { echo "BMLINUX disk none"; exit 1; }
mount -t ext4 -o ro /dev/vda /mnt || { echo "BMLINUX disk mount failed"; echo "BMLINUX disk mismatch"; exit 1; }
# What the writer wrote, regenerated here, against what is on the disk.
mkdir -p /tmp/expect
bm_disk_make /tmp/expect
bm_disk_sums /tmp/expect >/tmp/expect.sums
bm_disk_sums /mnt >/tmp/actual.sums 2>/dev/null
sha=$(sha256sum </tmp/expect.sums | cut -d' ' -f1)
if cmp -s /tmp/expect.sums /tmp/actual.sums && cmp -s /tmp/expect.sums /mnt/SHA256SUMS; then
    echo "BMLINUX disk verified $sha"
else
    diff /tmp/expect.sums /tmp/actual.sums 2>&1 | bm_prefix disk-diff
    echo "BMLINUX disk mismatch"
fi
umount /mnt
