"""Every Redis key writejobs uses, and the Lua scripts that move ids between them.

Redis holds only operation ids (never record data), so it can be rebuilt from
SQL. Keys, under a namespace prefix:

    {ns}:buf:{group}      zset  pending member op ids, scored by their due time (epoch s)
    {ns}:due              zset  group -> its earliest member's due time
    {ns}:batch:{id}       hash  a claimed batch: group, reason, claimed_at, earliest_due, members
    {ns}:unsent           zset  claimed batches whose task is not known to be sent, by claim time
    {ns}:metrics          hash  the fleet's counters and histograms (writejobs/metrics.py)
    {ns}:metrics:{name}   list  recent samples of a latency, newest first

A group is one provider batch's worth of compatible records: one installation
(project, integration, groupRef), one object, one write type.
"""

from __future__ import annotations

from dataclasses import dataclass

DEFAULT_NAMESPACE = "wj"
BATCH_LIMIT = 100


@dataclass(frozen=True, slots=True)
class Keys:
    namespace: str = DEFAULT_NAMESPACE

    def buffer(self, group: str) -> str:
        return f"{self.namespace}:buf:{group}"

    @property
    def due(self) -> str:
        return f"{self.namespace}:due"

    def batch(self, batch_id: str) -> str:
        return f"{self.namespace}:batch:{batch_id}"

    @property
    def unsent(self) -> str:
        return f"{self.namespace}:unsent"

    @property
    def metrics(self) -> str:
        return f"{self.namespace}:metrics"

    def samples(self, name: str) -> str:
        return f"{self.namespace}:metrics:{name}"


def group_key(installation_id: str, object_name: str, write_type: str) -> str:
    """The installation id already pins project, integration and groupRef."""
    return f"{installation_id}|{object_name}|{write_type}"


# The claim step shared by both scripts below: move at most BATCH_LIMIT members
# (earliest due first) from the group's buffer into a new batch record and the
# unsent set, and re-score the group by its new earliest member. Atomic, so any
# number of appenders and schedulers can race without a member leaving twice.
_CLAIM = """
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
"""

# KEYS: buf, due, batch, unsent   ARGV: group, op_id, due_at, now, limit
# Adds one member; when the group reaches `limit` it claims a batch at once
# ("size" flush) and returns its member ids, else returns an empty list.
APPEND_SCRIPT = (
    _CLAIM
    + """
redis.call('ZADD', KEYS[1], ARGV[3], ARGV[2])
local earliest = redis.call('ZRANGE', KEYS[1], 0, 0, 'WITHSCORES')
redis.call('ZADD', KEYS[2], earliest[2], ARGV[1])
if redis.call('ZCARD', KEYS[1]) >= tonumber(ARGV[5]) then
  return claim(KEYS[1], KEYS[2], KEYS[3], KEYS[4], ARGV[1], 'size', ARGV[4], tonumber(ARGV[5]))
end
return {}
"""
)

# KEYS: buf, due, batch, unsent   ARGV: group, now, limit
# Claims a batch from a group whose earliest member is due ("time" flush), or
# returns an empty list when another scheduler got there first.
CLAIM_DUE_SCRIPT = (
    _CLAIM
    + """
local score = redis.call('ZSCORE', KEYS[2], ARGV[1])
if not score or tonumber(score) > tonumber(ARGV[2]) then return {} end
return claim(KEYS[1], KEYS[2], KEYS[3], KEYS[4], ARGV[1], 'time', ARGV[2], tonumber(ARGV[3]))
"""
)

# KEYS: buf   ARGV: op_id, unsent, namespace
# 1 when the op id is in its group's buffer or in any claimed-but-unsent batch.
# One script, so a claim cannot slip between the two looks.
IS_BUFFERED_SCRIPT = """
if redis.call('ZSCORE', KEYS[1], ARGV[1]) then return 1 end
for _, batch_key in ipairs(redis.call('ZRANGE', ARGV[2], 0, -1)) do
  local members = redis.call('HGET', batch_key, 'members')
  if members and string.find(',' .. members .. ',', ',' .. ARGV[1] .. ',', 1, true) then
    return 1
  end
end
return 0
"""
