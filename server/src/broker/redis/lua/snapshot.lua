-- A subscriber's view of a site: its position, the history still held and, if asked, its latest
-- values, in one step. Draws the epoch of a site without one, with a TTL (the history TTL) that
-- its first publication replaces: what nobody publishes to leaves nothing lasting behind.
--
-- KEYS: 1 meta, 2 stream, 3 latest, 4 latest:order
-- ARGV: 1 history size, 2 history TTL (ms), 3 a new epoch (used if the site has none),
--       4 '1' to read latest values ('0': none), 5 latest TTL (ms), 6.. topics (none: every topic)
-- Returns {epoch, offset, stream entries newest first, {field, value} latest values}.
if redis.call('HSETNX', KEYS[1], 'epoch', ARGV[3]) == 1 then
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
  redis.call('DEL', KEYS[3], KEYS[4])
end
local epoch = redis.call('HGET', KEYS[1], 'epoch')
local offset = tonumber(redis.call('HGET', KEYS[1], 'offset') or '0')
local now = now_ms()
local entries = redis.call('XREVRANGE', KEYS[2], '+', tostring(now - tonumber(ARGV[2])), 'COUNT', ARGV[1])
return {epoch, offset, entries, read_latest(now)}
