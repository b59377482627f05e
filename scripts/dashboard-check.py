#!/usr/bin/env python3
"""Check a live web dashboard (e.g. `bmctl watch`'s) in headless Chromium.

    dashboard-check.py URL --expect TEXT --then-expect TEXT2 [--timeout S] [--trigger CMD]

Opens URL in headless Chromium, waits until the page's visible text
(document.body.innerText: what a person sees) contains TEXT, marks the page
(window.__bm_marker = 1), runs the optional --trigger shell command, waits
until the visible text contains TEXT2, and checks that the marker survived,
which proves the page updated in place rather than reloading.

Talks the Chrome DevTools Protocol over a WebSocket with the Python
standard library only (a minimal RFC 6455 client below).

Exit status: 0 ok ("dashboard: ok (...)"), 1 the check failed (text never
appeared, page reloaded, trigger failed, timeout), 2 usage or Chromium
missing. Chromium is killed in every case; everything is bounded by
--timeout.
"""

import argparse
import base64
import hashlib
import json
import os
import shutil
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import time
import urllib.request

WS_GUID = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
MAX_MESSAGE = 16 << 20  # bound on one WebSocket message we accept


class CheckFailed(Exception):
    """The dashboard did not behave as expected (exit 1)."""


class Deadline:
    """The one time budget every wait draws from."""

    def __init__(self, seconds):
        self.end = time.monotonic() + seconds

    def left(self):
        return self.end - time.monotonic()

    def check(self, what):
        if self.left() <= 0:
            raise CheckFailed(f"timed out {what}")
        return self.left()


class WebSocket:
    """A minimal RFC 6455 client: handshake, masked text frames out,
    frames in (fragmented messages, ping/pong, close)."""

    def __init__(self, url, deadline):
        if not url.startswith("ws://"):
            raise CheckFailed(f"unsupported WebSocket URL {url!r}")
        rest = url[len("ws://"):]
        hostport, _, path = rest.partition("/")
        host, _, port = hostport.rpartition(":")
        self.deadline = deadline
        self.sock = socket.create_connection((host, int(port)), timeout=max(0.1, deadline.left()))
        self.buf = b""
        key = base64.b64encode(os.urandom(16)).decode()
        req = (
            f"GET /{path} HTTP/1.1\r\nHost: {hostport}\r\nUpgrade: websocket\r\n"
            f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n"
        )
        self.sock.sendall(req.encode())
        head = self._read_until(b"\r\n\r\n", 65536)
        lines = head.decode("latin-1").split("\r\n")
        if not lines or " 101 " not in lines[0] + " ":
            raise CheckFailed(f"WebSocket handshake refused: {lines[0] if lines else '(nothing)'}")
        headers = {}
        for line in lines[1:]:
            k, _, v = line.partition(":")
            headers[k.strip().lower()] = v.strip()
        want = base64.b64encode(hashlib.sha1((key + WS_GUID).encode()).digest()).decode()
        if headers.get("sec-websocket-accept") != want:
            raise CheckFailed("WebSocket handshake: wrong Sec-WebSocket-Accept")

    def _recv(self, n_min):
        while len(self.buf) < n_min:
            self.sock.settimeout(max(0.05, self.deadline.check("waiting for Chromium")))
            try:
                chunk = self.sock.recv(65536)
            except socket.timeout:
                continue
            if not chunk:
                raise CheckFailed("Chromium closed the DevTools connection")
            self.buf += chunk

    def _take(self, n):
        self._recv(n)
        out, self.buf = self.buf[:n], self.buf[n:]
        return out

    def _read_until(self, marker, limit):
        while marker not in self.buf:
            if len(self.buf) > limit:
                raise CheckFailed("WebSocket handshake answer too long")
            self._recv(len(self.buf) + 1)
        head, _, self.buf = self.buf.partition(marker)
        return head

    def _send_frame(self, opcode, payload):
        mask = os.urandom(4)
        n = len(payload)
        if n < 126:
            header = struct.pack("!BB", 0x80 | opcode, 0x80 | n)
        elif n < 1 << 16:
            header = struct.pack("!BBH", 0x80 | opcode, 0x80 | 126, n)
        else:
            header = struct.pack("!BBQ", 0x80 | opcode, 0x80 | 127, n)
        masked = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
        self.sock.settimeout(max(0.05, self.deadline.check("sending to Chromium")))
        self.sock.sendall(header + mask + masked)

    def send_text(self, text):
        self._send_frame(0x1, text.encode())

    def recv_message(self):
        """The next complete text or binary message, as text."""
        parts = []
        total = 0
        while True:
            b0, b1 = self._take(2)
            fin, opcode = b0 & 0x80, b0 & 0x0F
            n = b1 & 0x7F
            if n == 126:
                (n,) = struct.unpack("!H", self._take(2))
            elif n == 127:
                (n,) = struct.unpack("!Q", self._take(8))
            mask = self._take(4) if b1 & 0x80 else None
            if n > MAX_MESSAGE:
                raise CheckFailed(f"a DevTools message of {n} bytes is over the limit")
            payload = self._take(n)
            if mask:
                payload = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
            if opcode == 0x8:
                raise CheckFailed("Chromium closed the DevTools WebSocket")
            if opcode == 0x9:
                self._send_frame(0xA, payload)
                continue
            if opcode == 0xA:
                continue
            if opcode in (0x0, 0x1, 0x2):
                parts.append(payload)
                total += len(payload)
                if total > MAX_MESSAGE:
                    raise CheckFailed("a fragmented DevTools message is over the limit")
                if fin:
                    return b"".join(parts).decode("utf-8", "replace")
                continue
            raise CheckFailed(f"unexpected WebSocket opcode {opcode}")

    def close(self):
        try:
            self._send_frame(0x8, struct.pack("!H", 1000))
        except Exception:
            pass
        self.sock.close()


