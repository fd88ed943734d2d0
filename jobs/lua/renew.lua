-- Extends the leases a live worker still holds. Entries whose lease number has moved on (the
-- job was recovered and leased again) are returned, so the worker knows it lost them; entries
-- already settled by this worker are simply skipped.
-- KEYS[1] inflight; ARGV[1] job key prefix, ARGV[2] lease ms, then per entry: id, lease
local t = redis.call('TIME')
local now = t[1] * 1000 + math.floor(t[2] / 1000)
local deadline = now + tonumber(ARGV[2])
local lost = {}
for i = 3, #ARGV, 2 do
  local cur = redis.call('HMGET', ARGV[1] .. ARGV[i], 'lease', 'status')
  if cur[1] ~= ARGV[i + 1] then
    lost[#lost + 1] = ARGV[i]
  elseif cur[2] == 'running' then
    redis.call('ZADD', KEYS[1], 'XX', deadline, ARGV[i])
  end
end
return lost
