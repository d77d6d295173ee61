-- Publishes one message to a site, atomically: drops a repeat of its idempotency key, assigns
-- the site's epoch (a new one if the site has none) and next offset, appends to the history
-- stream (trimmed by size and age), records the topic's latest value and publishes the position
-- and the publication's parts on the site's channel. The frames clients get are encoded by each
-- node, in Rust: this script encodes none.
--
-- KEYS: 1 meta, 2 stream, 3 dedupe marker ('' for none), 4 latest, 5 latest:order
-- ARGV: 1 topic, 2 data (JSON text), 3 history size, 4 a new epoch (used if the site has none),
--       5 dedupe window (ms), 6 history TTL (ms), 7 channel, 8 latest values kept per site (0: none),
--       9 latest TTL (ms), 10 the publication's latest slot (its field in the latest hash, computed
--       by the relay), 11 how long the site's position outlives its last publication (ms)
-- Returns {epoch, offset}, or {'dup', 0} for a repeated idempotency key.
if KEYS[3] ~= '' then
  if not redis.call('SET', KEYS[3], '1', 'NX', 'PX', ARGV[5]) then return {'dup', 0} end
end
if redis.call('HSETNX', KEYS[1], 'epoch', ARGV[4]) == 1 then
  redis.call('DEL', KEYS[4], KEYS[5])
end
redis.call('PEXPIRE', KEYS[1], ARGV[11])
local epoch = redis.call('HGET', KEYS[1], 'epoch')
local offset = redis.call('HINCRBY', KEYS[1], 'offset', 1)
redis.call('XADD', KEYS[2], 'MAXLEN', ARGV[3], '*', 'o', offset, 't', ARGV[1], 'd', ARGV[2])
local now = now_ms()
redis.call('XTRIM', KEYS[2], 'MINID', now - tonumber(ARGV[6]))
redis.call('PEXPIRE', KEYS[2], ARGV[6])
local keep = tonumber(ARGV[8])
if keep > 0 then
  redis.call('HSET', KEYS[4], ARGV[10], offset .. ':' .. now .. ':' .. ARGV[2])
  if redis.call('ZADD', KEYS[5], offset, ARGV[10]) == 1 then
    local excess = redis.call('ZCARD', KEYS[5]) - keep
    if excess > 0 then
      local gone = redis.call('ZPOPMIN', KEYS[5], excess)
      for i = 1, #gone, 2 do redis.call('HDEL', KEYS[4], gone[i]) end
    end
  end
  redis.call('PEXPIRE', KEYS[4], ARGV[9])
  redis.call('PEXPIRE', KEYS[5], ARGV[9])
end
redis.call('PUBLISH', ARGV[7], epoch .. '\n' .. offset .. '\n' .. ARGV[1] .. '\n' .. ARGV[2])
return {epoch, offset}
