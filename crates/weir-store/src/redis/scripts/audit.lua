-- Repairs what was lost outside weir's scripts (eviction, a failover, a hand
-- edit): one HSCAN step over the slot's task hash, each task put back in the
-- index its state names. KEYS[1]: the slot's task hash. ARGV: base, channel,
-- cursor, count. Returns {next cursor, entries restored}.
local fixed = 0
local r = redis.call('HSCAN', TASKS, ARGV[3], 'COUNT', tonumber(ARGV[4]))
local kv = r[2]
for i = 1, #kv, 2 do
  local id = kv[i]
  local t = parse(kv[i + 1])
  local q = t.q
  if t.s == SCHED and not redis.call('ZSCORE', qkey(q, 'sched'), id) then
    redis.call('ZADD', qkey(q, 'sched'), t.ra, id)
    wake('q' .. hex(q))
    fixed = fixed + 1
  elseif t.s == PENDING then
    local member = rk(t.p, t.seq, id)
    if not redis.call('ZSCORE', qkey(q, 'ready'), member) then
      redis.call('ZADD', qkey(q, 'ready'), 0, member)
      wake('q' .. hex(q))
      fixed = fixed + 1
    end
  elseif t.s == ACTIVE and not redis.call('ZSCORE', qkey(q, 'active'), id) then
    local le = t.le
    if le == 0 then le = NOW end
    redis.call('ZADD', qkey(q, 'active'), le, id)
    fixed = fixed + 1
  elseif (t.s == COMPLETED or t.s == CANCELED) and not redis.call('ZSCORE', qkey(q, 'fin'), t.s .. id) then
    local f = t.f
    if f == 0 then f = NOW end
    redis.call('ZADD', qkey(q, 'fin'), fmt(math.max(f + t.rt, NOW + 1)), t.s .. id)
    fixed = fixed + 1
  end
  -- The browsing index of dead and canceled tasks (a store written before it
  -- existed has none).
  local x = XKEY[t.s]
  if x and not redis.call('ZSCORE', qkey(q, x), id) then
    redis.call('ZADD', qkey(q, x), 0, id)
    fixed = fixed + 1
  end
end
flush_wakes()
return {r[1], fixed}
