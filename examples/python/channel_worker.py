#!/usr/bin/env python3
"""A weir worker on the worker channel: one WebSocket instead of HTTP long-polls.

It runs worker.py's handlers (add, upper; other kinds fail without retry) on the
tasks of --queue, up to --concurrency at once, over GET /v1/workers/connect
(docs/design/worker-channel.md). One JSON object per text frame:

    worker -> server  hello {queues, worker, credit}       first, once
                      credit {n}                           n more tasks may come
                      settle {seq, acks, fails, releases}  outcomes, in batches
                      bye                                  push nothing more
    server -> worker  welcome {queues, refused, ...}       the answer to hello
                      tasks {tasks: [...]}                 leased, one credit each
                      cancel {id, lease_id}                stop it (it is failed)
                      settled {seq, acks, fails, releases} settle seq's outcomes
                      settled {seq, error}                 refused as a whole: send again
                      error {problem}                      then the channel closes

The server pushes no more tasks than the credit granted, and extends the leases
of what the worker holds while the channel lives (no heartbeats). This worker
grants one credit back per finished task, so it never holds more than
--concurrency. A channel that drops is opened again with backoff (0.1 s doubling
to 5 s) and the settles it did not answer are sent again (a repeated ack is
answered with the task's state). A settle the server refuses whole (a result
over its limit, say) goes over HTTP instead, where worker.settle fails just the
refused task. SIGTERM or Ctrl-C: bye, finish what runs, settle it, exit 0; with
--max-tasks N the same once N tasks are settled. WEIR_API_KEY, if set, is sent
as a bearer token.

Needs the websockets library, >= 13 (pip install -r requirements-channel.txt).

    python3 channel_worker.py --server http://127.0.0.1:7700 --queue math [--concurrency 4] [--max-tasks N]
"""

import argparse
import asyncio
import contextlib
import json
import os
import signal
import socket
import sys
import threading
import urllib.parse

try:  # websockets >= 13: the asyncio client and its additional_headers
    from websockets.asyncio.client import connect
    from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidStatus
except ImportError:
    sys.exit("channel_worker: needs websockets >= 13: pip install -r requirements-channel.txt")

import worker  # the handlers (worker.run), decode_lease, settle and call over HTTP
from weir_http import ApiError

BACKOFF_MIN, BACKOFF_MAX = 0.1, 5.0  # seconds before reconnecting
BATCH_WAIT = 0.005  # seconds outcomes gather before a settle goes out
RESEND_WAIT = 1.0  # seconds before a settle refused as a whole goes out again
SETTLE_MAX = 100  # items per settle


def log(message):
    print(f"channel_worker: {message}", file=sys.stderr)


class Fatal(Exception):
    """Reconnecting cannot help: a refused key or queue, say."""


class Refused(Exception):
    """The server answered `error` and closed the channel."""


def decode(text):
    """A server message, and the (id, lease_id, error) of each task in it that
    Python's json cannot decode (worker.decode_lease: those fail alone)."""
    try:
        return json.loads(text), []
    except (ValueError, RecursionError):
        tasks, undecodable = worker.decode_lease(text)
        return {"type": "tasks", "tasks": tasks}, undecodable


async def in_thread(fn, arg):
    """fn(arg) in a thread of its own, so a slow handler never stalls the channel
    (its pings); a daemon thread, so one left running by a cancel never holds up
    the exit."""
    loop = asyncio.get_running_loop()
    done = loop.create_future()

    def target():
        result = fn(arg)
        with contextlib.suppress(RuntimeError):  # the loop is gone: nobody waits
            loop.call_soon_threadsafe(lambda: done.cancelled() or done.set_result(result))

    threading.Thread(target=target, daemon=True).start()
    return await done


