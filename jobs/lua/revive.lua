-- Moves dead jobs back to pending with a fresh attempt budget.
-- KEYS[1] dead, KEYS[2] pending; ARGV[1] job key prefix, ARGV[2] wake channel, then ids

local revived = 0
for i = 3, #ARGV do
  local id = ARGV[i]
  if redis.call('ZREM', KEYS[1], id) == 1 then
    redis.call('HSET', ARGV[1] .. id, 'status', 'pending', 'attempts', 0)
    redis.call('RPUSH', KEYS[2], id)
    revived = revived + 1
  end
end
if revived > 0 then redis.call('PUBLISH', ARGV[2], revived) end
return revived
