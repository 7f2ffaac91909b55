"""The drift report of `carrara monitor`: served values of a logged window against the
training distributions in each version's card, or against a baseline window of the log
(`baseline_until`: the rows logged before it; the served window is the rows from it on).

Per model version and feature: training and served shares per bin (the training bins: deciles
of a numeric feature, levels of a categorical one), PSI (WARN_PSI warn, ALERT_PSI alert) and
the missing rates in training and serving (missing covers absent, stale and degraded reads:
the log does not tell them apart). `html` writes one self-contained page with a picture
per feature (inline SVG drawn here: no plotting library, nothing fetched, viewable offline);
`summary` is the one-screen text for the terminal, the features in order of PSI.

A baseline from the log compares like with like when features move with the clock: served at
one moment, `hour_of_day` or a day's running count is far from a training window of days
(they alert against training with nothing shifted), but not from an hour served before.
"""

from __future__ import annotations

import html as html_text
import itertools
from collections.abc import Sequence
from dataclasses import dataclass, replace
from datetime import datetime
from pathlib import Path

import numpy as np
import pandas as pd  # type: ignore[import-untyped]

from serving.errors import CarraraError, UsageError
from serving.models.card import FeatureDistribution, ModelCard
from serving.models.registry import ModelRegistry
from serving.monitoring.drift import (
    ALERT_PSI,
    WARN_PSI,
    level,
    psi,
    served_shares,
    training_distributions,
)
from serving.monitoring.logged import read_log

SUMMARY_LINES = 15  # features listed in the terminal; the page has them all
CHART_WIDTH = 560
CHART_HEIGHT = 200
COLOURS = {"training": "#8c8c8c", "ok": "#3b7dd8", "warn": "#e0a000", "alert": "#d03b3b"}


@dataclass(frozen=True)
class FeatureDrift:
    feature: str
    bins: tuple[str, ...]  # a label per bin
    training: tuple[float, ...]
    served: tuple[float, ...]
    psi: float | None  # None: no served value present
    training_missing: float
    served_missing: float

    @property
    def level(self) -> str:
        return "n/a" if self.psi is None else level(self.psi)


@dataclass(frozen=True)
class VersionDrift:
    model: str
    version: str
    rows: int
    start: datetime
    end: datetime
    features: tuple[FeatureDrift, ...]  # in PSI order, highest first
    note: str = ""  # why a version has no features measured
    reference: str = "training"  # or "baseline": the log's rows before `baseline_until`


def version_drift(
    model: str, card: ModelCard, logged: pd.DataFrame, reference: str = "training"
) -> VersionDrift:
    """Drift of one version's logged rows (`feature.<ref>` columns) against the card's
    training distributions (or a baseline put in their place)."""
    start, end = logged["time"].min().to_pydatetime(), logged["time"].max().to_pydatetime()
    base = VersionDrift(model, str(card.version), len(logged), start, end, (), "", reference)
    if card.training_distributions is None:
        return replace(base, note="its card has no training distributions")
    features = []
    for ref in card.feature_refs:
        distribution = card.training_distributions.get(ref)
        column = f"feature.{ref}"
        if distribution is None or column not in logged.columns:
            continue
        features.append(_feature(ref, distribution, card, logged[column].to_numpy(np.float64)))
    features.sort(key=lambda f: -1.0 if f.psi is None else f.psi, reverse=True)
    return replace(base, features=tuple(features))


def _feature(
    ref: str, distribution: FeatureDistribution, card: ModelCard, values: np.ndarray
) -> FeatureDrift:
    shares = served_shares(distribution, values)
    value = psi(distribution.proportions, shares.proportions) if shares.present else None
    return FeatureDrift(
        feature=ref,
        bins=_bin_labels(distribution, card.categorical_levels.get(ref)),
        training=distribution.proportions,
        served=tuple(float(s) for s in shares.proportions),
        psi=value,
        training_missing=distribution.missing,
        served_missing=shares.missing_rate,
    )


