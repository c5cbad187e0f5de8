-- Infobip reports for wrk: HTTP Basic (a static header), bodies built here, every report with a
-- messageId never sent before.
--
--   wrk ... -s bench/wrk/infobip.lua URL -- NONCE REPORTS_PER_REQUEST TEMPLATE
--
-- NONCE makes the ids of one run unique among runs; TEMPLATE is one report as JSON (from
-- bench.load.infobip_report, the shape of the Python generator's) with @BULK@ and @ID@ where
-- bulkId and messageId go. A thread's n-th report gets messageId NONCE-tID-bB-I, with B = n / 100
-- and I = n % 100, in bulk NONCE-tID-bB: a bulk is 100 reports, in one request or in 100.
local common = require("common")

setup = common.setup
done = common.done

wraps = 0 -- never: every id here is new
reports_per_request = 1

local path = wrk.path
local headers = {
  ["Content-Type"] = "application/json",
  ["Authorization"] = "Basic YmVuY2g6YmVuY2gtcGFzc3dvcmQ=", -- bench:bench-password
}
local prefix, before_bulk, between, after_id
local sent = 0 -- reports this thread has made

function init(args)
  prefix = args[1] .. "-t" .. id .. "-b"
  reports_per_request = tonumber(args[2])
  local template = args[3]
  local bulk_at = template:find("@BULK@", 1, true)
  local id_at = template:find("@ID@", 1, true)
  assert(bulk_at and id_at and bulk_at < id_at, "template needs @BULK@ before @ID@")
  before_bulk = template:sub(1, bulk_at - 1)
  between = template:sub(bulk_at + 6, id_at - 1)
  after_id = template:sub(id_at + 4)
  common.started()
end

function request()
  local reports = {}
  for i = 1, reports_per_request do
    local bulk = prefix .. math.floor(sent / 100)
    reports[i] = before_bulk .. bulk .. between .. bulk .. "-" .. (sent % 100) .. after_id
    sent = sent + 1
  end
  local body = '{"results": [' .. table.concat(reports, ", ") .. "]}"
  return wrk.format("POST", path, headers, body)
end
