"""Models on disk: versions, aliases and metadata; what the server loads and hot-reloads.

    <root>/<name>/<version>/model.txt   LightGBM's text model (never pickle)
    <root>/<name>/<version>/model.json  its ModelCard (card.py)
    <root>/<name>/aliases.json          alias -> version, with history (aliases.py)

A reference is `name` (= name@production), `name@alias` or `name:version`.

Invariants: a version directory appears whole or not at all: it is written as a hidden temp
directory and renamed to the next free number, retrying on collision, so concurrent trainings
get distinct versions and a reader never sees half a version. Nothing loads a version whose
model.txt does not hash to its card's `model_sha256`, whose booster's features differ from the
card's refs, or (given a serving plan) whose features no longer resolve in the feature repo.
No Feast import: the server calls this at start-up and on every alias poll.
"""

from __future__ import annotations

import builtins
import errno
import hashlib
import os
import re
import shutil
import tempfile
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING

from serving.errors import (
    CarraraError,
    InvalidRequestError,
    ModelError,
    NotFoundError,
    UsageError,
    echo,
)
from serving.files import fsync_dir, write_synced
from serving.models.aliases import (
    TRAFFIC_ALIASES,
    AliasState,
    Traffic,
    locked,
    popped,
    pushed,
    read_aliases,
    with_traffic,
    write_aliases,
)
from serving.models.card import ModelCard, model_inputs, read_card
from serving.models.model_text import check_parses
from serving.repo.plan import ServingPlan

if TYPE_CHECKING:
    import lightgbm

MODEL_FILE = "model.txt"
CARD_FILE = "model.json"
ALIASES = ("production", "staging", *TRAFFIC_ALIASES)
DEFAULT_ALIAS = "production"
NAME_RE = re.compile(r"[a-z][a-z0-9_-]{0,63}")
VERSION_RE = re.compile(r"[1-9][0-9]{0,8}")
REF_RE = re.compile(r"(?P<name>[^@:]+)(?:@(?P<alias>[^@:]+)|:(?P<version>[^@:]+))?")
MAX_ALLOCATION_ATTEMPTS = 1000


@dataclass(frozen=True)
class VersionInfo:
    """One version as `list` sees it: its card, or why it is broken (then `card` is None)."""

    version: int
    card: ModelCard | None
    problem: str | None = None


@dataclass(frozen=True)
class ModelSummary:
    name: str
    versions: tuple[VersionInfo, ...]
    aliases: dict[str, int]  # alias -> version
    problem: str | None = None  # aliases.json unreadable


@dataclass(frozen=True)
class LoadedModel:
    name: str
    version: int
    booster: lightgbm.Booster
    card: ModelCard


@dataclass(frozen=True)
class Registration:
    name: str
    version: int
    alias: str  # the alias the new version received (production on a fresh model)
    path: Path


@dataclass(frozen=True)
class AliasChange:
    name: str
    alias: str
    before: int | None
    after: int


