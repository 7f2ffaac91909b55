"""`carrara models register`: a LightGBM model trained elsewhere, checked, carded, served."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import lightgbm as lgb
import numpy as np
import pytest

from serving.cli import main
from serving.models.registry import ModelRegistry

pytestmark = [pytest.mark.integration, pytest.mark.slow]


@pytest.fixture
def registry_root(trained_registry: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(trained_registry, tmp_path / "models"))


def register(repo: Path, root: Path, name: str, model: Path, *extra: str) -> int:
    return main(
        [
            *("models", "register", name, "--model-file", str(model)),
            *("--feature-service", "eta_v1", "--repo", str(repo), "--registry", str(root)),
            *extra,
        ]
    )


def test_a_model_from_elsewhere_is_registered_and_scores_as_its_booster(
    applied_repo: Path, registry_root: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    registry = ModelRegistry(registry_root)
    trained = registry.card("eta:1")
    model = registry_root / "eta" / "1" / "model.txt"
    assert register(applied_repo, registry_root, "eta_nb", model) == 2
    assert "need their levels" in capsys.readouterr().err
    levels = tmp_path / "levels.json"
    levels.write_text(json.dumps({k: list(v) for k, v in trained.categorical_levels.items()}))
    holdout = ("--holdout", str(applied_repo / "data" / "trips.parquet"), "--label", "duration_s")
    code = register(applied_repo, registry_root, "eta_nb", model, "--levels", str(levels), *holdout)
    out = capsys.readouterr().out
    assert code == 0, out
    assert "registered eta_nb:1 as eta_nb@production" in out
    card = registry.card("eta_nb:1")
    assert card.feature_refs == trained.feature_refs
    assert (card.entities, card.request_fields) == (trained.entities, trained.request_fields)
    assert card.metrics is not None
    assert card.metrics.rows > 0
    assert card.window is None
    assert card.rows is None
    rows = np.random.default_rng(0).normal(size=(50, len(card.feature_refs)))
    np.testing.assert_array_equal(
        registry.load("eta_nb").booster.predict(rows), registry.load("eta:1").booster.predict(rows)
    )


def test_unnamed_features_are_refused_naming_the_first(
    applied_repo: Path, registry_root: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(200, 3)), rng.normal(size=200)
    booster = lgb.train({"verbose": -1}, lgb.Dataset(x, y), num_boost_round=3)
    model = tmp_path / "model.txt"
    model.write_text(booster.model_to_string())
    assert register(applied_repo, registry_root, "nb", model) == 2
    err = capsys.readouterr().err
    assert "model feature 0 is 'Column_0', which is no feature of feature service 'eta_v1'" in err
    assert "driver_stats__avg_rating" in err
    assert "nb" not in ModelRegistry(registry_root).names()


def test_a_malformed_model_file_is_one_line_and_nothing_is_written(
    applied_repo: Path, registry_root: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    text = (registry_root / "eta" / "1" / "model.txt").read_text()
    model = tmp_path / "model.txt"
    model.write_text(text.replace("threshold=", "threshold=1 2 3 4 5 6 7 8 9 10 11 12 ", 1))
    assert register(applied_repo, registry_root, "eta_bad", model) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("carrara models: ")
    assert "malformed" in err
    assert "\n" not in err
    assert "eta_bad" not in ModelRegistry(registry_root).names()
    assert register(applied_repo, registry_root, "eta_bad", tmp_path / "nowhere.txt") == 2
    assert "cannot read the model file" in capsys.readouterr().err
