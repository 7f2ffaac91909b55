"""Feast's write rule as a Redis Lua script: write a row only when newer than what is stored.

Concern: the script `writes.write_view` sends with EVAL, one call per batch, and the
framing of its rows.

    KEYS  the rows' Redis keys
    ARGV  features count, key ttl in seconds (0: none), "_ts:<view>", the features' field
          names, then ONE string of framed rows: per row its `_ts` value followed by its value
          of each feature, each as a u32 little-endian length and the bytes
    returns the number of rows written

One framed string instead of an argument per value: Redis parses, allocates and converts to
Lua a third as many arguments, and Lua's bundled `struct.unpack` splits a row in one C call.

Invariants (Feast 0.67's `online_write_batch`, made atomic):
- A row is skipped when the stored `_ts:<view>` decodes to a time > 0 and the new time is not
  greater (seconds, then nanos; negative seconds are 10-byte varints). A missing, empty or
  non-positive stored time never blocks a write.
- A written row gets every feature field and `_ts` in one HSET, then EXPIRE when a ttl is
  given; skipped rows are not touched (their expiry is not refreshed).
- Each call runs atomically in Redis, so no other writer interleaves between check and write;
  framed rows that do not add up are refused before anything is written.
- The HSET is spelled out for up to 40 features (no Lua table per row) and built with a
  table + unpack beyond, where Lua's limits on locals and call arguments would bite.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from functools import cache

import numpy as np
import numpy.typing as npt

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
local nf, ttl, tsf = tonumber(ARGV[1]), tonumber(ARGV[2]), ARGV[3]
local rows, pos, written = ARGV[4 + nf], 1, 0
local fmt = '<' .. string.rep('Ic0', nf + 1)
"""

_SPELLED_OUT_LIMIT = 40


@cache
def write_script(features: int) -> bytes:
    """The script for rows of `features` feature values."""
    if features < 0:
        raise ValueError(f"features must be >= 0, got {features}")
    numbers = range(1, features + 1)
    if features <= _SPELLED_OUT_LIMIT:
        names = "".join(f"local f{k} = ARGV[{3 + k}]\n" for k in numbers)
        values = ", ".join(["new", *(f"v{k}" for k in numbers)])
        unpack = f"local {values}\n  {values}, pos = struct.unpack(fmt, rows, pos)"
        hset = f"redis.call('HSET', key, tsf, new{''.join(f', f{k}, v{k}' for k in numbers)})"
    else:
        names = "local args = {tsf}\nfor k = 1, nf do args[2 * k + 1] = ARGV[3 + k] end\n"
        unpack = (
            "local row = {struct.unpack(fmt, rows, pos)}\n"
            f"  local new = row[1]\n  pos = row[{features + 2}]"
        )
        fill = "args[2] = new for k = 1, nf do args[2 * k + 2] = row[k + 1] end"
        hset = f"{fill} redis.call('HSET', key, unpack(args))"
    loop = f"""for i = 1, #KEYS do
  local key = KEYS[i]
  {unpack}
  if newer(redis.call('HGET', key, tsf), new) then
    {hset}
    if ttl > 0 then redis.call('EXPIRE', key, ttl) end
    written = written + 1
  end
end
if pos ~= #rows + 1 then return redis.error_reply('framed rows do not match the keys') end
return written
"""
    return (_DECODE + names + loop).encode()


@dataclass(frozen=True)
class RowBatch:
    """Rows of one view in Feast's bytes: keys, `_ts` values, one list of values per feature."""

    keys: Sequence[bytes]
    event_ts: Sequence[bytes]
    values: Sequence[Sequence[bytes]]


@dataclass(frozen=True)
class FramedRows:
    """Rows of one view in Feast's bytes: their keys and their framed `_ts` and values."""

    keys: Sequence[bytes]
    rows: bytes
    ends: Sequence[int]  # where each row's frame ends in `rows`

    @classmethod
    def of(cls, batch: RowBatch) -> FramedRows:
        rows, ends = frame_rows(batch.event_ts, batch.values)
        return cls(batch.keys, rows, ends.tolist())

    def row(self, i: int) -> bytes:
        """Row i's frame alone (a cluster writes each key by itself)."""
        return self.rows[self.ends[i - 1] if i else 0 : self.ends[i]]


def framed_batches(
    keys: Sequence[bytes],
    event_ts: Sequence[bytes],
    values: Sequence[Sequence[bytes]],
    size: int,
) -> Iterator[FramedRows]:
    """Frame the rows once, then yield them `size` rows at a time."""
    framed, ends = frame_rows(event_ts, values)
    if len(keys) != len(ends):
        raise ValueError(f"{len(keys)} keys for {len(ends)} rows")
    bounds: list[int] = [0, *ends.tolist()]
    for first in range(0, len(keys), size):
        last = min(len(keys), first + size)
        start = bounds[first]
        row_ends = [end - start for end in bounds[first + 1 : last + 1]]
        yield FramedRows(keys[first:last], framed[start : bounds[last]], row_ends)


def frame_rows(
    event_ts: Sequence[bytes], values: Sequence[Sequence[bytes]]
) -> tuple[bytes, npt.NDArray[np.int64]]:
    """Per row: `_ts`, then each value, each as u32 LE length + bytes; and each row's end."""
    columns = [event_ts, *values]
    n, width = len(event_ts), len(columns)
    if any(len(column) != n for column in columns):
        raise ValueError(f"columns differ in length: {[len(c) for c in columns]}")
    lens = np.empty((n, width), np.int64)
    for c, column in enumerate(columns):
        lens[:, c] = np.fromiter(map(len, column), np.int64, n)
    ends = np.cumsum((lens + 4).reshape(-1)).reshape(n, width)
    starts = ends - lens - 4
    out = np.empty(int(ends[-1, -1]) if n else 0, np.uint8)
    headers = lens.astype("<u4").view(np.uint8).reshape(n, width, 4)
    out[(starts[:, :, None] + np.arange(4)).reshape(-1)] = headers.reshape(-1)
    for c, column in enumerate(columns):
        data = np.frombuffer(b"".join(column), np.uint8)
        if len(data):
            before = np.cumsum(lens[:, c]) - lens[:, c]  # where each value starts in `data`
            shift = np.repeat(starts[:, c] + 4 - before, lens[:, c])
            out[shift + np.arange(len(data))] = data
    return out.tobytes(), ends[:, -1] if n else np.zeros(0, np.int64)
