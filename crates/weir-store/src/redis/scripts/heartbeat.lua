-- Extend a lease. KEYS[1]: the slot's task hash. ARGV: base, channel, id, lease
-- id, grace, watch ('1': mark the task watched, so its cancel request and end
-- are published). Returns {lease expiry, cancel requested, now} or 'stale'.
local id, lease, grace = ARGV[3], ARGV[4], tonumber(ARGV[5])
local rec = get(id)
if not rec then return 'stale' end
local t = parse(rec)
if t.s ~= ACTIVE or t.l ~= lease then return 'stale' end
t.le = clamp(math.max(t.le, NOW + t.to + grace))
if ARGV[6] == '1' then t.wt = 1 end
store(id, t)
redis.call('ZADD', qkey(t.q, 'active'), t.le, id)
flush_records()
return {fmt(t.le), t.cr, fmt(NOW)}
