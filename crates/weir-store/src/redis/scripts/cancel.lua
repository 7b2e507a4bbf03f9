-- Cancel a queued task, or request the cancel of an active one.
-- KEYS[1]: the slot's task hash. ARGV: base, channel, id.
-- Returns {'nf'}, {'term', state} or {'ok', now, record, worker}.
local id = ARGV[3]
local t = load(id)
if not t then return {'nf'} end
if t.s >= COMPLETED then return {'term', t.s} end
cancel_open(id, t)
flush_wakes()
local out = {'ok', fmt(NOW)}
view_into(out, id)
return out
