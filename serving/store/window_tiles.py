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
newest applied event, the caller's clock); tiles older than the longest window are dropped.
One HMGET reads what the entity's refresh needs (its as-of, running values, the tiles this
call adds to, the tiles that left or entered a window), one HSET writes the tiles back:
- sums and counts are kept per aggregation as running values moved tile by tile (the stored
  window moved by the tiles that left and entered, plus this call's events inside the new
  window), so a refresh reads a few fields, not every tile;
- a new entity, or one quiet for the longest window, holds no stored tile inside any window:
  its windows are this call's events alone (its old tiles are deleted unread);
- min and max fold their window's stored tiles with this call's events.
Numbers go to Redis as Lua numbers (Redis writes a double exactly) and come back through
tonumber: integer sums are exact below 2^53.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from functools import cached_property

from serving.store import codec

TILES_PREFIX = b"carrara:tiles:"
ACTIVE_PREFIX = b"carrara:active:"
KINDS = {"Int64": "i64", "Int32": "i32", "Float64": "f64", "Float32": "f32"}
PARTS = {"sum": "s n", "count": "s n", "mean": "s n", "min": "lo", "max": "hi"}

SCRIPT = r"""
local pack, floor, fmt = struct.pack, math.floor, string.format
local char = string.char
local function varint(x)
  if x >= 0 and x < 128 then return char(x) end  -- counts and small sums: one byte
  if x >= 0 and x < 16384 then return char(x % 128 + 128, floor(x / 128)) end
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
local stamps = {}  -- most entities of a call share their as-of: encode it once
local function timestamp(us)
  if stamps[us] then return stamps[us] end
  local sec = floor(us / 1000000)
  local nanos = (us - sec * 1000000) * 1000
  local out = ""
  if sec ~= 0 then out = "\8" .. varint(sec) end
  if nanos ~= 0 then out = out .. "\16" .. varint(nanos) end
  stamps[us] = out
  return out
end

local function number(s) if s then return tonumber(s) end return nil end
local function whole(x) return x == floor(x) end
-- `command` with `head` then `items`, a thousand items a call (Lua's unpack is bounded)
local function chunked(head, items)
  for i = 1, #items, 1000 do
    local call = {unpack(head)}
    for n = i, math.min(i + 999, #items) do call[#call + 1] = items[n] end
    redis.call(unpack(call))
  end
end
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
    local agg = {col = tonumber(ARGV[p]), fn = ARGV[p + 1], tiles = tonumber(ARGV[p + 2]),
                 kind = ARGV[p + 3], field = ARGV[p + 4]}
    view.aggs[a] = agg
    if agg.tiles > view.span then view.span = agg.tiles end
    p = p + 5
  end
  view.parts = {}
  for c = 1, view.ncol do
    view.parts[c] = {}
    for part in string.gmatch(ARGV[p + c - 1], "%a+") do view.parts[c][part] = true end
  end
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

local names = {}  -- field names made once per call: formatting them was most of the work
local function field(tile, c, part)
  local by_tile = names[tile]
  if not by_tile then by_tile = {}; names[tile] = by_tile end
  local by_column = by_tile[c]
  if not by_column then by_column = {}; by_tile[c] = by_column end
  local name = by_column[part]
  if not name then
    name = tile .. ":" .. c .. ":" .. part  -- a tile number prints whole (< 1e14)
    by_column[part] = name
  end
  return name
end
local function plus(a, b) return a + b end
local function lower(a, b) if a == nil or b < a then return b end return a end
local function higher(a, b) if a == nil or b > a then return b end return a end
local FOLD = {s = plus, n = plus, lo = lower, hi = higher}

-- `part` of column c over tiles first..last: the stored values (pre-call, from `stored`,
-- when `with_stored`) and this call's cells, folded
local function window(stored, cells, c, part, first, last, total, with_stored)
  local fold = FOLD[part]
  if with_stored then
    for t = first, last do
      local v = stored[field(t, c, part)]
      if v ~= nil then total = fold(total, v) end
    end
  end
  for tile, cols in pairs(cells) do
    local cell = cols[c]
    if cell and tile >= first and tile <= last then total = fold(total, cell[part]) end
  end
  return total
end

-- the stored fields this refresh reads: this call's cells (to add to), the tiles that left
-- and entered a window kept as a running sum, every tile of a window folded afresh
local function wanted(view, cells, prev, last, running, fresh)
  local reads, seen = {}, {}
  local function want(name)
    if not seen[name] then seen[name] = true; reads[#reads + 1] = name end
  end
  local function want_range(c, part, first, upto)
    for t = first, upto do want(field(t, c, part)) end
  end
  if fresh then return reads end
  for tile, cols in pairs(cells) do
    for c in pairs(cols) do for part in pairs(view.parts[c]) do want(field(tile, c, part)) end end
  end
  for a, agg in ipairs(view.aggs) do
    local first = last - agg.tiles + 1
    if last - prev < agg.tiles then
      if agg.fn == "min" then want_range(agg.col, "lo", first, last)
      elseif agg.fn == "max" then want_range(agg.col, "hi", first, last)
      elseif running[a] == nil or not whole(running[a][1]) then  -- summed afresh
        want_range(agg.col, "s", first, last); want_range(agg.col, "n", first, last)
      elseif last > prev then
        for _, part in ipairs({"s", "n"}) do
          want_range(agg.col, part, prev - agg.tiles + 1, last - agg.tiles)
          want_range(agg.col, part, prev + 1, last)
        end
      end
    end
  end
  return reads
end

local function refresh(view, j, cells, newest, touched)
  local tk, fk = KEYS[view.keys + 2 * j - 2], KEYS[view.keys + 2 * j - 1]
  local head = {"HMGET", tk, "asof", "top"}
  for a = 1, view.nagg do
    head[#head + 1] = "r" .. a .. ":s"
    head[#head + 1] = "r" .. a .. ":n"
  end
  local got = redis.call(unpack(head))
  local asof, top = number(got[1]), number(got[2])
  local running = {}
  for a = 1, view.nagg do
    local rs, rn = number(got[1 + 2 * a]), number(got[2 + 2 * a])
    if rs ~= nil and rn ~= nil then running[a] = {rs, rn} end
  end
  local at = math.max(asof or 0, newest or 0, now)
  local last = tile_of(at, view.hop)
  local prev = asof and tile_of(asof, view.hop) or nil
  local oldest = last - view.span + 1
  -- no stored tile is in any window: a new entity, or one quiet for the longest window
  local fresh = prev == nil or last - prev >= view.span
  local newest_tile = top
  if newest then
    local t = tile_of(newest, view.hop)
    if newest_tile == nil or t > newest_tile then newest_tile = t end
  end
  if fresh then
    if asof ~= nil then redis.call("DEL", tk) end
    top = nil
  end
  local stored, reads = {}, wanted(view, cells, prev, last, running, fresh)
  for i = 1, #reads, 1000 do
    local chunk = {"HMGET", tk}
    for n = i, math.min(i + 999, #reads) do chunk[#chunk + 1] = reads[n] end
    local values = redis.call(unpack(chunk))
    for n = 1, #values do
      if values[n] then stored[reads[i + n - 1]] = tonumber(values[n]) end
    end
  end
  local keep = {"asof", at}
  for tile, cols in pairs(cells) do  -- this call's events, added to their tiles
    if tile >= oldest then
      if top == nil or tile > top then top = tile end
      for c, cell in pairs(cols) do
        for part in pairs(view.parts[c]) do
          local name = field(tile, c, part)
          keep[#keep + 1] = name
          local old, added = stored[name], cell[part]
          if old ~= nil then added = FOLD[part](old, added) end
          keep[#keep + 1] = added
        end
      end
    end
  end
  -- windows that hold no event any more are valid from the moment they emptied (the end of
  -- the newest event's tile + the longest window): stamped then, they age out by the ttl
  -- as the offline definition says, however late the event or tick that wrote them
  local kept = top ~= nil and top >= oldest
  local stamp = at
  if not kept and newest_tile ~= nil then
    stamp = math.min(at, (newest_tile + view.span) * view.hop)
  end
  local hset = {"HSET", fk, view.ts_field, timestamp(stamp)}
  for a, agg in ipairs(view.aggs) do
    local first, c = last - agg.tiles + 1, agg.col
    local with_stored = not fresh and last - prev < agg.tiles
    local value
    if agg.fn == "min" or agg.fn == "max" then
      local part = agg.fn == "min" and "lo" or "hi"
      value = window(stored, cells, c, part, first, last, nil, with_stored)
    else
      local s, n = 0, 0
      -- the running sums moved tile by tile, while they are whole numbers (exact below
      -- 2^53); a fraction is summed afresh from the tiles, so no rounding piles up
      if with_stored and running[a] ~= nil and whole(running[a][1]) then
        s, n = running[a][1], running[a][2]
        if last > prev then
          s = s - window(stored, {}, c, "s", prev - agg.tiles + 1, last - agg.tiles, 0, true)
                + window(stored, {}, c, "s", prev + 1, last, 0, true)
          n = n - window(stored, {}, c, "n", prev - agg.tiles + 1, last - agg.tiles, 0, true)
                + window(stored, {}, c, "n", prev + 1, last, 0, true)
        end
        s = window({}, cells, c, "s", first, last, s, false)
        n = window({}, cells, c, "n", first, last, n, false)
      else
        s = window(stored, cells, c, "s", first, last, 0, with_stored)
        n = window(stored, cells, c, "n", first, last, 0, with_stored)
      end
      keep[#keep + 1] = "r" .. a .. ":s"; keep[#keep + 1] = s
      keep[#keep + 1] = "r" .. a .. ":n"; keep[#keep + 1] = n
      if agg.fn == "sum" then value = s
      elseif agg.fn == "count" then value = n
      elseif n > 0 then value = s / n end
    end
    hset[#hset + 1] = agg.field
    hset[#hset + 1] = encode(agg.kind, value)
  end
  redis.call(unpack(hset))
  if view.key_ttl > 0 then redis.call("EXPIRE", fk, view.key_ttl) end
  if kept then
    keep[#keep + 1] = "top"; keep[#keep + 1] = top
    chunked({"HSET", tk}, keep)
    if not fresh and last > prev then  -- the tiles that left the longest window
      local gone = {}
      for t = prev - view.span + 1, oldest - 1 do
        for c = 1, view.ncol do
          for part in pairs(view.parts[c]) do gone[#gone + 1] = field(t, c, part) end
        end
      end
      chunked({"HDEL", tk}, gone)
    end
    redis.call("PEXPIREAT", tk, floor(at / 1000) + view.tiles_ttl)  -- after A: even ahead
    touched.add[#touched.add + 1] = at
    touched.add[#touched.add + 1] = fk
  else
    redis.call("DEL", tk)
    touched.gone[#touched.gone + 1] = fk
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
      local entity = acc[j]
      if not entity then entity = {}; acc[j] = entity end
      local cols = entity[tile]
      if not cols then cols = {}; entity[tile] = cols end
      for c = 1, view.ncol do
        local raw = ARGV[b + 2 + c]
        if raw ~= "" then
          local x, cell = tonumber(raw), cols[c]
          if not cell then cell = {s = 0, n = 0, lo = x, hi = x}; cols[c] = cell end
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
  local touched = {add = {}, gone = {}}
  for j = 1, view.nent do
    if mode == "tick" or newest[j] then refresh(view, j, acc[j] or {}, newest[j], touched) end
  end
  for i = 1, #touched.add, 1000 do  -- who still has events in a window: ticks age them
    redis.call("ZADD", view.active, unpack(touched.add, i, math.min(i + 999, #touched.add)))
  end
  for i = 1, #touched.gone, 1000 do
    redis.call("ZREM", view.active, unpack(touched.gone, i, math.min(i + 999, #touched.gone)))
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

    @cached_property
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
        args += view.settings_args
        args += [str(len(section.feast_keys)).encode(), str(len(section.entity)).encode()]
        n = len(section.entity)
        ids = section.entry_ids if section.entry_ids is not None else [b""] * n
        entity = [b"%d" % (i + 1) for i in range(len(section.feast_keys))]
        fields = [
            ids,
            [entity[i] for i in section.entity],
            [b"%d" % us for us in section.event_us],
            *([_number(v) for v in column] for column in section.values),
        ]
        args += [value for event in zip(*fields, strict=True) for value in event]
    return keys, args


def _number(value: float | int | None) -> bytes:
    if value is None:
        return b""
    if type(value) is int:
        return b"%d" % value
    return repr(float(value)).encode()  # the shortest text that reads back the same double
