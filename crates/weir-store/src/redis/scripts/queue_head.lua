-- How long a queue's next task to lease (the head of 'ready': highest
-- priority, then FIFO) has been ready, in ms by Redis' clock: since its run_at,
-- or its creation if later. KEYS[1]: the queue's meta hash. ARGV: base,
-- channel, queue. Returns -1 with nothing pending. Reads only.
local q = ARGV[3]
local head = redis.call('ZRANGE', qkey(q, 'ready'), 0, 0)
if #head == 0 then return -1 end
local rec = get(string.sub(head[1], RKLEN + 1))
if not rec then return -1 end
local _, _, _, _, _, _, _, _, ra, c = struct.unpack(HFMT, rec)
return math.max(NOW - math.max(ra, c), 0)
