-- Redis's clock in milliseconds: what every script measures ages against, read one way.
local function now_ms()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end
