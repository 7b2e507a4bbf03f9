#!/usr/bin/env python3
"""A weir producer in plain Python: the standard library and weir's HTTP API only.

It enqueues --count tasks in one batch call (alternately kind "add" with payload
{"a", "b"} and kind "upper" with a string payload), then waits for each result with
a long-poll (GET /v1/tasks/{id}?wait_ms=30000) and prints it. Exit code 0 only if
every task completed with the expected result.

    python3 producer.py --server http://127.0.0.1:7700 --queue math --count 10
"""

import argparse
import json
import os
import sys
import time
import urllib.error
import urllib.request

import weir_http
from weir_http import ApiError

# Most tasks one batch enqueue may carry (the server's limit).
BATCH_TASKS_MAX = 1000
# Longest one long-poll asks the server to wait, in milliseconds (its limit is 60000).
WAIT_MS = 30000
TERMINAL = {"completed", "dead", "canceled"}

def call(server, method, path, body=None, timeout=30.0, decode=True):
    """One request to weir (weir_http.call), its retry messages named producer."""
    return weir_http.call(server, method, path, body, timeout, decode, who="producer")


def task_for(i):
    """The i-th task and the result it should produce."""
    if i % 2 == 0:
        return {"kind": "add", "payload": {"a": i, "b": 2 * i}}, 3 * i
    text = f"task number {i}"
    return {"kind": "upper", "payload": text}, text.upper()


def wait(server, task_id, deadline):
    """Long-polls until the task is terminal or the deadline passes."""
    while True:
        task = call(server, "GET", f"/v1/tasks/{task_id}?wait_ms={WAIT_MS}", timeout=WAIT_MS / 1000 + 30)
        if task["state"] in TERMINAL or time.monotonic() >= deadline:
            return task


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--server", default=os.environ.get("WEIR_SERVER", "http://127.0.0.1:7700"))
    parser.add_argument("--queue", required=True)
    parser.add_argument("--count", type=int, default=10)
    parser.add_argument("--timeout", type=float, default=120.0, help="seconds to wait for all results")
    args = parser.parse_args()
    if args.count < 1:
        parser.error("--count must be at least 1")

    queue = urllib.request.quote(args.queue, safe="")
    tasks, expected = zip(*(task_for(i) for i in range(args.count)))
    ids = []
    # One call per 1000 tasks; each call is all durable or none.
    for start in range(0, len(tasks), BATCH_TASKS_MAX):
        chunk = list(tasks[start : start + BATCH_TASKS_MAX])
        ids += call(args.server, "POST", f"/v1/queues/{queue}/tasks:batch", {"tasks": chunk})["ids"]
    print(f"enqueued {len(ids)} tasks into {args.queue}", file=sys.stderr)

    deadline = time.monotonic() + args.timeout
    ok = True
    for task_id, task, want in zip(ids, tasks, expected):
        got = wait(args.server, task_id, deadline)
        if got["state"] == "completed" and got["result"] == want:
            print(f"{task_id} {task['kind']} {json.dumps(task['payload'])} -> {json.dumps(got['result'])}")
        else:
            ok = False
            print(
                f"{task_id} {task['kind']}: state {got['state']}, result {json.dumps(got.get('result'))}, "
                f"expected {json.dumps(want)}; last error: {got.get('last_error')}",
                file=sys.stderr,
            )
    return 0 if ok else 1


if __name__ == "__main__":
    try:
        sys.exit(main())
    except (ApiError, urllib.error.URLError, OSError) as e:
        print(f"producer: {e}", file=sys.stderr)
        sys.exit(1)
