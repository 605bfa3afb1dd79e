-- wrk script for bench/gateway.py: one JSON POST, its body and Authorization from the
-- environment (BENCH_BODY, BENCH_AUTH; an empty BENCH_AUTH sends none).
wrk.method = "POST"
wrk.body = os.getenv("BENCH_BODY")
wrk.headers["Content-Type"] = "application/json"
local auth = os.getenv("BENCH_AUTH")
if auth ~= nil and auth ~= "" then
  wrk.headers["Authorization"] = auth
end
