-- Return a leased task to pending without counting the attempt.
-- KEYS[1]: the task's hash. ARGV: base, channel, id, lease id.
-- Returns the new state, or 'stale'.
local id, lease = ARGV[3], ARGV[4]
local tk = KEYS[1]
local v = redis.call('HMGET', tk, 's', 'l', 'q', 'cr', 'a', 'rk', 'g')
if v[1] ~= '2' or v[2] ~= lease then return 'stale' end
local q = v[3]
redis.call('ZREM', qkey(q, 'active'), id)
count(q, ACTIVE, -1)
redis.call('HDEL', tk, 'l', 'le', 'w')
if tonumber(v[5]) > 0 then redis.call('HINCRBY', tk, 'a', -1) end
local state
if v[4] == '1' then
  state = CANCELED
  finish(id, q, state)
else
  state = requeue(id, q, v[6], v[7])
end
flush_wakes()
return state
