-- Cancel a queued task, or request the cancel of an active one.
-- KEYS[1]: the task's hash. ARGV: base, channel, id.
-- Returns {'nf'}, {'term', state} or {'ok', now, view...}.
local id = ARGV[3]
local tk = KEYS[1]
local v = redis.call('HMGET', tk, 's', 'q', 'rk')
if not v[1] then return {'nf'} end
local st = tonumber(v[1])
if st >= COMPLETED then return {'term', st} end
if st == ACTIVE then
  redis.call('HSET', tk, 'cr', 1)
  wake('t' .. id)
else
  unindex(id, v[2], st, v[3])
  count(v[2], st, -1)
  finish(id, v[2], CANCELED)
end
flush_wakes()
local out = {'ok', fmt(NOW)}
for _, x in ipairs(view(id)) do out[#out + 1] = x end
return out
