-- Enqueue a batch (or a group) into one queue. KEYS[1]: the queue's meta hash.
-- ARGV: base, channel, queue, queue_tasks_max, group id ('' for none),
-- fail_fast, group retention, n, then 11 per task: id, kind, priority, run_at
-- ('' for none), delay, max_attempts, timeout, deadline (''), idempotency key
-- (''), retention, payload.
-- Returns {'full'} or {new_queue, now, id, state, created, ...}.
local q, meta = ARGV[3], KEYS[1]
local gid = ARGV[5]
local n = tonumber(ARGV[8])
local new_queue = redis.call('HEXISTS', meta, 'reg') == 0 and 1 or 0

local function existing(ik)
  local old = redis.call('GET', qkey(q, 'i:' .. ik))
  if old and redis.call('EXISTS', tkey(old)) == 1 then return old end
  return nil
end

local fresh, seen = 0, {}
for i = 0, n - 1 do
  local ik = ARGV[9 + i * 11 + 8]
  if ik == '' then
    fresh = fresh + 1
  elseif not seen[ik] then
    seen[ik] = true
    if not existing(ik) then fresh = fresh + 1 end
  end
end
local c = redis.call('HMGET', meta, 'n0', 'n1', 'n2')
local held = (tonumber(c[1]) or 0) + (tonumber(c[2]) or 0) + (tonumber(c[3]) or 0)
if held + fresh > tonumber(ARGV[4]) then return {'full'} end

local out = {new_queue, fmt(NOW)}
local ids, any_pending = {}, false
-- The queue's sequence is read once and advanced once (by the number of new
-- tasks) at the end; the index entries are added with one ZADD per index.
local seq0, seqs = nil, 0
local readys, scheds = {}, {}
for i = 0, n - 1 do
  local b = 9 + i * 11
  local id, ik = ARGV[b], ARGV[b + 8]
  local old = nil
  if ik ~= '' then old = existing(ik) end
  if old then
    local v = redis.call('HMGET', tkey(old), 's', 'ra')
    local st = tonumber(v[1])
    if st == SCHED and tonumber(v[2]) <= NOW then st = PENDING end
    out[#out + 1] = old
    out[#out + 1] = st
    out[#out + 1] = 0
  else
    if not seq0 then seq0 = tonumber(redis.call('HGET', meta, 'seq')) or 0 end
    seqs = seqs + 1
    local seq = seq0 + seqs
    local prio = tonumber(ARGV[b + 2])
    local run_at = ARGV[b + 3]
    local run_at_n
    if run_at == '' then
      run_at_n = NOW + tonumber(ARGV[b + 4])
      run_at = fmt(run_at_n)
    else
      run_at_n = tonumber(run_at)
    end
    local st = PENDING
    if run_at_n > NOW then st = SCHED end
    local rk = string.format('%08x%016x', 2147483647 - prio, seq) .. id
    local tk = tkey(id)
    local f = {'q', q, 'k', ARGV[b + 1], 'p', ARGV[b + 2], 's', st, 'a', 0,
      'ma', ARGV[b + 5], 'to', ARGV[b + 6], 'ra', run_at, 'rt', ARGV[b + 9],
      'c', fmt(NOW), 'cr', 0, 'rk', rk}
    if ARGV[b + 7] ~= '' then
      f[#f + 1] = 'dl'
      f[#f + 1] = ARGV[b + 7]
    end
    if ik ~= '' then
      f[#f + 1] = 'ik'
      f[#f + 1] = ik
    end
    if gid ~= '' then
      f[#f + 1] = 'g'
      f[#f + 1] = gid
    end
    redis.call('HSET', tk, unpack(f))
    if ik ~= '' then redis.call('SET', qkey(q, 'i:' .. ik), id) end
    redis.call('SET', pkey(id), ARGV[b + 10])
    if st == SCHED then
      scheds[#scheds + 1] = run_at_n
      scheds[#scheds + 1] = id
    else
      readys[#readys + 1] = 0
      readys[#readys + 1] = rk
      any_pending = true
    end
    count(q, st, 1)
    ids[#ids + 1] = id
    out[#out + 1] = id
    out[#out + 1] = st
    out[#out + 1] = 1
  end
end
for k = 1, #scheds, 1000 do
  redis.call('ZADD', qkey(q, 'sched'), unpack(scheds, k, math.min(k + 999, #scheds)))
end
for k = 1, #readys, 1000 do
  redis.call('ZADD', qkey(q, 'ready'), unpack(readys, k, math.min(k + 999, #readys)))
end
if seqs > 0 then redis.call('HINCRBY', meta, 'seq', seqs) end
if gid ~= '' then
  redis.call('HSET', gkey(gid), 'q', q, 'ff', ARGV[6], 'st', 0, 'cbr', 0, 'c', fmt(NOW),
    'rt', ARGV[7], 'n', #ids, 'nc', 0, 'nd', 0, 'nx', 0, 'cas', 0, 'm', table.concat(ids))
end
if any_pending then wake('q' .. hex(q)) end
flush_wakes()
return out
