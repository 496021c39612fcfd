-- POST /answers workload: a new key per request (201), a value of 100 bytes.
-- Keys: bench-<run>-new-<thread>-<n>, unique across wrk's threads (setup numbers them) and runs
-- (the run tag, `-- <run>` from scripts/bench.sh, else one made from the clock and a random number).
package.path = package.path .. ";" .. debug.getinfo(1, "S").source:sub(2):match("(.*/)") .. "?.lua"
require "common"
local headers = { ["Content-Type"] = "application/json" }
local threads, sent = 0, 0
local run, filler

function setup(thread)
  thread:set("thread_id", threads)
  threads = threads + 1
end

function init(args)
  math.randomseed(os.time() + math.floor(os.clock() * 1e6))
  run = args[1] or string.format("%d%05d", os.time(), math.random(0, 99999))
  filler = string.rep("a", 91)
end

function request()
  sent = sent + 1
  local key = string.format("bench-%s-new-%d-%d", run, thread_id, sent)
  local body = string.format('{"key":"%s","value":"%s %08d"}', key, filler, sent % 100000000)
  return wrk.format("POST", "/answers", headers, body)
end

done = json_done
