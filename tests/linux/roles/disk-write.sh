. /lib/bm/common.sh
[ -b /dev/vda ] || { echo "BMLINUX disk none"; exit 1; }
# ext4 superblock magic 0xEF53 at byte 1080.
magic=$(dd if=/dev/vda bs=1 skip=1080 count=2 2>/dev/null | hexdump -e '1/2 "%04x"')
if [ "$magic" != ef53 ]; then
    echo "BMLINUX disk mkfs ext4"
    # A full path: busybox sh prefers its own (ext2-only) mke2fs applet.
    if ! /sbin/mke2fs -t ext4 -F -q -L bmdisk /dev/vda >/tmp/mkfs.out 2>&1; then
        bm_prefix mkfs </tmp/mkfs.out
        echo "BMLINUX disk mkfs failed"
        exit 1
    fi
fi
mount -t ext4 /dev/vda /mnt || { echo "BMLINUX disk mount failed"; exit 1; }
rm -f /mnt/hello.txt /mnt/numbers.txt /mnt/blocks.bin /mnt/SHA256SUMS
bm_disk_make /mnt
bm_disk_sums /mnt >/mnt/SHA256SUMS
sha=$(sha256sum </mnt/SHA256SUMS | cut -d' ' -f1)
sync
umount /mnt || { echo "BMLINUX disk umount failed"; exit 1; }
echo "BMLINUX disk written $sha"
