-- wrk load for raftkv's HTTP API: PUT /kv/{key} with a raw body, GET /kv/{key}?consistency=.
-- See common.lua for the configuration; BENCH_CONSISTENCY is linearizable, lease or stale.
local consistency = os.getenv("BENCH_CONSISTENCY") or "linearizable"
local put_headers = { ["Content-Type"] = "text/plain" }

function build_request(is_read, key)
  if is_read then
    return wrk.format("GET", "/kv/" .. key .. "?consistency=" .. consistency)
  end
  return wrk.format("PUT", "/kv/" .. key, put_headers, value)
end

function response_key(body)
  return body and string.match(body, '"key"%s*:%s*"([^"]*)"')
end

dofile(os.getenv("BENCH_LUA_DIR") .. "/common.lua")
