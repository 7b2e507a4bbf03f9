-- Shared by every weir script (prepended to each). ARGV[1] is the slot's key
-- base "<prefix>:{<tag>}:", ARGV[2] the wake channel. Every key a script
-- touches is built from the base, so it is in the slot of KEYS[1].
local BASE = ARGV[1]
local CHAN = ARGV[2]
local SCHED, PENDING, ACTIVE, COMPLETED, DEAD, CANCELED = 0, 1, 2, 3, 4, 5
local LEASE_EXPIRED_ERROR = 'lease expired without ack'
local DEADLINE_ERROR = 'deadline exceeded'
local TIME_MAX = 9007199254740991

-- Every task of the slot is one field of the slot's task hash (TASKS), its
-- value the task's record (decode.rs reads the same layout; the design doc
-- draws it): a fixed header, then D (the immutable part the server
-- packed at enqueue), then the payload, then the tail: the last error (el
-- bytes; el = -1 for none) followed by the result (the rest; '' for none).
-- Header: state, lease expiry, lease id (16 bytes, zeros for none),
-- finished, attempt, started, cancel requested, watched (someone waits:
-- publish its ends), run_at, created, seq (its FIFO place), el. 0 means
-- "none" for times. A lease rewrites the first 45 bytes, an ack the first 33.
local HFMT = '>Bi8c16i8I4i8BBi8i8i8i4'
local HLEN = 75
-- D: timeout, deadline (-1 for none), retention, max attempts, priority, then
-- group id, idempotency key ('' for none), queue, kind with u32 lengths; the
-- payload follows with its u32 length. D8 reads up to the queue.
local DFMT = '>i8i8i8I4i4I4c0I4c0I4c0I4c0'
local D8 = '>i8i8i8I4i4I4c0I4c0I4c0'
local NOLEASE = string.rep('\0', 16)
-- A ready-set member: (i32::MAX - priority) as u32 and seq as i64, both
-- big-endian, then the id, so that byte order is priority first, then FIFO.
local RKLEN = 12

local function now_ms()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end
local NOW = now_ms()

local function clamp(n)
  if n > TIME_MAX then return TIME_MAX end
  return n
end
local function fmt(n)
  return string.format('%d', clamp(n))
end

local hexes = {}
local function hex(s)
  local h = hexes[s]
  if not h then
    h = string.gsub(s, '.', function(c) return string.format('%02x', string.byte(c)) end)
    hexes[s] = h
  end
  return h
end
-- A queue's key (memoized: built once per queue and suffix and call).
local qkeys = {}
local function qkey(q, suffix)
  local m = qkeys[q]
  if not m then
    m = {}
    qkeys[q] = m
  end
  local k = m[suffix]
  if not k then
    k = BASE .. 'q:' .. hex(q) .. ':' .. suffix
    m[suffix] = k
  end
  return k
end
local function gkey(id) return BASE .. 'g:' .. id end
local TASKS = BASE .. 't'

-- A script-local write-back cache of records: every read goes through it
-- (one HMGET for a batch: prefetch), every write lands in it and reaches
-- Redis with one HSET (and one HDEL) at the end of the script (flush_wakes).
-- cache[id] is the record, or false for none.
local cache, dirty = {}, {}
local function get(id)
  local rec = cache[id]
  if rec == nil then
    rec = redis.call('HGET', TASKS, id)
    cache[id] = rec
  end
  return rec
