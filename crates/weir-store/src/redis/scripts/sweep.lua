-- Background upkeep of one queue: promotions, expired leases, retention.
-- KEYS[1]: the queue's meta hash. ARGV: base, channel, queue, limit.
-- Returns how many entries it handled (the caller repeats while it is the limit).
local q = ARGV[3]
if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
local limit = tonumber(ARGV[4])
local done = maintain(q, limit) + purge(q, limit)
flush_wakes()
return done
