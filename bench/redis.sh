#!/usr/bin/env bash
# weir on the Redis store beside BullMQ on the same Redis, in one sitting (BENCHMARKS.md).
#
#   bench/redis.sh WEIR_BIN [SERVERS] [TASKS] [REDIS_URL]
#
# Starts SERVERS (default 1) `weir serve --store REDIS_URL` processes on free ports
# under a fresh --store-prefix, runs `weir bench --scenario batch --scenario e2e`
# against all of them (`--server a,b,c`: each client goes to the next server), then
# `--scenario drain` on the backlog the batch scenario left (lease and ack only, as
# BullMQ's "process" figure), counts the Redis commands the run cost (INFO
# commandstats before and after), stops the servers and deletes the prefix's keys.
# BullMQ runs from ../shared/bench/peers.
set -euo pipefail
bin=${1:?usage: bench/redis.sh WEIR_BIN [SERVERS] [TASKS] [REDIS_URL]}
servers=${2:-1}
tasks=${3:-200000}
url=${4:-redis://127.0.0.1:6379}
hostport=${url#redis://}; hostport=${hostport%%/*}
host=${hostport%%:*}; port=${hostport##*:}
prefix="weirbench-$(date +%s)-$$"
work=$(mktemp -d)
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  redis-cli -h "$host" -p "$port" --scan --pattern "$prefix:*" | xargs -r -n 1000 redis-cli -h "$host" -p "$port" unlink >/dev/null
  rm -rf "$work"
}
trap cleanup EXIT

bases=()
for i in $(seq 1 "$servers"); do
  "$bin" serve --listen 127.0.0.1:0 --store "$url" --store-prefix "$prefix" >"$work/out$i" 2>"$work/err$i" &
  pids+=($!)
done
for i in $(seq 1 "$servers"); do
  for _ in $(seq 1 300); do grep -q "weir listening on" "$work/out$i" && break; sleep 0.1; done
  addr=$(sed -n 's/^weir listening on //p' "$work/out$i" | head -1)
  [ -n "$addr" ] || { echo "server $i did not start:"; cat "$work/err$i"; exit 1; }
  bases+=("$addr")
done
list=$(IFS=,; echo "${bases[*]}")
# Every command Redis ran (those inside scripts included), and the script calls
# alone (EVALSHA/EVAL: one round trip each, pipelined or not).
calls() { redis-cli -h "$host" -p "$port" info commandstats | awk -F'[=,:]' -v only="${1:-}" '/^cmdstat_/ { if (only == "" || $1 ~ only) n += $3 } END {print n+0}'; }
before=$(calls); before_eval=$(calls 'cmdstat_eval')
echo "# weir on $url, $servers server(s): $list"
"$bin" bench --server "$list" --scenario batch --scenario e2e --tasks "$tasks"
after=$(calls); after_eval=$(calls 'cmdstat_eval')
echo "redis: $((after - before)) commands, $((after_eval - before_eval)) of them script calls, for $((2 * tasks)) tasks enqueued ($tasks batch + $tasks e2e, the e2e ones leased and acked too)"
backlog=$(curl -s "${bases[0]}/v1/queues" | python3 -c 'import json,sys; print(next(q["name"] for q in json.load(sys.stdin)["queues"] if ".batch." in q["name"]))')
"$bin" bench --server "$list" --scenario drain --drain-queue "$backlog"
