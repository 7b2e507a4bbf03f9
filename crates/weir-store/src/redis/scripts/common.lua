-- Shared by every weir script (prepended to each). ARGV[1] is the slot's key
-- base "<prefix>:{<tag>}:", ARGV[2] the wake channel. Every key a script
-- touches is built from the base, so it is in the slot of KEYS[1].
local BASE = ARGV[1]
local CHAN = ARGV[2]
local SCHED, PENDING, ACTIVE, COMPLETED, DEAD, CANCELED = 0, 1, 2, 3, 4, 5
local LEASE_EXPIRED_ERROR = 'lease expired without ack'
local DEADLINE_ERROR = 'deadline exceeded'
local TIME_MAX = 9007199254740991

local function now_ms()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end
local NOW = now_ms()

local function fmt(n)
  if n > TIME_MAX then n = TIME_MAX end
  return string.format('%d', n)
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
local function qkey(q, suffix) return BASE .. 'q:' .. hex(q) .. ':' .. suffix end
local function tkey(id) return BASE .. 't:' .. id end
local function pkey(id) return BASE .. 'p:' .. id end
local function gkey(id) return BASE .. 'g:' .. id end

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
local counts, counted = {}, {}
local function count(q, state, delta)
  local k = qkey(q, 'm')
  local c = counts[k]
  if not c then
    c = {}
    counts[k] = c
    counted[#counted + 1] = k
  end
  local f = 'n' .. state
  c[f] = (c[f] or 0) + delta
end
local function flush_counts()
  for _, k in ipairs(counted) do
    local c = counts[k]
    for s = SCHED, CANCELED do
      local f = 'n' .. s
      if c[f] then redis.call('HINCRBY', k, f, c[f]) end
    end
  end
  counts, counted = {}, {}
end

-- Sorted-set writes deferred to the end of the script, one ZADD / ZREM per
-- key and call: the 'fin' entries of finish (flushed before purge reads
-- 'fin') and the settled tasks' 'active' entries.
local zadds, zadded, zrems, zremmed = {}, {}, {}, {}
local function later(t, order, key, a, b)
  local z = t[key]
  if not z then
    z = {}
    t[key] = z
    order[#order + 1] = key
  end
  z[#z + 1] = a
  if b then z[#z + 1] = b end
end
local function zadd_later(key, score, member) later(zadds, zadded, key, score, member) end
local function zrem_later(key, member) later(zrems, zremmed, key, member) end
local function flush_z()
  for _, k in ipairs(zremmed) do
    local z = zrems[k]
    for i = 1, #z, 1000 do redis.call('ZREM', k, unpack(z, i, math.min(i + 999, #z))) end
  end
  for _, k in ipairs(zadded) do
    local z = zadds[k]
    for i = 1, #z, 1000 do redis.call('ZADD', k, unpack(z, i, math.min(i + 999, #z))) end
  end
  zadds, zadded, zrems, zremmed = {}, {}, {}, {}
end

local function flush_wakes()
  flush_z()
  flush_counts()
  if #wakes > 0 then redis.call('PUBLISH', CHAN, table.concat(wakes, ' ')) end
end

local function group_closed(g)
  if not g then return false end
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

local finish, member_end, cascade

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

-- Removes a queued task from its index (the caller counts it out).
local function unindex(id, q, state, rk)
  if state == SCHED then
    redis.call('ZREM', qkey(q, 'sched'), id)
  elseif state == PENDING then
    redis.call('ZREM', qkey(q, 'ready'), rk)
  elseif state == ACTIVE then
    redis.call('ZREM', qkey(q, 'active'), id)
  end
end

-- Ends a task (its old state already counted out and unindexed): terminal
-- state, finish time, retention expiry for completed/canceled, group tally.
-- pre: the task's {rt, ik, g} if the caller read them and has already deleted
-- its 'l', 'le', 'w'; extra: field/value pairs written before 's' and 'f' in the
-- same HSET.
finish = function(id, q, state, pre, extra)
  local tk = tkey(id)
  local v = pre
  if extra then
    local args = {'HSET', tk}
    for _, x in ipairs(extra) do args[#args + 1] = x end
    args[#args + 1] = 's'
    args[#args + 1] = state
    args[#args + 1] = 'f'
    args[#args + 1] = fmt(NOW)
    redis.call(unpack(args))
  else
    redis.call('HSET', tk, 's', state, 'f', fmt(NOW))
  end
  if not pre then
    redis.call('HDEL', tk, 'l', 'le', 'w')
    v = redis.call('HMGET', tk, 'rt', 'ik', 'g')
  end
  count(q, state, 1)
  if state ~= DEAD then
    local exp = math.max(NOW + tonumber(v[1]), NOW + 1)
    if exp > TIME_MAX then exp = TIME_MAX end
    zadd_later(qkey(q, 'fin'), exp, state .. id)
    redis.call('PEXPIREAT', tk, fmt(exp))
    redis.call('PEXPIREAT', pkey(id), fmt(exp))
    if v[2] then redis.call('PEXPIREAT', qkey(q, 'i:' .. v[2]), fmt(exp)) end
  end
  wake('t' .. id)
  if v[3] then member_end(v[3], state) end
end

cascade = function(g)
  local m = redis.call('HGET', gkey(g), 'm') or ''
  for i = 1, #m, 26 do
    local id = string.sub(m, i, i + 25)
    local v = redis.call('HMGET', tkey(id), 's', 'q', 'rk')
    if v[1] then
      local st = tonumber(v[1])
      if st == ACTIVE then
        redis.call('HSET', tkey(id), 'cr', 1)
        wake('t' .. id)
      elseif st == SCHED or st == PENDING then
        unindex(id, v[2], st, v[3])
        count(v[2], st, -1)
        finish(id, v[2], CANCELED)
      end
    end
  end
end

-- pending again (a release, an expired lease, a promotion), unless its group
-- has closed meanwhile: then canceled.
local function requeue(id, q, rk, g)
  if group_closed(g) then
    finish(id, q, CANCELED)
    return CANCELED
  end
  redis.call('HSET', tkey(id), 's', PENDING)
  redis.call('ZADD', qkey(q, 'ready'), 0, rk)
  count(q, PENDING, 1)
  wake('q' .. hex(q))
  return PENDING
end

-- Due scheduled tasks become pending; expired leases end (weir_core::machine::
-- lease_expired); both bounded per call.
local function maintain(q, limit)
  local due = redis.call('ZRANGEBYSCORE', qkey(q, 'sched'), '-inf', NOW, 'LIMIT', 0, limit)
  for _, id in ipairs(due) do
    redis.call('ZREM', qkey(q, 'sched'), id)
    local v = redis.call('HMGET', tkey(id), 's', 'rk', 'g')
    if v[1] == '0' then
      count(q, SCHED, -1)
      requeue(id, q, v[2], v[3])
    end
  end
  local expired = redis.call('ZRANGEBYSCORE', qkey(q, 'active'), '-inf', NOW, 'LIMIT', 0, limit)
  for _, id in ipairs(expired) do
    redis.call('ZREM', qkey(q, 'active'), id)
    local v = redis.call('HMGET', tkey(id), 's', 'a', 'ma', 'dl', 'cr', 'rk', 'g')
    if v[1] == '2' then
      count(q, ACTIVE, -1)
      local tk = tkey(id)
      redis.call('HSET', tk, 'e', LEASE_EXPIRED_ERROR)
      redis.call('HDEL', tk, 'l', 'le', 'w')
      if v[5] == '1' then
        finish(id, q, CANCELED)
      elseif tonumber(v[2]) >= tonumber(v[3]) then
        finish(id, q, DEAD)
      elseif v[4] and NOW >= tonumber(v[4]) then
        redis.call('HSET', tk, 'e', DEADLINE_ERROR)
        finish(id, q, DEAD)
      else
        redis.call('HSET', tk, 'ra', fmt(NOW))
        requeue(id, q, v[6], v[7])
      end
    end
  end
  return #due + #expired
end

-- Removes finished tasks whose retention ran out (their hashes expire by TTL;
-- this takes them out of the counts and the index).
local function purge(q, limit)
  flush_z()
  local fin = qkey(q, 'fin')
  local due = redis.call('ZRANGEBYSCORE', fin, '-inf', NOW, 'LIMIT', 0, limit)
  for _, m in ipairs(due) do
    redis.call('ZREM', fin, m)
    local id = string.sub(m, 2)
    redis.call('DEL', tkey(id), pkey(id))
    count(q, tonumber(string.sub(m, 1, 1)), -1)
  end
  return #due
end

local function next_score(key)
  local r = redis.call('ZRANGE', key, 0, 0, 'WITHSCORES')
  if #r == 0 then return '' end
  return r[2]
end

local function view(id)
  local h = redis.call('HGETALL', tkey(id))
  if #h == 0 then return {} end
  h[#h + 1] = 'id'
  h[#h + 1] = id
  h[#h + 1] = 'pl'
  h[#h + 1] = redis.call('GET', pkey(id)) or ''
  return h
end
