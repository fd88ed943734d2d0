-- Recovers jobs whose lease ran out (their worker died, stopped or lost Redis). The lease is a
-- deadline per job in Redis time, not a worker name, so a restarted process reusing a name
-- cannot block recovery (apalis #504). The lease number moves on, fencing off the old holder.
-- KEYS[1] inflight, KEYS[2] pending, KEYS[3] dead
-- ARGV[1] job key prefix, ARGV[2] max jobs per call, ARGV[3] wake channel
local t = redis.call('TIME')
local now = t[1] * 1000 + math.floor(t[2] / 1000)
local expired = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', now, 'LIMIT', 0, tonumber(ARGV[2]))
local requeued = 0
for i = 1, #expired do
  local id = expired[i]
  local key = ARGV[1] .. id
  redis.call('ZREM', KEYS[1], id)
  local job = redis.call('HMGET', key, 'attempts', 'max_attempts', 'worker')
  if job[1] then
    redis.call('HINCRBY', key, 'lease', 1)
    local err = 'lease expired: worker ' .. (job[3] or '?') .. ' stopped answering'
    if tonumber(job[1]) >= tonumber(job[2]) then
      redis.call('HSET', key, 'status', 'dead', 'last_error', err, 'finished_at', now)
      redis.call('ZADD', KEYS[3], now, id)
    else
      redis.call('HSET', key, 'status', 'pending', 'last_error', err)
      redis.call('LPUSH', KEYS[2], id)
      requeued = requeued + 1
    end
  end
end
if requeued > 0 then redis.call('PUBLISH', ARGV[3], requeued) end
return #expired
