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
    out[#out + 1] = id
    out[#out + 1] = bare(rec)
  end
end
return out
