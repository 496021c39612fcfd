-- GET /analytics/aggregate over the last 7 days: 168 whole UTC hours up to the end of the current
-- one (from and to must be hour starts), so unique users come from the merged hourly sketches.
package.path = package.path .. ";" .. debug.getinfo(1, "S").source:sub(2):match("(.*/)") .. "?.lua"
require "common"

function request()
  local now = os.time() * 1000
  local to = now - (now % 3600000) + 3600000
  return wrk.format("GET", "/analytics/aggregate?from=" .. (to - 7 * 24 * 3600000) .. "&to=" .. to)
end

done = json_done
