"""`carrara score` on bad input: one clear message, a non-zero exit, no output left behind."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest

from serving.cli import main

pytestmark = [pytest.mark.integration, pytest.mark.slow]

Mutation = Callable[[pa.Table], pa.Table]


@pytest.fixture(scope="module")
def good_rows(applied_repo: Path) -> pa.Table:
    trips = pq.read_table(applied_repo / "data" / "trips.parquet")
    return trips.slice(0, 300).drop_columns(["duration_s"])


def with_null(table: pa.Table, name: str, row: int) -> pa.Table:
    values = table[name].to_pylist()
    values[row] = None
    return table.set_column(
        table.schema.get_field_index(name), name, pa.array(values, table[name].type)
    )


def retyped(table: pa.Table, name: str, values: pa.Array) -> pa.Table:
    return table.set_column(table.schema.get_field_index(name), name, values)


BAD_INPUTS: list[tuple[str, Mutation, list[str]]] = [
    (
        "missing entity column",
        lambda t: t.drop_columns(["pickup_zone_id"]),
        ["no column 'pickup_zone_id'"],
    ),
    (
        "missing timestamp column",
        lambda t: t.drop_columns(["event_timestamp"]),
        ["no column 'event_timestamp'"],
    ),
    (
        "missing request field",
        lambda t: t.drop_columns(["dropoff_lon", "request_ts_s"]),
        ["no column 'dropoff_lon', 'request_ts_s'"],
    ),
    (
        "entity key of the wrong type",
        lambda t: retyped(t, "driver_id", pc.cast(t["driver_id"], pa.string())),
        ["column 'driver_id' is string", "entity key 'driver_id' is Int64"],
    ),
    (
        "entity key as floats",
        lambda t: retyped(t, "driver_id", pc.cast(t["driver_id"], pa.float64())),
        ["column 'driver_id' is double"],
    ),
    (
        "request field of the wrong type",
        lambda t: retyped(t, "pickup_lat", pc.cast(t["pickup_lat"], pa.string())),
        ["column 'pickup_lat' is string", "request field 'pickup_lat' is Float64"],
    ),
    (
        "timestamp of the wrong type",
        lambda t: retyped(t, "event_timestamp", t["request_ts_s"]),
        ["column 'event_timestamp' is int64, expected a timestamp"],
    ),
    (
        "null entity key in a later chunk",
        lambda t: with_null(t, "dropoff_zone_id", 217),
        ["entity key 'dropoff_zone_id' is null at row 217"],
    ),
    (
        "null timestamp",
        lambda t: with_null(with_null(t, "event_timestamp", 150), "event_timestamp", 160),
        ["event timestamp 'event_timestamp' is null at row 150"],
    ),
    (
        "request field not finite",
        lambda t: retyped(
            t,
            "pickup_lon",
            pa.array(
                [float("inf") if i == 42 else v for i, v in enumerate(t["pickup_lon"].to_pylist())]
            ),
        ),
        ["request field 'pickup_lon' is not a finite number at row 42"],
    ),
    (
        "an output column already present",
        lambda t: t.append_column("prediction", pa.array([0.0] * t.num_rows)),
        ["already has a column 'prediction'"],
    ),
]


def score(
    tmp_path: Path, applied_repo: Path, registry: Path, model: str = "eta"
) -> tuple[int, Path]:
    output = tmp_path / "out.parquet"
    code = main(
        [
            "score",
            *("--model", model, "--input", str(tmp_path / "in.parquet"), "--output", str(output)),
            *("--repo", str(applied_repo), "--registry", str(registry), "--chunk-rows", "64"),
        ]
    )
    return code, output


@pytest.mark.parametrize(
    ("mutate", "messages"), [c[1:] for c in BAD_INPUTS], ids=[c[0] for c in BAD_INPUTS]
)
def test_bad_input_is_refused_by_name_leaving_no_output(
    mutate: Mutation,
    messages: list[str],
    good_rows: pa.Table,
    applied_repo: Path,
    trained_registry: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    pq.write_table(mutate(good_rows), tmp_path / "in.parquet", row_group_size=100)
    code, _output = score(tmp_path, applied_repo, trained_registry)
    err = capsys.readouterr().err
    assert code == 1
    assert err.startswith("carrara score: "), err
    assert err.count("\n") == 1, err
    for message in messages:
        assert message in err
    assert [p.name for p in tmp_path.iterdir()] == ["in.parquet"]


def test_unknown_model_is_refused_before_any_output(
    good_rows: pa.Table,
    applied_repo: Path,
    trained_registry: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    pq.write_table(good_rows, tmp_path / "in.parquet")
    for model, message in (
        ("nope", "no model 'nope'"),
        ("eta:7", "has no version 7"),
        ("eta@staging", "has no alias 'staging'"),
    ):
        code, _output = score(tmp_path, applied_repo, trained_registry, model)
        assert code == 1
        assert message in capsys.readouterr().err
    assert [p.name for p in tmp_path.iterdir()] == ["in.parquet"]


def test_a_good_file_after_bad_ones_scores(
    good_rows: pa.Table, applied_repo: Path, trained_registry: Path, tmp_path: Path
) -> None:
    """The control: the fixture's rows themselves are fine, so the failures above are real."""
    pq.write_table(good_rows, tmp_path / "in.parquet")
    code, output = score(tmp_path, applied_repo, trained_registry)
    assert code == 0
    assert pq.read_metadata(output).num_rows == good_rows.num_rows
