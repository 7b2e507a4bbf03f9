-- Change a queue's flow-control settings, creating the queue if needed.
-- KEYS[1]: the queue's meta hash. ARGV: base, channel, queue, then the five
-- settings in order (cr rate per second, cb burst, cf max in flight, cp max
-- pending, cz paused): '-' leaves one as it is, '' clears it, else its value.
-- Returns {new_queue, cr, cb, cf, cp, cz} ('' for an unset one).
local q, meta = ARGV[3], KEYS[1]
local new_queue = redis.call('HEXISTS', meta, 'reg') == 0 and 1 or 0
-- A queue exists once its meta has a sequence (what an enqueue starts).
redis.call('HSETNX', meta, 'seq', 0)
local fields = {'cr', 'cb', 'cf', 'cp', 'cz'}
for i, f in ipairs(fields) do
  local v = ARGV[3 + i]
  if v == '' then
    redis.call('HDEL', meta, f)
  elseif v ~= '-' then
    redis.call('HSET', meta, f, v)
  end
end
local c = redis.call('HMGET', meta, unpack(fields))
local out = {new_queue}
for i = 1, 5 do out[i + 1] = c[i] or '' end
-- Parked leases judge the new settings at once (a resume, a raised cap).
wake('q' .. hex(q))
flush_wakes()
return out
