-- GET workload: 95 % the current hour, 5 % older hours of the past 7 days.
package.path = package.path .. ";" .. debug.getinfo(1, "S").source:sub(2):match("(.*/)") .. "?.lua"
require "common"

function request()
  local now = os.time() * 1000
  local ts = now
  if math.random() >= 0.95 then ts = now - math.random(1, 167) * 3600000 end
  return wrk.format("GET", "/analytics?timestamp=" .. ts)
end

done = json_done
