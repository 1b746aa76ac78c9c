-- The claim step shared by append.lua and claim_due.lua (prepended to each when
-- loaded): move at most `limit` members (earliest due first) from the group's buffer
-- into a new batch record and the unsent set, and re-score the group by its new
-- earliest member. Atomic, so any number of appenders and schedulers can race
-- without a member leaving twice.
local function claim(buf, due_key, batch_key, unsent_key, group, reason, now, limit)
  local members = redis.call('ZRANGE', buf, 0, limit - 1, 'WITHSCORES')
  if #members == 0 then return {} end
  local ids = {}
  for i = 1, #members, 2 do ids[#ids + 1] = members[i] end
  redis.call('ZREM', buf, unpack(ids))
  local rest = redis.call('ZRANGE', buf, 0, 0, 'WITHSCORES')
  if #rest == 0 then
    redis.call('ZREM', due_key, group)
  else
    redis.call('ZADD', due_key, rest[2], group)
  end
  redis.call('HSET', batch_key, 'group', group, 'reason', reason, 'claimed_at', now,
             'earliest_due', members[2], 'members', table.concat(ids, ','))
  redis.call('ZADD', unsent_key, now, batch_key)
  return ids
end
