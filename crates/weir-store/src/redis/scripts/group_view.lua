-- Read a group and its members (their records without payloads). KEYS[1]: the
-- group's hash. ARGV: base, channel, group id. Returns {} if unknown, else
-- {now, group HGETALL, then per member that still exists: id, record}.
local g = redis.call('HGETALL', KEYS[1])
if #g == 0 then return {} end
local out = {fmt(NOW), g}
local m = redis.call('HGET', KEYS[1], 'm') or ''
for i = 1, #m, 26 do
  local id = string.sub(m, i, i + 25)
  local rec = get(id)
  if rec and alive(rec) then
    local _, _, _, _, _, _, _, _, _, pos = struct.unpack(DFMT, rec, HLEN + 1)
    local plen = struct.unpack('>I4', rec, pos)
    out[#out + 1] = id
    out[#out + 1] = string.sub(rec, 1, pos - 1) .. '\0\0\0\0' .. string.sub(rec, pos + 4 + plen)
  end
end
return out