class ModelRegistry:
    """The registry rooted at `root` (created on first registration)."""

    def __init__(self, root: Path) -> None:
        self.root = root

    # --- reading --------------------------------------------------------------------------

    def names(self) -> builtins.list[str]:
        if not self.root.is_dir():
            return []
        return sorted(
            p.name for p in self.root.iterdir() if p.is_dir() and NAME_RE.fullmatch(p.name)
        )

    def versions(self, name: str) -> builtins.list[int]:
        model_dir = self._model_dir(name)
        return sorted(
            int(p.name) for p in model_dir.iterdir() if VERSION_RE.fullmatch(p.name) and p.is_dir()
        )

    def list(self) -> builtins.list[ModelSummary]:
        """Every model with every version; a corrupt version is reported, never raised."""
        return [self._summary(name) for name in self.names()]

    def _summary(self, name: str) -> ModelSummary:
        infos = []
        for version in self.versions(name):
            try:
                infos.append(VersionInfo(version, self._checked(name, version)[0]))
            except CarraraError as exc:
                infos.append(VersionInfo(version, None, str(exc)))
        try:
            aliases, problem = self.aliases(name), None
        except ModelError as exc:
            aliases, problem = {}, str(exc)
        return ModelSummary(name, tuple(infos), aliases, problem)

    def resolve(self, ref: str) -> tuple[str, int]:
        """(name, version) for `name`, `name@alias` or `name:version`; NotFoundError if none."""
        match = REF_RE.fullmatch(ref.strip())
        if match is None or not NAME_RE.fullmatch(match["name"]):
            raise InvalidRequestError(
                f"model reference {echo(ref)} is not NAME, NAME@ALIAS or NAME:VERSION"
            )
        name = match["name"]
        if match["version"] is not None:
            if not VERSION_RE.fullmatch(match["version"]):
                raise InvalidRequestError(f"model reference {echo(ref)}: version must be 1, 2, ...")
            version = int(match["version"])
            if version not in self.versions(name):
                known = ", ".join(map(str, self.versions(name))) or "none"
                raise NotFoundError(
                    f"model {echo(name)} has no version {version} (versions: {known})"
                )
            return name, version
        alias = match["alias"] or DEFAULT_ALIAS
        aliases = self.aliases(name)
        if alias not in aliases:
            known = ", ".join(f"{a}={v}" for a, v in sorted(aliases.items())) or "none"
            raise NotFoundError(f"model {echo(name)} has no alias {echo(alias)} (aliases: {known})")
        if not (self._model_dir(name) / str(aliases[alias])).is_dir():
            raise NotFoundError(f"{name}@{alias} points at version {aliases[alias]}, which is gone")
        return name, aliases[alias]

    def card(self, ref: str) -> ModelCard:
        """The verified card of a version (its model.txt hashes to the card's checksum)."""
        return self._verified(*self.resolve(ref))[0]

    def load(self, ref: str, plan: ServingPlan | None = None) -> LoadedModel:
        """The booster and card of `ref`, verified; with `plan`, checked against the repo.
        A ModelError carries the version's "name:version" as its `ref`."""
        name, version = self.resolve(ref)
        try:
            return self._load(name, version, plan)
        except ModelError as exc:
            raise ModelError(str(exc), ref=f"{name}:{version}") from exc

    def _load(self, name: str, version: int, plan: ServingPlan | None) -> LoadedModel:
        card, text = self._checked(name, version)
        import lightgbm  # here, not at the top: `models list` and alias polls need no LightGBM

        try:
            booster = lightgbm.Booster(model_str=text)
        except lightgbm.basic.LightGBMError as exc:
            raise ModelError(f"{name}:{version}: {MODEL_FILE} does not parse: {exc}") from exc
        if booster.feature_name() != builtins.list(card.feature_refs):
            raise ModelError(
                f"{name}:{version}: {MODEL_FILE} has features {booster.feature_name()}, "
                f"{CARD_FILE} lists {builtins.list(card.feature_refs)}"
            )
        if plan is not None:
            check_against_plan(card, plan)
        return LoadedModel(name=name, version=version, booster=booster, card=card)

    def aliases(self, name: str) -> dict[str, int]:
        return read_aliases(self._model_dir(name)).current

    def alias_history(self, name: str) -> dict[str, tuple[int, ...]]:
        return read_aliases(self._model_dir(name)).history

    def alias_state(self) -> dict[str, dict[str, int]]:
        """model -> alias -> version: cheap (one small file per model), for a server to poll."""
        return {name: self.aliases(name) for name in self.names()}

    # --- writing --------------------------------------------------------------------------

    def register(self, model_text: str, card: ModelCard) -> Registration:
        """Add a version (number allocated here; `card.version` is ignored) and alias it:
        `production` when the model has no production version yet, else `staging`."""
        if not NAME_RE.fullmatch(card.name):
            raise UsageError(f"model name {card.name!r} must match {NAME_RE.pattern}")
        check_parses(model_text, f"a new version of {card.name}")  # before anything is written
        from serving.models.verification import scorer_record  # LightGBM: not for alias polls

        # Which scorer serves it, proven now; ModelError for a kind Carrara does not serve.
        scorer = scorer_record(model_text, f"a new version of {card.name}")
        model_dir = self.root / card.name
        model_dir.mkdir(parents=True, exist_ok=True)
        read_aliases(model_dir)  # refuse early if aliases.json is corrupt
        digest = hashlib.sha256(model_text.encode()).hexdigest()
        tmp = Path(tempfile.mkdtemp(prefix=".tmp-", dir=model_dir))
        tmp.chmod(0o755)  # mkdtemp makes it private; the server may run as another user
        try:
            write_synced(tmp / MODEL_FILE, model_text)
            version = self._allocate(
                model_dir,
                tmp,
                replace(card, model_sha256=digest, checked_sha256=digest, scorer=scorer),
            )
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        with locked(model_dir):
            state = read_aliases(model_dir)
            alias = "staging" if DEFAULT_ALIAS in state.current else DEFAULT_ALIAS
            write_aliases(model_dir, pushed(state, alias, version, "register"))
        return Registration(card.name, version, alias, model_dir / str(version))

    def _allocate(self, model_dir: Path, tmp: Path, card: ModelCard) -> int:
        """Rename `tmp` to the next free version number; a collision means someone else won."""
        for _attempt in range(MAX_ALLOCATION_ATTEMPTS):
            version = max(self.versions(card.name), default=0) + 1
            write_synced(tmp / CARD_FILE, replace(card, version=version).to_json())
            try:
                os.rename(tmp, model_dir / str(version))
            except OSError as exc:
                if exc.errno in (errno.EEXIST, errno.ENOTEMPTY):
                    continue
                raise
            fsync_dir(model_dir)
            return version
        raise ModelError(f"could not allocate a version of {card.name!r} in {model_dir}")

    def promote(
        self,
        name: str,
        version: int,
        alias: str,
        share: float | None = None,
        key: str | None = None,
    ) -> AliasChange:
        """Point `alias` at `version`, which must exist and be intact. A traffic alias takes
        its share of the production alias's requests (a canary: `share` required, sticky by
        the entity key `key`; a shadow: `share` 1 by default)."""
        if alias not in ALIASES:
            raise UsageError(f"alias must be one of {', '.join(ALIASES)}, not {alias!r}")
        if version not in self.versions(name):
            raise NotFoundError(f"model {name!r} has no version {version}")
        card, _ = self._checked(name, version)
        traffic = _traffic(alias, share, key, card)
        model_dir = self._model_dir(name)
        with locked(model_dir):
            state = read_aliases(model_dir)
            before = state.current.get(alias)
            state = pushed(state, alias, version, "promote")
            if traffic is not None and traffic != state.traffic.get(alias):
                state = with_traffic(state, alias, traffic)
            write_aliases(model_dir, state)
        return AliasChange(name, alias, before, version)

    def traffic(self, name: str) -> dict[str, Traffic]:
        """The traffic settings of the model's canary and shadow aliases."""
        return read_aliases(self._model_dir(name)).traffic

    def traffic_state(self) -> dict[str, dict[str, Traffic]]:
        """model -> traffic alias -> settings, polled with `alias_state`."""
        return {name: self.traffic(name) for name in self.names()}

    def rollback(self, name: str, alias: str) -> AliasChange:
        """Point `alias` back at the version it had before its last change."""
        model_dir = self._model_dir(name)
        with locked(model_dir):
            state: AliasState = read_aliases(model_dir)
            history = state.history.get(alias, ())
            if not history:
                raise NotFoundError(f"model {name!r} has no alias {alias!r}")
            if len(history) < 2:
                raise UsageError(
                    f"{name}@{alias} (version {history[-1]}) has no earlier version: "
                    "nothing to roll back to"
                )
            try:
                self._checked(name, history[-2])
            except CarraraError as exc:
                raise ModelError(
                    f"cannot roll {name}@{alias} back to version {history[-2]}: {exc}"
                ) from exc
            write_aliases(model_dir, popped(state, alias))
        return AliasChange(name, alias, history[-1], history[-2])

    # --- helpers --------------------------------------------------------------------------

    def _model_dir(self, name: str) -> Path:
        model_dir = self.root / name
        if not NAME_RE.fullmatch(name) or not model_dir.is_dir():
            known = ", ".join(self.names()) or "none"
            raise NotFoundError(f"no model {name!r} (models: {known})")
        return model_dir

    def _checked(self, name: str, version: int) -> tuple[ModelCard, str]:
        """`_verified`, and the text known to parse: checked in a child process unless the
        card records that registration checked this very text (model_text.py)."""
        card, text = self._verified(name, version)
        if card.checked_sha256 != card.model_sha256:  # _verified: model_sha256 is the text's
            check_parses(text, f"{name}:{version}")
        return card, text

    def _verified(self, name: str, version: int) -> tuple[ModelCard, str]:
        """The card and model text of a version, refusing any mismatch between them."""
        version_dir = self._model_dir(name) / str(version)
        card = read_card(version_dir / CARD_FILE)
        if (card.name, card.version) != (name, version):
            raise ModelError(
                f"{version_dir / CARD_FILE} describes {card.name}:{card.version}, "
                f"not {name}:{version}"
            )
        try:
            text = (version_dir / MODEL_FILE).read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise ModelError(f"{version_dir / MODEL_FILE} is unreadable: {exc}") from exc
        if hashlib.sha256(text.encode()).hexdigest() != card.model_sha256:
            raise ModelError(
                f"{version_dir / MODEL_FILE} does not match the checksum in {CARD_FILE} "
                "(corrupt or edited)"
            )
        return card, text