end
local function prefetch(ids)
  local want = {}
  for _, id in ipairs(ids) do
    if cache[id] == nil then want[#want + 1] = id end
  end
  for i = 1, #want, 1000 do
    local j = math.min(i + 999, #want)
    local v = redis.call('HMGET', TASKS, unpack(want, i, j))
    for k = i, j do cache[want[k]] = v[k - i + 1] end
  end
end
local function put(id, rec)
  if not dirty[id] then
    dirty[id] = true
    dirty[#dirty + 1] = id
  end
  cache[id] = rec
end
local function flush_records()
  local sets, dels = {}, {}
  for _, id in ipairs(dirty) do
    local rec = cache[id]
    if rec then
      sets[#sets + 1] = id
      sets[#sets + 1] = rec
    else
      dels[#dels + 1] = id
    end
  end
  for i = 1, #sets, 1000 do redis.call('HSET', TASKS, unpack(sets, i, math.min(i + 999, #sets))) end
  for i = 1, #dels, 1000 do redis.call('HDEL', TASKS, unpack(dels, i, math.min(i + 999, #dels))) end
  dirty = {}
end

-- The whole record as a table (the slow paths; lease and ack read only what
-- they need).
local function parse(rec)
  local t, pos = {}, nil
  t.s, t.le, t.l, t.f, t.a, t.st, t.cr, t.wt, t.ra, t.c, t.seq, t.el, pos = struct.unpack(HFMT, rec)
  local dpos = pos
  t.to, t.dl, t.rt, t.ma, t.p, t.g, t.ik, t.q, t.k, pos = struct.unpack(DFMT, rec, dpos)
  local plen = struct.unpack('>I4', rec, pos)
  pos = pos + 4 + plen
  t.d = string.sub(rec, dpos, pos - 1)
  t.e = nil
  if t.el >= 0 then
    t.e = string.sub(rec, pos, pos + t.el - 1)
    pos = pos + t.el
  end
  t.r = string.sub(rec, pos)
  return t
end
-- Whether a record is still there for its readers: completed and canceled
-- tasks are gone once their retention ran out, even before the sweep purges
-- them.
local function alive(rec)
  local s = string.byte(rec, 1)
  if s ~= COMPLETED and s ~= CANCELED then return true end
  local f = struct.unpack('>i8', rec, 26)
  local rt = struct.unpack('>i8', rec, HLEN + 17)
  return NOW < math.max(f + rt, f + 1)
end
local function load(id)
  local rec = get(id)
  if not rec or not alive(rec) then return nil end
  return parse(rec)
end
local function header(t)
  local el = -1
  if t.e then el = #t.e end
  return struct.pack(HFMT, t.s, clamp(t.le), t.l, t.f, t.a, t.st, t.cr, t.wt, clamp(t.ra), t.c, t.seq, el)
end
-- Writes a whole record.
local function store(id, t)
  put(id, header(t) .. t.d .. (t.e or '') .. t.r)
end
local function rk(p, seq, id) return struct.pack('>I4i8', 2147483647 - p, seq) .. id end

-- Wake-up tokens, published once at the end of the script.
local wakes, woken = {}, {}
local function wake(tok)
  if not woken[tok] then
    woken[tok] = true
    wakes[#wakes + 1] = tok
  end
end
-- Per-state counts (the queue meta hash's n0..n5), summed during the script
-- and applied once per touched field by flush_counts (before any read of them
-- and at the end, from flush_wakes). A field whose changes net to zero still
-- gets its HINCRBY, so the hash ends exactly as with one HINCRBY per change.
-- The same calls keep the browsing index of the dead and canceled states (the
-- others are browsed from the indexes they keep anyway: see browse.lua): the
-- zset 'x<state>' of the queue, every score 0 and the task id as member, so
-- that ZRANGE BYLEX walks a state's tasks by id. Its changes go with the other
-- deferred zset writes (flush_z: every ZREM of a key before its ZADD), which is
-- right because within one script a task may leave a state and enter it again
-- but never enters a state and leaves it again.
-- t[k], made empty on first use, its key appended to order (the tables summed
-- during a script and flushed in first-use order at its end).
local function entry(t, order, k)
  local e = t[k]
  if not e then
    e = {}
    t[k] = e
    order[#order + 1] = k
  end
  return e
end

local counts, counted = {}, {}
local XKEY = {[DEAD] = 'x4', [CANCELED] = 'x5'}
local count
local function flush_counts()
  for _, q in ipairs(counted) do
    local c = counts[q]
    for s = SCHED, CANCELED do
      if c[s] then redis.call('HINCRBY', qkey(q, 'm'), 'n' .. s, c[s]) end
    end
  end
  counts, counted = {}, {}
end

-- Store-wide totals of what a queue's tasks did (meta fields: te enqueued, tl
-- leased, tc completed, td dead, tx canceled, tr retried, to lease expired),
-- summed during the script and applied with one HINCRBY per touched field at
-- its end (flush_totals, from flush_wakes). Every server reads the same values.
local totals, totaled = {}, {}
local function tally(q, field, n)
  local t = entry(totals, totaled, q)
  t[field] = (t[field] or 0) + n
end
local ENDED_FIELD = {[COMPLETED] = 'tc', [DEAD] = 'td', [CANCELED] = 'tx'}
local function flush_totals()
  for _, q in ipairs(totaled) do
    for field, n in pairs(totals[q]) do redis.call('HINCRBY', qkey(q, 'm'), field, n) end
  end
  totals, totaled = {}, {}
end

-- Writes deferred to the end of the script, one command per key and call:
-- 'active' entries of settled tasks (ZREM), 'fin' entries of ended ones
-- (ZADD), the worker names of leased and settled tasks (HSET / HDEL on the
-- queue's 'w' hash).
local zrems, zremmed, zadds, zadded, hsets, hsetted, hdels, hdeled = {}, {}, {}, {}, {}, {}, {}, {}
local function later(t, order, key, a, b)
  local z = entry(t, order, key)
  local n = (z.n or 0) + 1
  z[n] = a
  if b then
    n = n + 1
    z[n] = b
  end
  z.n = n
end
local function flush_later(t, order, cmd)
  for _, k in ipairs(order) do
    local z = t[k]
    for i = 1, z.n, 1000 do redis.call(cmd, k, unpack(z, i, math.min(i + 999, z.n))) end
  end
end
count = function(q, state, delta, id)
  local c = entry(counts, counted, q)
  c[state] = (c[state] or 0) + delta
  local x = XKEY[state]
  if x then
    if delta > 0 then
      later(zadds, zadded, qkey(q, x), 0, id)
    else
      later(zrems, zremmed, qkey(q, x), id)
    end
  end
end
-- A task leaves 'active' (its lease index entry and worker name). On a queue
-- with a max in flight that frees a slot: its parked leases are woken (read
-- once per queue and call).
local capped = {}
local function unlease(q, id)
  later(zrems, zremmed, qkey(q, 'active'), id)
  later(hdels, hdeled, qkey(q, 'w'), id)
  local c = capped[q]
  if c == nil then
    c = redis.call('HEXISTS', qkey(q, 'm'), 'cf') == 1
    capped[q] = c
  end
  if c then wake('q' .. hex(q)) end
end

local function flush_z()
  flush_later(zrems, zremmed, 'ZREM')
  flush_later(zadds, zadded, 'ZADD')
  zrems, zremmed, zadds, zadded = {}, {}, {}, {}
end
local function flush_wakes()
  flush_z()
  flush_later(hdels, hdeled, 'HDEL')
  flush_later(hsets, hsetted, 'HSET')
  hdels, hdeled, hsets, hsetted = {}, {}, {}, {}
  flush_totals()
  flush_records()
  flush_counts()
  if #wakes > 0 then redis.call('PUBLISH', CHAN, table.concat(wakes, ' ')) end
end

local function group_closed(g)
  if g == '' then return false end
  local st = redis.call('HGET', gkey(g), 'st')
  return st ~= false and st ~= '0'
end

-- The group rules of weir_core::group::GroupTally.
local function gstate(h)
  if h.cbr == 1 then return 3 end
  local open = h.n - h.nc - h.nd - h.nx
  if h.nd > 0 and (h.ff == 1 or open == 0) then return 2 end
  if open > 0 then return 0 end
  if h.nx > 0 then return 3 end
  return 1
end

local function gload(g)
  local v = redis.call('HMGET', gkey(g), 'n', 'nc', 'nd', 'nx', 'ff', 'cbr', 'cas', 'rt')
  if not v[1] then return nil end
  return { n = tonumber(v[1]), nc = tonumber(v[2]), nd = tonumber(v[3]), nx = tonumber(v[4]),
           ff = tonumber(v[5]), cbr = tonumber(v[6]), cas = tonumber(v[7]), rt = tonumber(v[8]) }
end

local finish, ended, member_end, cascade

-- Writes a group's state after its tally changed; the first event that fails
-- or cancels a group with open members cancels them (once).
local function gupdate(g, h)
  local st = gstate(h)
  local open = h.n - h.nc - h.nd - h.nx
  redis.call('HSET', gkey(g), 'st', st)
  if open == 0 then
    redis.call('HSET', gkey(g), 'f', fmt(NOW))
    redis.call('PEXPIREAT', gkey(g), fmt(math.max(NOW + h.rt, NOW + 1)))
  end
  if st ~= 0 then wake('g' .. g) end
  if open > 0 and (st == 2 or st == 3) and h.cas ~= 1 then
    redis.call('HSET', gkey(g), 'cas', 1)
    cascade(g)
  end
end

member_end = function(g, state)
  local h = gload(g)
  if not h then return end
  local field = 'nx'
  if state == COMPLETED then field = 'nc' elseif state == DEAD then field = 'nd' end
  h[field] = h[field] + 1
  redis.call('HINCRBY', gkey(g), field, 1)
  gupdate(g, h)
end

-- Removes a queued or active task from its index (the caller counts it out).
local function unindex(id, q, t)
  if t.s == SCHED then
    redis.call('ZREM', qkey(q, 'sched'), id)
  elseif t.s == PENDING then
    redis.call('ZREM', qkey(q, 'ready'), rk(t.p, t.seq, id))
  elseif t.s == ACTIVE then
    unlease(q, id)
  end
end

-- What follows a task's end, once its record says so (its old state already
-- counted out and unindexed): the count, the 'fin' entry of completed and
-- canceled tasks (their retention's end, when the sweep purges them) and the
-- TTL of their idempotency key, the wake-up of its waiters, the group tally.
-- fmt(end of retention) and the fin members' state prefix, per call.
local exps, digits = {}, {}
ended = function(id, q, state, rt, ik, g, wt)
  count(q, state, 1, id)
  if state ~= DEAD then
    local exp = exps[rt]
    if not exp then
      exp = fmt(math.max(NOW + rt, NOW + 1))
      exps[rt] = exp
    end
    local digit = digits[state]
    if not digit then
      digit = tostring(state)
      digits[state] = digit
    end
    later(zadds, zadded, qkey(q, 'fin'), exp, digit .. id)
    if ik ~= '' then redis.call('PEXPIREAT', qkey(q, 'i:' .. ik), exp) end
  end
  if wt == 1 then wake('t' .. id) end
  if g ~= '' then member_end(g, state) end
  tally(q, ENDED_FIELD[state], 1)
end

-- Ends a task given as a parsed record (the caller sets t.e if it has an error).
finish = function(id, q, state, t)
  t.s, t.f, t.le, t.l = state, NOW, 0, NOLEASE
  store(id, t)
  ended(id, q, state, t.rt, t.ik, t.g, t.wt)
end

-- Cancels an open task (parsed as t): a queued one ends canceled, an active
-- one gets its cancel requested (its worker sees it at its next beat).
local function cancel_open(id, t)
  if t.s == ACTIVE then
    if t.cr ~= 1 then
      t.cr = 1
      store(id, t)
    end
    if t.wt == 1 then wake('t' .. id) end
  elseif t.s == SCHED or t.s == PENDING then
    unindex(id, t.q, t)
    count(t.q, t.s, -1, id)
    finish(id, t.q, CANCELED, t)
  end
end

cascade = function(g)
  local m = redis.call('HGET', gkey(g), 'm') or ''
  for i = 1, #m, 26 do
    local id = string.sub(m, i, i + 25)
    local t = load(id)
    if t then cancel_open(id, t) end
  end
end

-- Pending again (a release, an expired lease, a promotion), unless its group
-- has closed meanwhile: then canceled.
local function requeue(id, q, t)
  if group_closed(t.g) then
    finish(id, q, CANCELED, t)
    return CANCELED
  end
  t.s, t.le, t.l = PENDING, 0, NOLEASE
  store(id, t)
  redis.call('ZADD', qkey(q, 'ready'), 0, rk(t.p, t.seq, id))
  count(q, PENDING, 1, id)
  wake('q' .. hex(q))
  return PENDING
end

-- Due scheduled tasks become pending; expired leases end (weir_core::machine::
-- lease_expired); both bounded per call (limit <= 1000: one ZREM each).
local function maintain(q, limit)
  local due = redis.call('ZRANGEBYSCORE', qkey(q, 'sched'), '-inf', NOW, 'LIMIT', 0, limit)
  if #due > 0 then redis.call('ZREM', qkey(q, 'sched'), unpack(due)) end
  prefetch(due)
  for _, id in ipairs(due) do
    local t = load(id)
    if t and t.s == SCHED then
      count(q, SCHED, -1, id)
      requeue(id, q, t)
    end
  end
  local expired = redis.call('ZRANGEBYSCORE', qkey(q, 'active'), '-inf', NOW, 'LIMIT', 0, limit)
  prefetch(expired)
  for _, id in ipairs(expired) do
    unlease(q, id)
    local t = load(id)
    if t and t.s == ACTIVE then
      count(q, ACTIVE, -1, id)
      t.e = LEASE_EXPIRED_ERROR
      tally(q, 'to', 1)
      if t.cr == 1 then
        finish(id, q, CANCELED, t)
      elseif t.a >= t.ma then
        finish(id, q, DEAD, t)
      elseif t.dl >= 0 and NOW >= t.dl then
        t.e = DEADLINE_ERROR
        finish(id, q, DEAD, t)
      else
        t.ra = NOW
        if requeue(id, q, t) == PENDING then tally(q, 'tr', 1) end
      end
    end
  end
  return #due + #expired
end

-- Removes finished tasks whose retention ran out: their records, their
-- 'fin' entries and their counts.
local function purge(q, limit)
  flush_z()
  local fin = qkey(q, 'fin')
  local due = redis.call('ZRANGEBYSCORE', fin, '-inf', NOW, 'LIMIT', 0, limit)
  for _, m in ipairs(due) do
    local id = string.sub(m, 2)
    later(zrems, zremmed, fin, m)
    put(id, false)
    count(q, tonumber(string.sub(m, 1, 1)), -1, id)
  end
  return #due
end

local function next_score(key)
  local r = redis.call('ZRANGE', key, 0, 0, 'WITHSCORES')
  if #r == 0 then return '' end
  return r[2]
end

-- A record without its payload (for listings: the payload is read with the
-- task alone).
local function bare(rec)
  local _, _, _, _, _, _, _, _, _, pos = struct.unpack(DFMT, rec, HLEN + 1)
  local plen = struct.unpack('>I4', rec, pos)
  return string.sub(rec, 1, pos - 1) .. '\0\0\0\0' .. string.sub(rec, pos + 4 + plen)
end

-- Appends a task's record ('' if none) and its worker ('' if none) to out.
local function view_into(out, id)
  local rec = get(id)
  if not rec or not alive(rec) then
    out[#out + 1] = ''
    out[#out + 1] = ''
    return
  end
  out[#out + 1] = rec
  local w = false
  if string.byte(rec, 1) == ACTIVE then
    local _, _, _, _, _, _, _, q = struct.unpack(D8, rec, HLEN + 1)
    w = redis.call('HGET', qkey(q, 'w'), id)
  end
  out[#out + 1] = w or ''
end
