-- Reads the latest values (KEYS[3]) of the topics ARGV[6..] (all if none; none at all if ARGV[4]
-- is '0') published within ARGV[5] ms of `now`, as {field, value} pairs. A field is a topic, or
-- `<topic>\n<key>` (the relay computes it; a topic holds no newline, so the topic is what comes
-- before the first one). The hash holds at most the latest-values limit of fields.
local function read_latest(now)
  local out = {}
  if ARGV[4] == '0' then return out end
  local oldest = now - tonumber(ARGV[5])
  local wanted = nil
  if #ARGV > 5 then
    wanted = {}
    for i = 6, #ARGV do wanted[ARGV[i]] = true end
  end
  local all = redis.call('HGETALL', KEYS[3])
  for i = 1, #all, 2 do
    local field, value = all[i], all[i + 1]
    local topic = string.match(field, '^[^\n]*')
    if wanted == nil or wanted[topic] then
      local ms = tonumber(string.match(value, '^%d+:(%d+):'))
      if ms and ms >= oldest then out[#out + 1] = {field, value} end
    end
  end
  return out
end
