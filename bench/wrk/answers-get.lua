-- GET /answers/{key} workload: keys bench-<run>-0 .. bench-<run>-999, created by scripts/bench.sh before the run
-- (`-- <run>` names them).
package.path = package.path .. ";" .. debug.getinfo(1, "S").source:sub(2):match("(.*/)") .. "?.lua"
require "common"
local pool = 1000
local run

function init(args)
  math.randomseed(os.time() + math.floor(os.clock() * 1e6))
  run = assert(args[1], "usage: wrk ... -s answers-get.lua <url> -- <run>")
end

function request()
  return wrk.format("GET", string.format("/answers/bench-%s-%d", run, math.random(0, pool - 1)))
end

done = json_done