class DevTools:
    """Commands to one page target; events in between are skipped."""

    def __init__(self, ws):
        self.ws = ws
        self.next_id = 0

    def call(self, method, **params):
        self.next_id += 1
        my = self.next_id
        self.ws.send_text(json.dumps({"id": my, "method": method, "params": params}))
        while True:
            msg = json.loads(self.ws.recv_message())
            if msg.get("id") == my:
                if "error" in msg:
                    raise CheckFailed(f"{method} failed: {msg['error']}")
                return msg.get("result", {})

    def evaluate(self, expr):
        r = self.call("Runtime.evaluate", expression=expr, returnByValue=True)
        if "exceptionDetails" in r:
            raise CheckFailed(f"evaluating {expr!r}: {r['exceptionDetails'].get('text')}")
        return r.get("result", {}).get("value")


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def http_json(url, deadline):
    with urllib.request.urlopen(url, timeout=max(0.1, min(2, deadline.left()))) as r:
        return json.loads(r.read(1 << 20))


def find_chromium():
    for name in ("chromium", "chromium-browser", "google-chrome"):
        p = shutil.which(name)
        if p:
            return p
    return None


def page_text(dt):
    return dt.evaluate("document.body ? document.body.innerText : ''") or ""


def wait_text(dt, text, deadline, what):
    last = ""
    while True:
        try:
            last = page_text(dt)
        except CheckFailed:
            if deadline.left() > 0:
                raise
            last = last or ""
        if text in last:
            return
        if deadline.left() <= 0:
            shown = " ".join(last.split())[:300]
            raise CheckFailed(f"timed out {what}: the page never showed {text!r} (it shows: {shown!r})")
        time.sleep(min(0.2, max(0.01, deadline.left())))


def run(args):
    deadline = Deadline(args.timeout)
    chromium = find_chromium()
    if not chromium:
        print(
            "dashboard-check: chromium not found; install it (Debian/Ubuntu: apt-get install -y chromium)",
            file=sys.stderr,
        )
        return 2
    port = free_port()
    profile = tempfile.mkdtemp(prefix="bm-dashboard-check-")
    cmd = [
        chromium,
        "--headless=new",
        f"--remote-debugging-port={port}",
        "--remote-debugging-address=127.0.0.1",
        f"--user-data-dir={profile}",
        "--no-sandbox",
        "--no-first-run",
        "--no-default-browser-check",
        "--disable-gpu",
        "--disable-extensions",
        "--disable-background-networking",
        "about:blank",
    ]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    ws = None
    try:
        target = None
        while target is None:
            if proc.poll() is not None:
                raise CheckFailed(f"chromium exited at start (status {proc.returncode})")
            try:
                pages = http_json(f"http://127.0.0.1:{port}/json/list", deadline)
                target = next((p for p in pages if p.get("type") == "page" and p.get("webSocketDebuggerUrl")), None)
            except (OSError, ValueError):
                pass
            if target is None:
                deadline.check("waiting for chromium's DevTools endpoint")
                time.sleep(0.1)
        ws = WebSocket(target["webSocketDebuggerUrl"], deadline)
        dt = DevTools(ws)
        dt.call("Page.enable")
        nav = dt.call("Page.navigate", url=args.url)
        if nav.get("errorText"):
            raise CheckFailed(f"cannot load {args.url}: {nav['errorText']}")
        start = time.monotonic()
        wait_text(dt, args.expect, deadline, "waiting for the first text")
        first = time.monotonic() - start
        dt.evaluate("window.__bm_marker = 1")
        if args.trigger:
            try:
                r = subprocess.run(args.trigger, shell=True, timeout=max(0.1, deadline.left()))
            except subprocess.TimeoutExpired:
                raise CheckFailed("timed out running the --trigger command")
            if r.returncode != 0:
                raise CheckFailed(f"the --trigger command failed (status {r.returncode})")
        wait_text(dt, args.then_expect, deadline, "waiting for the second text")
        second = time.monotonic() - start
        if dt.evaluate("window.__bm_marker === 1") is not True:
            raise CheckFailed("the page reloaded (window.__bm_marker is gone): it should update in place")
        print(
            f"dashboard: ok ({args.expect!r} after {first:.1f} s, {args.then_expect!r} after {second:.1f} s, "
            "updated in place without a reload)"
        )
        return 0
    finally:
        if ws:
            ws.close()
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            pass
        shutil.rmtree(profile, ignore_errors=True)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("url")
    ap.add_argument("--expect", required=True, metavar="TEXT", help="text the page must show first")
    ap.add_argument("--then-expect", required=True, metavar="TEXT2", help="text it must show after --trigger")
    ap.add_argument("--timeout", type=float, default=60, metavar="S", help="bound on the whole check (default 60)")
    ap.add_argument("--trigger", metavar="CMD", help="shell command run between the two checks")
    args = ap.parse_args()
    if args.timeout <= 0:
        ap.error("--timeout must be positive")
    try:
        sys.exit(run(args))
    except CheckFailed as e:
        print(f"dashboard: FAILED: {e}", file=sys.stderr)
        sys.exit(1)
    except KeyboardInterrupt:
        print("dashboard: interrupted", file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    main()
