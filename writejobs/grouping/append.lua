-- KEYS: buf, due, batch, unsent   ARGV: group, op_id, due_at, now, limit
-- Adds one member; when the group reaches `limit` it claims a batch at once
-- ("size" flush) and returns its member ids, else returns an empty list.
redis.call('ZADD', KEYS[1], ARGV[3], ARGV[2])
local earliest = redis.call('ZRANGE', KEYS[1], 0, 0, 'WITHSCORES')
redis.call('ZADD', KEYS[2], earliest[2], ARGV[1])
if redis.call('ZCARD', KEYS[1]) >= tonumber(ARGV[5]) then
  return claim(KEYS[1], KEYS[2], KEYS[3], KEYS[4], ARGV[1], 'size', ARGV[4], tonumber(ARGV[5]))
end
return {}
