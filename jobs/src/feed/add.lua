-- Adds entries to the home feeds that exist, and trims each to its capacity.
-- KEYS: feeds. ARGV[1]: capacity; ARGV[2]: '1' to mark the feeds complete (end of a rebuild);
-- then score, member pairs (score = creation time in µs).
--
-- A feed that does not exist is left alone: it was never built, or expired for inactivity, or
-- Redis lost it; its next read rebuilds it whole from Postgres. Creating it here with one entry
-- would make a partial feed look complete. The markers `~building` / `~built` sit at score 0,
-- below every post, and are never trimmed.
local capacity = tonumber(ARGV[1])
local written = 0
for _, key in ipairs(KEYS) do
  if redis.call('EXISTS', key) == 1 then
    if #ARGV >= 4 then
      redis.call('ZADD', key, unpack(ARGV, 3))
    end
    if ARGV[2] == '1' then
      redis.call('ZADD', key, 0, '~built')
      redis.call('ZREM', key, '~building')
    end
    local size = redis.call('ZCARD', key)
    if size > capacity then
      local markers = redis.call('ZCOUNT', key, 0, 0)
      if size - markers > capacity then
        redis.call('ZREMRANGEBYRANK', key, markers, size - capacity - 1)
      end
    end
    written = written + 1
  end
end
return written
