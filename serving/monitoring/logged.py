"""Reading a prediction log back (parquet_log.py's layout) for `evaluate` and `monitor`.

Files are read one by one and stacked, because versions of a model log different feature
columns: a reader of the whole folder at once takes the first file's columns for all. The
model comes from the `model=` folder; hour folders wholly before `since` are not opened.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime, timedelta
from pathlib import Path

import pandas as pd  # type: ignore[import-untyped]
import pyarrow.parquet as pq

from serving.errors import UsageError
from serving.monitoring.parquet_log import hour_folders

FIXED_COLUMNS = (
    "request_id",
    "row",
    "time",
    "version",
    "alias",
    "role",
    "prediction",
    "missing_features",
    "degraded",
    "latency_ms",
)


def read_log(
    root: Path,
    model: str,
    since: datetime | None = None,
    columns: Callable[[str], bool] = lambda _name: True,  # which of the files' columns
) -> pd.DataFrame:
    """The logged rows of `model` under `root` (from `since` on), oldest first."""
    if not root.is_dir():
        raise UsageError(f"--log {root}: no such folder")
    frames = []
    for folder, hour_start in sorted(hour_folders(root), key=lambda item: item[1]):
        if folder.parent.parent.name != f"model={model}":
            continue
        if since is not None and hour_start + timedelta(hours=1) <= since:
            continue
        for path in sorted(folder.glob("part-*.parquet")):
            frames.append(_read_file(path, columns))
    if not frames:
        raise UsageError(
            f"--log {root} holds no logged predictions of model {model!r}"
            + (f" since {since:%Y-%m-%d %H:%M} UTC" if since else "")
            + f" (expected {root}/model={model}/date=.../hour=.../part-*.parquet)"
        )
    rows = pd.concat(frames, ignore_index=True)
    rows["model"] = model
    if since is not None:
        rows = rows[rows["time"] >= pd.Timestamp(since)]
    return rows.sort_values(["time", "request_id", "row"], kind="stable").reset_index(drop=True)


def _read_file(path: Path, columns: Callable[[str], bool]) -> pd.DataFrame:
    try:
        names = pq.read_schema(path).names
        wanted = [n for n in names if n in FIXED_COLUMNS or columns(n)]
        frame: pd.DataFrame = pq.read_table(path, columns=wanted).to_pandas()
    except (OSError, ValueError) as exc:  # pyarrow's errors derive from these
        raise UsageError(f"cannot read the logged file {path}: {exc}") from exc
    return frame
