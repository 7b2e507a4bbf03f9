-- Ack or fail a batch of leased tasks of one slot, each fenced by its lease id.
-- KEYS[1]: the slot's task hash. ARGV: base, channel, backoff base, backoff
-- cap, n, then 4 per item: id, lease id (16 bytes), op, result or error. op is
-- 'a' (ack without result), 'r' (ack with result) or 'f' + retry ('1'/'0') +
-- a jitter unit in [0,1) (a fail).
-- Returns one entry per item: the new state, or 'stale'; then, per queue with
-- settled items, its name and their run times (now - started, ms) joined by
-- ',' (for the run-time histogram).
local bbase, bcap, n = tonumber(ARGV[3]), tonumber(ARGV[4]), tonumber(ARGV[5])
local W = 4

-- weir_core::Backoff::delay_ms
local function delay_ms(attempt, unit)
  local exp = math.min(math.max(attempt - 1, 0), 63)
  local full = math.min(bbase * (2 ^ exp), bcap)
  local half = math.floor(full / 2)
  local jitter = math.floor((full - half) * unit)
  return half + math.min(jitter, full - half)
end

-- An ack's first 33 header bytes, per end state: state, no lease, finished now.
local acked = {}
local function ack_head(state)
  local h = acked[state]
  if not h then
    h = struct.pack('>Bi8c16i8', state, 0, NOLEASE, NOW)
    acked[state] = h
  end
  return h
end

local ids = {}
for i = 0, n - 1 do ids[i + 1] = ARGV[6 + i * W] end
prefetch(ids)
local out = {}
local runs, run_queues = {}, {}
for i = 0, n - 1 do
  local b = 6 + i * W
  local id, lease, op = ARGV[b], ARGV[b + 1], ARGV[b + 2]
  local rec = get(id)
  if not rec or string.byte(rec, 1) ~= ACTIVE or string.sub(rec, 10, 25) ~= lease then
    out[i + 1] = 'stale'
  else
    local to, dl, rt, ma, p, g, ik, q = struct.unpack(D8, rec, HLEN + 1)
    local started = struct.unpack('>i8', rec, 38)
    if started > 0 then
      local r = entry(runs, run_queues, q)
      r[#r + 1] = math.max(NOW - started, 0)
    end
    unlease(q, id)
    count(q, ACTIVE, -1, id)
    local state
    if op ~= 'f' and string.byte(op, 1) ~= 102 then
      -- The fast path: a new header start, the result appended to the tail.
      local cr, wt = string.byte(rec, 46, 47)
      state = COMPLETED
      if cr == 1 then state = CANCELED end
      if op == 'r' then
        put(id, ack_head(state) .. string.sub(rec, 34) .. ARGV[b + 3])
      else
        put(id, ack_head(state) .. string.sub(rec, 34))
      end
      ended(id, q, state, rt, ik, g, wt)
    else
      local t = parse(rec)
      t.e = ARGV[b + 3]
      local retry, unit = string.sub(op, 2, 2), tonumber(string.sub(op, 3))
      local run_at = NOW + delay_ms(t.a, unit)
      if t.cr == 1 then
        state = CANCELED
        finish(id, q, state, t)
      elseif retry == '1' and t.a < t.ma and (t.dl < 0 or run_at < t.dl) then
        if group_closed(g) then
          state = CANCELED
          finish(id, q, state, t)
        else
          state = SCHED
          t.s, t.ra, t.le, t.l = SCHED, run_at, 0, NOLEASE
          tally(q, 'tr', 1)
          store(id, t)
          redis.call('ZADD', qkey(q, 'sched'), run_at, id)
          count(q, SCHED, 1, id)
          wake('q' .. hex(q))
        end
      else
        state = DEAD
        finish(id, q, state, t)
      end
    end
    out[i + 1] = state
  end
end
flush_wakes()
for _, q in ipairs(run_queues) do
  out[#out + 1] = q
  out[#out + 1] = table.concat(runs[q], ',')
end
return out
