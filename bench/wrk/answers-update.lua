-- PUT /answers/{key} workload: keys bench-<run>-0 .. bench-<run>-999, created by scripts/bench.sh before the run
-- (`-- <run>` names them), each update 200 with the key's next version; values of 100 bytes.
package.path = package.path .. ";" .. debug.getinfo(1, "S").source:sub(2):match("(.*/)") .. "?.lua"
require "common"
local pool = 1000
local headers = { ["Content-Type"] = "application/json" }
local sent = 0
local run, filler

function init(args)
  math.randomseed(os.time() + math.floor(os.clock() * 1e6))
  run = assert(args[1], "usage: wrk ... -s answers-update.lua <url> -- <run>")
  filler = string.rep("u", 91)
end

function request()
  sent = sent + 1
  local path = string.format("/answers/bench-%s-%d", run, math.random(0, pool - 1))
  return wrk.format("PUT", path, headers, string.format('{"value":"%s %08d"}', filler, sent % 100000000))
end

done = json_done