def _bin_labels(distribution: FeatureDistribution, levels: Sequence[str] | None) -> tuple[str, ...]:
    if distribution.kind == "categorical":
        return tuple(levels or (str(i) for i in range(len(distribution.proportions))))
    edges = [f"{e:.3g}" for e in distribution.edges]
    if not edges:
        return ("all",)
    inner = [f"{a}..{b}" for a, b in itertools.pairwise(edges)]
    return (f"<{edges[0]}", *inner, f">={edges[-1]}")


def summary(reports: Sequence[VersionDrift], page: str) -> str:
    """One screen: per version its window, then its features by PSI, flagged ones first."""
    lines = []
    for r in reports:
        flagged = [f for f in r.features if f.level in ("warn", "alert")]
        lines.append(
            f"monitor {r.model}:{r.version}: {r.rows:,} logged rows, {r.start:%Y-%m-%d %H:%M} .. "
            f"{r.end:%Y-%m-%d %H:%M} UTC; {len(flagged)} of {len(r.features)} features drifted "
            f"against {r.reference} (PSI >= {WARN_PSI} warn, >= {ALERT_PSI} alert)"
            + (f"; {r.note}" if r.note else "")
        )
        if r.features:
            head = f"  {'feature':<42} {'PSI':>7}  {'level':<5}"
            lines.append(f"{head}  missing: {r.reference:>8}  served")
        for f in r.features[:SUMMARY_LINES]:
            psi_text = "-" if f.psi is None else f"{f.psi:.3f}"
            lines.append(
                f"  {f.feature:<42} {psi_text:>7}  {f.level:<5}  {f.training_missing:>18.1%}"
                f"  {f.served_missing:>6.1%}"
            )
        if len(r.features) > SUMMARY_LINES:
            lines.append(f"  ... {len(r.features) - SUMMARY_LINES} more with lower PSI")
    lines.append(f"report: {page}")
    return "\n".join(lines)


def html(reports: Sequence[VersionDrift]) -> str:
    """The whole report as one self-contained HTML page."""
    parts = [
        "<!DOCTYPE html><html><head><meta charset='utf-8'><title>Carrara drift report</title>",
        "<style>body{font-family:sans-serif;margin:2em;color:#222}table{border-collapse:"
        "collapse}td,th{padding:2px 10px;text-align:right}td:first-child,th:first-child{"
        "text-align:left}.alert{color:#d03b3b;font-weight:bold}.warn{color:#b07d00}"
        ".feature{display:inline-block;margin:0 1.5em 1.5em 0;vertical-align:top}</style>",
        "</head><body>",
    ]
    for r in reports:
        parts.append(_version_html(r))
    parts.append("</body></html>")
    return "\n".join(parts)


def _version_html(r: VersionDrift) -> str:
    e = html_text.escape
    head = (
        f"<h1>{e(r.model)}:{e(r.version)}</h1><p>{r.rows:,} logged rows, "
        f"{r.start:%Y-%m-%d %H:%M} .. {r.end:%Y-%m-%d %H:%M} UTC, against {e(r.reference)}. "
        f"PSI &ge; {WARN_PSI}: warn, "
        f"&ge; {ALERT_PSI}: alert. Missing covers absent, stale and degraded reads."
        + (f" {e(r.note)}." if r.note else "")
        + "</p>"
    )
    rows = "".join(
        f"<tr class='{f.level}'><td>{e(f.feature)}</td><td>"
        f"{'-' if f.psi is None else f'{f.psi:.3f}'}</td><td>{f.level}</td>"
        f"<td>{f.training_missing:.1%}</td><td>{f.served_missing:.1%}</td></tr>"
        for f in r.features
    )
    table = (
        f"<table><tr><th>feature</th><th>PSI</th><th>level</th><th>missing ({e(r.reference)})</th>"
        f"<th>missing (served)</th></tr>{rows}</table>"
    )
    charts = "".join(
        f"<div class='feature'><h3 class='{f.level}'>{e(f.feature)}</h3>"
        f"{chart(f, r.reference)}</div>"
        for f in r.features
    )
    return head + table + f"<h2>{e(r.reference.capitalize())} vs served, per bin</h2>" + charts


