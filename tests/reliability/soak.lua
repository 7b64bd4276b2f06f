-- The soak's load: each wrk thread walks the apps in runs of SOAK_RUN
-- requests (thread n starting SOAK_APPS / threads apps further on), so the
-- pool keeps evicting, and stops after SOAK_QUOTA responses.
local apps = tonumber(os.getenv("SOAK_APPS"))
local run = tonumber(os.getenv("SOAK_RUN"))
local quota = tonumber(os.getenv("SOAK_QUOTA"))
local threads = 0

setup = function(thread)
  threads = threads + 1
  thread:set("number", threads)
  thread:set("offset", math.floor(apps / tonumber(os.getenv("SOAK_THREADS"))))
end

local sent, received = 0, 0

request = function()
  local app = (math.floor(sent / run) + (number - 1) * offset) % apps
  sent = sent + 1
  return wrk.format("GET", string.format("/soak%02d@1/", app))
end

response = function(status, headers, body)
  received = received + 1
  if received == quota then
    -- wrk runs for its -d whatever a thread does: the test sends it SIGINT
    -- once every thread has said so (wrk then reports as usual).
    io.write("SOAK_THREAD_DONE\n")
    io.flush()
    wrk.thread:stop()
  end
end

done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    "SOAK_JSON {\"requests\":%d,\"duration_us\":%d,\"socket_errors\":%d,\"non2xx\":%d,"
    .. "\"timeouts\":%d,\"p50_ms\":%.3f,\"p99_ms\":%.3f,\"max_ms\":%.3f}\n",
    summary.requests, summary.duration, e.connect + e.read + e.write, e.status, e.timeout,
    latency:percentile(50) / 1000, latency:percentile(99) / 1000, latency.max / 1000))
end
