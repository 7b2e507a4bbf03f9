#!/usr/bin/env python3
"""A weir worker in plain Python: the standard library and weir's HTTP API only.

It loops: lease up to --batch tasks (long-polling up to 5 s), run each one, then
settle the whole batch with one POST /v1/acks. Handlers by kind:

    add    payload {"a": 1, "b": 2}  -> result 3
    upper  payload "text"            -> result "TEXT"
    other kinds fail without retry (the task goes dead at once)

A handler that raises fails the task with retry, so the server schedules it again
with backoff until its max_attempts are spent. Delivery is at-least-once: a task
whose lease runs out (this process died or hung) is handed out again, so handlers
must be idempotent.

    python3 worker.py --server http://127.0.0.1:7700 --queue math [--max-tasks N]
"""

import argparse
import json
import os
import signal
import socket
import sys
import urllib.error
import urllib.request

# The longest a lease long-polls for the first task, in milliseconds.
LEASE_WAIT_MS = 5000


class ApiError(Exception):
    """A 4xx/5xx answer: the problem document's detail and the status."""

    def __init__(self, status, detail):
        super().__init__(f"HTTP {status}: {detail}")
        self.status = status


def call(server, method, path, body=None, timeout=30.0):
    """One JSON request; returns the decoded answer, raises ApiError on 4xx/5xx."""
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(
        server.rstrip("/") + path,
        data=data,
        method=method,
        headers={"content-type": "application/json"},
    )
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return json.load(response)
    except urllib.error.HTTPError as e:
        try:
            detail = json.load(e).get("detail", e.reason)
        except ValueError:
            detail = e.reason
        raise ApiError(e.code, detail) from None


class Permanent(Exception):
    """A failure that retrying cannot fix: the task goes dead at once."""


def handle(task):
    """Runs one task and returns its result (any JSON value)."""
    kind, payload = task["kind"], task["payload"]
    if kind == "add":
        return payload["a"] + payload["b"]
    if kind == "upper":
        if not isinstance(payload, str):
            raise Permanent(f"upper wants a string payload, got {payload!r}")
        return payload.upper()
    raise Permanent(f"no handler for kind {kind!r}")


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--server", default=os.environ.get("WEIR_SERVER", "http://127.0.0.1:7700"))
    parser.add_argument("--queue", required=True)
    parser.add_argument("--max-tasks", type=int, default=0, help="exit after this many (0: run until SIGTERM)")
    parser.add_argument("--batch", type=int, default=10, help="tasks per lease (1-1000)")
    args = parser.parse_args()
    if not 1 <= args.batch <= 1000:
        parser.error("--batch must be between 1 and 1000")

    # SIGTERM (and Ctrl-C) end the loop between batches: a leased batch is always
    # settled first, so nothing waits for its lease to run out.
    stopping = []
    signal.signal(signal.SIGTERM, lambda *_: stopping.append(True))
    signal.signal(signal.SIGINT, lambda *_: stopping.append(True))

    name = f"python@{socket.gethostname()}:{os.getpid()}"
    queue = urllib.request.quote(args.queue, safe="")
    done = 0
    while not stopping and (args.max_tasks == 0 or done < args.max_tasks):
        want = args.batch if args.max_tasks == 0 else min(args.batch, args.max_tasks - done)
        leased = call(
            args.server,
            "POST",
            f"/v1/queues/{queue}/lease",
            {"max": want, "wait_ms": LEASE_WAIT_MS, "worker": name},
            timeout=LEASE_WAIT_MS / 1000 + 30,
        )["tasks"]
        if not leased:
            continue
        acks, fails = [], []
        for task in leased:
            try:
                result = handle(task)
                acks.append({"id": task["id"], "lease_id": task["lease_id"], "result": result})
            except Permanent as e:
                fails.append({"id": task["id"], "lease_id": task["lease_id"], "error": str(e), "retry": False})
            except Exception as e:  # a bug or a transient fault: try again later
                fails.append({"id": task["id"], "lease_id": task["lease_id"], "error": repr(e), "retry": True})
        outcome = call(args.server, "POST", "/v1/acks", {"acks": acks, "fails": fails})
        for item in outcome["acks"] + outcome["fails"]:
            if not item.get("ok"):
                # Typically a lease that ran out: the task was handed out again.
                print(f"worker: task {item['id']} not settled: {item.get('error')}", file=sys.stderr)
        done += len(leased)
    print(f"worker: handled {done} tasks", file=sys.stderr)
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except (ApiError, urllib.error.URLError, OSError) as e:
        print(f"worker: {e}", file=sys.stderr)
        sys.exit(1)
