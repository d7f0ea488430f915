-- Shared part of raftkv's wrk load scripts (raftkv.lua, etcd.lua load it with dofile).
-- The system script defines, before loading this file:
--   build_request(is_read, key) -> the raw HTTP request (wrk.format)
--   response_key(body)          -> the key a response is about, or nil (for latency samples)
-- Configuration comes from the environment (set by raftkv.bench.wrk):
--   BENCH_MODE put|get|mixed, BENCH_VALUE_SIZE, BENCH_KEYS (key space of reads and mixed
--   writes), BENCH_READ_RATIO, BENCH_PREFIX, BENCH_REQUESTS (0: run for wrk's -d), BENCH_THREADS,
--   BENCH_PROGRESS (per-thread progress file prefix), BENCH_OUT (result JSON), BENCH_SAMPLES=1.
-- Why per-request samples pair by key: wrk's Lua API does not say which connection a response
-- belongs to, but the API echoes the key, so a per-key FIFO of start times pairs them.
local ffi = require("ffi")
ffi.cdef [[
typedef struct { long tv_sec; long tv_nsec; } bench_timespec_t;
int clock_gettime(int clk_id, bench_timespec_t *tp);
]]
local ts = ffi.new("bench_timespec_t")
local function now_us()
  ffi.C.clock_gettime(1, ts) -- CLOCK_MONOTONIC: the same clock as Python's time.monotonic()
  return tonumber(ts.tv_sec) * 1000000 + tonumber(ts.tv_nsec) / 1000
end

mode = os.getenv("BENCH_MODE") or "put"
value_size = tonumber(os.getenv("BENCH_VALUE_SIZE") or "100")
nkeys = tonumber(os.getenv("BENCH_KEYS") or "1000")
read_ratio = tonumber(os.getenv("BENCH_READ_RATIO") or "0.5")
prefix = os.getenv("BENCH_PREFIX") or "bench"
value = string.rep("x", value_size)
local total_requests = tonumber(os.getenv("BENCH_REQUESTS") or "0")
local nthreads = tonumber(os.getenv("BENCH_THREADS") or "1")
local progress_prefix = os.getenv("BENCH_PROGRESS")
local out_path = os.getenv("BENCH_OUT")
local want_samples = os.getenv("BENCH_SAMPLES") == "1"

-- main state ---------------------------------------------------------------------------------
local threads = {}
local next_tid = 0

function setup(thread)
  thread:set("tid", next_tid)
  next_tid = next_tid + 1
  table.insert(threads, thread)
end

-- thread state -------------------------------------------------------------------------------
local seq, completed, failed, quota, last_flush = 0, 0, 0, 0, 0
errs = {}
samp_t, samp_l, samp_s = {}, {}, {}
local starts = {}
local progress_file = nil

function init(args)
  if total_requests > 0 then
    quota = math.floor(total_requests / nthreads)
    if tid < total_requests % nthreads then quota = quota + 1 end
  end
  math.randomseed(os.time() * 1000 + tid)
  if progress_prefix then progress_file = io.open(progress_prefix .. "." .. tid, "w") end
end

local function pick_key(is_read)
  if is_read or mode == "mixed" then
    return prefix .. "-" .. math.random(0, nkeys - 1)
  end
  return prefix .. "-" .. tid .. "-" .. seq
end

function request()
  seq = seq + 1
  local is_read = mode == "get" or (mode == "mixed" and math.random() < read_ratio)
  local key = pick_key(is_read)
  if want_samples then
    local q = starts[key]
    if q == nil then q = {}; starts[key] = q end
    q[#q + 1] = now_us()
  end
  return build_request(is_read, key)
end

local function flush(t)
  if progress_file then
    progress_file:write(completed, " ", failed, " ", t, "\n")
    progress_file:flush()
  end
  last_flush = t
end

function response(status, headers, body)
  completed = completed + 1
  local t = now_us()
  if status < 200 or status >= 300 then
    failed = failed + 1
    local code = body and string.match(body, '"code"%s*:%s*"([%w_]+)"')
    local kind = "http_" .. status .. (code and (":" .. code) or "")
    errs[kind] = (errs[kind] or 0) + 1
  end
  if want_samples then
    local key = response_key(body)
    local q = key and starts[key]
    if q and #q > 0 then
      local t0 = table.remove(q, 1)
      if #q == 0 then starts[key] = nil end
      local n = #samp_t + 1
      samp_t[n] = t
      samp_l[n] = t - t0
      samp_s[n] = status
    end
  end
  if t - last_flush >= 100000 then flush(t) end
  if quota > 0 and completed >= quota then
    flush(t)
    wrk.thread:stop()
  end
end

-- main state again: write everything for raftkv.bench.wrk to read -------------------------------
local function json_table(tbl)
  local parts = {}
  for k, v in pairs(tbl) do parts[#parts + 1] = string.format("%q:%d", k, v) end
  return "{" .. table.concat(parts, ",") .. "}"
end

local function json_array(arr)
  local parts = {}
  for i = 1, #arr do parts[i] = string.format("%d", arr[i]) end
  return "[" .. table.concat(parts, ",") .. "]"
end

function done(summary, latency, requests)
  if not out_path then return end
  local f = io.open(out_path, "w")
  local e = summary.errors
  f:write('{"duration_us":', summary.duration, ',"requests":', summary.requests,
    ',"bytes":', summary.bytes,
    ',"socket_errors":{"connect":', e.connect, ',"read":', e.read, ',"write":', e.write,
    ',"timeout":', e.timeout, '},"status_errors":', e.status,
    ',"latency_us":{"min":', latency.min, ',"max":', latency.max, ',"mean":', latency.mean,
    ',"p50":', latency:percentile(50), ',"p90":', latency:percentile(90),
    ',"p99":', latency:percentile(99), ',"p999":', latency:percentile(99.9), '}')
  f:write(',"threads":[')
  for i, thread in ipairs(threads) do
    if i > 1 then f:write(",") end
    f:write('{"errors":', json_table(thread:get("errs") or {}))
    f:write(',"samples_t":', json_array(thread:get("samp_t") or {}))
    f:write(',"samples_l":', json_array(thread:get("samp_l") or {}))
    f:write(',"samples_s":', json_array(thread:get("samp_s") or {}), '}')
  end
  f:write("]}\n")
  f:close()
end
