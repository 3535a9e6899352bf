-- wrk script: the same question on chat completions, the Responses API or the Messages API.
-- Environment: BENCH_SURFACE chat|responses|messages, BENCH_STREAM 1|0, BENCH_MODEL, BENCH_API_KEY,
-- BENCH_OUT (append one JSON line), BENCH_LABEL (JSON merged into it). The URL names the path.
local surface = os.getenv("BENCH_SURFACE") or "chat"
local stream = os.getenv("BENCH_STREAM") == "1"
local model = os.getenv("BENCH_MODEL") or "fake-model"
local key = os.getenv("BENCH_API_KEY") or "sk-bench-master-key"
local s = stream and ',"stream":true' or ''
local system, user = "You are a helpful assistant.", "Say hello to the benchmark in one short sentence."

wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
wrk.headers["Authorization"] = "Bearer " .. key
if surface == "responses" then
  wrk.body = '{"model":"' .. model .. '","instructions":"' .. system .. '","input":"' .. user ..
    '","max_output_tokens":32,"temperature":0,"store":false' .. s .. '}'
elseif surface == "messages" then
  wrk.headers["anthropic-version"] = "2023-06-01"
  wrk.body = '{"model":"' .. model .. '","system":"' .. system .. '","messages":[{"role":"user","content":"' ..
    user .. '"}],"max_tokens":32,"temperature":0' .. s .. '}'
else
  wrk.body = '{"model":"' .. model .. '","messages":[{"role":"system","content":"' .. system ..
    '"},{"role":"user","content":"' .. user .. '"}],"max_tokens":32,"temperature":0' .. s .. '}'
end

function done(summary, latency, requests)
  local secs = summary.duration / 1e6
  local e = summary.errors
  local line = string.format(
    '{"requests":%d,"rps":%.1f,"lat_p50_ms":%.3f,"lat_p99_ms":%.3f,"errors":%d,"label":%s}',
    summary.requests, summary.requests / secs, latency:percentile(50) / 1000, latency:percentile(99) / 1000,
    e.connect + e.read + e.write + e.status + e.timeout, os.getenv("BENCH_LABEL") or "{}")
  print(line)
  local path = os.getenv("BENCH_OUT")
  if path and path ~= "" then
    local f = assert(io.open(path, "a"))
    f:write(line, "\n")
    f:close()
  end
end
