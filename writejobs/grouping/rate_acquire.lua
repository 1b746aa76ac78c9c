-- Take the slots of an attempt's calls for an account, or say how long to wait
-- (limiter.py).
-- KEYS[1] the account's hash (learned max / interval_s, paused_until, gap_s, next_at)
-- KEYS[2] its window: calls admitted, scored by time; KEYS[3] the same for the
-- installation's configured limit; KEYS[4] the registry of accounts by last ask.
-- ARGV: now (epoch s), default max, default interval_s, configured max (0: none),
-- configured interval_s, slack_s added to every window, a unique member for this
-- attempt, its calls (at most a window's worth count), the account's name.
-- KEYS[5] (optional): a sorted set to remove ARGV[10] from once the slots were asked
-- for, granted or not (the fair-share admission's reservation of the asking task).
-- A slot is taken marked admitted (`q:`); rate_sent.lua moves it to the time its call
-- leaves for the provider.
-- Returns {1, '0'} when admitted, else {0, seconds to wait} with nothing taken: calls
-- are admitted only while the window before them holds at most max with them.
local now = tonumber(ARGV[1])
local state = redis.call('HMGET', KEYS[1], 'max', 'interval_s', 'paused_until', 'gap_s', 'next_at')
local limit = tonumber(state[1]) or tonumber(ARGV[2])
local span = (tonumber(state[2]) or tonumber(ARGV[3])) + tonumber(ARGV[6])
local cap = tonumber(ARGV[4])
local cap_span = tonumber(ARGV[5]) + tonumber(ARGV[6])
local calls = tonumber(ARGV[8])
redis.call('ZADD', KEYS[4], now, ARGV[9])
if KEYS[5] then redis.call('ZREM', KEYS[5], ARGV[10]) end

local function window_wait(key, max, window)
  redis.call('ZREMRANGEBYSCORE', key, '-inf', now - window)
  local count = redis.call('ZCARD', key)
  local needed = math.min(calls, max)
  if count + needed <= max then return 0 end
  -- The call that must leave the window before these fit in it.
  local index = count + needed - max - 1
  local leaving = redis.call('ZRANGE', key, index, index, 'WITHSCORES')
  return tonumber(leaving[2]) + window - now + 0.001
end

local function admit(key, max, window)
  for i = 1, math.min(calls, max) do
    redis.call('ZADD', key, ARGV[1], 'q:' .. ARGV[7] .. ':' .. i)
  end
  redis.call('PEXPIRE', key, math.ceil(window * 1000) + 1000)
end

local wait = 0
local paused_until = tonumber(state[3])
if paused_until and paused_until > now then wait = paused_until - now end
local next_at = tonumber(state[5])
if tonumber(state[4]) and next_at and next_at > now then wait = math.max(wait, next_at - now) end
wait = math.max(wait, window_wait(KEYS[2], limit, span))
if cap > 0 then wait = math.max(wait, window_wait(KEYS[3], cap, cap_span)) end
if wait > 0 then return {0, tostring(wait)} end

admit(KEYS[2], limit, span)
if cap > 0 then admit(KEYS[3], cap, cap_span) end
local gap = tonumber(state[4])
if gap then redis.call('HSET', KEYS[1], 'next_at', tostring(now + gap)) end
return {1, '0'}
