-- One page of a queue's tasks in one state (Broker::browse). KEYS[1]: the
-- queue's meta hash. ARGV: base, channel, queue, state, cursor ('' for the
-- first page), limit. Returns {the cursor after this page or '' at the end,
-- now, then per task still in the state: id, record without payload}; a page
-- may be short and still have a cursor.
--
-- Pending tasks come from 'ready' in dispatch order (the cursor is the last
-- member listed). Scheduled, active and completed ones come from the indexes
-- those states keep anyway, highest score first: 'sched' by run time, 'active'
-- by lease expiry, 'fin' by retention end (its completed members, '3' .. id;
-- canceled ones are skipped, at most SCAN_MAX members per call); equal scores
-- by id, highest first. The cursor is '<score>.<id>' of the last task listed.
-- A task's score only grows while it stays in one of these states (a heartbeat
-- extends, a retry's backoff lands after the walk began, a finished task never
-- moves), so a walk downwards never meets a task it listed. Dead and canceled
-- tasks come from their 'x<state>' index, newest id first (the cursor is the
-- last id listed).
local q, state, cursor, limit = ARGV[3], tonumber(ARGV[4]), ARGV[5], tonumber(ARGV[6])
local SCORED = {[SCHED] = {'sched', ''}, [ACTIVE] = {'active', ''}, [COMPLETED] = {'fin', '3'}}
local SCAN_MAX = 5000
local out = {'', fmt(NOW)}
local ids = {}

-- Whether a sorts before b byte by byte, as Redis orders equal scores (Lua's
-- own '<' follows the server's locale).
local function before(a, b)
  for i = 1, math.min(#a, #b) do
    local x, y = string.byte(a, i), string.byte(b, i)
    if x ~= y then return x < y end
  end
  return #a < #b
end

-- The ascending index at which the members below (score s, member m) begin:
-- m's own rank if it is still there at s, else found by bisecting the members
-- of score s (which sort by member).
local function position(key, s, m)
  local at = redis.call('ZSCORE', key, m)
  if at and tonumber(at) == tonumber(s) then return redis.call('ZRANK', key, m) end
  local lo = redis.call('ZCOUNT', key, '-inf', '(' .. s)
  local hi = lo + redis.call('ZCOUNT', key, s, s)
  while lo < hi do
    local mid = math.floor((lo + hi) / 2)
    if before(redis.call('ZRANGE', key, mid, mid)[1], m) then lo = mid + 1 else hi = mid end
  end
  return lo
end

local scored = SCORED[state]
if state == PENDING then
  local from = '-'
  if cursor ~= '' then from = '(' .. cursor end
  local members = redis.call('ZRANGE', qkey(q, 'ready'), from, '+', 'BYLEX', 'LIMIT', 0, limit + 1)
  if #members > limit then
    out[1] = members[limit]
    members[limit + 1] = nil
  end
  for i, m in ipairs(members) do ids[i] = string.sub(m, RKLEN + 1) end
elseif scored then
  local key, prefix = qkey(q, scored[1]), scored[2]
  local p
  if cursor == '' then
    p = redis.call('ZCARD', key)
  else
    local dot = string.find(cursor, '.', 1, true)
    p = position(key, string.sub(cursor, 1, dot - 1), prefix .. string.sub(cursor, dot + 1))
  end
  local found, scanned, cursors, last = 0, 0, {}, nil
  while p > 0 and found <= limit and scanned < SCAN_MAX do
    local n = math.min(p, math.max(limit + 1 - found, 64), SCAN_MAX - scanned)
    local r = redis.call('ZRANGE', key, p - n, p - 1, 'WITHSCORES')
    p = p - n
    for i = #r - 1, 1, -2 do
      local m = r[i]
      scanned = scanned + 1
      last = fmt(tonumber(r[i + 1])) .. '.' .. string.sub(m, #prefix + 1)
      if prefix == '' or string.sub(m, 1, 1) == prefix then
        found = found + 1
        if found > limit then break end
        ids[found] = string.sub(m, #prefix + 1)
        cursors[found] = last
      end
    end
  end
  if found > limit then
    out[1] = cursors[limit]
  elseif p > 0 and last then
    -- The scan budget ran out first: go on below the last member read.
    out[1] = last
  end
else
  local from = '+'
  if cursor ~= '' then from = '(' .. cursor end
  ids = redis.call('ZRANGE', qkey(q, XKEY[state]), from, '-', 'BYLEX', 'REV', 'LIMIT', 0, limit + 1)
  if #ids > limit then
    out[1] = ids[limit]
    ids[limit + 1] = nil
  end
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
