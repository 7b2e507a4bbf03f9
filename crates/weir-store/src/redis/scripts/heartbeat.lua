-- Extend a lease. KEYS[1]: the task's hash. ARGV: base, channel, id, lease id, grace.
-- Returns {lease expiry, cancel requested, now} or 'stale'.
local id, lease, grace = ARGV[3], ARGV[4], tonumber(ARGV[5])
local tk = KEYS[1]
local v = redis.call('HMGET', tk, 's', 'l', 'q', 'to', 'le', 'cr')
if v[1] ~= '2' or v[2] ~= lease then return 'stale' end
local le = math.max(tonumber(v[5]) or 0, NOW + tonumber(v[4]) + grace)
redis.call('HSET', tk, 'le', fmt(le))
redis.call('ZADD', qkey(v[3], 'active'), le, id)
return {fmt(le), tonumber(v[6]), fmt(NOW)}
