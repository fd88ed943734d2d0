-- Leases up to ARGV[2] jobs to one worker. Cost is O(jobs fetched + jobs promoted), never
-- O(backlog): ids leave the pending list with one LPOP (apalis-redis scans the list with LREM
-- per task). Due scheduled jobs are promoted in bounded slices, so a burst of due jobs can
-- never overflow Lua's unpack (apalis-redis fails past ~8,000 and its worker exits).
-- KEYS[1] pending, KEYS[2] scheduled, KEYS[3] inflight, KEYS[4] paused flag
-- ARGV[1] job key prefix, ARGV[2] batch size, ARGV[3] lease ms, ARGV[4] worker id
-- Returns {now_ms, next_due_ms | 0 | -1 when paused, then per job: id, kind, args,
-- max_attempts, meta, attempts, lease}
local t = redis.call('TIME')
local now = t[1] * 1000 + math.floor(t[2] / 1000)
-- Numbers go to redis.call as strings made here, each value once per call: Redis 7.0 formats
-- every number argument with snprintf("%.17g"), ~7 % of its time in a drain when done per job.
local decimals = {}
local function decimal(n)
  local s = decimals[n]
  if not s then
    s = tostring(n)
    decimals[n] = s
  end
  return s
end
if redis.call('EXISTS', KEYS[4]) == 1 then return {now, -1} end

local due = redis.call('ZRANGEBYSCORE', KEYS[2], '-inf', now, 'LIMIT', 0, 200)
if #due > 0 then
  redis.call('ZREM', KEYS[2], unpack(due))
  redis.call('RPUSH', KEYS[1], unpack(due))
  for i = 1, #due do redis.call('HSET', ARGV[1] .. due[i], 'status', 'pending') end
end

local out = {now, 0}
local ids = redis.call('LPOP', KEYS[1], tonumber(ARGV[2]))
if ids then
  local started_at = decimal(now)
  local deadline = decimal(now + tonumber(ARGV[3]))
  -- score, id pairs for one variadic ZADD: a call per job costs more than the ZADD itself.
  -- First a marker that never expires, longer than zset-max-listpack-value (64 bytes by
  -- default): it keeps the in-flight set a skiplist. As a listpack (up to 128 entries, about
  -- what one pool holds) every add and remove scans the whole set, ~4 µs a job at 100 held.
  local leased = {'+inf', '~marker: longer than zset-max-listpack-value, so this set stays a skiplist'}
  for i = 1, #ids do
    local id = ids[i]
    local key = ARGV[1] .. id
    local job = redis.call('HMGET', key, 'kind', 'args', 'max_attempts', 'meta', 'attempts', 'lease')
    if job[1] then
      local attempts = tonumber(job[5]) + 1
      local lease = tonumber(job[6]) + 1
      redis.call('HSET', key, 'status', 'running', 'attempts', decimal(attempts),
        'lease', decimal(lease), 'worker', ARGV[4], 'started_at', started_at)
      leased[#leased + 1] = deadline
      leased[#leased + 1] = id
      out[#out + 1] = id
      out[#out + 1] = job[1]
      out[#out + 1] = job[2]
      out[#out + 1] = job[3]
      out[#out + 1] = job[4]
      out[#out + 1] = attempts
      out[#out + 1] = lease
    end
  end
  if #leased > 2 then redis.call('ZADD', KEYS[3], unpack(leased)) end
end
if #out == 2 then
  local nxt = redis.call('ZRANGE', KEYS[2], 0, 0, 'WITHSCORES')
  if nxt[2] then out[2] = tonumber(nxt[2]) end
end
return out
