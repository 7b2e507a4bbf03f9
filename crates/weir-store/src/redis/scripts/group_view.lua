-- Read a group and its members (without payloads). KEYS[1]: the group's hash.
-- ARGV: base, channel, group id. Returns {} if unknown, else
-- {now, group HGETALL, member HGETALL...}.
local g = redis.call('HGETALL', KEYS[1])
if #g == 0 then return {} end
local out = {fmt(NOW), g}
local m = redis.call('HGET', KEYS[1], 'm') or ''
for i = 1, #m, 26 do
  local id = string.sub(m, i, i + 25)
  local h = redis.call('HGETALL', tkey(id))
  if #h > 0 then
    h[#h + 1] = 'id'
    h[#h + 1] = id
  end
  out[#out + 1] = h
end
return out
