-- wrk script: replays the requests of a file written by bench/http/requests.py, one per line:
-- method TAB path TAB headers (`name: value` pairs joined by 0x1f) TAB body. Thread n of N
-- takes lines n, n+N, … and cycles through its share. Prints one JSON line at the end.
--   wrk -t2 -c64 -d10s -s bench/http/replay.lua URL -- FILE 2
local threads, count = {}, 0

function setup(thread)
  thread:set("thread_no", count)
  count = count + 1
  table.insert(threads, thread)
end

function init(args)
  local file, nthreads = args[1], tonumber(args[2])
  requests, next_no = {}, 0
  local line_no = 0
  for line in io.lines(file) do
    if line_no % nthreads == thread_no then
      local method, path, headers, body = line:match("^([^\t]*)\t([^\t]*)\t([^\t]*)\t(.*)$")
      local h = {}
      for pair in headers:gmatch("[^\31]+") do
        local name, value = pair:match("^([^:]+): (.*)$")
        h[name] = value
      end
      if body == "" then body = nil end
      requests[#requests + 1] = wrk.format(method, path, h, body)
    end
    line_no = line_no + 1
  end
end

function request()
  next_no = next_no % #requests + 1
  return requests[next_no]
end

function done(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    '{"requests":%d,"rate":%.1f,"p50_ms":%.3f,"p90_ms":%.3f,"p99_ms":%.3f,"max_ms":%.3f,' ..
    '"non2xx":%d,"socket_errors":%d}\n',
    summary.requests, summary.requests / (summary.duration / 1e6),
    latency:percentile(50) / 1e3, latency:percentile(90) / 1e3, latency:percentile(99) / 1e3,
    latency.max / 1e3, e.status, e.connect + e.read + e.write + e.timeout))
end
