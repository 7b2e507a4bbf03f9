-- Return a leased task to pending without counting the attempt.
-- KEYS[1]: the slot's task hash. ARGV: base, channel, id, lease id.
-- Returns the new state, or 'stale'.
local id, lease = ARGV[3], ARGV[4]
local rec = get(id)
if not rec then return 'stale' end
local t = parse(rec)
if t.s ~= ACTIVE or t.l ~= lease then return 'stale' end
local q = t.q
unlease(q, id)
count(q, ACTIVE, -1, id)
if t.a > 0 then t.a = t.a - 1 end
local state
if t.cr == 1 then
  state = CANCELED
  finish(id, q, state, t)
else
  state = requeue(id, q, t)
end
flush_wakes()
return state
