-- GET of old hours only (run after dropping the Redis copies): PostgreSQL fallback, then cache.
package.path = package.path .. ";" .. debug.getinfo(1, "S").source:sub(2):match("(.*/)") .. "?.lua"
require "common"

function request()
  local now = os.time() * 1000
  return wrk.format("GET", "/analytics?timestamp=" .. (now - math.random(24, 24 * 30) * 3600000))
end

done = json_done
