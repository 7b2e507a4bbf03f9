#!/usr/bin/env python3
"""Connection-layer measurements of a `weir serve` binary (BENCHMARKS.md, issue 6).

  conn.py memory WEIR_BIN [--connections 2000]
      Server RSS per idle keep-alive connection (one request answered, then idle)
      and per parked long-poll (a lease with wait_ms 60000 on an empty queue),
      each on a fresh server: (VmRSS with N connections - VmRSS before) / N.

  conn.py flood WEIR_BIN [--nofile 512] [--connections 600] [--batches 40]
      Issue 6's scenario: the server under `prlimit --nofile=N`, N connections
      held open, while one producer connection opened before them enqueues
      batches of 250 tasks with 1 KiB payloads (segments of 4 MiB, so the store
      opens new segment files). Prints the enqueue statuses and /readyz.

Standard library only. Each run starts its own server on a free port with a fresh
data directory and kills it at the end.
"""

import argparse
import json
import os
import socket
import subprocess
import sys
import tempfile
import time


def start(bin_path, data_dir, wrapper=(), extra=()):
    cmd = list(wrapper) + [bin_path, "serve", "--listen", "127.0.0.1:0",
                           "--data-dir", data_dir] + list(extra)
    env = dict(os.environ, WEIR_LOG=os.environ.get("WEIR_LOG", "warn"))
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, env=env, text=True)
    line = proc.stdout.readline().strip()
    prefix = "weir listening on http://"
    if not line.startswith(prefix):
        proc.kill()
        sys.exit(f"unexpected first line {line!r}")
    host, port = line[len(prefix):].rsplit(":", 1)
    return proc, (host, int(port))


def request(sock, method, path, body=b""):
    sock.sendall(
        f"{method} {path} HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\n\r\n".encode() + body)


def read_response(sock):
    buf = b""
    while b"\r\n\r\n" not in buf:
        chunk = sock.recv(65536)
        if not chunk:
            return None
        buf += chunk
    head, rest = buf.split(b"\r\n\r\n", 1)
    lines = head.decode().split("\r\n")
    status = int(lines[0].split(" ")[1])
    length = 0
    for l in lines[1:]:
        name, _, value = l.partition(":")
        if name.strip().lower() == "content-length":
            length = int(value)
    while len(rest) < length:
        chunk = sock.recv(65536)
        if not chunk:
            return None
        rest += chunk
    return status


def rss_kib(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise RuntimeError("no VmRSS")


def settle_rss(pid):
    """VmRSS once it stops moving (allocator and kernel catch up)."""
    last = rss_kib(pid)
    for _ in range(20):
        time.sleep(0.25)
        now = rss_kib(pid)
        if now == last:
            return now
        last = now
    return last


def memory_of(args, kind):
    """Server RSS per connection of `kind` (idle or parked), on a fresh server."""
    n = args.connections
    with tempfile.TemporaryDirectory(dir=args.data_dir) as d:
        proc, addr = start(args.bin, d)
        try:
            warm = socket.create_connection(addr)
            request(warm, "GET", "/healthz")
            read_response(warm)
            before = settle_rss(proc.pid)
            held = []
            body = json.dumps({"wait_ms": 60000}).encode()
            for _ in range(n):
                s = socket.create_connection(addr)
                if kind == "idle":
                    request(s, "GET", "/healthz")
                    assert read_response(s) == 200
                else:
                    request(s, "POST", "/v1/queues/parked/lease", body)
                held.append(s)
            # Every request sent before this one has been read by now.
            request(warm, "GET", "/v1/queues")
            read_response(warm)
            after = settle_rss(proc.pid)
            return {
                f"{kind}_rss_before_kib": before,
                f"{kind}_rss_after_kib": after,
                f"{kind}_bytes_per_connection": round((after - before) * 1024 / n),
            }
        finally:
            proc.kill()
            proc.wait()


def memory(args):
    out = {"connections": args.connections}
    out.update(memory_of(args, "idle"))
    out.update(memory_of(args, "parked"))
    print(json.dumps(out))


def flood(args):
    with tempfile.TemporaryDirectory(dir=args.data_dir) as d:
        proc, addr = start(args.bin, d, wrapper=["prlimit", f"--nofile={args.nofile}:{args.nofile}"],
                           extra=["--segment-bytes", "4194304"])
        try:
            producer = socket.create_connection(addr)
            request(producer, "GET", "/readyz")
            print("readyz before:", read_response(producer))
            held, refused = [], 0
            for _ in range(args.connections):
                s = socket.socket()
                s.settimeout(2)
                try:
                    s.connect(addr)
                    s.sendall(b"GET /healthz HTTP/1.1\r\nHost: t\r\n\r\n")
                    held.append(s)
                except OSError:
                    refused += 1
                    s.close()
            print(f"flood: {len(held)} connections open, {refused} not connected within 2 s")
            time.sleep(1)
            fds = len(os.listdir(f"/proc/{proc.pid}/fd"))
            print(f"server open files: {fds} of {args.nofile}")
            payload = "x" * 1024
            batch = json.dumps({"tasks": [{"payload": payload}] * 250}).encode()
            statuses = {}
            producer.settimeout(30)
            for _ in range(args.batches):
                request(producer, "POST", "/v1/queues/flood/tasks:batch", batch)
                st = read_response(producer)
                statuses[st] = statuses.get(st, 0) + 1
            print("enqueue statuses:", statuses)
            request(producer, "GET", "/readyz")
            print("readyz after:", read_response(producer))
        finally:
            proc.kill()
            proc.wait()


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)
    m = sub.add_parser("memory")
    m.add_argument("bin")
    m.add_argument("--connections", type=int, default=2000)
    f = sub.add_parser("flood")
    f.add_argument("bin")
    f.add_argument("--nofile", type=int, default=512)
    f.add_argument("--connections", type=int, default=600)
    f.add_argument("--batches", type=int, default=40)
    for s in (m, f):
        s.add_argument("--data-dir", default=None, help="where the temporary data dir goes")
    args = p.parse_args()
    {"memory": memory, "flood": flood}[args.cmd](args)


if __name__ == "__main__":
    main()