def chart(f: FeatureDrift, reference: str = "training") -> str:
    """Paired bars per bin (the reference grey, served coloured by the PSI level), as SVG."""
    e = html_text.escape
    left, bottom, top = 40, 46, 20
    plot_w, plot_h = CHART_WIDTH - left - 10, CHART_HEIGHT - bottom - top
    bins = max(len(f.bins), 1)
    peak = max([*f.training, *f.served, 1e-9])
    slot = plot_w / bins
    colour = COLOURS.get(f.level, COLOURS["ok"])
    shapes = [
        f"<svg xmlns='http://www.w3.org/2000/svg' width='{CHART_WIDTH}' height='{CHART_HEIGHT}'"
        f" role='img' aria-label='{e(f.feature)}'>",
        f"<line x1='{left}' y1='{top + plot_h}' x2='{left + plot_w}' y2='{top + plot_h}' "
        "stroke='#444'/>",
        f"<text x='{left - 4}' y='{top + 4}' font-size='10' text-anchor='end'>{peak:.0%}</text>",
    ]
    for i, label in enumerate(f.bins):
        x = left + i * slot
        for j, (share, fill) in enumerate(
            ((f.training[i], COLOURS["training"]), (_at(f.served, i), colour))
        ):
            height = plot_h * share / peak
            shapes.append(
                f"<rect x='{x + slot * (0.1 + 0.4 * j):.1f}' y='{top + plot_h - height:.1f}' "
                f"width='{slot * 0.38:.1f}' height='{height:.1f}' fill='{fill}'>"
                f"<title>{e(label)}: {e(reference) if j == 0 else 'served'} {share:.1%}</title>"
                "</rect>"
            )
        shapes.append(
            f"<text x='{x + slot / 2:.1f}' y='{top + plot_h + 12 + 10 * (i % 2)}' font-size='9' "
            f"text-anchor='middle'>{e(label[:14])}</text>"
        )
    psi_text = "no served value" if f.psi is None else f"PSI {f.psi:.3f} ({f.level})"
    shapes.append(
        f"<text x='{left}' y='{CHART_HEIGHT - 6}' font-size='11'>"
        f"<tspan fill='{COLOURS['training']}'>&#9632; {e(reference)}</tspan> "
        f"<tspan fill='{colour}'>&#9632; served</tspan> {psi_text}</text></svg>"
    )
    return "".join(shapes)


def _at(values: Sequence[float], i: int) -> float:
    return values[i] if i < len(values) else 0.0


def log_drift(
    log_root: Path,
    model: str,
    registry: ModelRegistry,
    since: datetime | None = None,
    baseline_until: datetime | None = None,
) -> list[VersionDrift]:
    """Drift of every version of `model` in the log (from `since` on), oldest version first:
    against training, or with `baseline_until`, rows from then on against the rows before."""
    logged = read_log(log_root, model, since, columns=lambda name: name.startswith("feature."))
    primary = logged[logged["role"] == "primary"]
    reports = []
    for version, rows in primary.groupby("version", sort=False):
        try:
            card = registry.card(f"{model}:{version}")
        except CarraraError as exc:
            raise UsageError(
                f"the log names {model}:{version}, whose card is unreadable: {exc}"
            ) from None
        if baseline_until is None:
            reports.append(version_drift(model, card, rows))
        else:
            card, served = _against_baseline(card, rows, baseline_until)
            reports.append(version_drift(model, card, served, "baseline"))
    return sorted(reports, key=lambda r: int(r.version))


def _against_baseline(
    card: ModelCard, rows: pd.DataFrame, until: datetime
) -> tuple[ModelCard, pd.DataFrame]:
    """The card with the distributions of the rows logged before `until` in place of its
    training ones, and the rows from `until` on."""
    before = rows[rows["time"] < pd.Timestamp(until)]
    after = rows[rows["time"] >= pd.Timestamp(until)]
    name = f"{card.name}:{card.version}"
    if before.empty or after.empty:
        raise UsageError(
            f"--baseline-until {until:%Y-%m-%d %H:%M:%S} UTC: {name} has "
            f"{len(before):,} logged rows before it and {len(after):,} from it on; "
            "both are needed"
        )
    columns = [f"feature.{ref}" for ref in card.feature_refs]
    matrix = before.reindex(columns=columns).to_numpy(np.float64)
    baseline = training_distributions(matrix, card.feature_refs, card.categorical_levels)
    return replace(card, training_distributions=baseline), after
