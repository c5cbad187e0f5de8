-- Messente reports for wrk. wrk cannot compute an HMAC, so bench.run signs the requests in
-- Python beforehand, one a line: the hex X-Messente-Signature, a tab, the body (each with a new
-- omnimessage_id). init() reads the file and formats each thread's share of the requests
-- (line k goes to thread k % THREADS); request() hands them out in turn.
--
--   wrk ... -s bench/wrk/messente.lua URL -- FILE THREADS
--
-- A run that sends them all starts again from the first (the global `wraps` counts it, and
-- done() reports it): those repeats are duplicates to the receiver, so bench.run warns.
local common = require("common")

setup = common.setup
done = common.done

wraps = 0
reports_per_request = 1

local requests = {}
local count, at = 0, 0

function init(args)
  local threads = tonumber(args[2])
  local headers = { ["Content-Type"] = "application/json" }
  local line_no = 0
  for line in io.lines(args[1]) do
    if line_no % threads == id then
      local tab = line:find("\t", 1, true)
      headers["X-Messente-Signature"] = line:sub(1, tab - 1)
      count = count + 1
      requests[count] = wrk.format("POST", wrk.path, headers, line:sub(tab + 1))
    end
    line_no = line_no + 1
  end
  assert(count > 0, "no requests for thread " .. id .. " in " .. args[1])
  common.started()
end

function request()
  at = at + 1
  if at > count then
    at = 1
    wraps = wraps + 1
  end
  return requests[at]
end