def check_against_plan(card: ModelCard, plan: ServingPlan) -> None:
    """Refuse a model whose features, their types or its inputs changed in the feature repo."""
    label = f"model {card.name}:{card.version}"
    try:
        entities, requests, types = model_inputs(plan, card.feature_service, card.feature_refs)
    except CarraraError as exc:
        raise ModelError(f"{label}: {exc}") from exc
    for ref in card.feature_refs:
        if types[ref] != card.feature_types[ref]:
            raise ModelError(
                f"{label}: feature {ref!r} is now {types[ref]}, "
                f"the model was trained on {card.feature_types[ref]}"
            )
    if (set(entities), set(requests)) != (set(card.entities), set(card.request_fields)):
        raise ModelError(
            f"{label}: the inputs of feature service {card.feature_service!r} changed "
            f"(entities {[c.name for c in entities]}, request fields "
            f"{[c.name for c in requests]}); retrain the model"
        )


def _traffic(alias: str, share: float | None, key: str | None, card: ModelCard) -> Traffic | None:
    """The traffic settings a promotion asks for, checked (UsageError naming the flag)."""
    if alias not in TRAFFIC_ALIASES:
        if share is not None or key is not None:
            raise UsageError(f"--share and --sticky-key are for {' and '.join(TRAFFIC_ALIASES)}")
        return None
    if share is None and alias == "canary":
        raise UsageError("a canary needs --share, the part of the traffic it answers (0-1)")
    share = 1.0 if share is None else share
    if not 0 <= share <= 1:
        raise UsageError(f"--share must be from 0 to 1, not {share:g}")
    if key is not None and key not in {c.name for c in card.entities}:
        known = ", ".join(c.name for c in card.entities) or "none"
        raise UsageError(f"--sticky-key {key!r} is no entity key of {card.name} (keys: {known})")
    if key is not None and alias == "shadow":
        raise UsageError("--sticky-key is for a canary: a shadow scores without answering")
    return Traffic(share, key)
