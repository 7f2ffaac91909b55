"""Materialize's checks before anything is written: what Feast's materialize would refuse.

Concern: finding, in every view a run was asked for and before the first write, each reason
it could not be written as `feast materialize` writes it, so that a run writes and records
every view or none. A refusal is one line naming the view, the feature or setting (and the
entity, for a row) and Feast's docs term for the construct.

- Definitions (no row read): constructs the plan records as unsupported for materialize, types
  Carrara does not write, join key types, vector fields (Feast takes one per view, of a list
  type).
- Rows (only the latest row per entity, which is what Feast converts, and only the columns
  whose conversion can fail on data): Map, Json, Struct and the other types converted value
  by value (python_values.py), Int32 values and keys (their range), lists of integers (a null
  element), vector fields (their width), Int64 keys of entity_key_serialization_version 1 (4
  bytes). A view with none of these reads no more rows here.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from serving.batch.parquet_source import Latest
from serving.errors import DataError, PlanError
from serving.repo.plan import MATERIALIZE, Column, FeatureViewPlan, ServingPlan
from serving.store import codec, encoding

CHECK_ROWS = 16_384
# Types Feast declares but its materialize cannot write from Parquet, and why.
_NOT_WRITTEN = {
    "ZonedTimestamp": "Feast 0.67's materialize cannot write it from Parquet either: its "
    "converter receives numpy datetimes and refuses them",
    "ScalarMap": "Feast 0.67's materialize cannot write it from Parquet either: the map "
    "column does not survive its pandas round trip",
}
_ROW = re.compile(r"\brow (\d+)\b")


def check_definition(plan: ServingPlan, view: FeatureViewPlan) -> None:
    """PlanError naming what stops `view` from being materialized, read from the plan alone."""
    plan.require_supported([view.name], MATERIALIZE)
    try:
        codec.check_key_version(plan.entity_key_serialization_version)
    except codec.CodecError as exc:
        raise PlanError(f"feature_store.yaml: {exc}") from None
    where = f"feature view {view.name!r}"
    for key in view.join_keys:
        if key.dtype not in codec.DTYPE_TAGS:
            raise PlanError(f"{where}, join key {key.name!r}: {key.dtype} cannot be an entity key")
    for feature in view.features:
        if encoding.column_encoder(feature.dtype) is None:
            reason = _NOT_WRITTEN.get(feature.dtype, "not a type Feast 0.67 materializes")
            raise PlanError(
                f"{where}, feature {feature.name!r}: {feature.dtype} is not supported by "
                f"Carrara's materialize ({reason})"
            )
    vectors = [f for f in view.features if f.vector_index]
    if len(vectors) > 1:
        names = ", ".join(repr(f.name) for f in vectors)
        raise PlanError(
            f"{where}: vector_index=True on {names}; Feast takes one vector field per view "
            "and its materialize refuses more"
        )
    for feature in vectors:
        if not feature.dtype.startswith("Array("):
            raise PlanError(
                f"{where}, feature {feature.name!r}: vector_index=True on a {feature.dtype}; "
                "Feast's materialize refuses a vector field that is not a list"
            )


def columns_to_check(view: FeatureViewPlan, key_version: int) -> tuple[list[Column], bool]:
    """The features whose conversion can fail on data, and whether the keys' can."""
    risky = []
    for feature in view.features:
        rows = encoding.column_encoder(feature.dtype) == "rows"
        if rows or feature.vector_index or feature.dtype in _RANGED:
            risky.append(feature)
    keys = any(
        k.dtype == "Int32" or (k.dtype == "Int64" and key_version < 2) for k in view.join_keys
    )
    return risky, keys


_RANGED = frozenset(["Int32", "Array(Int32)", "Array(Int64)"])


def check_rows(view: FeatureViewPlan, latest: Latest, project: str, key_version: int) -> None:
    """DataError naming the view, feature and entity of the first row Feast would refuse."""
    risky, keys = columns_to_check(view, key_version)
    if not risky and not keys:
        return
    widths: dict[str, int] = {f.name: f.vector_length for f in risky if f.vector_index}
    for chunk in latest.chunks(CHECK_ROWS, [f.name for f in risky]):
        if keys:
            names = [k.name for k in view.join_keys]
            try:
                encoding.encode_entity_keys(
                    names, [k.dtype for k in view.join_keys], [chunk[n] for n in names], project,
                    key_version,
                )  # fmt: skip
            except codec.CodecError as exc:
                raise _refusal(view, "join keys", exc, chunk) from None
        for feature in risky:
            if feature.vector_index:
                _check_width(view, feature, chunk, widths)
            try:
                encoding.encode_values(feature.dtype, chunk[feature.name])
            except codec.CodecError as exc:
                raise _refusal(view, f"feature {feature.name!r}", exc, chunk) from None


def _check_width(
    view: FeatureViewPlan, feature: Column, chunk: pa.Table, widths: dict[str, int]
) -> None:
    """Feast's `_validate_vector_field_lengths`: every non-null vector as wide as declared,
    or as the first non-null one when no vector_length is declared."""
    column = chunk[feature.name]
    lengths = pc.list_value_length(column).to_numpy(zero_copy_only=False)
    valid = ~pc.is_null(pc.list_value_length(column)).to_numpy(zero_copy_only=False)
    if not valid.any():
        return
    declared = bool(feature.vector_length)
    expected = widths.get(feature.name) or int(lengths[valid][0])
    widths[feature.name] = expected
    wrong = valid & (lengths != expected)
    if wrong.any():
        row = int(wrong.argmax())
        source = "its vector_length" if declared else "the first vector's length"
        raise DataError(
            f"feature view {view.name!r}, feature {feature.name!r}: a vector of length "
            f"{int(lengths[row])} ({_entity(view, chunk, row)}) does not match {source} "
            f"{expected}; Feast's materialize refuses it too"
        )


def _refusal(view: FeatureViewPlan, what: str, exc: Exception, chunk: pa.Table) -> DataError:
    found = _ROW.search(str(exc))
    entity = f" ({_entity(view, chunk, int(found.group(1)))})" if found else ""
    return DataError(
        f"feature view {view.name!r}, {what}{entity}: {exc}; Feast's materialize refuses it too"
    )


def _entity(view: FeatureViewPlan, chunk: pa.Table, row: int) -> str:
    if view.entityless:
        return "the entityless view's row"
    if row >= chunk.num_rows:
        return f"row {row}"
    values: Sequence[Any] = [chunk[k.name][row].as_py() for k in view.join_keys]
    return "entity " + ", ".join(
        f"{k.name}={v!r}" for k, v in zip(view.join_keys, values, strict=True)
    )
