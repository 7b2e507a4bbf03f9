-- Delete an empty queue. KEYS[1]: the queue's meta hash. ARGV: base, channel, queue.
-- Returns {'nf'}, {'ne', n0..n5} or {'ok'}.
local q, meta = ARGV[3], KEYS[1]
if redis.call('EXISTS', meta) == 0 then return {'nf'} end
maintain(q, 1000)
while purge(q, 1000) == 1000 do end
flush_counts()
local c = redis.call('HMGET', meta, 'n0', 'n1', 'n2', 'n3', 'n4', 'n5')
local total = 0
for i = 1, 6 do c[i] = tonumber(c[i]) or 0; total = total + c[i] end
flush_wakes()
if total > 0 then return {'ne', c[1], c[2], c[3], c[4], c[5], c[6]} end
local gone = {meta, qkey(q, 'ready'), qkey(q, 'sched'), qkey(q, 'active'), qkey(q, 'fin'), qkey(q, 'w')}
for _, x in pairs(XKEY) do gone[#gone + 1] = qkey(q, x) end
redis.call('DEL', unpack(gone))
return {'ok'}
