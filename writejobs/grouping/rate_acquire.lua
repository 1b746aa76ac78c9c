-- Take one call's slot for an account, or say how long to wait (limiter.py).
-- KEYS[1] the account's hash (learned max / interval_s, paused_until, gap_s, next_at)
-- KEYS[2] its window: calls admitted, scored by time; KEYS[3] the same for the
-- installation's configured limit.
-- ARGV: now (epoch s), default max, default interval_s, configured max (0: none),
-- configured interval_s, slack_s added to every window, a unique member for this call.
-- Returns {1, '0'} when admitted, else {0, seconds to wait} with nothing taken: a
-- call is admitted only while fewer than max were admitted in the window before it.
local now = tonumber(ARGV[1])
local state = redis.call('HMGET', KEYS[1], 'max', 'interval_s', 'paused_until', 'gap_s', 'next_at')
local limit = tonumber(state[1]) or tonumber(ARGV[2])
local span = (tonumber(state[2]) or tonumber(ARGV[3])) + tonumber(ARGV[6])
local cap = tonumber(ARGV[4])
local cap_span = tonumber(ARGV[5]) + tonumber(ARGV[6])

local function window_wait(key, max, window)
  redis.call('ZREMRANGEBYSCORE', key, '-inf', now - window)
  local count = redis.call('ZCARD', key)
  if count < max then return 0 end
  -- The call that must leave the window before one more fits in it.
  local leaving = redis.call('ZRANGE', key, count - max, count - max, 'WITHSCORES')
  return tonumber(leaving[2]) + window - now + 0.001
end

local wait = 0
local paused_until = tonumber(state[3])
if paused_until and paused_until > now then wait = paused_until - now end
local next_at = tonumber(state[5])
if tonumber(state[4]) and next_at and next_at > now then wait = math.max(wait, next_at - now) end
wait = math.max(wait, window_wait(KEYS[2], limit, span))
if cap > 0 then wait = math.max(wait, window_wait(KEYS[3], cap, cap_span)) end
if wait > 0 then return {0, tostring(wait)} end

redis.call('ZADD', KEYS[2], ARGV[1], ARGV[7])
redis.call('PEXPIRE', KEYS[2], math.ceil(span * 1000) + 1000)
if cap > 0 then
  redis.call('ZADD', KEYS[3], ARGV[1], ARGV[7])
  redis.call('PEXPIRE', KEYS[3], math.ceil(cap_span * 1000) + 1000)
end
local gap = tonumber(state[4])
if gap then redis.call('HSET', KEYS[1], 'next_at', tostring(now + gap)) end
return {1, '0'}
