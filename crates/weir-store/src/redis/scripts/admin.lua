-- An operator's retry (dead or canceled → pending, weir_core::machine::retry)
-- or delete (of finished tasks) of tasks of one slot. KEYS[1]: the slot's task
-- hash. ARGV: base, channel, 'r' (retry) or 'd' (delete), the scope's queue
-- ('' for any), the scope's state ('' for any), then the ids. Returns {now,
-- then per id:
-- {'ok', record or ''}, {'nf', ''}, {'nr', state} (not retryable), {'nfin',
-- state} (not finished) or {'grp', ''} (a group member: not retryable)}.
local op, sq, ss = ARGV[3], ARGV[4], tonumber(ARGV[5])
local ids = {}
for i = 6, #ARGV do ids[#ids + 1] = ARGV[i] end
prefetch(ids)
local out = {fmt(NOW)}
local function answer(tag, v)
  out[#out + 1] = tag
  out[#out + 1] = v
end
for _, id in ipairs(ids) do
  local t = load(id)
  if t and t.s == SCHED and t.ra <= NOW then t.s = PENDING end
  if not t or (sq ~= '' and t.q ~= sq) or (ss and t.s ~= ss) then
    answer('nf', '')
  elseif op == 'r' and t.s ~= DEAD and t.s ~= CANCELED then
    answer('nr', t.s)
  elseif op == 'r' and t.g ~= '' then
    answer('grp', '')
  elseif op == 'd' and t.s < COMPLETED then
    answer('nfin', t.s)
  else
    local q = t.q
    if t.s ~= DEAD then later(zrems, zremmed, qkey(q, 'fin'), t.s .. id) end
    count(q, t.s, -1, id)
    if op == 'r' then
      -- Its key no longer ends with a retention.
      if t.ik ~= '' then redis.call('PERSIST', qkey(q, 'i:' .. t.ik)) end
      t.a, t.cr, t.f, t.st, t.ra, t.r = 0, 0, 0, 0, NOW, ''
      -- At its first FIFO place, as a release puts it (the embedded store
      -- orders by id, which a retry keeps).
      requeue(id, q, t)
      answer('ok', bare(cache[id]))
    else
      if t.ik ~= '' and redis.call('GET', qkey(q, 'i:' .. t.ik)) == id then
        redis.call('DEL', qkey(q, 'i:' .. t.ik))
      end
      put(id, false)
      answer('ok', '')
    end
  end
end
flush_wakes()
return out
