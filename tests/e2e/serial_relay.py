#!/usr/bin/env python3
"""A console server for the node's COM2 line: keeps one connection to the
emulator's serial socket (Bochs `com2: mode=socket-server`) and relays one
console client at a time to it, like a terminal server in a rack.

usage: serial_relay.py LINE_PORT LISTEN_PORT SECONDS
"""
import selectors
import socket
import sys
import time


def main() -> int:
    line_port, listen_port, seconds = int(sys.argv[1]), int(sys.argv[2]), float(sys.argv[3])
    deadline = time.monotonic() + seconds
    line = None
    while line is None and time.monotonic() < deadline:
        try:
            line = socket.create_connection(("127.0.0.1", line_port), timeout=1)
        except OSError:
            time.sleep(0.2)
    if line is None:
        print("relay: the serial line never came up", file=sys.stderr)
        return 1
    line.setblocking(False)
    server = socket.socket()
    server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    server.bind(("127.0.0.1", listen_port))
    server.listen(1)
    server.setblocking(False)
    sel = selectors.DefaultSelector()
    sel.register(server, selectors.EVENT_READ, "accept")
    sel.register(line, selectors.EVENT_READ, "line")
    client = None
    while time.monotonic() < deadline:
        for key, _ in sel.select(timeout=0.5):
            if key.data == "accept":
                conn, _ = server.accept()
                if client is not None:
                    sel.unregister(client)
                    client.close()
                client = conn
                client.setblocking(False)
                sel.register(client, selectors.EVENT_READ, "client")
            elif key.data == "line":
                data = line.recv(65536)
                if not data:
                    return 0
                if client is not None:
                    client.sendall(data)
            else:
                data = client.recv(65536)
                if not data:
                    sel.unregister(client)
                    client.close()
                    client = None
                else:
                    line.setblocking(True)
                    line.sendall(data)
                    line.setblocking(False)
    return 0


if __name__ == "__main__":
    sys.exit(main())
