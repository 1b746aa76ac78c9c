-- KEYS: buf, due, batch, unsent   ARGV: group, now, limit
-- Claims a batch from a group whose earliest member is due ("time" flush), or
-- returns an empty list when another scheduler got there first.
local score = redis.call('ZSCORE', KEYS[2], ARGV[1])
if not score or tonumber(score) > tonumber(ARGV[2]) then return {} end
return claim(KEYS[1], KEYS[2], KEYS[3], KEYS[4], ARGV[1], 'time', ARGV[2], tonumber(ARGV[3]))
