-- Shared by the benchmark's wrk scripts (found through LUA_PATH, which bench.run sets).
--
-- setup() runs in wrk's main Lua state once per thread, before that thread starts: it hands
-- each thread an id (the global `id` in the thread's own state). Each script's init() ends with
-- started(), a line that tells bench.run the thread is about to send, and how much CPU wrk has
-- used getting there (reading pre-signed requests), so neither counts as load. done() runs in
-- the main state after the run and prints one JSON line with the results.
local M = {}

function M.started()
  io.write(string.format('{"started": true, "thread": %d, "cpu_s": %.6f}\n', id, os.clock()))
  io.stdout:flush()
end

local threads = {}

function M.setup(thread)
  thread:set("id", #threads)
  table.insert(threads, thread)
end

-- The sum of a global counter over every thread (read once the threads have finished).
local function total(name)
  local sum = 0
  for _, thread in ipairs(threads) do
    sum = sum + (tonumber(thread:get(name)) or 0)
  end
  return sum
end

function M.done(summary, latency, requests)
  local errors = summary.errors
  local seconds = summary.duration / 1e6
  io.write(string.format(
    '{"wrk": true, "requests": %d, "non_2xx": %d, "socket_errors": %d, '
      .. '"connect_errors": %d, "read_errors": %d, "write_errors": %d, "timeouts": %d, '
      .. '"duration_s": %.6f, "p50_ms": %.3f, "p99_ms": %.3f, "max_ms": %.3f, '
      .. '"requests_per_s": %.3f, "reports_per_request": %d, "wraps": %d}\n',
    summary.requests,
    errors.status,
    errors.connect + errors.read + errors.write + errors.timeout,
    errors.connect,
    errors.read,
    errors.write,
    errors.timeout,
    seconds,
    latency:percentile(50) / 1000,
    latency:percentile(99) / 1000,
    latency.max / 1000,
    summary.requests / seconds,
    total("reports_per_request") / math.max(#threads, 1),
    total("wraps")
  ))
end

return M
