-- Take one token of a project's intake bucket (quota.py): a token bucket of `burst`
-- tokens refilled at `rate` per second. KEYS[1] the project's bucket hash.
-- ARGV: now (epoch s), rate (tokens/s), burst.
-- Returns {1, '0'} when taken, else {0, seconds until a token is there}.
local now, rate, burst = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
local state = redis.call('HMGET', KEYS[1], 'tokens', 'at')
local tokens = tonumber(state[1]) or burst
local at = tonumber(state[2]) or now
tokens = math.min(burst, tokens + math.max(now - at, 0) * rate)
local granted, wait = 0, 0
if tokens >= 1 then
  tokens = tokens - 1
  granted = 1
else
  wait = (1 - tokens) / rate
end
redis.call('HSET', KEYS[1], 'tokens', tostring(tokens), 'at', ARGV[1])
redis.call('EXPIRE', KEYS[1], math.ceil(burst / rate) + 60)
return {granted, tostring(wait)}
