"""The point-in-time retrieval behind `carrara train --engine ray`: Feast's, in Ray tasks.

Concern: the same training set as the local retrieval (serving/repo/historical.py), by
running that very function over contiguous blocks of the label rows, one task each, and
concatenating the answers in block order. A row's features depend on that row alone (its
keys and time), so the blocks' answers together are the whole answer, row for row.

Each task imports Feast (seconds, once per worker process) and reads the repo's sources:
the cluster's nodes must see the repo folder (a shared filesystem).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd  # type: ignore[import-untyped]

from serving.batch.ray_engine.session import connect
from serving.batch.ray_engine.tracking import PartDone, StageTimes, follow, gather
from serving.repo.historical import historical_features
from serving.repo.plan import ServingPlan

BLOCK_ROWS = 50_000  # label rows per task at most; fewer blocks than CPUs never
TASK_RETRIES = 3


@dataclass
class RayRetrieval:
    """`historical_features`' signature, run on the cluster at `address`."""

    address: str | None
    block_rows: int = BLOCK_ROWS
    stages: StageTimes = field(default_factory=StageTimes)

    def __call__(
        self,
        repo: Path,
        plan: ServingPlan,
        service: str,
        inputs: pd.DataFrame,
        progress: Callable[[int], None],
    ) -> pd.DataFrame:
        with self.stages.stage("connect"):
            cluster = connect(self.address)
        ray, address = cluster.ray, cluster.address
        blocks = max(cluster.cpus, -(-len(inputs) // self.block_rows))
        size = max(1, -(-len(inputs) // blocks))
        task = ray.remote(_retrieve_block).options(num_returns=2, max_retries=TASK_RETRIES)
        with self.stages.stage("retrieval"):
            refs = [
                task.remote(repo.resolve(), plan, service, inputs.iloc[first : first + size], first)
                for first in range(0, len(inputs), size)
            ]
            follow(
                ray, [r[0] for r in refs], f"retrieval {service}", len(inputs), address, self.stages
            )
            progress(len(inputs))
            frames = gather(ray, [r[1] for r in refs], f"retrieval {service}", address)
        if not frames:
            return historical_features(repo, plan, service, inputs, progress)
        return pd.concat(frames, ignore_index=True)


def _retrieve_block(
    repo: Path, plan: ServingPlan, service: str, block: pd.DataFrame, first: int
) -> tuple[PartDone, Any]:
    started = time.perf_counter()
    found = historical_features(repo, plan, service, block.reset_index(drop=True), _quiet)
    name = f"label rows {first}..{first + len(block) - 1}"
    return PartDone(name, len(block), time.perf_counter() - started), found


def _quiet(_rows: int) -> None:
    """Progress inside a task: the driver counts finished blocks instead."""
