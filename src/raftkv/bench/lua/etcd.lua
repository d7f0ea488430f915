-- wrk load for etcd 3.4's JSON gateway, the same keys and values as raftkv.lua:
-- POST /v3/kv/put {"key": b64, "value": b64}; POST /v3/kv/range {"key": b64, "serializable": b}
-- (serializable false = linearizable, true = stale). See common.lua for the configuration.
local bit = require("bit")
local consistency = os.getenv("BENCH_CONSISTENCY") or "linearizable"
local serializable = consistency == "stale" and "true" or "false"
local headers = { ["Content-Type"] = "application/json" }
local alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"

local function b64(s)
  local out = {}
  for i = 1, #s, 3 do
    local a, b, c = s:byte(i, i + 2)
    local n = bit.bor(bit.lshift(a, 16), bit.lshift(b or 0, 8), c or 0)
    local c1 = bit.band(bit.rshift(n, 18), 63) + 1
    local c2 = bit.band(bit.rshift(n, 12), 63) + 1
    local c3 = bit.band(bit.rshift(n, 6), 63) + 1
    local c4 = bit.band(n, 63) + 1
    out[#out + 1] = alphabet:sub(c1, c1) .. alphabet:sub(c2, c2)
      .. (b and alphabet:sub(c3, c3) or "=") .. (c and alphabet:sub(c4, c4) or "=")
  end
  return table.concat(out)
end

local value_b64 = nil

function build_request(is_read, key)
  if is_read then
    return wrk.format("POST", "/v3/kv/range", headers,
      '{"key":"' .. b64(key) .. '","serializable":' .. serializable .. '}')
  end
  value_b64 = value_b64 or b64(value)
  return wrk.format("POST", "/v3/kv/put", headers,
    '{"key":"' .. b64(key) .. '","value":"' .. value_b64 .. '"}')
end

function response_key(body)
  return nil -- the gateway does not echo a put's key: no per-request samples for etcd
end

dofile(os.getenv("BENCH_LUA_DIR") .. "/common.lua")
