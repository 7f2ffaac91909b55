"""A model version's metadata (`model.json`): what it was trained on and what a caller sends.

The card is the contract between training and serving: the ordered feature refs are Feast's
full names (`projection__feature`) in the model's input order, which is also LightGBM's
`feature_name()` order; a categorical feature's value is its index in the stored levels (an
unknown level or a missing value is NaN); entities and request fields are what a caller must
send, with Feast's type strings, derived from the serving plan so the server can validate a
request without Feast.

Invariants: a card round-trips through JSON unchanged; parsing never trusts the file (any
missing or mistyped field is a ModelError naming the file); no Feast import here.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np

from serving.errors import ModelError, PlanError
from serving.repo.plan import DUMMY_ENTITY_ID, Column, ServingPlan

CARD_FORMAT = 1
CATEGORICAL_DTYPES = frozenset({"String"})
NUMERIC_DTYPES = frozenset({"Int32", "Int64", "Float32", "Float64", "Bool"})


@dataclass(frozen=True)
class ErrorMetrics:
    mae: float
    rmse: float


@dataclass(frozen=True)
class HoldoutMetrics:
    """The model and each naive baseline on the same holdout rows; `comparisons`: the same
    learner trained on another feature service (by name) over the same rows and split ({} in
    cards written before comparisons were recorded)."""

    rows: int
    model: ErrorMetrics
    baselines: dict[str, ErrorMetrics]
    comparisons: dict[str, ErrorMetrics] = field(default_factory=dict)

    def improvement_pct(self, baseline: str) -> ErrorMetrics:
        """How much lower the model's error is than the baseline's, in percent."""
        return self.improvement_over(self.baselines[baseline])

    def comparison_improvement_pct(self, service: str) -> ErrorMetrics:
        """How much lower the model's error is than the learner's on `service`, in percent."""
        return self.improvement_over(self.comparisons[service])

    def improvement_over(self, base: ErrorMetrics) -> ErrorMetrics:
        return ErrorMetrics(
            mae=100.0 * (base.mae - self.model.mae) / base.mae if base.mae else 0.0,
            rmse=100.0 * (base.rmse - self.model.rmse) / base.rmse if base.rmse else 0.0,
        )


@dataclass(frozen=True)
class TrainingWindow:
    """Label event times used: train and validation before `holdout_start`, holdout after."""

    start: datetime
    end: datetime
    holdout_start: datetime


@dataclass(frozen=True)
class RowCounts:
    train: int
    validation: int
    holdout: int


@dataclass(frozen=True)
class ScorerRecord:
    """Which scorer serves a version and why (serving/models/verification.py).

    Written at registration; a load trusts it only while `trees_sha256`, `method` and
    `library_versions` still describe what it would verify, else it verifies again.
    """

    scorer: str  # "lignum" (proven equal to Booster.predict) or "lightgbm" (LightGBM itself)
    reason: str  # why, in words: what was verified, or what lignum got wrong or refused
    model_sha256: str  # of model.txt, as the card's
    trees_sha256: str  # of the trees Booster.predict uses (model.txt cut at best_iteration)
    library_versions: dict[str, str]  # lightgbm and pylignum, as verified
    method: str  # the verification's own version: another method verifies again
    inf_as_largest: bool = False  # lignum is given +inf as the largest finite double
    splits: int = 0  # splits verified (every split a row can reach)
    inputs: int = 0  # input rows the verification scored both ways
    seconds: float = 0.0


@dataclass(frozen=True)
class FeatureDistribution:
    """A feature's training distribution, the reference that served values are compared with
    for drift (serving/monitoring/drift.py).

    Numeric: bins between the inner quantile `edges` (ascending; bin i holds
    edges[i-1] <= x < edges[i], the outer two bins open), so `proportions` has len(edges) + 1
    entries. Categorical: one bin per level (its code is its index), no edges. Proportions are
    shares of the present training values; `missing` is the share of rows where the feature
    was missing (NaN).
    """

    kind: str  # "numeric" or "categorical"
    edges: tuple[float, ...]
    proportions: tuple[float, ...]
    missing: float


@dataclass(frozen=True)
class ModelCard:
    name: str
    version: int
    feature_service: str
    label: str
    feature_refs: tuple[str, ...]  # model input order = booster.feature_name()
    feature_types: dict[str, str]  # ref -> Feast type string
    categorical_levels: dict[str, tuple[str, ...]]  # ref -> ordered levels (code = index)
    entities: tuple[Column, ...]  # join keys a caller sends
    request_fields: tuple[Column, ...]  # request-time inputs a caller sends
    window: TrainingWindow | None  # None: registered from elsewhere, window unknown
    rows: RowCounts | None  # likewise
    metrics: HoldoutMetrics | None  # None: no holdout was scored
    data_fingerprint: str  # SHA-256 of the training frame (labels + features)
    model_sha256: str  # SHA-256 of model.txt
    registry_fingerprint: str  # of the Feast registry the features were resolved against
    params: dict[str, Any]
    best_iteration: int
    library_versions: dict[str, str]
    git_revision: str | None
    created_at: datetime
    format: int = CARD_FORMAT
    # SHA-256 of the model text LightGBM parsed in a child process at registration
    # (model_text.py); "" for a card written before that check existed
    checked_sha256: str = ""
    scorer: ScorerRecord | None = None  # None: a card written before scorers were recorded
    # ref -> its distribution in the training rows; None: a card written before they were
    # recorded (drift is then not measured for it)
    training_distributions: dict[str, FeatureDistribution] | None = None

    def category_codes(self, ref: str, values: Iterable[object]) -> np.ndarray:
        """Float codes for a categorical feature: level index, NaN for unknown or missing."""
        return category_codes(values, self.categorical_levels[ref])

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=1, default=_json_default)


def category_codes(values: Iterable[object], levels: Sequence[str]) -> np.ndarray:
    """Each value's index in `levels` as a float; NaN (LightGBM's missing) when not a level."""
    index = {level: float(i) for i, level in enumerate(levels)}
    return np.fromiter(
        (index.get(v, math.nan) if isinstance(v, str) else math.nan for v in values),
        dtype=np.float64,
    )


def _json_default(value: object) -> str:
    if isinstance(value, datetime):
        return value.isoformat()
    raise TypeError(f"cannot write {type(value).__name__} to model.json")


def model_inputs(
    plan: ServingPlan, service: str, refs: Sequence[str]
) -> tuple[tuple[Column, ...], tuple[Column, ...], dict[str, str]]:
    """(entities, request fields, ref -> type) a caller must send for `refs` of `service`.

    Each feature view projection contributes its view's join keys renamed by its join-key map;
    each on-demand view its request fields (and the join keys of views it reads). Raises
    ModelError naming the first ref that no longer resolves.
    """
    projections = {p.name: p for p in plan.feature_service(service).projections}
    entities: dict[str, str] = {}
    requests: dict[str, str] = {}
    types: dict[str, str] = {}
    for ref in refs:
        proj_name, _, feature = ref.partition("__")
        projection = projections.get(proj_name)
        if projection is None or feature not in projection.features:
            raise ModelError(
                f"feature {ref!r} no longer resolves in feature service {service!r} of "
                f"project {plan.project!r}"
            )
        if projection.view in plan.feature_views:
            view = plan.feature_views[projection.view]
            types[ref] = view.feature(feature).dtype
            for key in view.join_keys:
                if key.name != DUMMY_ENTITY_ID:  # entityless: Feast's constant key, not sent
                    _add(entities, projection.join_key_map.get(key.name, key.name), key.dtype)
        else:
            odfv = plan.on_demand_views[projection.view]
            types[ref] = next(c.dtype for c in odfv.outputs if c.name == feature)
            for column in odfv.request_fields:
                _add(requests, column.name, column.dtype)
            for source in odfv.sources:
                for key in plan.feature_view(source.view).join_keys:
                    if key.name != DUMMY_ENTITY_ID:
                        _add(entities, source.join_key_map.get(key.name, key.name), key.dtype)
    return (
        tuple(Column(k, t) for k, t in entities.items()),
        tuple(Column(k, t) for k, t in requests.items()),
        types,
    )


def _add(columns: dict[str, str], name: str, dtype: str) -> None:
    if columns.setdefault(name, dtype) != dtype:
        raise PlanError(f"input {name!r} is declared as both {columns[name]} and {dtype}")


def read_card(path: Path) -> ModelCard:
    """Parse and validate `model.json`; any problem is a ModelError naming the file."""
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        raise ModelError(f"{path} is missing") from None
    except (OSError, ValueError) as exc:
        raise ModelError(f"{path} is not readable JSON: {exc}") from exc
    try:
        card = _card_from_dict(data)
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        raise ModelError(f"{path} is malformed: {type(exc).__name__} {exc}") from exc
    if card.format != CARD_FORMAT:
        raise ModelError(f"{path} has format {card.format}, this Carrara reads {CARD_FORMAT}")
    return card


def _card_from_dict(d: dict[str, Any]) -> ModelCard:
    refs = tuple(_str(r) for r in d["feature_refs"])
    types = {_str(k): _str(v) for k, v in d["feature_types"].items()}
    levels = {_str(k): tuple(_str(x) for x in v) for k, v in d["categorical_levels"].items()}
    if set(types) != set(refs) or not set(levels) <= set(refs) or len(set(refs)) != len(refs):
        raise ValueError("feature_refs, feature_types and categorical_levels disagree")
    m = d["metrics"]
    return ModelCard(
        name=_str(d["name"]),
        version=int(d["version"]),
        feature_service=_str(d["feature_service"]),
        label=_str(d["label"]),
        feature_refs=refs,
        feature_types=types,
        categorical_levels=levels,
        entities=_columns(d["entities"]),
        request_fields=_columns(d["request_fields"]),
        window=None
        if d["window"] is None
        else TrainingWindow(**{k: datetime.fromisoformat(v) for k, v in d["window"].items()}),
        rows=None if d["rows"] is None else RowCounts(**{k: int(v) for k, v in d["rows"].items()}),
        metrics=None
        if m is None
        else HoldoutMetrics(
            rows=int(m["rows"]),
            model=_metrics(m["model"]),
            baselines={_str(k): _metrics(v) for k, v in m["baselines"].items()},
            comparisons={_str(k): _metrics(v) for k, v in m.get("comparisons", {}).items()},
        ),
        data_fingerprint=_str(d["data_fingerprint"]),
        model_sha256=_str(d["model_sha256"]),
        registry_fingerprint=_str(d["registry_fingerprint"]),
        params=dict(d["params"]),
        best_iteration=int(d["best_iteration"]),
        library_versions={_str(k): _str(v) for k, v in d["library_versions"].items()},
        git_revision=None if d["git_revision"] is None else _str(d["git_revision"]),
        created_at=datetime.fromisoformat(d["created_at"]),
        format=int(d["format"]),
        checked_sha256=_str(d.get("checked_sha256", "")),
        scorer=None if d.get("scorer") is None else _scorer_record(d["scorer"]),
        training_distributions=_distributions(d.get("training_distributions"), refs),
    )


def _distributions(
    d: Mapping[str, Any] | None, refs: tuple[str, ...]
) -> dict[str, FeatureDistribution] | None:
    if d is None:
        return None
    out = {}
    for ref, item in d.items():
        if ref not in refs:
            raise ValueError(f"training_distributions names {ref!r}, which is no feature_ref")
        kind = _str(item["kind"])
        edges = tuple(float(e) for e in item["edges"])
        proportions = tuple(float(p) for p in item["proportions"])
        if kind not in ("numeric", "categorical") or (
            kind == "numeric" and proportions and len(proportions) != len(edges) + 1
        ):
            raise ValueError(f"training_distributions of {ref!r} are inconsistent")
        out[_str(ref)] = FeatureDistribution(kind, edges, proportions, float(item["missing"]))
    return out


def _scorer_record(d: Mapping[str, Any]) -> ScorerRecord:
    return ScorerRecord(
        scorer=_str(d["scorer"]),
        reason=_str(d["reason"]),
        model_sha256=_str(d["model_sha256"]),
        trees_sha256=_str(d["trees_sha256"]),
        library_versions={_str(k): _str(v) for k, v in d["library_versions"].items()},
        method=_str(d["method"]),
        inf_as_largest=d.get("inf_as_largest", False) is True,
        splits=int(d.get("splits", 0)),
        inputs=int(d.get("inputs", 0)),
        seconds=float(d.get("seconds", 0.0)),
    )


def _str(value: object) -> str:
    if not isinstance(value, str):
        raise TypeError(f"expected a string, got {value!r}")
    return value


def _metrics(d: Mapping[str, Any]) -> ErrorMetrics:
    return ErrorMetrics(mae=float(d["mae"]), rmse=float(d["rmse"]))


def _columns(items: list[dict[str, Any]]) -> tuple[Column, ...]:
    return tuple(Column(name=_str(c["name"]), dtype=_str(c["dtype"])) for c in items)


def comparison_lines(card: ModelCard, descriptions: Mapping[str, str] | None = None) -> list[str]:
    """One line per compared feature service: the model's holdout RMSE beside the same
    learner's on that service, e.g. `pricing_v2 RMSE 0.05818 vs pricing_v1 (batch features
    only) 0.1306: 55.4% lower`."""
    m = card.metrics
    if m is None:
        return []
    lines = []
    for service, other in m.comparisons.items():
        what = (descriptions or {}).get(service)
        name = f"{service} ({what})" if what else service
        gain = m.comparison_improvement_pct(service).rmse
        verdict = f"{abs(gain):.1f}% {'lower' if gain >= 0 else 'higher'}"
        lines.append(
            f"{card.feature_service} RMSE {m.model.rmse:.4g} vs {name} {other.rmse:.4g}: {verdict}"
        )
    return lines
