-- Adds jobs to one queue. A job whose hash already exists is skipped: the outbox relay may
-- dispatch a row twice (crash between push and delete), and the job id dedupes it.
-- KEYS[1] pending list, KEYS[2] scheduled zset
-- ARGV[1] job key prefix, ARGV[2] wake channel,
-- then per job: id, kind, args, max_attempts, run_at_ms (0 = now), meta
local t = redis.call('TIME')
local now = t[1] * 1000 + math.floor(t[2] / 1000)
-- A string, formatted once: Redis 7.0 formats every number argument with snprintf (fetch.lua).
local enqueued_at = tostring(now)
local added = 0
for i = 3, #ARGV, 6 do
  local id = ARGV[i]
  local key = ARGV[1] .. id
  if redis.call('EXISTS', key) == 0 then
    local run_at = tonumber(ARGV[i + 4])
    local status, due = 'pending', enqueued_at
    if run_at > now then status, due = 'scheduled', ARGV[i + 4] end
    redis.call('HSET', key, 'kind', ARGV[i + 1], 'args', ARGV[i + 2], 'max_attempts', ARGV[i + 3],
      'attempts', '0', 'lease', '0', 'enqueued_at', enqueued_at, 'run_at', due,
      'meta', ARGV[i + 5], 'status', status)
    if status == 'scheduled' then
      redis.call('ZADD', KEYS[2], due, id)
    else
      redis.call('RPUSH', KEYS[1], id)
    end
    added = added + 1
  end
end
-- Wake idle workers at once (apalis-redis stores every push as scheduled and never signals).
if added > 0 then redis.call('PUBLISH', ARGV[2], added) end
return added
