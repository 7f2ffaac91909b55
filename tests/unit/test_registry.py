"""The model registry: versions, aliases, verification, concurrency, corrupt files; no Feast."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path

import lightgbm as lgb
import numpy as np
import pytest

from serving.cli import main
from serving.errors import InvalidRequestError, ModelError, NotFoundError, UsageError
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
from serving.repo.plan import Column, FeatureServicePlan, FeatureViewPlan, Projection, ServingPlan

ROOT = Path(__file__).resolve().parents[2]
REFS = ("rider_stats__speed", "rider_stats__trips", "rider_stats__kind")
LEVELS = ("bike", "car", "van")


def make_plan(
    features: tuple[Column, ...] = (
        Column("speed", "Float64"),
        Column("trips", "Int64"),
        Column("kind", "String"),
    ),
) -> ServingPlan:
    view = FeatureViewPlan(
        name="rider_stats",
        join_keys=(Column("rider_id", "Int64"),),
        features=features,
        ttl_s=3600,
        source=None,
    )
    service = FeatureServicePlan(
        name="riders_v1",
        projections=(
            Projection(
                view="rider_stats",
                name="rider_stats",
                join_key_map={},
                features=tuple(f.name for f in features),
            ),
        ),
    )
    return ServingPlan(
        project="test",
        registry_fingerprint="f" * 64,
        feature_views={"rider_stats": view},
        on_demand_views={},
        feature_services={"riders_v1": service},
    )


@pytest.fixture(scope="module")
def model_text() -> str:
    rng = np.random.default_rng(0)
    x = np.column_stack([rng.normal(size=500), rng.integers(0, 9, 500), rng.integers(0, 3, 500)])
    y = x[:, 0] * 2 + (x[:, 2] == 1)
    data = lgb.Dataset(x, y, feature_name=list(REFS), categorical_feature=[2])
    params = {"objective": "regression", "verbosity": -1, "seed": 1, "num_threads": 1}
    return str(lgb.train(params, data, num_boost_round=10).model_to_string())


@pytest.fixture
def card() -> ModelCard:
    entities, requests, types = model_inputs(make_plan(), "riders_v1", REFS)
    when = datetime(2026, 11, 1, tzinfo=UTC)
    return ModelCard(
        name="riders",
        version=0,
        feature_service="riders_v1",
        label="minutes",
        feature_refs=REFS,
        feature_types=types,
        categorical_levels={"rider_stats__kind": LEVELS},
        entities=entities,
        request_fields=requests,
        window=TrainingWindow(when, when, when),
        rows=RowCounts(300, 100, 100),
        metrics=HoldoutMetrics(100, ErrorMetrics(1.0, 1.5), {"mean": ErrorMetrics(2.0, 2.5)}),
        data_fingerprint="d" * 64,
        model_sha256="",
        registry_fingerprint="f" * 64,
        params={"seed": 1},
        best_iteration=10,
        library_versions={"lightgbm": lgb.__version__},
        git_revision=None,
        created_at=when,
    )


@pytest.fixture
def registry(tmp_path: Path) -> ModelRegistry:
    return ModelRegistry(tmp_path / "models")


def register(registry: ModelRegistry, text: str, card: ModelCard, times: int = 1) -> list[int]:
    return [registry.register(text, card).version for _ in range(times)]


def test_first_version_becomes_production_and_later_ones_staging(
    registry: ModelRegistry, model_text: str, card: ModelCard
) -> None:
    first = registry.register(model_text, card)
    second = registry.register(model_text, card)
    assert (first.version, first.alias) == (1, "production")
    assert (second.version, second.alias) == (2, "staging")
    assert registry.aliases("riders") == {"production": 1, "staging": 2}
    assert (registry.root / "riders" / "2" / "model.txt").read_text() == model_text


def test_references_resolve_to_name_and_version(
    registry: ModelRegistry, model_text: str, card: ModelCard
) -> None:
    register(registry, model_text, card, times=3)
    assert registry.resolve("riders") == ("riders", 1)
    assert registry.resolve("riders@production") == ("riders", 1)
    assert registry.resolve("riders@staging") == ("riders", 3)
    assert registry.resolve("riders:2") == ("riders", 2)


@pytest.mark.parametrize(
    ("ref", "named"),
    [
        ("bikes", "'bikes'"),
        ("riders@canary", "'canary'"),
        ("riders:7", "version 7"),
    ],
)
def test_unknown_model_alias_or_version_is_not_found_naming_it(
    registry: ModelRegistry, model_text: str, card: ModelCard, ref: str, named: str
) -> None:
    registry.register(model_text, card)
    with pytest.raises(NotFoundError, match=named):
        registry.resolve(ref)
    with pytest.raises(NotFoundError, match=named):
        registry.load(ref)


@pytest.mark.parametrize("ref", ["riders:x", "riders:0", "Riders", "riders@a@b", "../etc", ""])
def test_malformed_reference_is_invalid(registry: ModelRegistry, ref: str) -> None:
    with pytest.raises(InvalidRequestError, match="model reference"):
        registry.resolve(ref)


def test_load_gives_the_trained_booster_and_its_card(
    registry: ModelRegistry, model_text: str, card: ModelCard
) -> None:
    registry.register(model_text, card)
    loaded = registry.load("riders", make_plan())
    assert (loaded.name, loaded.version) == ("riders", 1)
    assert loaded.booster.feature_name() == list(REFS)
    x = np.array([[0.5, 3.0, 1.0], [np.nan, 1.0, np.nan]])
    expected = lgb.Booster(model_str=model_text).predict(x)
    np.testing.assert_array_equal(loaded.booster.predict(x), expected)
    digest = loaded.card.model_sha256
    assert loaded.card.checked_sha256 == digest  # parsed in a child at registration
    assert loaded.card == replace(
        card, version=1, model_sha256=digest, checked_sha256=digest, scorer=loaded.card.scorer
    )
    assert loaded.card.entities == (Column("rider_id", "Int64"),)


def test_card_round_trips_through_json(tmp_path: Path, card: ModelCard) -> None:
    (tmp_path / "model.json").write_text(card.to_json())
    assert read_card(tmp_path / "model.json") == card


def test_card_keeps_comparisons_and_reads_cards_written_without(
    tmp_path: Path, card: ModelCard
) -> None:
    assert card.metrics is not None
    metrics = replace(card.metrics, comparisons={"riders_v0": ErrorMetrics(2.0, 3.0)})
    compared = replace(card, metrics=metrics)
    (tmp_path / "model.json").write_text(compared.to_json())
    assert read_card(tmp_path / "model.json") == compared
    assert metrics.comparison_improvement_pct("riders_v0") == ErrorMetrics(50.0, 50.0)
    old = json.loads(card.to_json())
    del old["metrics"]["comparisons"]  # as written before comparisons were recorded
    (tmp_path / "model.json").write_text(json.dumps(old))
    assert read_card(tmp_path / "model.json") == card


def test_card_text_sets_a_comparison_beside_the_model(card: ModelCard) -> None:
    from serving.cli.card_text import metrics_table
    from serving.models.card import comparison_lines

    assert card.metrics is not None
    metrics = replace(card.metrics, comparisons={"riders_v0": ErrorMetrics(2.0, 3.0)})
    compared = replace(card, metrics=metrics)
    table = metrics_table(compared)
    assert table[-1].split() == ["riders_v0", "(same", "learner)", "2", "3", "+50.0%,", "+50.0%"]
    assert comparison_lines(compared, {"riders_v0": "older features"}) == [
        "riders_v1 RMSE 1.5 vs riders_v0 (older features) 3: 50.0% lower"
    ]
    assert comparison_lines(card) == []  # none recorded: no line


def test_category_codes_are_level_indexes_and_nan_when_unknown(card: ModelCard) -> None:
    codes = card.category_codes("rider_stats__kind", ["van", "bike", "boat", None, "car"])
    np.testing.assert_array_equal(codes, [2.0, 0.0, np.nan, np.nan, 1.0])


def test_promote_and_rollback_walk_the_alias_history(
    registry: ModelRegistry, model_text: str, card: ModelCard
) -> None:
    register(registry, model_text, card, times=3)
    assert registry.promote("riders", 2, "production").before == 1
    registry.promote("riders", 3, "production")
    assert registry.alias_state() == {"riders": {"production": 3, "staging": 3}}
    change = registry.rollback("riders", "production")
    assert (change.before, change.after) == (3, 2)
    assert registry.rollback("riders", "production").after == 1
    assert registry.resolve("riders") == ("riders", 1)
    with pytest.raises(UsageError, match="nothing to roll back to"):
        registry.rollback("riders", "production")
    history = registry.alias_history("riders")
    assert history["production"] == (1,)
    assert history["staging"] == (2, 3)  # untouched by production's moves


def test_promote_refuses_unknown_version_and_alias(
    registry: ModelRegistry, model_text: str, card: ModelCard
) -> None:
    registry.register(model_text, card)
    with pytest.raises(NotFoundError, match="no version 5"):
        registry.promote("riders", 5, "production")
    with pytest.raises(UsageError, match="'prod'"):
        registry.promote("riders", 1, "prod")
    with pytest.raises(NotFoundError, match="'bikes'"):
        registry.promote("bikes", 1, "production")


def corrupt_json(version_dir: Path) -> None:
    (version_dir / "model.json").write_text('{"name": "riders", "version": ')


def drop_field(version_dir: Path) -> None:
    data = json.loads((version_dir / "model.json").read_text())
    del data["feature_refs"]
    (version_dir / "model.json").write_text(json.dumps(data))


def truncate_model(version_dir: Path) -> None:
    text = (version_dir / "model.txt").read_text()
    (version_dir / "model.txt").write_text(text[: len(text) // 2])


def edit_model(version_dir: Path) -> None:
    text = (version_dir / "model.txt").read_text()
    (version_dir / "model.txt").write_text(text.replace("leaf_value=", "leaf_value=1", 1))


def delete_model(version_dir: Path) -> None:
    (version_dir / "model.txt").unlink()


@pytest.mark.parametrize(
    ("damage", "message"),
    [
        (corrupt_json, "model.json is not readable JSON"),
        (drop_field, "model.json is malformed: KeyError 'feature_refs'"),
        (truncate_model, "model.txt does not match the checksum"),
        (edit_model, "model.txt does not match the checksum"),
        (delete_model, "model.txt is unreadable"),
    ],
)
def test_corrupt_version_is_listed_as_broken_and_never_loads(
    registry: ModelRegistry, model_text: str, card: ModelCard, damage, message: str
) -> None:
    register(registry, model_text, card, times=2)
    damage(registry.root / "riders" / "2")
    [summary] = registry.list()
    assert [v.version for v in summary.versions] == [1, 2]
    assert summary.versions[0].card is not None
    assert summary.versions[1].card is None
    assert message in (summary.versions[1].problem or "")
    with pytest.raises(ModelError, match=message):
        registry.load("riders@staging")
    with pytest.raises(ModelError, match=message):
        registry.promote("riders", 2, "production")
    assert registry.load("riders").version == 1  # the intact version still loads


def test_card_features_differing_from_the_booster_are_refused(
    registry: ModelRegistry, model_text: str, card: ModelCard
) -> None:
    swapped = (REFS[1], REFS[0], REFS[2])
    registry.register(model_text, replace(card, feature_refs=swapped))
    with pytest.raises(ModelError, match=r"model\.txt has features"):
        registry.load("riders")


def test_model_whose_feature_left_the_repo_is_refused_naming_it(
    registry: ModelRegistry, model_text: str, card: ModelCard
) -> None:
    registry.register(model_text, card)
    plan = make_plan(features=(Column("speed", "Float64"), Column("kind", "String")))
    with pytest.raises(ModelError, match="feature 'rider_stats__trips' no longer resolves"):
        registry.load("riders", plan)


def test_model_whose_feature_changed_type_is_refused(
    registry: ModelRegistry, model_text: str, card: ModelCard
) -> None:
    registry.register(model_text, card)
    plan = make_plan(
        features=(Column("speed", "Float64"), Column("trips", "String"), Column("kind", "String"))
    )
    with pytest.raises(ModelError, match="'rider_stats__trips' is now String"):
        registry.load("riders", plan)


def test_model_whose_feature_service_is_gone_is_refused(
    registry: ModelRegistry, model_text: str, card: ModelCard
) -> None:
    registry.register(model_text, card)
    plan = replace(make_plan(), feature_services={})
    with pytest.raises(ModelError, match="no feature service 'riders_v1'"):
        registry.load("riders", plan)


def test_corrupt_aliases_file_is_reported_not_crashed_on(
    registry: ModelRegistry, model_text: str, card: ModelCard
) -> None:
    registry.register(model_text, card)
    (registry.root / "riders" / "aliases.json").write_text("{")
    [summary] = registry.list()
    assert "aliases.json is not readable JSON" in (summary.problem or "")
    assert summary.versions[0].card is not None
    with pytest.raises(ModelError, match=r"aliases\.json"):
        registry.resolve("riders")
    assert registry.load("riders:1").version == 1


def test_rollback_refuses_a_previous_version_that_broke(
    registry: ModelRegistry, model_text: str, card: ModelCard
) -> None:
    register(registry, model_text, card, times=2)
    registry.promote("riders", 2, "production")
    truncate_model(registry.root / "riders" / "1")
    with pytest.raises(ModelError, match="cannot roll riders@production back to version 1"):
        registry.rollback("riders", "production")
    assert registry.resolve("riders") == ("riders", 2)


def test_concurrent_registrations_get_distinct_whole_versions(
    registry: ModelRegistry, model_text: str, card: ModelCard
) -> None:
    """Eight writer threads; a reader listing all the while never sees a partial version."""
    versions: list[int] = []
    partial: list[str] = []
    done = threading.Event()

    def write() -> None:
        versions.extend(register(registry, model_text, card, times=3))

    def read() -> None:
        while not done.is_set():
            for model in registry.list():
                partial.extend(str(v.problem) for v in model.versions if v.card is None)

    reader = threading.Thread(target=read)
    reader.start()
    writers = [threading.Thread(target=write) for _ in range(8)]
    for thread in writers:
        thread.start()
    for thread in writers:
        thread.join()
    done.set()
    reader.join()
    assert sorted(versions) == list(range(1, 25))
    assert partial == []
    assert registry.versions("riders") == list(range(1, 25))
    history = registry.alias_history("riders")
    assert len(history["production"]) == 1  # exactly one registration found no production
    assert sorted(history["production"] + history["staging"]) == list(range(1, 25))


CHILD = """
import sys
from pathlib import Path
from serving.models.card import read_card
from serving.models.registry import ModelRegistry
registry = ModelRegistry(Path(sys.argv[1]))
text = Path(sys.argv[2]).read_text()
card = read_card(Path(sys.argv[3]))
print(" ".join(str(registry.register(text, card).version) for _ in range(5)))
"""


def test_two_processes_registering_at_once_get_distinct_versions(
    tmp_path: Path, model_text: str, card: ModelCard
) -> None:
    (tmp_path / "model.txt").write_text(model_text)
    (tmp_path / "card.json").write_text(card.to_json())
    args = [str(tmp_path / "models"), str(tmp_path / "model.txt"), str(tmp_path / "card.json")]
    children = [
        subprocess.Popen(
            [sys.executable, "-c", CHILD, *args], cwd=ROOT, stdout=subprocess.PIPE, text=True
        )
        for _ in range(2)
    ]
    outputs = [child.communicate(timeout=60)[0] for child in children]
    assert [child.returncode for child in children] == [0, 0]
    versions = sorted(int(v) for out in outputs for v in out.split())
    assert versions == list(range(1, 11))
    registry = ModelRegistry(tmp_path / "models")
    assert all(v.card is not None for v in registry.list()[0].versions)
    assert len(registry.alias_history("riders")["production"]) == 1


def test_models_commands_list_show_promote_rollback(
    registry: ModelRegistry,
    model_text: str,
    card: ModelCard,
    capsys: pytest.CaptureFixture[str],
) -> None:
    register(registry, model_text, card, times=2)
    corrupt_json(registry.root / "riders" / "2")
    root = str(registry.root)
    assert main(["models", "list", "--registry", root]) == 0
    out = capsys.readouterr().out
    assert "   1  production" in out
    assert "   2  BROKEN" in out
    assert main(["models", "show", "riders:2", "--registry", root]) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("carrara models: ")
    assert "model.json is not readable JSON" in err
    assert "\n" not in err
    assert main(["models", "show", "riders", "--registry", root]) == 0
    out = capsys.readouterr().out
    assert "riders:1  (production)" in out
    assert "scorer           lignum: " in out or "scorer           lightgbm: " in out
    assert "mean" in out
    assert "+50.0%" in out
    register(registry, model_text, card)
    assert main(["models", "promote", "riders:3", "--alias", "production", "--registry", root]) == 0
    assert "promoted riders:3 to production (was version 1)" in capsys.readouterr().out
    assert main(["models", "rollback", "riders", "--alias", "production", "--registry", root]) == 0
    assert "version 3 -> 1" in capsys.readouterr().out
    assert main(["models", "promote", "riders", "--alias", "staging", "--registry", root]) == 2
    assert "NAME:VERSION" in capsys.readouterr().err
