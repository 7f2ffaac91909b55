"""A model's aliases on disk (`models/<name>/aliases.json`): alias -> version, with history.

Each alias keeps the stack of versions it pointed to; the last is current. `promote` pushes,
`rollback` pops, so a rollback returns the alias to exactly the version it had before. Every
change is also appended to an event log (who moved what, when).

Invariants: the file is replaced atomically (temp file + rename), so a reader without a lock
sees the old or the new state, never half; read-modify-write cycles hold an exclusive
`flock` on `.aliases.lock` beside it, so concurrent writers (two trainings, a promote during a
training) never lose each other's change.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from serving.errors import ModelError
from serving.files import write_atomic

ALIASES_FILE = "aliases.json"
LOCK_FILE = ".aliases.lock"
ALIAS_FORMAT = 1


@dataclass(frozen=True)
class Traffic:
    """What a traffic alias does with requests for the model's production alias: `share` of
    them (0-1), chosen by a hash of the entity key `key` (a canary: one entity, one version),
    or by request when `key` is None."""

    share: float
    key: str | None = None


TRAFFIC_ALIASES = ("canary", "shadow")  # a canary answers its share; a shadow only scores


@dataclass(frozen=True)
class AliasState:
    """alias -> versions it has pointed to, oldest first (the last is current); the traffic
    settings of the canary and shadow aliases."""

    history: dict[str, tuple[int, ...]]
    events: tuple[dict[str, Any], ...] = ()
    traffic: dict[str, Traffic] = field(default_factory=dict)

    @property
    def current(self) -> dict[str, int]:
        return {alias: versions[-1] for alias, versions in self.history.items() if versions}


def read_aliases(model_dir: Path) -> AliasState:
    """The model's alias state; an absent file is an empty state."""
    path = model_dir / ALIASES_FILE
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        return AliasState(history={})
    except (OSError, ValueError) as exc:
        raise ModelError(f"{path} is not readable JSON: {exc}") from exc
    try:
        if data["format"] != ALIAS_FORMAT:
            raise ValueError(f"format {data['format']}, expected {ALIAS_FORMAT}")
        history = {
            str(alias): tuple(_version(v) for v in versions)
            for alias, versions in data["aliases"].items()
        }
        events = tuple(dict(e) for e in data["events"])
        traffic = {
            str(alias): Traffic(_share(t["share"]), None if t.get("key") is None else str(t["key"]))
            for alias, t in data.get("traffic", {}).items()
        }
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        raise ModelError(f"{path} is malformed: {exc}") from exc
    return AliasState(history=history, events=events, traffic=traffic)


def _share(value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0 <= value <= 1:
        raise ValueError(f"a traffic share is a number from 0 to 1, not {value!r}")
    return float(value)


def _version(value: object) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise ValueError(f"not a version number: {value!r}")
    return value


@contextlib.contextmanager
def locked(model_dir: Path) -> Iterator[None]:
    """Hold the model's alias lock (an exclusive flock, released when the file closes)."""
    with (model_dir / LOCK_FILE).open("a") as handle:
        fcntl.flock(handle.fileno(), fcntl.LOCK_EX)
        yield


def write_aliases(model_dir: Path, state: AliasState) -> None:
    """Replace aliases.json atomically; call with the lock held."""
    data = {
        "format": ALIAS_FORMAT,
        "aliases": {alias: list(versions) for alias, versions in sorted(state.history.items())},
        "events": list(state.events),
        "traffic": {a: {"share": t.share, "key": t.key} for a, t in sorted(state.traffic.items())},
    }
    write_atomic(model_dir / ALIASES_FILE, json.dumps(data, indent=1))


def pushed(state: AliasState, alias: str, version: int, action: str) -> AliasState:
    """`state` with `alias` moved to `version` (a no-op when it already points there)."""
    versions = state.history.get(alias, ())
    if versions and versions[-1] == version:
        return state
    event = _event(action, alias, versions[-1] if versions else None, version)
    return AliasState(
        history={**state.history, alias: (*versions, version)},
        events=(*state.events, event),
        traffic=state.traffic,
    )


def with_traffic(state: AliasState, alias: str, traffic: Traffic) -> AliasState:
    """`state` with `alias`'s traffic settings replaced (an event records the change)."""
    event = {**_event("traffic", alias, None, 0), "share": traffic.share, "key": traffic.key}
    del event["from"], event["to"]
    return AliasState(
        history=state.history,
        events=(*state.events, event),
        traffic={**state.traffic, alias: traffic},
    )


def popped(state: AliasState, alias: str) -> AliasState:
    """`state` with `alias` back on its previous version; the caller checks there is one."""
    versions = state.history[alias]
    event = _event("rollback", alias, versions[-1], versions[-2])
    return AliasState(
        history={**state.history, alias: versions[:-1]},
        events=(*state.events, event),
        traffic=state.traffic,
    )


def _event(action: str, alias: str, before: int | None, after: int) -> dict[str, Any]:
    return {
        "at": datetime.now(UTC).isoformat(timespec="seconds"),
        "action": action,
        "alias": alias,
        "from": before,
        "to": after,
    }
