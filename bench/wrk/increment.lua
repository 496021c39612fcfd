-- POST /increment workload: keys from a pool of 100k UUIDs, values 1..1000.
package.path = package.path .. ";" .. debug.getinfo(1, "S").source:sub(2):match("(.*/)") .. "?.lua"
require "common"
local pool = 100000
local headers = { ["Content-Type"] = "application/json" }

function init(args)
  math.randomseed(os.time() + math.floor(os.clock() * 1e6))
end

function request()
  local key = string.format("00000000-0000-4000-8000-%012x", math.random(0, pool - 1))
  local body = string.format('{"key":"%s","value":%d}', key, math.random(1, 1000))
  return wrk.format("POST", "/increment", headers, body)
end

done = json_done
