-- Repairs index entries lost outside weir's scripts (eviction, a failover, a
-- hand edit): each given task hash is put back in the index its state names.
-- KEYS[1]: the first task's hash. ARGV: base, channel, ids... (one slot).
-- Returns how many entries it restored.
local fixed = 0
for i = 3, #ARGV do
  local id = ARGV[i]
  local tk = tkey(id)
  local v = redis.call('HMGET', tk, 's', 'q', 'rk', 'ra', 'le', 'f', 'rt')
  if v[1] and v[2] then
    local st, q = tonumber(v[1]), v[2]
    if st == SCHED and not redis.call('ZSCORE', qkey(q, 'sched'), id) then
      redis.call('ZADD', qkey(q, 'sched'), tonumber(v[4]), id)
      wake('q' .. hex(q))
      fixed = fixed + 1
    elseif st == PENDING and not redis.call('ZSCORE', qkey(q, 'ready'), v[3]) then
      redis.call('ZADD', qkey(q, 'ready'), 0, v[3])
      wake('q' .. hex(q))
      fixed = fixed + 1
    elseif st == ACTIVE and not redis.call('ZSCORE', qkey(q, 'active'), id) then
      redis.call('ZADD', qkey(q, 'active'), tonumber(v[5]) or NOW, id)
      fixed = fixed + 1
    elseif (st == COMPLETED or st == CANCELED) and not redis.call('ZSCORE', qkey(q, 'fin'), st .. id) then
      local exp = math.max((tonumber(v[6]) or NOW) + tonumber(v[7]), NOW + 1)
      redis.call('ZADD', qkey(q, 'fin'), exp, st .. id)
      redis.call('PEXPIREAT', tk, fmt(exp))
      redis.call('PEXPIREAT', pkey(id), fmt(exp))
      fixed = fixed + 1
    end
  end
end
flush_wakes()
return fixed
