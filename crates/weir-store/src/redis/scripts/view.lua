-- Read a task. KEYS[1]: the task's hash. ARGV: base, channel, id.
-- Returns {now, view...} (no view fields if unknown).
local out = {fmt(NOW)}
for _, x in ipairs(view(ARGV[3])) do out[#out + 1] = x end
return out
