-- Shared by admission_submit.lua and admission_next.lua (prepended by admission.py).
-- Whether an installation may have one more task admitted to Celery now: its account
-- is not paused or spaced out, and the calls in its limiter window (rate_acquire.lua's
-- `<rl>:w`) plus the tasks admitted but not yet arrived at a worker (the admission's
-- reservations, removed on arrival and kept at most one window) are fewer than its
-- limit. So admission follows the limiter's sliding window call by call, and a task
-- it admits finds its budget when it reaches the gate. The meta hash holds what the
-- admitting process knew: the limiter hash's key, the starting max / interval_s, and
-- capped = 1 when that start is the installation's own limit (headers never raise it).
-- Returns whether there is room, the window (s), and without room, when it frees (epoch
-- s; nil when only a reservation's arrival at a worker would free it).
local function admission_room(meta_key, reserved_key, now, slack)
  local meta = redis.call('HMGET', meta_key, 'rl', 'max', 'interval_s', 'capped')
  local limit = tonumber(meta[2]) or 1
  local span = tonumber(meta[3]) or 1
  local used = 0
  if meta[1] then
    local learned = redis.call('HMGET', meta[1], 'max', 'interval_s', 'paused_until', 'gap_s', 'next_at')
    local learned_max = tonumber(learned[1])
    if learned_max then
      if meta[4] == '1' then limit = math.min(limit, learned_max) else limit = learned_max end
      span = tonumber(learned[2]) or span
    end
    local paused_until = tonumber(learned[3])
    if paused_until and paused_until > now then return false, span + slack, paused_until end
    local next_at = tonumber(learned[5])
    if tonumber(learned[4]) and next_at and next_at > now then
      return false, span + slack, next_at
    end
    used = redis.call('ZCOUNT', meta[1] .. ':w', now - span - slack, '+inf')
  end
  redis.call('ZREMRANGEBYSCORE', reserved_key, '-inf', now - span - slack)
  local taken = used + redis.call('ZCARD', reserved_key)
  if taken < limit then return true, span + slack end
  -- The call that must leave the limiter's window before one more fits.
  local index = taken - limit
  if index >= used then return false, span + slack, nil end
  local leaving = redis.call('ZRANGEBYSCORE', meta[1] .. ':w', now - span - slack, '+inf',
    'WITHSCORES', 'LIMIT', index, 1)
  return false, span + slack, tonumber(leaving[2]) + span + slack + 0.001
end

local function admission_take(reserved_key, now, member, span)
  redis.call('ZADD', reserved_key, now, member)
  redis.call('PEXPIRE', reserved_key, math.ceil(span * 1000) + 1000)
end
