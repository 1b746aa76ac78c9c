-- Admit ready tasks to Celery in rotation: projects take turns, and within a project
-- its installations take turns; each turn admits one task of an installation that
-- has room (admission_room.lua), until the Celery queue holds its most or nothing
-- more may go. One atomic step, so several schedulers never admit a task twice.
-- KEYS[1] the ring of projects with ready work, KEYS[2] the Celery queue's list.
-- ARGV: namespace, now (epoch s), most tasks waiting in the Celery queue, slack_s,
-- most tasks to admit in this call.
-- Returns {the admitted members in order, when room next frees ('' : not known)}: the
-- soonest any installation left waiting gets room, known only when the pass ended
-- because none had room (not because the Celery queue is full), so a scheduler may
-- come back then rather than a whole interval later.
local ns, now, slack = ARGV[1], tonumber(ARGV[2]), tonumber(ARGV[4])
local room_left = math.min(tonumber(ARGV[3]) - redis.call('LLEN', KEYS[2]), tonumber(ARGV[5]))
local admitted = {}
local soonest = nil
local known = true

local function turn(project)
  -- One turn of a project: its next installation that has room gives one task.
  local ring = ns .. ':adm:insts:' .. project
  for _ = 1, redis.call('LLEN', ring) do
    local inst = redis.call('RPOPLPUSH', ring, ring)
    if not inst then return false end
    local ready = ns .. ':adm:q:' .. inst
    if redis.call('ZCARD', ready) == 0 then
      redis.call('LREM', ring, 0, inst)
    else
      local room, span, free_at = admission_room(ns .. ':adm:meta:' .. inst, ns .. ':adm:w:' .. inst, now, slack)
      if not room then
        if free_at == nil then known = false
        elseif soonest == nil or free_at < soonest then soonest = free_at end
      end
      if room then
        local member = redis.call('ZPOPMIN', ready)[1]
        admission_take(ns .. ':adm:w:' .. inst, now, member, span)
        admitted[#admitted + 1] = member
        if redis.call('ZCARD', ready) == 0 then redis.call('LREM', ring, 0, inst) end
        return true
      end
    end
  end
  return false
end

local full = room_left <= 0
while room_left > 0 do
  local progressed = false
  soonest, known = nil, true
  for _ = 1, redis.call('LLEN', KEYS[1]) do
    if room_left <= 0 then break end
    local project = redis.call('RPOPLPUSH', KEYS[1], KEYS[1])
    if not project then break end
    if turn(project) then
      progressed = true
      room_left = room_left - 1
    end
    if redis.call('LLEN', ns .. ':adm:insts:' .. project) == 0 then
      redis.call('LREM', KEYS[1], 0, project)
    end
  end
  if not progressed then break end
  full = room_left <= 0
end
if full or not known or soonest == nil then return {admitted, ''} end
return {admitted, tostring(soonest)}
