-- One window of a home feed and everything cached to show it, in one round trip (cache.rs).
-- KEYS: the feed, the reader's follows set, the merge-authors set.
-- ARGV[1]: highest score ('+inf' or µs), ARGV[2]: entries wanted, ARGV[3]: post key prefix,
-- ARGV[4]: handle key prefix, ARGV[5]: expiry of the feed and follows set (activity), ARGV[6]:
-- the reader's id.
--
-- Returns {state, merged authors, entries}. State 0: the feed must be rebuilt; 1: the follows
-- set; 2: the merge-authors set; 3: ready. Entries are flat quadruples: member, score, post,
-- handle. The post is nil when not cached and '' when it is not to be shown (deleted, or its
-- author is neither the reader nor followed); the handle is nil when not cached.
--
-- The post and handle keys are not in KEYS: they are only known once the window is read. All
-- keys share the queue prefix's hash tag, so they live in one slot.
if not redis.call('ZSCORE', KEYS[1], '~built') then return {0, {}, {}} end
if redis.call('SISMEMBER', KEYS[2], '~built') == 0 then return {1, {}, {}} end
if redis.call('SISMEMBER', KEYS[3], '~built') == 0 then return {2, {}, {}} end
redis.call('EXPIRE', KEYS[1], ARGV[5])
redis.call('EXPIRE', KEYS[2], ARGV[5])
local window = redis.call('ZREVRANGEBYSCORE', KEYS[1], ARGV[1], '(0', 'WITHSCORES', 'LIMIT', 0,
  ARGV[2])
local entries = {}
if #window == 0 then return {3, redis.call('SINTER', KEYS[2], KEYS[3]), entries} end

-- A few calls for the whole window rather than three per entry, each author looked up once (a
-- page repeats authors).
local post_keys = {}
for i = 1, #window, 2 do post_keys[#post_keys + 1] = ARGV[3] .. window[i] end
local posts = redis.call('MGET', unpack(post_keys))
local authors, seen = {}, {}
for i = 1, #posts do
  local post = posts[i]
  if post and post ~= '' then
    local author = string.sub(post, 1, 36)
    if not seen[author] then
      seen[author] = true
      authors[#authors + 1] = author
    end
  end
end
local shown, handles = {}, {}
if #authors > 0 then
  local followed = redis.call('SMISMEMBER', KEYS[2], unpack(authors))
  local handle_keys = {}
  for i, author in ipairs(authors) do handle_keys[i] = ARGV[4] .. author end
  local found = redis.call('MGET', unpack(handle_keys))
  for i, author in ipairs(authors) do
    shown[author] = author == ARGV[6] or followed[i] == 1
    handles[author] = found[i]
  end
end
for i = 1, #window, 2 do
  local post = posts[(i + 1) / 2]
  local handle = false
  if post and post ~= '' then
    local author = string.sub(post, 1, 36)
    if shown[author] then
      handle = handles[author]
    else
      post = ''
    end
  end
  entries[#entries + 1] = window[i]
  entries[#entries + 1] = window[i + 1]
  entries[#entries + 1] = post
  entries[#entries + 1] = handle
end
return {3, redis.call('SINTER', KEYS[2], KEYS[3]), entries}
