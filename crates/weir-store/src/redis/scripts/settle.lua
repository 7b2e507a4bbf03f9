-- Ack or fail a batch of leased tasks of one slot, each fenced by its lease id.
-- KEYS[1]: the first task's hash. ARGV: base, channel, backoff base, backoff
-- cap, n, then 6 per item: id, lease id, op ('a' ack without result, 'r' ack
-- with result, 'f' fail), result or error, retry ('1'/'0'), jitter unit in [0,1).
-- Returns one entry per item: the new state, or 'stale'.
local bbase, bcap, n = tonumber(ARGV[3]), tonumber(ARGV[4]), tonumber(ARGV[5])

-- weir_core::Backoff::delay_ms
local function delay_ms(attempt, unit)
  local exp = math.min(math.max(attempt - 1, 0), 63)
  local full = math.min(bbase * (2 ^ exp), bcap)
  local half = math.floor(full / 2)
  local jitter = math.floor((full - half) * unit)
  return half + math.min(jitter, full - half)
end

local out = {}
for i = 0, n - 1 do
  local b = 6 + i * 6
  local id, lease, op = ARGV[b], ARGV[b + 1], ARGV[b + 2]
  local tk = tkey(id)
  local v = redis.call('HMGET', tk, 's', 'l', 'q', 'cr', 'a', 'ma', 'dl', 'rt', 'ik', 'g')
  if v[1] ~= '2' or v[2] ~= lease then
    out[#out + 1] = 'stale'
  else
    local q = v[3]
    local pre = {v[8], v[9], v[10]}
    zrem_later(qkey(q, 'active'), id)
    count(q, ACTIVE, -1)
    local state
    if op ~= 'f' then
      local extra = nil
      if op == 'r' then
        redis.call('HDEL', tk, 'l', 'le', 'w')
        extra = {'r', ARGV[b + 3]}
      else
        redis.call('HDEL', tk, 'l', 'le', 'w', 'r')
      end
      state = COMPLETED
      if v[4] == '1' then state = CANCELED end
      finish(id, q, state, pre, extra)
    else
      redis.call('HDEL', tk, 'l', 'le', 'w')
      local extra = {'e', ARGV[b + 3]}
      local attempt = tonumber(v[5])
      local run_at = NOW + delay_ms(attempt, tonumber(ARGV[b + 5]))
      if v[4] == '1' then
        state = CANCELED
        finish(id, q, state, pre, extra)
      elseif ARGV[b + 4] == '1' and attempt < tonumber(v[6]) and (not v[7] or run_at < tonumber(v[7])) then
        if group_closed(v[10]) then
          state = CANCELED
          finish(id, q, state, pre, extra)
        else
          state = SCHED
          redis.call('HSET', tk, 'e', ARGV[b + 3], 's', SCHED, 'ra', fmt(run_at))
          redis.call('ZADD', qkey(q, 'sched'), run_at, id)
          count(q, SCHED, 1)
          wake('q' .. hex(q))
        end
      else
        state = DEAD
        finish(id, q, state, pre, extra)
      end
    end
    out[#out + 1] = state
  end
end
flush_wakes()
return out
