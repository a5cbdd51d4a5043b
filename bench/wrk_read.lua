-- wrk script for the read benchmark of rest_throughput.py: plain GETs of the URL given to wrk (no
-- request/response hooks, so wrk stays on its fast C path); the done hook prints one machine-readable
-- line, "BENCH_JSON {...}", with throughput, errors and latency percentiles (microseconds).
--   wrk -t2 -c32 -d10s -s bench/wrk_read.lua http://127.0.0.1:8080/Patient/<id>

wrk.headers["Accept"] = "application/fhir+json"

done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    'BENCH_JSON {"requests":%d,"duration_us":%d,"bytes":%d,'
      .. '"errors":{"connect":%d,"read":%d,"write":%d,"status":%d,"timeout":%d},'
      .. '"latency_us":{"min":%.0f,"mean":%.1f,"stdev":%.1f,"max":%.0f,'
      .. '"p50":%.0f,"p75":%.0f,"p90":%.0f,"p99":%.0f,"p99_9":%.0f}}\n',
    summary.requests, summary.duration, summary.bytes,
    e.connect, e.read, e.write, e.status, e.timeout,
    latency.min, latency.mean, latency.stdev, latency.max,
    latency:percentile(50), latency:percentile(75), latency:percentile(90),
    latency:percentile(99), latency:percentile(99.9)))
end
