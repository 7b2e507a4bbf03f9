-- API keys, all in one hash (KEYS[1]): field 'k:<id>' holds a key's record (the
-- server's JSON, not read here), 'u:<id>' its last use in ms ('' until the key is
-- first used). Both fields come and go together, so the hash holds two fields
-- per key and exists only while some key does.
-- ARGV: base, channel, op, id, then per op:
--   create: record, keys_max -> 'ok', 'exists' or 'full'
--   del: -> 1 if it existed, else 0
--   used: at -> 1 if last use moved, else 0 (an unknown or revoked key, or a
--         use at or before the last one, changes nothing)
local h, op, id = KEYS[1], ARGV[3], ARGV[4]
local k, u = 'k:' .. id, 'u:' .. id
if op == 'create' then
  if redis.call('HEXISTS', h, k) == 1 then return 'exists' end
  if redis.call('HLEN', h) / 2 >= tonumber(ARGV[6]) then return 'full' end
  redis.call('HSET', h, k, ARGV[5], u, '')
  return 'ok'
elseif op == 'del' then
  return redis.call('HDEL', h, k, u) > 0 and 1 or 0
elseif op == 'used' then
  if redis.call('HEXISTS', h, k) == 0 then return 0 end
  local last = tonumber(redis.call('HGET', h, u) or '')
  local at = tonumber(ARGV[5])
  if last and at <= last then return 0 end
  redis.call('HSET', h, u, ARGV[5])
  return 1
end
return redis.error_reply('unknown API key op ' .. op)
