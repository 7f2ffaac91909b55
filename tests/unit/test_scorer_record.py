"""Registration verifies the model and keeps the verdict in its card; a load trusts a matching
verdict; a multi-output model is refused at registration; cards without a verdict still load."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path

import lightgbm as lgb
import numpy as np
import pytest

from serving.errors import ModelError
from serving.models import scorer as scorer_module
from serving.models.card import (
    ErrorMetrics,
    HoldoutMetrics,
    ModelCard,
    RowCounts,
    TrainingWindow,
    model_inputs,
    read_card,
)
from serving.models.registry import ModelRegistry
from serving.models.scorer import Scorer, load_scorer
from serving.repo.plan import Column, FeatureServicePlan, FeatureViewPlan, Projection, ServingPlan

REFS = ("zone_stats__demand", "zone_stats__wait_s")


def _plan() -> ServingPlan:
    features = (Column("demand", "Float64"), Column("wait_s", "Float64"))
    view = FeatureViewPlan(
        name="zone_stats",
        join_keys=(Column("zone_id", "Int64"),),
        features=features,
        ttl_s=3600,
        source=None,
    )
    service = FeatureServicePlan(
        name="zones_v1",
        projections=(Projection("zone_stats", "zone_stats", {}, ("demand", "wait_s")),),
    )
    return ServingPlan("test", "f" * 64, {"zone_stats": view}, {}, {"zones_v1": service})


def _card() -> ModelCard:
    entities, requests, types = model_inputs(_plan(), "zones_v1", REFS)
    when = datetime(2026, 11, 1, tzinfo=UTC)
    return ModelCard(
        name="zones",
        version=0,
        feature_service="zones_v1",
        label="surge",
        feature_refs=REFS,
        feature_types=types,
        categorical_levels={},
        entities=entities,
        request_fields=requests,
        window=TrainingWindow(when, when, when),
        rows=RowCounts(300, 100, 100),
        metrics=HoldoutMetrics(100, ErrorMetrics(1.0, 1.5), {"mean": ErrorMetrics(2.0, 2.5)}),
        data_fingerprint="d" * 64,
        model_sha256="",
        registry_fingerprint="f" * 64,
        params={},
        best_iteration=0,
        library_versions={"lightgbm": lgb.__version__},
        git_revision=None,
        created_at=when,
    )


def _text(params: dict[str, object], labels: np.ndarray | None = None) -> str:
    rng = np.random.default_rng(0)
    x = rng.normal(size=(600, 2))
    x[rng.random(600) < 0.4, 0] = np.nan  # threshold=inf splits: lignum takes +inf as MAX
    y = np.isnan(x[:, 0]) * 2 + x[:, 1] if labels is None else labels
    data = lgb.Dataset(x, y, feature_name=list(REFS))
    full = {"objective": "regression", "verbose": -1, "num_threads": 1, **params}
    return str(lgb.train(full, data, num_boost_round=8).model_to_string())


@pytest.fixture
def registry(tmp_path: Path) -> ModelRegistry:
    return ModelRegistry(tmp_path / "models")


def test_registration_records_which_scorer_serves_the_version_and_why(
    registry: ModelRegistry,
) -> None:
    registration = registry.register(_text({}), _card())
    card = registry.card(f"zones:{registration.version}")
    assert card.scorer is not None
    assert card.scorer.scorer == "lignum"
    assert card.scorer.inf_as_largest
    assert "every split" in card.scorer.reason
    assert card.scorer.model_sha256 == card.model_sha256
    assert card.scorer.library_versions["pylignum"]
    stored = json.loads((registration.path / "model.json").read_text())
    assert stored["scorer"]["scorer"] == "lignum"


def test_a_version_lignum_cannot_score_is_recorded_as_lightgbm_with_the_reason(
    registry: ModelRegistry,
) -> None:
    registration = registry.register(_text({"reg_sqrt": True}), _card())
    record = registry.card(f"zones:{registration.version}").scorer
    assert record is not None
    assert record.scorer == "lightgbm"
    assert "regression sqrt" in record.reason


def test_a_multiclass_model_is_refused_at_registration_naming_its_objective(
    registry: ModelRegistry,
) -> None:
    labels = np.arange(600) % 3
    text = _text({"objective": "multiclass", "num_class": 3}, labels.astype(float))
    with pytest.raises(ModelError, match="objective 'multiclass num_class:3'"):
        registry.register(text, _card())
    assert not (registry.root / "zones").exists() or registry.versions("zones") == []


def test_a_loaded_version_is_not_verified_again(
    registry: ModelRegistry, monkeypatch: pytest.MonkeyPatch
) -> None:
    registration = registry.register(_text({}), _card())
    loaded = registry.load(f"zones:{registration.version}")
    monkeypatch.setattr(scorer_module, "verify", _must_not_verify)
    scorer = Scorer(loaded.booster, record=loaded.card.scorer)
    assert scorer.record == loaded.card.scorer
    served = load_scorer(registration.path / "model.txt")  # beside its model.json
    rows = np.array([[np.inf, 0.0], [np.nan, -np.inf], [0.5, 2.0]])
    np.testing.assert_array_equal(served.score(rows), loaded.booster.predict(rows))


def _must_not_verify(*_: object) -> None:
    raise AssertionError("verified again")


def test_a_card_written_before_scorers_were_recorded_loads_and_is_verified_at_load(
    registry: ModelRegistry,
) -> None:
    registration = registry.register(_text({}), _card())
    path = registration.path / "model.json"
    data = json.loads(path.read_text())
    del data["scorer"]
    path.write_text(json.dumps(data))
    loaded = registry.load(f"zones:{registration.version}")
    assert loaded.card.scorer is None
    scorer = Scorer(loaded.booster, record=None)
    assert scorer.record.scorer == "lignum"
    assert read_card(path).scorer is None
