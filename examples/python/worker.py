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

One bad task never costs its batch: a task this worker cannot decode (nested too
deep for Python's json), a result it cannot encode (NaN, infinity, a lone
surrogate) or one the server refuses (too large) fails just that task, without
retry, and the loop goes on.

    python3 worker.py --server http://127.0.0.1:7700 --queue math [--max-tasks N]
"""

import argparse
import json
import os
import re
import signal
import socket
import sys
import urllib.error
import urllib.request

import weir_http
from weir_http import ApiError

# The longest a lease long-polls for the first task, in milliseconds.
LEASE_WAIT_MS = 5000

def call(server, method, path, body=None, timeout=30.0, decode=True):
    """One request to weir (weir_http.call), its retry messages named worker."""
    return weir_http.call(server, method, path, body, timeout, decode, who="worker")


class Permanent(Exception):
    """A failure that retrying cannot fix: the task goes dead at once."""


# Tokens of JSON text: a string, a structural character, or a run of anything else.
TOKEN = re.compile(r'"(?:[^"\\]|\\.)*"|[\[\]{}:,]|[^\s\[\]{}:,"]+')


def split_tasks(text):
    """The JSON text of each task in a lease answer {"tasks": [...]}, found by
    matching brackets outside strings, without decoding anything."""
    tasks, depth, start = [], 0, None
    for m in TOKEN.finditer(text):
        tok = m.group()
        if tok in ("[", "{"):
            depth += 1
            if depth == 3 and tok == "{":
                start = m.start()
        elif tok in ("]", "}"):
            if depth == 3 and start is not None:
                tasks.append(text[start : m.end()])
                start = None
            depth -= 1
    return tasks


def top_level_strings(text):
    """The string-valued fields at the top of one JSON object's text; nested
    values are skipped, not decoded."""
    fields, depth, key, after_colon = {}, 0, None, False
    for m in TOKEN.finditer(text):
        tok = m.group()
        if tok in ("[", "{"):
            depth += 1
        elif tok in ("]", "}"):
            depth -= 1
        elif depth != 1:
            continue
        elif tok == ":":
            after_colon = True
        elif tok == ",":
            key, after_colon = None, False
        elif tok.startswith('"'):
            if after_colon and key is not None:
                fields[key] = json.loads(tok)
            else:
                key = json.loads(tok)
    return fields


def decode_lease(text):
    """The tasks of a lease answer, and the (id, lease_id, error) of each one that
    Python cannot decode (nested past its recursion limit), so those fail alone
    instead of taking their batch with them."""
    try:
        return json.loads(text)["tasks"], []
    except (ValueError, RecursionError):
        pass
    tasks, undecodable = [], []
    for raw in split_tasks(text):
        try:
            tasks.append(json.loads(raw))
        except (ValueError, RecursionError) as e:
            fields = top_level_strings(raw)
            if "id" in fields and "lease_id" in fields:
                error = f"the worker could not decode this task: {e!r}"
                undecodable.append((fields["id"], fields["lease_id"], error))
            else:
                # Nothing to fail it with: its lease runs out instead.
                print(f"worker: a leased task without an id: {e!r}", file=sys.stderr)
    return tasks, undecodable


def text(value):
    """`value` as valid Unicode: an error message may quote a lone surrogate."""
    return str(value).encode("utf-8", "backslashreplace").decode("utf-8")


def encodable(result):
    """`result` if every JSON reader can take it; raises ValueError (NaN,
    infinity), UnicodeError (a lone surrogate) or RecursionError otherwise."""
    json.dumps(result, ensure_ascii=False, allow_nan=False).encode("utf-8")
    return result


def settle(server, acks, fails):
    """Settles a batch in one request. If the server refuses the batch as a whole
    (a result too large, say), settles each task alone, and fails without retry a
    task whose result the server refuses."""
    try:
        outcome = call(server, "POST", "/v1/acks", {"acks": acks, "fails": fails})
        items = outcome["acks"] + outcome["fails"]
    except ApiError as e:
        if not 400 <= e.status < 500:
            raise
        items = []
        for a in acks:
            path = f"/v1/tasks/{a['id']}"
            try:
                call(server, "POST", path + "/ack", {"lease_id": a["lease_id"], "result": a["result"]})
                continue
            except (ApiError, urllib.error.URLError, ConnectionError) as refused:
                # A result over the server's limit may be refused before it is
                # sent whole; the server then closes the connection, and we see
                # a broken pipe instead of the 413.
                if getattr(refused, "status", None) == 409:
                    items.append({"id": a["id"], "error": str(refused)})
                    continue
                error = text(f"the server refused the result: {refused}")
            fails.append({"id": a["id"], "lease_id": a["lease_id"], "error": error, "retry": False})
        for f in fails:
            try:
                call(server, "POST", f"/v1/tasks/{f['id']}/fail", {k: f[k] for k in ("lease_id", "error", "retry")})
            except ApiError as refused:
                items.append({"id": f["id"], "error": str(refused)})
    for item in items:
        if not item.get("ok", False):
            # Typically a lease that ran out: the task was handed out again.
            print(f"worker: task {item['id']} not settled: {item.get('error')}", file=sys.stderr)


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


def run(task):
    """Runs one task; returns its ack or fail item."""
    item = {"id": task["id"], "lease_id": task["lease_id"]}
    try:
        result = handle(task)
    except Permanent as e:
        return {**item, "error": text(e), "retry": False}
    except (RecursionError, UnicodeError) as e:
        # The payload is beyond what this handler can take (too deep, a lone
        # surrogate): the same next time, so no retry.
        return {**item, "error": text(f"the worker could not handle this task: {e!r}"), "retry": False}
    except Exception as e:  # a bug or a transient fault: try again later
        return {**item, "error": text(repr(e)), "retry": True}
    try:
        return {**item, "result": encodable(result)}
    except (ValueError, UnicodeError, RecursionError) as e:
        return {**item, "error": text(f"the worker could not encode this task's result: {e!r}"), "retry": False}


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
        answer = call(
            args.server,
            "POST",
            f"/v1/queues/{queue}/lease",
            {"max": want, "wait_ms": LEASE_WAIT_MS, "worker": name},
            timeout=LEASE_WAIT_MS / 1000 + 30,
            decode=False,
        )
        leased, undecodable = decode_lease(answer)
        if not leased and not undecodable:
            continue
        acks = []
        fails = [{"id": i, "lease_id": lease, "error": error, "retry": False} for i, lease, error in undecodable]
        for task in leased:
            outcome = run(task)
            (fails if "error" in outcome else acks).append(outcome)
        settle(args.server, acks, fails)
        done += len(leased) + len(undecodable)
    print(f"worker: handled {done} tasks", file=sys.stderr)
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except (ApiError, urllib.error.URLError, OSError) as e:
        print(f"worker: {e}", file=sys.stderr)
        sys.exit(1)
