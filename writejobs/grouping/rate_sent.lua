-- A call admitted by rate_acquire.lua leaves for the provider now (limiter.py `sent`):
-- move one slot still marked as admitted (`q:`) to now, marked sent (`s:`), in the
-- account's window and in its configured-limit window. The provider counts a call
-- from when it arrives, not from when we admitted it; the work in between (the
-- attempt's SQL, a busy host) would otherwise let the next call take the slot early
-- by as long. Which admitted slot moves does not matter: together they are the
-- times the calls left.
-- KEYS[1] the account's window, KEYS[2] its configured-limit window. ARGV[1]: now.
-- Returns how many windows had a slot moved.
local now = tonumber(ARGV[1])
local moved = 0
for _, key in ipairs(KEYS) do
  local members = redis.call('ZRANGEBYSCORE', key, '-inf', now, 'WITHSCORES')
  for i = 1, #members, 2 do
    local member = members[i]
    if string.sub(member, 1, 2) == 'q:' then
      redis.call('ZREM', key, member)
      redis.call('ZADD', key, now, 's:' .. string.sub(member, 3))
      -- The slot now ends later: so must the window's key.
      local ttl = redis.call('PTTL', key)
      local later = math.ceil((now - tonumber(members[i + 1])) * 1000)
      if ttl > 0 and later > 0 then redis.call('PEXPIRE', key, ttl + later) end
      moved = moved + 1
      break
    end
  end
end
return moved
