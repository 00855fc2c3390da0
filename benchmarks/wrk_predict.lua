-- wrk script for the serving benchmark: POSTs a fixed set of images in turn and checks every
-- answer (status 200 and a JSON prediction); prints one JSON line of figures at the end.
--   WRK_IMAGES  file listing the image paths, one per line
--   WRK_FORM    "1": send each image as a multipart field `image` (the seed's form); else raw body
--   WRK_TOKEN   bearer token, if the server wants one
--   WRK_V2      "1": each line of WRK_IMAGES is a v2 request body's path and its JSON header's length
--               (benchmarks/systems.py v2_listing); the answer must be a v2 response
local images_list = os.getenv("WRK_IMAGES")
local as_form = os.getenv("WRK_FORM") == "1"
local as_v2 = os.getenv("WRK_V2") == "1"
local token = os.getenv("WRK_TOKEN")
local boundary = "cifar10-bench-boundary"

local threads = {}

function setup(thread)
  table.insert(threads, thread)
end

function init(args)
  bodies, headers = {}, {}
  for line in io.lines(images_list) do
    local path, header_length = line:match("^(%S+)%s*(%d*)$")
    local file = assert(io.open(path, "rb"))
    local data = file:read("*a")
    file:close()
    local these = {["Content-Type"] = "image/jpeg"}
    if as_form then
      data = "--" .. boundary .. "\r\nContent-Disposition: form-data; name=\"image\"; filename=\"image.jpg\"\r\n"
        .. "Content-Type: image/jpeg\r\n\r\n" .. data .. "\r\n--" .. boundary .. "--\r\n"
      these["Content-Type"] = "multipart/form-data; boundary=" .. boundary
    elseif as_v2 then
      these = {["Content-Type"] = "application/octet-stream", ["Inference-Header-Content-Length"] = header_length}
    end
    if token and token ~= "" then these["Authorization"] = "Bearer " .. token end
    bodies[#bodies + 1], headers[#headers + 1] = data, these
  end
  next_body = math.random(#bodies)
  answer_field = as_v2 and '"label"' or '"prediction"'
  valid, invalid = 0, 0
end

function request()
  next_body = next_body % #bodies + 1
  return wrk.format("POST", nil, headers[next_body], bodies[next_body])
end

function response(status, response_headers, body)
  if status == 200 and string.find(body, answer_field, 1, true) then
    valid = valid + 1
  else
    invalid = invalid + 1
  end
end

function done(summary, latency, requests)
  local valid_total, invalid_total = 0, 0
  for _, thread in ipairs(threads) do
    valid_total = valid_total + thread:get("valid")
    invalid_total = invalid_total + thread:get("invalid")
  end
  local errors = summary.errors
  io.write(string.format(
    'WRK_RESULT {"requests": %d, "seconds": %.3f, "valid": %d, "invalid": %d, "socket_errors": %d, '
      .. '"p50_ms": %.3f, "p90_ms": %.3f, "p99_ms": %.3f, "max_ms": %.3f}\n',
    summary.requests, summary.duration / 1e6, valid_total, invalid_total,
    errors.connect + errors.read + errors.write + errors.timeout,
    latency:percentile(50) / 1e3, latency:percentile(90) / 1e3, latency:percentile(99) / 1e3, latency.max / 1e3))
end
