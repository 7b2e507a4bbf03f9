-- Enqueue a batch (or a group) into one queue. KEYS[1]: the queue's meta hash.
-- ARGV: base, channel, queue, queue_tasks_max, group id ('' for none),
-- fail_fast, group retention, n, then 5 per task: id, priority key (u32
-- i32::MAX - priority, big-endian), when ('' for now, '+<ms>' for a delay,
-- '<ms>' for an absolute run_at), idempotency key ('' for none), and D (the
-- record's immutable part with the payload, packed by the server: common.lua).
-- Returns {'full', limit} or {new_queue, now, id, state, created, ...}.
local q, meta = ARGV[3], KEYS[1]
local gid = ARGV[5]
local n = tonumber(ARGV[8])
local W = 5
local new_queue = redis.call('HEXISTS', meta, 'reg') == 0 and 1 or 0

-- The live task an idempotency key names, and its record.
local function existing(ik)
  local old = redis.call('GET', qkey(q, 'i:' .. ik))
  if not old then return nil end
  local rec = get(old)
  if not rec or not alive(rec) then return nil end
  return old, rec
end

local fresh, seen = 0, {}
for i = 0, n - 1 do
  local ik = ARGV[9 + i * W + 3]
  if ik == '' then
    fresh = fresh + 1
  elseif not seen[ik] then
    seen[ik] = true
    if not existing(ik) then fresh = fresh + 1 end
  end
end
local c = redis.call('HMGET', meta, 'n0', 'n1', 'n2', 'cp')
local waiting = (tonumber(c[1]) or 0) + (tonumber(c[2]) or 0)
if waiting + (tonumber(c[3]) or 0) + fresh > tonumber(ARGV[4]) then return {'full', ARGV[4]} end
-- The queue's max pending (scheduled + pending).
if c[4] and waiting + fresh > tonumber(c[4]) then return {'full', c[4]} end

local out, nout = {new_queue, fmt(NOW)}, 2
local ids, nids, any_pending = {}, 0, false
-- The header up to seq, per run_at (one pack per distinct run_at), and the
-- error length of a new task (none).
local heads = {}
local NOERR = struct.pack('>i4', -1)
-- The queue's sequence is read once and advanced once (by the number of new
-- tasks) at the end; the index entries are added with one ZADD per index.
local seq0, seqs = nil, 0
local readys, nready, scheds, nsched = {}, 0, {}, 0
for i = 0, n - 1 do
  local b = 9 + i * W
  local id, ik = ARGV[b], ARGV[b + 3]
  local old, rec = nil, nil
  if ik ~= '' then old, rec = existing(ik) end
  if old then
    local st, ra = string.byte(rec, 1), struct.unpack('>i8', rec, 48)
    if st == SCHED and ra <= NOW then st = PENDING end
    out[nout + 1] = old
    out[nout + 2] = st
    out[nout + 3] = 0
    nout = nout + 3
  else
    if not seq0 then seq0 = tonumber(redis.call('HGET', meta, 'seq')) or 0 end
    seqs = seqs + 1
    local seq = seq0 + seqs
    local when, run_at = ARGV[b + 2], NOW
    if when ~= '' then
      if string.byte(when, 1) == 43 then
        run_at = clamp(NOW + tonumber(string.sub(when, 2)))
      else
        run_at = clamp(tonumber(when))
      end
    end
    local st = PENDING
    if run_at > NOW then st = SCHED end
    local head = heads[run_at]
    if not head then
      head = struct.pack('>Bi8c16i8I4i8BBi8i8', st, 0, NOLEASE, 0, 0, 0, 0, 0, run_at, NOW)
      heads[run_at] = head
    end
    local seqb = struct.pack('>i8', seq)
    put(id, head .. seqb .. NOERR .. ARGV[b + 4])
    if ik ~= '' then redis.call('SET', qkey(q, 'i:' .. ik), id) end
    if st == SCHED then
      scheds[nsched + 1] = run_at
      scheds[nsched + 2] = id
      nsched = nsched + 2
    else
      readys[nready + 1] = 0
      readys[nready + 2] = ARGV[b + 1] .. seqb .. id
      nready = nready + 2
      any_pending = true
    end
    count(q, st, 1, id)
    nids = nids + 1
    ids[nids] = id
    out[nout + 1] = id
    out[nout + 2] = st
    out[nout + 3] = 1
    nout = nout + 3
  end
end
for k = 1, nsched, 1000 do
  redis.call('ZADD', qkey(q, 'sched'), unpack(scheds, k, math.min(k + 999, nsched)))
end
for k = 1, nready, 1000 do
  redis.call('ZADD', qkey(q, 'ready'), unpack(readys, k, math.min(k + 999, nready)))
end
if seqs > 0 then redis.call('HINCRBY', meta, 'seq', seqs) end
if gid ~= '' then
  redis.call('HSET', gkey(gid), 'q', q, 'ff', ARGV[6], 'st', 0, 'cbr', 0, 'c', fmt(NOW),
    'rt', ARGV[7], 'n', #ids, 'nc', 0, 'nd', 0, 'nx', 0, 'cas', 0, 'm', table.concat(ids))
end
if any_pending then wake('q' .. hex(q)) end
if nids > 0 then tally(q, 'te', nids) end
flush_wakes()
return out
