echo "BMLINUX hello"
