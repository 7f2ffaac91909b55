"""Windowed aggregations kept in Redis: tiles per entity, and the window values in Feast's hash.

Concern: the Lua script that applies events to tiles and writes the windows' values, and the
arguments it takes. The meaning of a window is serving/repo/windows.py's; this computes it.

Per windowed view and entity, Redis holds:
- the tiles: a hash `carrara:tiles:<view>:<Feast key>` with fields `<tile>:<column>:<part>`
  (part s: sum, n: count of non-null values, lo: min, hi: max; only the parts an aggregation
  needs) and `asof` (UTC microseconds), expiring a while after its longest window;
- the values: the view's fields in the entity's Feast hash (mmh3 of `view:feature`, Feast's
  Value bytes) and `_ts:<view>` = the as-of time, so Feast and Carrara read them as any view's;
- membership of `carrara:active:<project>:<view>` (a sorted set of Feast keys, scored by as-of)
  while a window still holds events, so a tick can age the windows of quiet entities.

One call (one atomic script) applies a batch of events to any number of windowed views. From a
stream (mode "stream"), it first claims the batch's entry ids for the consumer (XCLAIM JUSTID
answers only the ids still pending: never acknowledged) and acknowledges those; only their
events are applied. Applying and acknowledging are one atomic step, so an entry redelivered
after a crash (or claimed from a dead consumer) is never counted twice: the effect is exactly
once. Mode "push" applies every event (a Push call); mode "tick" applies none and recomputes.

After applying, every touched entity's windows are recomputed as of A = max(stored as-of,
newest applied event, the caller's clock), tiles older than the longest window are dropped,
and the values written. Numbers travel as decimal text: sums are kept with HINCRBYFLOAT
(exact for integers below 2^53), min/max with 17 significant digits.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from serving.store import codec

TILES_PREFIX = b"carrara:tiles:"
ACTIVE_PREFIX = b"carrara:active:"
KINDS = {"Int64": "i64", "Int32": "i32", "Float64": "f64", "Float32": "f32"}
PARTS = {"sum": "s n", "count": "n", "mean": "s n", "min": "lo", "max": "hi"}

SCRIPT = r"""
local pack, floor, fmt = struct.pack, math.floor, string.format
local function varint(x)
  local lo, hi, out = x % 4294967296, floor(x / 4294967296) % 4294967296, {}
  while hi > 0 or lo >= 128 do
    out[#out + 1] = string.char(lo % 128 + 128)
    lo = floor(lo / 128) + (hi % 128) * 33554432
    hi = floor(hi / 128)
  end
  out[#out + 1] = string.char(lo)
  return table.concat(out)
end
local function integer(x) if x < 0 then return -floor(-x) end return floor(x) end
local function encode(kind, v)
  if v == nil then return "" end
  if kind == "f64" then return "\41" .. pack("<d", v) end
  if kind == "f32" then return "\53" .. pack("<f", v) end
  if kind == "i32" then return "\24" .. varint(integer(v)) end
  return "\32" .. varint(integer(v))
end
local function timestamp(us)
  local sec = floor(us / 1000000)
  local nanos = (us - sec * 1000000) * 1000
  local out = ""
  if sec ~= 0 then out = "\8" .. varint(sec) end
  if nanos ~= 0 then out = out .. "\16" .. varint(nanos) end
  return out
end
local function number(s) if s then return tonumber(s) end return nil end
local function tile_of(us, hop)  -- floor(us / hop), exact where the division rounds
  local t = floor(us / hop)
  if (t + 1) * hop <= us then return t + 1 end
  if t * hop > us then return t - 1 end
  return t
end

local mode, group, consumer = ARGV[1], ARGV[2], ARGV[3]
local now, nviews = tonumber(ARGV[4]), tonumber(ARGV[5])

-- the sections: one per view
local views, p, k = {}, 6, 2
for v = 1, nviews do
  local view = {hop = tonumber(ARGV[p]), ts_field = ARGV[p + 1], key_ttl = tonumber(ARGV[p + 2]),
                tiles_ttl = tonumber(ARGV[p + 3]), ncol = tonumber(ARGV[p + 4]),
                nagg = tonumber(ARGV[p + 5]), aggs = {}, span = 1, active = KEYS[k]}
  p, k = p + 6, k + 1
  for a = 1, view.nagg do
    local agg = {col = ARGV[p], fn = ARGV[p + 1], tiles = tonumber(ARGV[p + 2]),
                 kind = ARGV[p + 3], field = ARGV[p + 4]}
    view.aggs[a] = agg
    if agg.tiles > view.span then view.span = agg.tiles end
    p = p + 5
  end
  view.parts = {}
  for c = 1, view.ncol do view.parts[c] = ARGV[p + c - 1] end
  p = p + view.ncol
  view.nent, view.nev = tonumber(ARGV[p]), tonumber(ARGV[p + 1])
  view.keys, view.first_event = k, p + 2
  k = k + 2 * view.nent
  p = p + 2 + view.nev * (3 + view.ncol)
  views[v] = view
end

-- stream: the ids still pending are ours to apply, and are acknowledged with it
local fresh = nil
if mode == "stream" then
  fresh = {}
  local ids, seen = {}, {}
  for _, view in ipairs(views) do
    for e = 0, view.nev - 1 do
      local id = ARGV[view.first_event + e * (3 + view.ncol)]
      if not seen[id] then seen[id] = true; ids[#ids + 1] = id end
    end
  end
  for i = 1, #ids, 1000 do
    local claim = {"XCLAIM", KEYS[1], group, consumer, "0"}
    for j = i, math.min(i + 999, #ids) do claim[#claim + 1] = ids[j] end
    claim[#claim + 1] = "JUSTID"
    local got = redis.call(unpack(claim))
    if #got > 0 then
      local ack = {"XACK", KEYS[1], group}
      for _, id in ipairs(got) do fresh[id] = true; ack[#ack + 1] = id end
      redis.call(unpack(ack))
    end
  end
end

local function refresh(view, j, newest)
  local tk, fk = KEYS[view.keys + 2 * j - 2], KEYS[view.keys + 2 * j - 1]
  local asof = number(redis.call("HGET", tk, "asof")) or 0
  local at = math.max(asof, newest or 0, now)
  local last = tile_of(at, view.hop)
  local oldest = last - view.span + 1
  local cells, stale, kept = {}, {}, 0
  local flat = redis.call("HGETALL", tk)
  for i = 1, #flat, 2 do
    local tile, col, part = string.match(flat[i], "^(%-?%d+):([^:]+):(%a+)$")
    if tile then
      tile = tonumber(tile)
      if tile < oldest then stale[#stale + 1] = flat[i]
      else
        kept = kept + 1
        local key = col .. ":" .. part
        local t = cells[key]
        if not t then t = {}; cells[key] = t end
        t[tile] = tonumber(flat[i + 1])
      end
    end
  end
  local hset = {"HSET", fk, view.ts_field, timestamp(at)}
  for _, agg in ipairs(view.aggs) do
    local first = last - agg.tiles + 1
    local s, n, lo, hi = 0, 0, nil, nil
    for tile = first, last do
      local c = cells[agg.col .. ":n"]
      if c and c[tile] then n = n + c[tile] end
      c = cells[agg.col .. ":s"]
      if c and c[tile] then s = s + c[tile] end
      c = cells[agg.col .. ":lo"]
      if c and c[tile] and (lo == nil or c[tile] < lo) then lo = c[tile] end
      c = cells[agg.col .. ":hi"]
      if c and c[tile] and (hi == nil or c[tile] > hi) then hi = c[tile] end
    end
    local value
    if agg.fn == "sum" then value = s
    elseif agg.fn == "count" then value = n
    elseif agg.fn == "mean" then if n > 0 then value = s / n end
    elseif agg.fn == "min" then value = lo
    else value = hi end
    hset[#hset + 1] = agg.field
    hset[#hset + 1] = encode(agg.kind, value)
  end
  redis.call(unpack(hset))
  if view.key_ttl > 0 then redis.call("EXPIRE", fk, view.key_ttl) end
  for i = 1, #stale, 1000 do
    redis.call("HDEL", tk, unpack(stale, i, math.min(i + 999, #stale)))
  end
  if kept > 0 then
    redis.call("HSET", tk, "asof", fmt("%.0f", at))
    redis.call("PEXPIRE", tk, view.tiles_ttl)
    redis.call("ZADD", view.active, at, fk)
  else
    redis.call("DEL", tk)
    redis.call("ZREM", view.active, fk)
  end
end

local applied, repeated = 0, 0
for _, view in ipairs(views) do
  local acc, newest, stride = {}, {}, 3 + view.ncol
  for e = 0, view.nev - 1 do
    local b = view.first_event + e * stride
    if fresh == nil or fresh[ARGV[b]] then
      applied = applied + 1
      local j, ts = tonumber(ARGV[b + 1]), tonumber(ARGV[b + 2])
      local tile = tile_of(ts, view.hop)
      local cells = acc[j]
      if not cells then cells = {}; acc[j] = cells end
      for c = 1, view.ncol do
        local raw = ARGV[b + 2 + c]
        if raw ~= "" then
          local x, key = tonumber(raw), fmt("%.0f", tile) .. ":" .. c
          local cell = cells[key]
          if not cell then cell = {s = 0, n = 0, lo = x, hi = x, c = c}; cells[key] = cell end
          cell.s, cell.n = cell.s + x, cell.n + 1
          if x < cell.lo then cell.lo = x end
          if x > cell.hi then cell.hi = x end
        end
      end
      if not newest[j] or ts > newest[j] then newest[j] = ts end
    else
      repeated = repeated + 1
    end
  end
  for j, cells in pairs(acc) do
    local tk = KEYS[view.keys + 2 * j - 2]
    for key, cell in pairs(cells) do
      local parts = view.parts[cell.c]
      if string.find(parts, "s", 1, true) then
        redis.call("HINCRBYFLOAT", tk, key .. ":s", fmt("%.17g", cell.s))
      end
      if string.find(parts, "n", 1, true) then redis.call("HINCRBY", tk, key .. ":n", cell.n) end
      if string.find(parts, "lo", 1, true) then
        local old = number(redis.call("HGET", tk, key .. ":lo"))
        if old == nil or cell.lo < old then
          redis.call("HSET", tk, key .. ":lo", fmt("%.17g", cell.lo))
        end
      end
      if string.find(parts, "hi", 1, true) then
        local old = number(redis.call("HGET", tk, key .. ":hi"))
        if old == nil or cell.hi > old then
          redis.call("HSET", tk, key .. ":hi", fmt("%.17g", cell.hi))
        end
      end
    end
  end
  for j = 1, view.nent do
    if mode == "tick" or newest[j] then refresh(view, j, newest[j]) end
  end
end
return {applied, repeated}
"""


@dataclass(frozen=True)
class WindowedView:
    """A windowed view's part of a script call: its settings and its entities' keys."""

    name: str
    project: str
    hop_s: int
    key_ttl_s: int
    columns: tuple[str, ...]  # the event columns, in the order of the events' values
    aggregations: tuple[tuple[str, str, int, str], ...]  # (feature, function, window_s, dtype)
    columns_of: tuple[str, ...] = ()  # each aggregation's event column

    @property
    def active_key(self) -> bytes:
        return ACTIVE_PREFIX + self.project.encode() + b":" + self.name.encode()

    def tiles_key(self, feast_key: bytes) -> bytes:
        return TILES_PREFIX + self.name.encode() + b":" + feast_key

    @property
    def longest_s(self) -> int:
        return max(window for _, _, window, _ in self.aggregations)

    def settings_args(self) -> list[bytes]:
        """The section's head: hop, `_ts` field, key ttl, tiles' ttl, columns, aggregations
        (column index, function, tiles, kind, field) and each column's parts."""
        tiles_ttl_ms = (self.longest_s + self.hop_s) * 2_000
        args = [
            str(self.hop_s * 1_000_000).encode(),
            codec.ts_field(self.name),
            str(self.key_ttl_s).encode(),
            str(tiles_ttl_ms).encode(),
            str(len(self.columns)).encode(),
            str(len(self.aggregations)).encode(),
        ]
        parts: dict[str, set[str]] = {c: set() for c in self.columns}
        for (feature, function, window, dtype), column in zip(
            self.aggregations, self.columns_of, strict=True
        ):
            index = self.columns.index(column) + 1
            parts[column].update(PARTS[function].split())
            args += [
                str(index).encode(),
                function.encode(),
                str(window // self.hop_s).encode(),
                KINDS[dtype].encode(),
                codec.field_name(self.name, feature),
            ]
        args += [" ".join(sorted(parts[c])).encode() for c in self.columns]
        return args


@dataclass(frozen=True)
class Events:
    """One view's events for a call: per event its entity (index into `feast_keys`), time
    (UTC microseconds), values (one per column, None when null) and stream entry id."""

    view: WindowedView
    feast_keys: Sequence[bytes]  # the distinct entities, in index order
    entity: Sequence[int]
    event_us: Sequence[int]
    values: Sequence[Sequence[float | int | None]]  # per column
    entry_ids: Sequence[bytes] | None = None


def script_args(
    mode: str, sections: Sequence[Events], now_us: int, group: bytes = b"", consumer: bytes = b""
) -> tuple[list[bytes], list[bytes]]:
    """KEYS and ARGV of one call (the stream key is the caller's KEYS[1])."""
    keys: list[bytes] = []
    args = [mode.encode(), group, consumer, str(now_us).encode(), str(len(sections)).encode()]
    for section in sections:
        view = section.view
        keys.append(view.active_key)
        for feast_key in section.feast_keys:
            keys += [view.tiles_key(feast_key), feast_key]
        args += view.settings_args()
        args += [str(len(section.feast_keys)).encode(), str(len(section.entity)).encode()]
        ids = section.entry_ids
        for e, (entity, event_us) in enumerate(zip(section.entity, section.event_us, strict=True)):
            args += [ids[e] if ids is not None else b"", str(entity + 1).encode(), b"%d" % event_us]
            args += [_number(column[e]) for column in section.values]
    return keys, args


def _number(value: float | int | None) -> bytes:
    if value is None:
        return b""
    if isinstance(value, int):
        return b"%d" % value
    return repr(float(value)).encode()
