-- GET /promotions/{id} workload: ids picked at random from a file written by the promotions bench
-- (bench/src/bin/promotions.rs: a uniform sample of the loaded file's ids, and one absent id for every nine,
-- so 90 % are present). `-- <ids file>` names it.
--
-- Each id's request is formatted once, at init: a request then costs the client one random pick. Formatting it
-- per request (string concatenation and wrk.format, garbage for LuaJIT's collector) cost wrk more CPU than the
-- query spent answering, on the two cores they share (docs/benchmarks-notes.md).
package.path = package.path .. ";" .. debug.getinfo(1, "S").source:sub(2):match("(.*/)") .. "?.lua"
require "common"
local requests = {}

function init(args)
  math.randomseed(os.time() + math.floor(os.clock() * 1e6))
  local path = assert(args[1], "usage: wrk ... -s promotions-get.lua <url> -- <ids file>")
  for line in io.lines(path) do
    requests[#requests + 1] = wrk.format("GET", "/promotions/" .. line)
  end
  assert(#requests > 0, "no ids in " .. path)
end

function request()
  return requests[math.random(1, #requests)]
end

done = json_done
