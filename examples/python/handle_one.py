#!/usr/bin/env python3
"""Runs one weir task, for `weir worker --exec`: the payload (JSON) arrives on
stdin and the kind in WEIR_KIND; the result goes to stdout as JSON with exit 0,
and a failure to stderr with a non-zero exit (weir then fails the attempt, which is
retried with backoff until the task's max_attempts are spent).

    weir worker --queue math --concurrency 8 --exec 'python3 examples/python/handle_one.py'

The handlers are worker.py's (add {"a": 1, "b": 2} -> 3, upper "text" -> "TEXT"),
so the same tasks can go to either kind of worker.
"""

import json
import os
import sys

from worker import handle


def main():
    task = {"kind": os.environ.get("WEIR_KIND", ""), "payload": json.load(sys.stdin)}
    try:
        result = handle(task)
    except Exception as e:  # worker.py's Permanent included: exit non-zero, say why
        print(f"{task['kind']}: {e}", file=sys.stderr)
        return 1
    json.dump(result, sys.stdout)
    return 0


if __name__ == "__main__":
    sys.exit(main())
