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
local tasks, got = {}, 0
while got < max do
  local popped = redis.call('ZPOPMIN', ready, max - got)
  if #popped == 0 then break end
  for j = 1, #popped, 2 do
    local id = string.sub(popped[j], 25)
    local tk = tkey(id)
    local v = redis.call('HMGET', tk, 's', 'to', 'dl', 'g')
    if v[1] == '1' then
      count(q, PENDING, -1)
      if group_closed(v[4]) then
        finish(id, q, CANCELED)
      elseif v[3] and NOW >= tonumber(v[3]) then
        redis.call('HSET', tk, 'e', DEADLINE_ERROR)
        finish(id, q, DEAD)
      else
        got = got + 1
        local le = NOW + tonumber(v[2]) + grace
        redis.call('HINCRBY', tk, 'a', 1)
        redis.call('HSET', tk, 's', ACTIVE, 'st', fmt(NOW), 'l', ARGV[6 + got], 'le', fmt(le))
        if worker ~= '' then redis.call('HSET', tk, 'w', worker) else redis.call('HDEL', tk, 'w') end
        redis.call('ZADD', active, le, id)
        count(q, ACTIVE, 1)
        tasks[#tasks + 1] = view(id)
      end
    end
  end
end
flush_wakes()
local out = {fmt(NOW), next_score(qkey(q, 'sched')), next_score(active)}
for _, t in ipairs(tasks) do out[#out + 1] = t end
return out
