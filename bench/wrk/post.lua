-- POST workload: 95 % current hour, 5 % the past 7 days; users from a 1M pool, skewed (x^3).
package.path = package.path .. ";" .. debug.getinfo(1, "S").source:sub(2):match("(.*/)") .. "?.lua"
require "common"
local pool, week = 1000000, 7 * 24 * 3600000

function init(args)
  math.randomseed(os.time() + math.floor(os.clock() * 1e6))
end

function request()
  local now = os.time() * 1000
  local ts
  if math.random() < 0.95 then
    ts = now - (now % 3600000) + math.random(0, math.max(0, (now % 3600000) - 1))
  else
    ts = now - math.random(3600000, week - 3600000)
  end
  local user = math.floor(math.random() ^ 3 * pool)
  local kind = (math.random() < 0.3) and "click" or "impression"
  return wrk.format("POST", "/analytics?timestamp=" .. ts .. "&user=u" .. user .. "&" .. kind)
end

done = json_done
