-- wrk script for benches/load.sh: POSTs one prebuilt body (BENCH_BODY, a file) with the
-- content type BENCH_CTYPE, with `Authorization: Bearer BENCH_KEY` when that is set (a
-- client's key), and prints one machine-readable line when the run is done.
local f = assert(io.open(os.getenv("BENCH_BODY"), "rb"))
wrk.body = f:read("*a")
f:close()
wrk.method = "POST"
wrk.headers["Content-Type"] = os.getenv("BENCH_CTYPE")
local key = os.getenv("BENCH_KEY")
if key and key ~= "" then
   wrk.headers["Authorization"] = "Bearer " .. key
end

function done(summary, latency, requests)
   local e = summary.errors
   io.write(string.format(
      "BENCH_RESULT requests=%d duration_us=%d bytes=%d connect=%d read=%d write=%d status=%d timeout=%d p50_us=%d p99_us=%d\n",
      summary.requests, summary.duration, summary.bytes, e.connect, e.read, e.write,
      e.status, e.timeout, latency:percentile(50), latency:percentile(99)))
end
