# The guest agent's VM: init has started bm-agent (with its respawn loop);
# this role only keeps the VM up. The tenant works through the agent
# (bmctl tenant exec/cp/service ...); the landlord or tenant stops the VM.
echo "BMLINUX agent role up"
while :; do
    sleep 3600
done
