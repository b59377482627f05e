#!/usr/bin/env python3
"""Replay attack on the management port: relays one console connection to
the node while recording what the console sent, then opens a new
connection and sends the recorded bytes again. The node must refuse the
replay (its transport keys differ per session, so the recorded request
cannot decrypt) and say so in its log.

usage: replay.py LISTEN_PORT NODE_PORT SECONDS
Prints "replayed N bytes; node answered M bytes then closed" when done.
"""
import socket
import sys
import threading


def pump(src, dst, record=None):
    try:
        while True:
            data = src.recv(65536)
            if not data:
                break
            if record is not None:
                record.append(data)
            dst.sendall(data)
    except OSError:
        pass
    finally:
        try:
            dst.shutdown(socket.SHUT_WR)
        except OSError:
            pass


def main() -> int:
    listen_port, node_port, seconds = int(sys.argv[1]), int(sys.argv[2]), float(sys.argv[3])
    server = socket.socket()
    server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    server.bind(("127.0.0.1", listen_port))
    server.listen(1)
    server.settimeout(seconds)
    client, _ = server.accept()
    node = socket.create_connection(("127.0.0.1", node_port), timeout=seconds)
    sent = []
    t = threading.Thread(target=pump, args=(node, client))
    t.start()
    pump(client, node, sent)
    t.join(seconds)
    client.close()
    node.close()
    recorded = b"".join(sent)
    again = socket.create_connection(("127.0.0.1", node_port), timeout=5)
    again.sendall(recorded)
    answered = 0
    try:
        while True:
            data = again.recv(65536)
            if not data:
                break
            answered += len(data)
    except OSError:
        pass
    again.close()
    print(f"replayed {len(recorded)} bytes; node answered {answered} bytes then closed")
    return 0


if __name__ == "__main__":
    sys.exit(main())
