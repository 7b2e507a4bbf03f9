-- Read a task. KEYS[1]: the slot's task hash. ARGV: base, channel, id, watch
-- ('1': mark an unfinished task watched, so its end is published).
-- Returns {now, record or '', worker or ''}.
local id = ARGV[3]
if ARGV[4] == '1' then
  local t = load(id)
  if t and t.s < COMPLETED and t.wt ~= 1 then
    t.wt = 1
    store(id, t)
    flush_records()
  end
end
local out = {fmt(NOW)}
view_into(out, id)
return out
