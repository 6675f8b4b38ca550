#!/usr/bin/env python3
"""Delete JetStream streams by name (the bench instance's own), speaking the
NATS client protocol over a plain socket: no NATS CLI is needed.

    nats_delete_streams.py nats://127.0.0.1:4222 STREAM [STREAM ...]

A stream that does not exist is fine; any other error fails the call.
"""
import json
import socket
import sys
from urllib.parse import urlparse


def read_line(sock, buf):
    while b"\r\n" not in buf:
        data = sock.recv(65536)
        if not data:
            raise SystemExit("nats: connection closed")
        buf += data
    line, _, rest = buf.partition(b"\r\n")
    return line.decode(), rest


def main():
    url = urlparse(sys.argv[1])
    host, port = url.hostname or "127.0.0.1", url.port or 4222
    if host not in ("127.0.0.1", "localhost", "::1"):
        raise SystemExit("nats: loopback only")
    sock = socket.create_connection((host, port), timeout=10)
    buf = b""
    line, buf = read_line(sock, buf)  # INFO {...}
    sock.sendall(b'CONNECT {"verbose":false,"pedantic":false,"headers":false}\r\nSUB _INBOX.bench 1\r\n')
    for n, stream in enumerate(sys.argv[2:]):
        sock.sendall(f"PUB $JS.API.STREAM.DELETE.{stream} _INBOX.bench 0\r\n\r\n".encode())
        while True:
            line, buf = read_line(sock, buf)
            if line == "PING":
                sock.sendall(b"PONG\r\n")
                continue
            if line.startswith("-ERR"):
                raise SystemExit(f"nats: {line}")
            if line.startswith("MSG "):
                size = int(line.split()[-1])
                while len(buf) < size + 2:
                    buf += sock.recv(65536)
                reply, buf = json.loads(buf[:size] or b"{}"), buf[size + 2:]
                error = reply.get("error")
                # 10059: stream not found.
                if error and error.get("err_code") != 10059:
                    raise SystemExit(f"nats: deleting {stream}: {error}")
                break


if __name__ == "__main__":
    main()
