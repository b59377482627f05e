echo "BMLINUX idle"
sleep "${IDLE_SECONDS:-30}"
echo "BMLINUX idle done"
