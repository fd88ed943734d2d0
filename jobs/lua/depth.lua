-- Counts a queue's jobs by state and the age of its oldest pending job, at one instant.
-- KEYS[1] pending, KEYS[2] scheduled, KEYS[3] inflight, KEYS[4] dead, KEYS[5] paused
-- ARGV[1] job key prefix
local t = redis.call('TIME')
local now = t[1] * 1000 + math.floor(t[2] / 1000)
local age = 0
local head = redis.call('LINDEX', KEYS[1], 0)
if head then
  local since = redis.call('HMGET', ARGV[1] .. head, 'run_at', 'enqueued_at')
  local at = tonumber(since[1] or since[2] or now)
  if at and at < now then age = now - at end
end
-- Scheduled jobs already due count as pending: no worker has promoted them yet.
local due = redis.call('ZCOUNT', KEYS[2], '-inf', now)
if due > 0 then
  local first = redis.call('ZRANGE', KEYS[2], 0, 0, 'WITHSCORES')
  local due_age = now - tonumber(first[2])
  if due_age > age then age = due_age end
end
return {redis.call('LLEN', KEYS[1]) + due, redis.call('ZCARD', KEYS[2]) - due,
  -- In flight: every lease but fetch.lua's marker, which sorts at +inf.
  redis.call('ZCOUNT', KEYS[3], '-inf', '(+inf'), redis.call('ZCARD', KEYS[4]), redis.call('EXISTS', KEYS[5]), age}
