-- POST a JSON body a request, taken in turn from a file of one body a line,
-- starting at line args[2] (so that runs do not replay each other's
-- assertions). The bearer token comes from BENCH_TOKEN, not the command line.
-- An answer that is not a 200 whose body holds args[3] is counted as bad.
local bodies, count, next_index = {}, 0, 0
local headers, marker
local threads = {}
bad, seen = 0, 0

function setup(thread)
  table.insert(threads, thread)
end

function init(args)
  for line in io.lines(args[1]) do
    count = count + 1
    bodies[count] = line
  end
  next_index = tonumber(args[2] or "0")
  marker = args[3]
  headers = {
    ["Content-Type"] = "application/json",
    ["Authorization"] = "Bearer " .. (os.getenv("BENCH_TOKEN") or ""),
  }
end

function request()
  local body = bodies[(next_index % count) + 1]
  next_index = next_index + 1
  return wrk.format("POST", nil, headers, body)
end

function response(status, _, body)
  seen = seen + 1
  if status ~= 200 or not string.find(body, marker, 1, true) then
    bad = bad + 1
  end
end

function done()
  local total_bad, total_seen = 0, 0
  for _, thread in ipairs(threads) do
    total_bad = total_bad + thread:get("bad")
    total_seen = total_seen + thread:get("seen")
  end
  io.write(string.format("bench-bad %d of %d\n", total_bad, total_seen))
end