class ChannelWorker:
    def __init__(self, args):
        self.args = args
        self.running = {}  # lease id -> the asyncio task running that task
        self.outcomes = []  # ("acks" | "fails" | "releases", item), not sent yet
        self.unanswered = {}  # seq -> settle sent and not answered yet
        self.seq = 0
        self.credit = 0  # granted on this channel, not spent yet
        self.held = 0  # tasks taken to run, their settle not answered yet
        self.done = 0  # tasks acked or failed (the server's answer ok)
        self.stopping = False  # SIGTERM, Ctrl-C or --max-tasks: bye
        self.wake = asyncio.Event()  # the sender has something to do
        self.backoff = BACKOFF_MIN

    def stop(self):
        self.stopping = True
        self.wake.set()

    def idle(self):
        return not (self.running or self.outcomes or self.unanswered)

    def full(self):
        """--max-tasks are done or running: take no more."""
        return self.args.max_tasks and self.done + self.held >= self.args.max_tasks

    def more_credit(self):
        """Free slots not yet granted. With --max-tasks, no more than are left but
        one per queue (an idle queue's long-poll holds one; a task over is released)."""
        if self.stopping or self.full():
            return 0
        n = self.args.concurrency - len(self.running) - self.credit
        if self.args.max_tasks:
            left = self.args.max_tasks - self.done - self.held
            n = min(n, max(left, len(self.args.queue)) - self.credit)
        return max(n, 0)

    def settled(self, answered, ok):
        self.held -= answered
        self.done += ok
        if self.args.max_tasks and self.done >= self.args.max_tasks:
            self.stop()

    async def run(self, task):
        try:
            outcome = await in_thread(worker.run, task)
        except asyncio.CancelledError:
            log(f"task {task['id']} canceled")
            outcome = {"id": task["id"], "lease_id": task["lease_id"], "error": "canceled", "retry": False}
        self.outcomes.append(("fails" if "error" in outcome else "acks", outcome))
        del self.running[task["lease_id"]]
        self.wake.set()

    def receive(self, text):
        msg, undecodable = decode(text)
        kind = msg.get("type")
        if kind == "tasks":
            self.credit -= len(msg["tasks"]) + len(undecodable)
            self.held += len(undecodable)
            for i, lease, error in undecodable:
                self.outcomes.append(("fails", {"id": i, "lease_id": lease, "error": error, "retry": False}))
            for task in msg["tasks"]:
                if self.stopping or self.full():  # pushed before bye, or one over: not started
                    self.outcomes.append(("releases", {"id": task["id"], "lease_id": task["lease_id"]}))
                else:
                    self.held += 1
                    self.running[task["lease_id"]] = asyncio.create_task(self.run(task))
            self.wake.set()
        elif kind == "cancel":
            if running := self.running.get(msg["lease_id"]):
                running.cancel()
        elif kind == "settled" and "error" in msg:
            # Refused as a whole (the store away or busy): the same items again,
            # after a pause; the channel stays open.
            log(f"settle {msg['seq']} refused: {msg['error'].get('detail')}; sending it again")
            # Unanswered until then, so the worker does not stop meanwhile.
            def again(seq=msg["seq"]):
                if sent := self.unanswered.pop(seq, None):
                    for kind in ("acks", "fails", "releases"):
                        self.outcomes.extend((kind, item) for item in sent[kind])
                    self.wake.set()
            asyncio.get_running_loop().call_later(RESEND_WAIT, again)
        elif kind == "settled":
            self.unanswered.pop(msg["seq"], None)
            for item in msg["acks"] + msg["fails"] + msg["releases"]:
                if not item.get("ok"):  # typically a lease that ran out
                    log(f"task {item['id']} not settled: {item.get('error')}")
            ok = sum(1 for item in msg["acks"] + msg["fails"] if item.get("ok"))
            self.settled(len(msg["acks"]) + len(msg["fails"]), ok)
            self.wake.set()
        elif kind == "error":
            raise Refused(msg["problem"].get("detail"))

    async def send_all(self, ws):
        """Credit, settles and bye as they are due; closes once all is settled."""
        bye = False
        while True:
            await self.wake.wait()
            self.wake.clear()
            await asyncio.sleep(BATCH_WAIT)
            if n := self.more_credit():
                self.credit += n
                await ws.send(json.dumps({"type": "credit", "n": n}))
            while self.outcomes:
                batch, self.outcomes = self.outcomes[:SETTLE_MAX], self.outcomes[SETTLE_MAX:]
                self.seq += 1
                msg = {"type": "settle", "seq": self.seq, "acks": [], "fails": [], "releases": []}
                for kind, item in batch:
                    msg[kind].append(item)
                self.unanswered[self.seq] = msg
                await ws.send(json.dumps(msg))
            if self.stopping and not bye:
                bye = True
                await ws.send(json.dumps({"type": "bye"}))
            if bye and self.idle():
                await ws.close()
                return

    async def session(self, url, headers):
        """One channel, until it closes."""
        async with connect(url, additional_headers=headers, max_size=None) as ws:
            self.credit = 0  # what a dropped channel had left went with it
            self.credit = self.more_credit()
            name = f"python-channel@{socket.gethostname()}:{os.getpid()}"
            await ws.send(json.dumps({"type": "hello", "queues": self.args.queue, "worker": name, "credit": self.credit}))
            welcome, _ = decode(await ws.recv())
            if welcome.get("type") != "welcome":
                raise Fatal(welcome.get("problem", {}).get("detail", welcome))
            for r in welcome["refused"]:
                log(f"queue {r['queue']} refused: {r['problem'].get('detail')}")
            if not welcome["queues"]:
                raise Fatal("no queue accepted")
            log(f"connected to {url}: queues {', '.join(welcome['queues'])}, credit {self.credit}")
            self.backoff = BACKOFF_MIN
            for seq in sorted(self.unanswered):  # from a channel that dropped
                await ws.send(json.dumps(self.unanswered[seq]))
            self.wake.set()
            sender = asyncio.create_task(self.send_all(ws))
            try:
                async for text in ws:
                    self.receive(text)
            finally:
                sender.cancel()
                with contextlib.suppress(asyncio.CancelledError, ConnectionClosed):
                    await sender

    def settle_over_http(self, msg):
        acks, fails = list(msg["acks"]), list(msg["fails"])
        worker.settle(self.args.server, acks, fails)  # fails a refused result alone
        for r in msg["releases"]:
            try:
                worker.call(self.args.server, "POST", f"/v1/tasks/{r['id']}/release", {"lease_id": r["lease_id"]})
            except ApiError as e:
                log(f"task {r['id']} not released: {e}")

    async def main(self):
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self.stop)
        u = urllib.parse.urlsplit(self.args.server)
        scheme = {"http": "ws", "https": "wss"}[u.scheme]
        url = urllib.parse.urlunsplit((scheme, u.netloc, u.path.rstrip("/") + "/v1/workers/connect", "", ""))
        key = os.environ.get("WEIR_API_KEY")
        headers = {"Authorization": f"Bearer {key}"} if key else {}
        while True:
            try:
                await self.session(url, headers)
                if not (self.stopping and self.idle()):
                    log("the server closed the channel")
            except InvalidStatus as e:
                status = e.response.status_code
                if 400 <= status < 500 and status != 429 or status == 501:
                    detail = e.response.body.decode("utf-8", "replace") if e.response.body else ""
                    raise Fatal(f"{e}: {detail}") from None
                log(f"channel refused: {e}")
            except Refused as e:
                log(f"the server closed the channel: {e}")
                for seq in sorted(self.unanswered):  # a settle it refused, say: over HTTP
                    try:
                        await asyncio.to_thread(self.settle_over_http, self.unanswered[seq])
                    except (ApiError, OSError) as e:
                        log(f"settling over HTTP failed: {e}")
                        break
                    msg = self.unanswered.pop(seq)
                    n = len(msg["acks"]) + len(msg["fails"])  # worker.settle logs the refused
                    self.settled(n, n)
            except (OSError, ConnectionClosed, InvalidHandshake, asyncio.TimeoutError) as e:
                log(f"channel lost: {type(e).__name__}: {e}")
            if self.stopping and self.idle():
                break
            log(f"reconnecting in {self.backoff:.1f} s")
            await asyncio.sleep(self.backoff)
            self.backoff = min(self.backoff * 2, BACKOFF_MAX)
        log(f"handled {self.done} tasks")
        return 0


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--server", default=os.environ.get("WEIR_SERVER", "http://127.0.0.1:7700"))
    parser.add_argument("--queue", required=True, action="append", help="repeat for more queues (up to 16)")
    parser.add_argument("--concurrency", type=int, default=4, help="tasks run at once (1-1000)")
    parser.add_argument("--max-tasks", type=int, default=0, help="exit after this many (0: run until SIGTERM)")
    args = parser.parse_args()
    if not 1 <= args.concurrency <= 1000:
        parser.error("--concurrency must be between 1 and 1000")
    if urllib.parse.urlsplit(args.server).scheme not in ("http", "https"):
        parser.error("--server must be an http:// or https:// address")
    return asyncio.run(ChannelWorker(args).main())


if __name__ == "__main__":
    try:
        sys.exit(main())
    except Fatal as e:
        print(f"channel_worker: {e}", file=sys.stderr)
        sys.exit(1)
