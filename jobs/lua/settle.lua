-- Records what happened to leased jobs, in one call for a batch. Each entry carries the lease
-- number the worker was given; if the job has been leased again since (the worker was
-- stopped or partitioned past its lease and the job was recovered), the entry is ignored, so
-- a late acknowledgement never overwrites newer state.
-- KEYS[1] inflight, KEYS[2] scheduled, KEYS[3] dead, KEYS[4] pending
-- ARGV[1] job key prefix, ARGV[2] retention ms for finished jobs, ARGV[3] wake channel,
-- then per entry: id, lease, outcome (ok | retry | dead | release), delay ms, error
local t = redis.call('TIME')
local now = t[1] * 1000 + math.floor(t[2] / 1000)
-- A string, formatted once: Redis 7.0 formats every number argument with snprintf (fetch.lua).
local finished_at = tostring(now)
local applied = 0
local requeued = 0
-- ids leaving the in-flight set, removed with one variadic ZREM at the end.
local settled = {}
for i = 4, #ARGV, 5 do
  local id = ARGV[i]
  local key = ARGV[1] .. id
  local cur = redis.call('HMGET', key, 'lease', 'status')
  if cur[1] == ARGV[i + 1] and cur[2] == 'running' then
    settled[#settled + 1] = id
    local outcome = ARGV[i + 2]
    if outcome == 'ok' then
      redis.call('HSET', key, 'status', 'succeeded', 'finished_at', finished_at)
      -- Finished jobs expire on their own, so Redis memory stays flat (apalis-redis keeps them).
      redis.call('PEXPIRE', key, ARGV[2])
    elseif outcome == 'retry' then
      local due = now + tonumber(ARGV[i + 3])
      redis.call('HSET', key, 'status', 'scheduled', 'last_error', ARGV[i + 4], 'run_at', due)
      redis.call('ZADD', KEYS[2], due, id)
      requeued = requeued + 1
    elseif outcome == 'dead' then
      redis.call('HSET', key, 'status', 'dead', 'last_error', ARGV[i + 4], 'finished_at', finished_at)
      redis.call('ZADD', KEYS[3], finished_at, id)
    else
      -- Handed back at shutdown: not an attempt, and first in line for the next worker.
      redis.call('HINCRBY', key, 'attempts', '-1')
      redis.call('HINCRBY', key, 'lease', '1')
      redis.call('HSET', key, 'status', 'pending')
      redis.call('LPUSH', KEYS[4], id)
      requeued = requeued + 1
    end
    applied = applied + 1
  end
end
if #settled > 0 then redis.call('ZREM', KEYS[1], unpack(settled)) end
-- Idle workers re-read when the next job falls due (a retry) or take it now (handed back).
if requeued > 0 then redis.call('PUBLISH', ARGV[3], requeued) end
return applied
