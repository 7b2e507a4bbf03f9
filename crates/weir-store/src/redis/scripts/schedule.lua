-- Periodic-task schedules, all in one hash (KEYS[1]): field 'd:<name>' holds a
-- definition (the server's JSON, not read here), 'r:<name>' its run state
-- 'last_tick|last_run|last_task' ('' for none).
-- ARGV: base, channel, op, name, then per op:
--   put: spec, now, schedules_max -> {'full'} or {last_tick, last_run, last_task}
--   del: -> 1 if it existed, else 0
--   ran: tick, run time ('' if nothing ran), task id ('') -> 1
local h, op, name = KEYS[1], ARGV[3], ARGV[4]
local d, r = 'd:' .. name, 'r:' .. name
local function state()
  local v = redis.call('HGET', h, r)
  if not v then return 0, '', '' end
  local tick, run, task = string.match(v, '^(%d*)|(%d*)|(.*)$')
  return tonumber(tick) or 0, run or '', task or ''
end
if op == 'put' then
  if redis.call('HEXISTS', h, d) == 0 and redis.call('HLEN', h) / 2 >= tonumber(ARGV[7]) then
    return {'full'}
  end
  local _, run, task = state()
  redis.call('HSET', h, d, ARGV[5], r, ARGV[6] .. '|' .. run .. '|' .. task)
  return {ARGV[6], run, task}
elseif op == 'del' then
  return redis.call('HDEL', h, d, r) > 0 and 1 or 0
elseif op == 'ran' then
  if redis.call('HEXISTS', h, d) == 0 then return 0 end
  local tick, run, task = state()
  if tonumber(ARGV[5]) <= tick then return 0 end
  if ARGV[6] ~= '' then
    run, task = ARGV[6], ARGV[7]
  end
  redis.call('HSET', h, r, ARGV[5] .. '|' .. run .. '|' .. task)
  return 1
end
return redis.error_reply('unknown schedule op ' .. op)
