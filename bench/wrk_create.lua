-- wrk script for the create benchmark of rest_throughput.py: POST [base]/Patient with a body read from
-- the template file given after "--"; every "__SEQ__" in it is replaced by a number unique to the
-- request (thread number + per-thread counter), so each Patient gets its own INS identifier value.
-- The response hook counts the answers that are not 201 Created (status and a sample body are kept);
-- the done hook prints one line, "BENCH_JSON {...}" (latency in microseconds).
--   wrk -t2 -c32 -d10s -s bench/wrk_create.lua http://127.0.0.1:8080/Patient -- patient-template.json

wrk.method = "POST"
wrk.headers["Content-Type"] = "application/fhir+json"
wrk.headers["Accept"] = "application/fhir+json"

-- main state: the thread objects, to collect their counters in done()
local threads = {}

setup = function(thread)
  table.insert(threads, thread)
  thread:set("tid", #threads)
end

-- thread state
local parts
local seq = 0
created = 0        -- 201 answers
bad = 0            -- any other status
bad_statuses = ""  -- "status status ..." of the first bad answers
bad_sample = ""    -- body of the first bad answer (truncated)

init = function(args)
  local path = args[1]
  if path == nil then error("wrk_create.lua: give the body template file after --") end
  local f = assert(io.open(path, "rb"))
  local template = f:read("*a")
  f:close()
  parts = {}
  local start = 1
  while true do
    local s, e = string.find(template, "__SEQ__", start, true)
    if s == nil then break end
    table.insert(parts, string.sub(template, start, s - 1))
    start = e + 1
  end
  table.insert(parts, string.sub(template, start))
end

request = function()
  seq = seq + 1
  local value = string.format("%02d%011d", tid, seq)
  local body = table.concat(parts, value)
  return wrk.format(nil, nil, nil, body)
end

response = function(status, headers, body)
  if status == 201 then
    created = created + 1
  else
    bad = bad + 1
    if bad <= 20 then bad_statuses = bad_statuses .. status .. " " end
    if bad == 1 then bad_sample = string.sub(body or "", 1, 500) end
  end
end

local function json_string(s)
  s = string.gsub(s, '[%c"\\]', function(c) return string.format("\\u%04x", string.byte(c)) end)
  return '"' .. s .. '"'
end

done = function(summary, latency, requests)
  local total_created, total_bad, statuses, sample = 0, 0, "", ""
  for _, thread in ipairs(threads) do
    total_created = total_created + (thread:get("created") or 0)
    total_bad = total_bad + (thread:get("bad") or 0)
    statuses = statuses .. (thread:get("bad_statuses") or "")
    if sample == "" then sample = thread:get("bad_sample") or "" end
  end
  local e = summary.errors
  io.write(string.format(
    'BENCH_JSON {"requests":%d,"duration_us":%d,"bytes":%d,'
      .. '"errors":{"connect":%d,"read":%d,"write":%d,"status":%d,"timeout":%d},'
      .. '"latency_us":{"min":%.0f,"mean":%.1f,"stdev":%.1f,"max":%.0f,'
      .. '"p50":%.0f,"p75":%.0f,"p90":%.0f,"p99":%.0f,"p99_9":%.0f},'
      .. '"created_201":%d,"non_201":%d,"non_201_statuses":%s,"non_201_sample":%s}\n',
    summary.requests, summary.duration, summary.bytes,
    e.connect, e.read, e.write, e.status, e.timeout,
    latency.min, latency.mean, latency.stdev, latency.max,
    latency:percentile(50), latency:percentile(75), latency:percentile(90),
    latency:percentile(99), latency:percentile(99.9),
    total_created, total_bad, json_string(statuses), json_string(sample)))
end
