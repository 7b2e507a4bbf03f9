-- One page of a queue's tasks in one state (Broker::browse). KEYS[1]: the
-- queue's meta hash. ARGV: base, channel, queue, state, cursor ('' for the
-- first page), limit. Pending tasks come from 'ready' in dispatch order (the
-- cursor is the last member listed); every other state from its 'x<state>'
-- index, newest id first (the cursor is the last id listed). Returns {the
-- cursor after this page or '' at the end, now, then per task still in the
-- state: id, record without payload}.
local q, state, cursor, limit = ARGV[3], tonumber(ARGV[4]), ARGV[5], tonumber(ARGV[6])
local members
if state == PENDING then
  local from = '-'
  if cursor ~= '' then from = '(' .. cursor end
  members = redis.call('ZRANGE', qkey(q, 'ready'), from, '+', 'BYLEX', 'LIMIT', 0, limit + 1)
else
  local from = '+'
  if cursor ~= '' then from = '(' .. cursor end
  members = redis.call('ZRANGE', qkey(q, XKEY[state]), from, '-', 'BYLEX', 'REV', 'LIMIT', 0, limit + 1)
end
local out = {'', fmt(NOW)}
if #members > limit then
  out[1] = members[limit]
  members[limit + 1] = nil
end
local ids = {}
for i, m in ipairs(members) do
  if state == PENDING then ids[i] = string.sub(m, RKLEN + 1) else ids[i] = m end
end
prefetch(ids)
for _, id in ipairs(ids) do
  local rec = cache[id]
  -- A scheduled task that is due reads as pending (decode.rs), so it is left
  -- out of 'scheduled' here, as the embedded store leaves it out.
  if rec and alive(rec) and string.byte(rec, 1) == state then
    out[#out + 1] = id
    out[#out + 1] = bare(rec)
  end
end
return out
