-- Cancel a running group and every open member. KEYS[1]: the group's hash.
-- ARGV: base, channel, group id. Returns {'nf'}, {'term', state} or {'ok'}.
local g = ARGV[3]
local h = gload(g)
if not h then return {'nf'} end
local st = gstate(h)
if st ~= 0 then return {'term', st} end
h.cbr = 1
redis.call('HSET', KEYS[1], 'cbr', 1)
gupdate(g, h)
flush_wakes()
return {'ok'}
