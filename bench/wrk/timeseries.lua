-- GET /analytics/timeseries, hourly, over the last 48 hours: the 47 closed hours and the current one.
package.path = package.path .. ";" .. debug.getinfo(1, "S").source:sub(2):match("(.*/)") .. "?.lua"
require "common"

function request()
  local now = os.time() * 1000
  local to = now - (now % 3600000) + 3600000
  return wrk.format("GET", "/analytics/timeseries?from=" .. (to - 48 * 3600000) .. "&to=" .. to .. "&interval=hour")
end

done = json_done
