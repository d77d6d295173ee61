-- The node's own read of a site's stream (to fill a gap, or after a reconnect): creates nothing;
-- a site without an epoch reads as epoch '' with nothing held.
--
-- KEYS: 1 meta, 2 stream
-- ARGV: 1 history size, 2 history TTL (ms)
-- Returns {epoch, offset, stream entries newest first}.
local epoch = redis.call('HGET', KEYS[1], 'epoch')
if not epoch then return {'', 0, {}} end
local offset = tonumber(redis.call('HGET', KEYS[1], 'offset') or '0')
local entries = redis.call('XREVRANGE', KEYS[2], '+', tostring(now_ms() - tonumber(ARGV[2])), 'COUNT', ARGV[1])
return {epoch, offset, entries}
