"""`carrara score --engine ray`: the local scorer in Ray actors, one part of the input each.

Concern: the same output file as `score_file` (serving/batch/score.py), row for row, when the
input is a Parquet file or a folder of them (hive partitions included) larger than a machine.

- The driver checks every input file's schema first (the model's columns, as score_input.py
  checks them; then every file against the first, so that one output file can hold them all):
  a partition that disagrees is a DataError naming the file and the column, before any work.
- The input is cut into parts of whole row groups (Parquet's unit of reading), in file
  order; one actor per CPU of the cluster builds the local engine's scorer once (model,
  feature tables) and scores its parts through `score_chunks`, each part to a file of its own
  in a hidden folder beside the output (the cluster's nodes must see that folder, as they
  see the input: a shared filesystem).
- The driver streams the parts, in input order, into the output as they come in (each as
  soon as every earlier one is in), through `replacing` (never half-written), and removes
  the folder, also on failure.
- A part re-run after a lost worker rewrites its own file (written aside, then renamed).
"""

from __future__ import annotations

import contextlib
import shutil
import tempfile
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from serving.batch.ray_engine.session import connect
from serving.batch.ray_engine.tracking import PartDone, StageTimes, follow
from serving.batch.score import (
    CHUNK_ROWS,
    ONLINE_CHUNK_ROWS,
    ScoreReport,
    ScoreRequest,
    build_scorer,
    output_schema,
    score_chunks,
)
from serving.batch.score_input import InputSpec, open_input, to_chunk
from serving.errors import DataError, UsageError
from serving.files import replacing
from serving.models.registry import ModelRegistry
from serving.progress import Progress
from serving.repo.compile import ensure_plan

PART_ROWS = 262_144  # rows a part holds at least (whole row groups): a few seconds of work
ACTOR_RESTARTS = 2  # an actor whose worker died is restarted and its part scored again


@dataclass(frozen=True)
class Part:
    index: int
    path: str
    row_groups: tuple[int, ...]
    first_row: int  # of its file

    @property
    def name(self) -> str:
        return f"{self.path} row groups {self.row_groups[0]}..{self.row_groups[-1]}"


@dataclass(frozen=True)
class PartScored(PartDone):
    missing: int = 0  # rows with a missing feature


@dataclass
class RayScorer:
    address: str | None
    part_rows: int = PART_ROWS
    stages: StageTimes = field(default_factory=StageTimes)

    def score(self, request: ScoreRequest) -> ScoreReport:
        started = time.perf_counter()
        with self.stages.stage("connect"):
            cluster = connect(self.address)
        ray, address = cluster.ray, cluster.address
        request = _absolute(request)
        with self.stages.stage("check inputs"):
            plan = ensure_plan(request.repo)
            loaded = ModelRegistry(request.registry).load(request.model, plan)
            files = input_files(request.input)
            specs = [_spec(request, loaded.card, Path(f)) for f in files]
            schema = _common_schema(specs, request.input)
            if not request.output.parent.is_dir():
                raise UsageError(f"output folder {request.output.parent} does not exist")
            parts = split_parts(files, self.part_rows)
        pinned = replace(request, model=f"{loaded.name}:{loaded.version}", threads=1)
        actors = min(len(parts), cluster.cpus)
        total = sum(pq.ParquetFile(f).metadata.num_rows for f in files)
        parts_dir = Path(
            tempfile.mkdtemp(prefix=f".{request.output.name}.parts-", dir=request.output.parent)
        )
        try:
            scorer = ray.remote(PartScorer).options(
                num_cpus=1, max_restarts=ACTOR_RESTARTS, max_task_retries=ACTOR_RESTARTS
            )
            with (
                self.stages.stage("score + merge"),
                replacing(request.output) as tmp,
                pq.ParquetWriter(tmp, schema) as writer,
            ):
                pool = [scorer.remote(pinned, schema) for _ in range(actors)]
                refs = [
                    pool[p.index % actors].score_part.remote(
                        p, specs[files.index(p.path)], parts_dir
                    )
                    for p in parts
                ]
                merge = OrderedMerge(parts_dir, writer)
                label = f"score {loaded.name}:{loaded.version}"
                done = follow(ray, refs, label, total, address, self.stages, merge.part_done)
            rows = merge.rows
        finally:
            shutil.rmtree(parts_dir, ignore_errors=True)
        return ScoreReport(
            model=loaded.name,
            version=str(loaded.version),
            rows=rows,
            rows_with_missing=sum(d.missing for d in done if isinstance(d, PartScored)),
            elapsed_s=time.perf_counter() - started,
            output=request.output,
        )


