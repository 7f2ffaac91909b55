"""Feast's write rule as a Redis Lua script: write a row only when newer than what is stored.

Concern: the text of the script `online_store.write_view` sends with EVAL, one call per batch.

    KEYS  the rows' Redis keys
    ARGV  features count, key ttl in seconds (0: none), "_ts:<view>", the features' field
          names, then per row: its `_ts` value followed by its value of each feature
    returns the number of rows written

Invariants (Feast 0.67's `online_write_batch`, made atomic):
- A row is skipped when the stored `_ts:<view>` decodes to a time > 0 and the new time is not
  greater (seconds, then nanos; negative seconds are 10-byte varints). A missing, empty or
  non-positive stored time never blocks a write.
- A written row gets every feature field and `_ts` in one HSET, then EXPIRE when a ttl is
  given; skipped rows are not touched (their expiry is not refreshed).
- Each call runs atomically in Redis, so no other writer interleaves between check and write.
- The HSET is spelled out per feature count (no Lua table per row): the script is generated
  for `features` <= 60 and falls back to a table + unpack beyond, where Lua's limits on
  locals and call arguments would bite.
"""

from __future__ import annotations

from functools import cache

_DECODE = """
local byte = string.byte
local function negative(s, start)
  local v, m = 0, 1
  for p = start, start + 8 do v = v + (127 - byte(s, p) % 128) * m; m = m * 128 end
  return -(v + 1)
end
local function ts(s)
  local sec, nanos, pos, n = 0, 0, 1, #s
  while pos < n do
    local key, v, m, start = byte(s, pos), 0, 1, pos + 1
    pos = start
    local b = byte(s, pos)
    while b and b >= 128 do
      v = v + (b - 128) * m
      m = m * 128
      pos = pos + 1
      b = byte(s, pos)
    end
    if not b then return 0, 0 end
    v = v + b * m
    pos = pos + 1
    if pos - start == 10 then v = negative(s, start) end
    if key == 8 then sec = v elseif key == 16 then nanos = v else return 0, 0 end
  end
  return sec, nanos
end
local function newer(stored, new)
  if not stored then return true end
  local s, n = ts(stored)
  if s < 0 or (s == 0 and n <= 0) then return true end
  if stored == new then return false end
  local ns, nn = ts(new)
  return ns > s or (ns == s and nn > n)
end
local ttl, tsf = tonumber(ARGV[2]), ARGV[3]
local written = 0
"""

_SPELLED_OUT_LIMIT = 60


@cache
def write_script(features: int) -> bytes:
    """The script for rows of `features` feature values."""
    if features < 0:
        raise ValueError(f"features must be >= 0, got {features}")
    width, first = 1 + features, 4 + features  # ARGV per row; ARGV index of row 1's `_ts`
    if features <= _SPELLED_OUT_LIMIT:
        names = "".join(f"local f{k} = ARGV[{3 + k}]\n" for k in range(1, features + 1))
        pairs = "".join(f", f{k}, ARGV[j + {k}]" for k in range(1, features + 1))
        hset = f"redis.call('HSET', key, tsf, new{pairs})"
    else:
        names = (
            f"local args = {{tsf}}\nfor k = 1, {features} do args[2 * k + 1] = ARGV[3 + k] end\n"
        )
        fill = f"args[2] = new for k = 1, {features} do args[2 * k + 2] = ARGV[j + k] end"
        hset = f"{fill} redis.call('HSET', key, unpack(args))"
    loop = f"""for i = 1, #KEYS do
  local key, j = KEYS[i], {first} + (i - 1) * {width}
  local new = ARGV[j]
  if newer(redis.call('HGET', key, tsf), new) then
    {hset}
    if ttl > 0 then redis.call('EXPIRE', key, ttl) end
    written = written + 1
  end
end
return written
"""
    return (_DECODE + names + loop).encode()
