-- A reader's view of a site's latest values (`GET /sites/<site>/latest`): creates nothing; a
-- site without an epoch reads as epoch '' with nothing held.
--
-- KEYS and ARGV as the snapshot script's (ARGV[1] and ARGV[3] unused).
-- Returns {epoch, offset, {}, {field, value} latest values}.
local epoch = redis.call('HGET', KEYS[1], 'epoch')
if not epoch then return {'', 0, {}, {}} end
local offset = tonumber(redis.call('HGET', KEYS[1], 'offset') or '0')
return {epoch, offset, {}, read_latest(now_ms())}