class PartScorer:
    """A Ray actor: the local engine's scorer, built once, scoring parts into part files."""

    def __init__(self, request: ScoreRequest, schema: pa.Schema) -> None:
        self.request = request
        self.schema = schema
        self.resources = contextlib.ExitStack()
        plan = ensure_plan(request.repo)
        self.loaded = ModelRegistry(request.registry).load(request.model, plan)
        self.score_chunk = build_scorer(request, plan, self.loaded, self.resources)
        online = ONLINE_CHUNK_ROWS if request.online else CHUNK_ROWS
        self.chunk_rows = request.chunk_rows or online

    def score_part(self, part: Part, spec: InputSpec, parts_dir: Path) -> PartScored:
        started = time.perf_counter()
        parquet = open_input(spec)

        def chunks() -> Any:
            first = part.first_row
            for batch in parquet.iter_batches(self.chunk_rows, row_groups=list(part.row_groups)):
                yield to_chunk(batch, spec, first)
                first += batch.num_rows

        target = parts_dir / f"part-{part.index:06d}.parquet"
        with replacing(target) as tmp, pq.ParquetWriter(tmp, self.schema) as writer:
            bar = Progress(part.name, None)  # quiet: a worker's stderr is no terminal
            version = str(self.loaded.version)
            rows, missing = score_chunks(
                chunks(), self.score_chunk, version, self.schema, writer, bar
            )
        return PartScored(part.name, rows, time.perf_counter() - started, missing=missing)


def input_files(path: Path) -> list[str]:
    """A Parquet file, or every Parquet file under a folder (hive partitions too), in path
    order."""
    if path.is_file():
        return [str(path)]
    if not path.is_dir():
        raise DataError(f"input {path} does not exist")
    files = sorted(str(p) for p in path.rglob("*.parquet") if p.is_file())
    if not files:
        raise DataError(f"input folder {path} holds no .parquet file")
    return files


def split_parts(files: list[str], part_rows: int) -> list[Part]:
    """Consecutive whole row groups of each file, at least `part_rows` rows a part."""
    parts: list[Part] = []
    for path in files:
        meta = pq.ParquetFile(path).metadata
        groups: list[int] = []
        first = rows = 0
        for group in range(meta.num_row_groups):
            groups.append(group)
            rows += meta.row_group(group).num_rows
            if rows >= part_rows or group == meta.num_row_groups - 1:
                parts.append(Part(len(parts), path, tuple(groups), first))
                first += rows
                groups, rows = [], 0
    return parts


def _spec(request: ScoreRequest, card: Any, path: Path) -> InputSpec:
    return InputSpec(
        path=path,
        entities=card.entities,
        request_fields=card.request_fields,
        timestamp=None if request.online else request.timestamp_column,
    )


def _common_schema(specs: list[InputSpec], input_path: Path) -> pa.Schema:
    """The output schema; every file checked, and against the first file's columns."""
    first = open_input(specs[0]).schema_arrow.remove_metadata()
    for spec in specs[1:]:
        schema = open_input(spec).schema_arrow.remove_metadata()
        where = f"input partition {spec.path}"
        for name in first.names:
            if name not in schema.names:
                raise DataError(f"{where}: no column {name!r} (the first, {specs[0].path}, has)")
            if schema.field(name).type != first.field(name).type:
                raise DataError(
                    f"{where}: column {name!r} is {schema.field(name).type}, but "
                    f"{first.field(name).type} in {specs[0].path}"
                )
        extra = [n for n in schema.names if n not in first.names]
        if extra:
            raise DataError(f"{where}: column {extra[0]!r} is not in {specs[0].path}")
    return output_schema(first, input_path)


class OrderedMerge:
    """Part files streamed into the output in input order as soon as every earlier part is
    in: the driver merges while the workers score the rest."""

    def __init__(self, parts_dir: Path, writer: Any) -> None:
        self.parts_dir = parts_dir
        self.writer = writer
        self.finished: set[int] = set()
        self.next = 0
        self.rows = 0

    def part_done(self, index: int, _part: PartDone) -> None:
        self.finished.add(index)
        while self.next in self.finished:
            path = self.parts_dir / f"part-{self.next:06d}.parquet"
            for batch in pq.ParquetFile(path).iter_batches():
                self.writer.write_batch(batch)
                self.rows += batch.num_rows
            path.unlink()
            self.next += 1


def _absolute(request: ScoreRequest) -> ScoreRequest:
    """Paths as the workers must see them: their working folders are not the driver's."""
    return replace(
        request,
        repo=request.repo.resolve(),
        registry=request.registry.resolve(),
        input=request.input.resolve(),
        output=request.output.resolve(),
    )
