#!/usr/bin/env python3
"""Hostile management clients: keep COUNT TCP connections open to the node's
management port for SECONDS, never authenticating, in four kinds:

  idle     connects and sends nothing
  half     sends the start of a handshake frame (a length prefix promising
           more bytes than ever follow)
  slow     sends one random byte per second
  garbage  sends random bytes as fast as the node takes them

A connection the node closes or resets is opened again at once, so the
pressure never lets up. At the end one line sums up what happened:

  hostile: kinds=idle:N,half:N,slow:N,garbage:N opened=N closed=N resets=N busy=N max_open=N

usage: hostile.py PORT COUNT SECONDS
"""
import os
import selectors
import socket
import sys
import time

KINDS = ("idle", "half", "slow", "garbage")


class Conn:
    def __init__(self, kind, port):
        self.kind = kind
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.setblocking(False)
        self.sock.connect_ex(("127.0.0.1", port))
        self.opened = time.monotonic()
        self.next_write = self.opened
        self.sent_half = False
        self.received = b""


def main():
    port, count, seconds = int(sys.argv[1]), int(sys.argv[2]), float(sys.argv[3])
    sel = selectors.DefaultSelector()
    stats = dict(opened=0, closed=0, resets=0, busy=0, max_open=0)
    conns = {}

    def open_one(kind):
        c = Conn(kind, port)
        conns[c.sock.fileno()] = c
        sel.register(c.sock, selectors.EVENT_READ, c)
        stats["opened"] += 1

    def drop(c, reset):
        stats["resets" if reset else "closed"] += 1
        # A busy answer is a cleartext frame carrying the word "busy".
        if b"busy" in c.received:
            stats["busy"] += 1
        sel.unregister(c.sock)
        del conns[c.sock.fileno()]
        c.sock.close()
        open_one(c.kind)

    for i in range(count):
        open_one(KINDS[i % len(KINDS)])
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        now = time.monotonic()
        stats["max_open"] = max(stats["max_open"], len(conns))
        for c in list(conns.values()):
            if now < c.next_write:
                continue
            try:
                if c.kind == "half" and not c.sent_half:
                    c.sock.send(b"\x00\x60" + os.urandom(10))
                    c.sent_half = True
                elif c.kind == "slow":
                    c.sock.send(os.urandom(1))
                    c.next_write = now + 1.0
                elif c.kind == "garbage":
                    c.sock.send(os.urandom(1024))
                    c.next_write = now + 0.05
            except BlockingIOError:
                pass
            except OSError as e:
                if c.sock.fileno() in conns:
                    drop(c, isinstance(e, ConnectionResetError))
        for key, _ in sel.select(timeout=0.05):
            c = key.data
            if c.sock.fileno() not in conns:
                continue
            try:
                data = c.sock.recv(4096)
                if data:
                    c.received = (c.received + data)[-4096:]
                else:
                    drop(c, False)
            except BlockingIOError:
                pass
            except OSError as e:
                drop(c, isinstance(e, ConnectionResetError))
    kinds = ",".join(f"{k}:{sum(1 for c in conns.values() if c.kind == k)}" for k in KINDS)
    print(
        f"hostile: kinds={kinds} opened={stats['opened']} closed={stats['closed']} "
        f"resets={stats['resets']} busy={stats['busy']} max_open={stats['max_open']}",
        flush=True,
    )


if __name__ == "__main__":
    main()
