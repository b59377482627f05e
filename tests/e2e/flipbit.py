#!/usr/bin/env python3
"""Flips one bit in a sealed data block a guest just wrote, so the test
tampers with ciphertext rather than with the node's headers. Encrypted
volumes keep two slots per sector (data_start + 2*sector + slot), so the
data blocks one write pass changes are isolated: their neighbours did not
change. Headers, key store, tables and metadata records change in runs.

usage: flipbit.py BEFORE AFTER TARGET   (TARGET is modified in place)
"""
import sys

BLOCK = 4096


def main() -> int:
    before, after, target = sys.argv[1:4]
    with open(before, "rb") as f:
        a = f.read()
    with open(after, "rb") as f:
        b = f.read()
    changed = [i for i in range(min(len(a), len(b)) // BLOCK) if a[i * BLOCK:(i + 1) * BLOCK] != b[i * BLOCK:(i + 1) * BLOCK]]
    if not changed:
        print("no changed blocks", file=sys.stderr)
        return 1
    seen = set(changed)
    isolated = [i for i in changed if i - 1 not in seen and i + 1 not in seen]
    if not isolated:
        print("no isolated (data) blocks changed", file=sys.stderr)
        return 1
    block = isolated[len(isolated) // 2]
    first, last = isolated[0], isolated[-1]
    offset = block * BLOCK + 100
    with open(target, "r+b") as f:
        f.seek(offset)
        byte = f.read(1)[0]
        f.seek(offset)
        f.write(bytes([byte ^ 0x01]))
    print(f"flipped bit 0 at byte {offset} (block {block} of data blocks {first}..{last})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
