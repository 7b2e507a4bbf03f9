-- Lease up to max pending tasks of one queue, after promoting its due
-- scheduled tasks and ending its expired leases. Tasks past their deadline
-- end dead instead of starting. KEYS[1]: the queue's meta hash.
-- ARGV: base, channel, queue, max, grace, worker ('' for none), then max lease ids.
-- Returns {now, next scheduled run_at or '', next lease expiry or '', task...}
-- where each task is its HGETALL with 'pl' (payload) appended.
local q, meta = ARGV[3], KEYS[1]
if redis.call('EXISTS', meta) == 0 then return {fmt(NOW), '', ''} end
local max, grace, worker = tonumber(ARGV[4]), tonumber(ARGV[5]), ARGV[6]
maintain(q, 1000)
local ready, active = qkey(q, 'ready'), qkey(q, 'active')
local tasks, got, leased = {}, 0, {}
while got < max do
  local popped = redis.call('ZPOPMIN', ready, max - got)
  if #popped == 0 then break end
  for j = 1, #popped, 2 do
    local id = string.sub(popped[j], 25)
    local tk = tkey(id)
    -- One read of the hash serves the checks and the returned view (which is
    -- the hash as the HSET/HDEL below leave it, in Redis's field order).
    local h = redis.call('HGETALL', tk)
    local at = {}
    for k = 1, #h, 2 do at[h[k]] = k end
    local function get(f)
      local k = at[f]
      if k then return h[k + 1] end
      return false
    end
    if get('s') == '1' then
      count(q, PENDING, -1)
      local dl = get('dl')
      if group_closed(get('g')) then
        finish(id, q, CANCELED)
      elseif dl and NOW >= tonumber(dl) then
        redis.call('HSET', tk, 'e', DEADLINE_ERROR)
        finish(id, q, DEAD)
      else
        got = got + 1
        local le = NOW + tonumber(get('to')) + grace
        local set = {'a', fmt((tonumber(get('a')) or 0) + 1), 's', tostring(ACTIVE), 'st', fmt(NOW),
          'l', ARGV[6 + got], 'le', fmt(le)}
        if worker ~= '' then
          set[#set + 1] = 'w'
          set[#set + 1] = worker
        end
        redis.call('HSET', tk, unpack(set))
        for k = 1, #set, 2 do
          local p = at[set[k]]
          if p then
            h[p + 1] = set[k + 1]
          else
            h[#h + 1] = set[k]
            h[#h + 1] = set[k + 1]
            at[set[k]] = #h - 1
          end
        end
        if worker == '' and at['w'] then
          redis.call('HDEL', tk, 'w')
          table.remove(h, at['w'])
          table.remove(h, at['w'])
        end
        leased[#leased + 1] = le
        leased[#leased + 1] = id
        count(q, ACTIVE, 1)
        h[#h + 1] = 'id'
        h[#h + 1] = id
        h[#h + 1] = 'pl'
        h[#h + 1] = redis.call('GET', pkey(id)) or ''
        tasks[#tasks + 1] = h
      end
    end
  end
end
-- One ZADD for the batch (chunked to stay within Lua's argument limits).
for k = 1, #leased, 1000 do
  redis.call('ZADD', active, unpack(leased, k, math.min(k + 999, #leased)))
end
flush_wakes()
local out = {fmt(NOW), next_score(qkey(q, 'sched')), next_score(active)}
for _, t in ipairs(tasks) do out[#out + 1] = t end
return out
