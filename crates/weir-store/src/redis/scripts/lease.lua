-- Lease up to max pending tasks of one queue, after promoting its due
-- scheduled tasks, ending its expired leases and purging up to max tasks past
-- retention. Tasks past their deadline
-- end dead instead of starting. KEYS[1]: the queue's meta hash.
-- ARGV: base, channel, queue, max, grace, worker ('' for none), then max lease
-- ids (16 bytes each).
-- Flow control (the queue's config in its meta hash: cz paused, cf max in
-- flight, cr rate per second, cb burst, and tat, the rate limiter's state:
-- weir_core::flow::Gcra restated) caps how many it takes.
-- Returns {now, next scheduled run_at or '', next lease expiry or '', next
-- rate token or '' (only while tasks wait for one), then per task: id, record}.
local q, meta = ARGV[3], KEYS[1]
if redis.call('EXISTS', meta) == 0 then return {fmt(NOW), '', '', ''} end
local max, grace, worker = tonumber(ARGV[4]), tonumber(ARGV[5]), ARGV[6]
maintain(q, 1000)
-- Retention keeps pace with leasing: each call also purges up to max finished
-- tasks whose retention ran out (the sweep alone purges a bounded number per
-- round, which a busy queue could outrun).
purge(q, max)
local ready, active, wkey = qkey(q, 'ready'), qkey(q, 'active'), qkey(q, 'w')
local out, nout, got, leased, nleased = {fmt(NOW), '', '', ''}, 4, 0, {}, 0
-- What flow control allows now. The active count is the stored one plus what
-- maintain changed in this call (not yet flushed).
local cfg = redis.call('HMGET', meta, 'cz', 'cf', 'cr', 'cb', 'tat', 'n2')
local allowed = max
if cfg[1] then allowed = 0 end
if cfg[2] then
  local active = (tonumber(cfg[6]) or 0) + ((counts[q] or {})[ACTIVE] or 0)
  allowed = math.min(allowed, math.max(0, tonumber(cfg[2]) - active))
end
local rate, interval, burst, tat, by_rate = tonumber(cfg[3]), 0, 0, 0, false
if rate and allowed > 0 then
  interval = 1000 / rate
  burst = tonumber(cfg[4]) or math.min(math.max(math.ceil(rate), 1), 1000000)
  tat = tonumber(cfg[5]) or 0
  local n = math.floor((NOW + burst * interval - math.max(tat, NOW)) / interval + 1e-9)
  n = math.min(math.max(n, 0), burst)
  if n < allowed then
    allowed = n
    by_rate = true
  end
end
max = allowed
-- The header's first 45 bytes as a lease writes them, but for the lease id
-- and the attempt: one pack per lease expiry.
local NOWB = struct.pack('>i8', NOW)
local heads, attempts = {}, {}
while got < max do
  -- ZRANGE + ZREMRANGEBYRANK rather than ZPOPMIN: no scores to format.
  local popped = redis.call('ZRANGE', ready, 0, max - got - 1)
  if #popped == 0 then break end
  redis.call('ZREMRANGEBYRANK', ready, 0, #popped - 1)
  local ids = {}
  for j = 1, #popped do ids[j] = string.sub(popped[j], RKLEN + 1) end
  prefetch(ids)
  for _, id in ipairs(ids) do
    local rec = cache[id]
    if rec and string.byte(rec, 1) == PENDING then
      count(q, PENDING, -1, id)
      local to, dl, rt, ma, p, g = struct.unpack('>i8i8i8I4i4I4c0', rec, HLEN + 1)
      if group_closed(g) then
        finish(id, q, CANCELED, parse(rec))
      elseif dl >= 0 and NOW >= dl then
        local t = parse(rec)
        t.e = DEADLINE_ERROR
        finish(id, q, DEAD, t)
      else
        got = got + 1
        local exp = clamp(NOW + to + grace)
        local head = heads[exp]
        if not head then
          head = struct.pack('>Bi8', ACTIVE, exp)
          heads[exp] = head
        end
        local a1, a2, a3, a4 = string.byte(rec, 34, 37)
        local a = ((a1 * 256 + a2) * 256 + a3) * 256 + a4 + 1
        local ab = attempts[a]
        if not ab then
          ab = struct.pack('>I4', a)
          attempts[a] = ab
        end
        local nrec = head .. ARGV[6 + got] .. '\0\0\0\0\0\0\0\0' .. ab .. NOWB .. string.sub(rec, 46)
        put(id, nrec)
        nleased = nleased + 2
        leased[nleased - 1] = exp
        leased[nleased] = id
        if worker ~= '' then later(hsets, hsetted, wkey, id, worker) end
        count(q, ACTIVE, 1, id)
        out[nout + 1] = id
        out[nout + 2] = nrec
        nout = nout + 2
      end
    end
  end
end
-- One ZADD for the batch (chunked to stay within Lua's argument limits).
for k = 1, nleased, 1000 do
  redis.call('ZADD', active, unpack(leased, k, math.min(k + 999, nleased)))
end
if rate and got > 0 then
  tat = math.max(tat, NOW) + got * interval
  redis.call('HSET', meta, 'tat', string.format('%.3f', tat))
end
if got > 0 then tally(q, 'tl', got) end
if by_rate and redis.call('ZCARD', ready) > 0 then
  out[4] = fmt(math.ceil(math.max(tat - (burst - 1) * interval, NOW)))
end
flush_wakes()
out[2] = next_score(qkey(q, 'sched'))
out[3] = next_score(active)
return out
