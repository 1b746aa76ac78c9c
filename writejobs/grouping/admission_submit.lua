-- Submit one task (`op:<id>` or `batch:<id>`) of an installation for admission.
-- KEYS[1] the installation's ready zset, KEYS[2] its project's ring of installations
-- with ready work, KEYS[3] the ring of projects with ready work, KEYS[4] the
-- installation's admission window, KEYS[5] its meta hash, KEYS[6] the limiter's hash
-- of its account, KEYS[7] the Celery queue's list, KEYS[8] the submit counter (ready
-- work is scored by it: first submitted, first admitted).
-- ARGV: member, now (epoch s), project, installation, start max, start interval_s,
-- capped (0/1), slack_s, most tasks waiting in the Celery queue.
-- Returns 1: send it now (nothing waits before it and there is room: a slot is taken);
-- 2: it waits in the ready zset for the scheduler's round-robin; 0: it already waits.
local now = tonumber(ARGV[2])
redis.call('HSET', KEYS[5], 'project', ARGV[3], 'rl', KEYS[6], 'max', ARGV[5],
  'interval_s', ARGV[6], 'capped', ARGV[7])
redis.call('EXPIRE', KEYS[5], 86400)
if redis.call('ZSCORE', KEYS[1], ARGV[1]) then return 0 end
if redis.call('ZCARD', KEYS[1]) == 0 and redis.call('LLEN', KEYS[7]) < tonumber(ARGV[9]) then
  local room, span = admission_room(KEYS[5], KEYS[4], now, tonumber(ARGV[8]))
  if room then
    admission_take(KEYS[4], now, ARGV[1], span)
    return 1
  end
end
redis.call('ZADD', KEYS[1], redis.call('INCR', KEYS[8]), ARGV[1])
if not redis.call('LPOS', KEYS[2], ARGV[4]) then redis.call('RPUSH', KEYS[2], ARGV[4]) end
if not redis.call('LPOS', KEYS[3], ARGV[3]) then redis.call('RPUSH', KEYS[3], ARGV[3]) end
return 2
