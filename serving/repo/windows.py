"""What a windowed aggregation holds: the one definition online tiles and offline joins share.

A stream feature view's `Aggregation`s (plan.WindowAggregation) are kept over tiles of
`hop_s` seconds of event time: an event at `t` (UTC microseconds) falls in tile
`floor(t / hop_us)`. A view's value *as of* `A` for a window of `W` seconds aggregates the
events of its entity in the `W / hop_s` tiles ending with A's own tile, none later than A:

    tile_of(A) - W/hop_s + 1  <=  tile_of(event)  <=  tile_of(A),   event <= A

so a window covers between W - hop_s and W seconds of event time (Feast's sawtooth tiling).
Values over no event: sum 0, count 0, mean/min/max null. A null input is skipped (count counts
non-null values). Online (serving/store/window_tiles.py), A is the newest of: the previous
as-of, the newest event applied and the writer's clock; the Feast hash's `_ts:<view>` says A,
so the value read online is checkable offline as of its own timestamp.
"""

from __future__ import annotations

_US = 1_000_000


def tile_of(event_us: int, hop_s: int) -> int:
    """The tile an event time falls in (floor division: times before 1970 too)."""
    return event_us // (hop_s * _US)


def window_tiles(as_of_us: int, hop_s: int, window_s: int) -> tuple[int, int]:
    """The first and last tile (inclusive) of a `window_s` window as of `as_of_us`."""
    last = tile_of(as_of_us, hop_s)
    return last - window_s // hop_s + 1, last


def window_start_us(as_of_us: int, hop_s: int, window_s: int) -> int:
    """The earliest event time a window as of `as_of_us` holds (its first tile's start)."""
    return window_tiles(as_of_us, hop_s, window_s)[0] * hop_s * _US
