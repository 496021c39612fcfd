-- GET /answers/{key}/history workload: the key bench-<run>-history, given exactly 1,000 changes (1 create,
-- 999 updates) by scripts/bench.sh before the run (`-- <run>` names it); all 1,000 in one page.
package.path = package.path .. ";" .. debug.getinfo(1, "S").source:sub(2):match("(.*/)") .. "?.lua"
require "common"
local path

function init(args)
  local run = assert(args[1], "usage: wrk ... -s answers-history.lua <url> -- <run>")
  path = string.format("/answers/bench-%s-history/history?limit=1000", run)
end

function request()
  return wrk.format("GET", path)
end

done = json_done
