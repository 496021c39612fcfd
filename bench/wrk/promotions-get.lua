-- GET /promotions/{id} workload: ids picked at random from a file written by the promotions bench
-- (bench/src/bin/promotions.rs: a uniform sample of the loaded file's ids, and one absent id for every nine,
-- so 90 % are present). `-- <ids file>` names it.
package.path = package.path .. ";" .. debug.getinfo(1, "S").source:sub(2):match("(.*/)") .. "?.lua"
require "common"
local ids = {}

function init(args)
  math.randomseed(os.time() + math.floor(os.clock() * 1e6))
  local path = assert(args[1], "usage: wrk ... -s promotions-get.lua <url> -- <ids file>")
  for line in io.lines(path) do
    ids[#ids + 1] = line
  end
  assert(#ids > 0, "no ids in " .. path)
end

function request()
  return wrk.format("GET", "/promotions/" .. ids[math.random(1, #ids)])
end

done = json_done
