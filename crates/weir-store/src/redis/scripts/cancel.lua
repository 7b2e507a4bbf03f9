-- Cancel a queued task, or request the cancel of an active one.
-- KEYS[1]: the slot's task hash. ARGV: base, channel, id.
-- Returns {'nf'}, {'term', state} or {'ok', now, record, worker}.
local id = ARGV[3]
local t = load(id)
if not t then return {'nf'} end
if t.s >= COMPLETED then return {'term', t.s} end
if t.s == ACTIVE then
  if t.cr ~= 1 then
    t.cr = 1
    store(id, t)
  end
  if t.wt == 1 then wake('t' .. id) end
else
  unindex(id, t.q, t)
  count(t.q, t.s, -1)
  finish(id, t.q, CANCELED, t)
end
flush_wakes()
local out = {'ok', fmt(NOW)}
view_into(out, id)
return out
