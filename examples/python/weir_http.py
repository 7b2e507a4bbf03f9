"""The one HTTP helper the examples share: a JSON request to weir that waits out
a 429 or 503 (Retry-After) and turns any other error answer into ApiError; the
key in WEIR_API_KEY, if set, goes with it as a bearer token. Standard library
only."""

import json
import os
import random
import sys
import time
import urllib.error
import urllib.request

# Most tries of one call the server refuses for now (429, 503); each waits the
# Retry-After it names.
TRIES_MAX = 5


class ApiError(Exception):
    """A 4xx/5xx answer: the problem document's detail and the status."""

    def __init__(self, status, detail):
        super().__init__(f"HTTP {status}: {detail}")
        self.status = status


def call(server, method, path, body=None, timeout=30.0, decode=True, who="weir"):
    """One request; returns the decoded JSON answer (its text without `decode`),
    raises ApiError on 4xx/5xx. `who` names the caller in the retry messages."""
    data = None if body is None else json.dumps(body).encode()
    headers = {"content-type": "application/json"}
    if os.environ.get("WEIR_API_KEY"):
        headers["authorization"] = "Bearer " + os.environ["WEIR_API_KEY"]
    request = urllib.request.Request(
        server.rstrip("/") + path,
        data=data,
        method=method,
        headers=headers,
    )
    for attempt in range(1, TRIES_MAX + 1):
        try:
            with urllib.request.urlopen(request, timeout=timeout) as response:
                return json.load(response) if decode else response.read().decode("utf-8")
        except urllib.error.HTTPError as e:
            if e.code in (429, 503) and attempt < TRIES_MAX:
                # Nothing was done (over the server's rate limit, or it is briefly
                # unavailable): wait what it asks, plus a little jitter, then again.
                pause = float(e.headers.get("Retry-After", 1)) + random.uniform(0, 0.5)
                e.close()
                print(f"{who}: HTTP {e.code}, retrying in {pause:.1f} s", file=sys.stderr)
                time.sleep(pause)
                continue
            try:
                detail = json.load(e).get("detail", e.reason)
            except ValueError:
                detail = e.reason
            raise ApiError(e.code, detail) from None
