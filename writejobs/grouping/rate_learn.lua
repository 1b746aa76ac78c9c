-- Fold what a provider answer said into an account's limit (limiter.py decides what).
-- KEYS[1] the account's hash, KEYS[2] its window (see rate_acquire.lua).
-- ARGV: now (epoch s), default max, default interval_s, learned max ('' : none),
-- learned interval_s, calls the provider counts in its window ('' : unknown, 'full':
-- as many as the limit), pause until (epoch s, '' : none), seconds between calls
-- ('' : leave, '0' : stop pacing), the hash's time to live (s), a unique prefix,
-- slack_s added to every window.
local now = tonumber(ARGV[1])
if ARGV[4] ~= '' then
  redis.call('HSET', KEYS[1], 'max', ARGV[4], 'interval_s', ARGV[5])
end
local limit = tonumber(redis.call('HGET', KEYS[1], 'max')) or tonumber(ARGV[2])
-- The window as rate_acquire.lua counts it: a call it still counts is no drift.
local span = (tonumber(redis.call('HGET', KEYS[1], 'interval_s')) or tonumber(ARGV[3]))
  + tonumber(ARGV[11])

if ARGV[6] ~= '' then
  -- The provider counts more calls than we admitted (other clients, lost answers):
  -- count the difference as calls made now, so the window fills up no later than the
  -- provider's does. Never fewer: calls in flight are not in its count yet.
  local target = limit
  if ARGV[6] ~= 'full' then target = math.min(tonumber(ARGV[6]), limit) end
  redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', now - span)
  local count = redis.call('ZCARD', KEYS[2])
  for i = count + 1, target do
    redis.call('ZADD', KEYS[2], ARGV[1], ARGV[10] .. ':' .. i)
  end
  redis.call('PEXPIRE', KEYS[2], math.ceil(span * 1000) + 1000)
end

if ARGV[7] ~= '' then
  local paused_until = tonumber(redis.call('HGET', KEYS[1], 'paused_until')) or 0
  if tonumber(ARGV[7]) > paused_until then
    redis.call('HSET', KEYS[1], 'paused_until', ARGV[7])
  end
end
if ARGV[8] ~= '' then
  if tonumber(ARGV[8]) > 0 then
    redis.call('HSET', KEYS[1], 'gap_s', ARGV[8])
  else
    redis.call('HDEL', KEYS[1], 'gap_s', 'next_at')
  end
end
if redis.call('EXISTS', KEYS[1]) == 1 then
  local ttl = redis.call('TTL', KEYS[1])
  if ttl < tonumber(ARGV[9]) then redis.call('EXPIRE', KEYS[1], ARGV[9]) end
end
return 1
