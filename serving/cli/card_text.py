"""A model card as the command line shows it: window, rows, holdout table, scorer."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from serving.models.card import ModelCard


def window_text(card: ModelCard) -> str:
    w = card.window
    if w is None:
        return "unknown (registered from elsewhere)"
    return (
        f"{w.start:%Y-%m-%d %H:%M} .. {w.end:%Y-%m-%d %H:%M} UTC, "
        f"holdout from {w.holdout_start:%Y-%m-%d %H:%M}"
    )


def rows_text(card: ModelCard) -> str:
    r = card.rows
    if r is None:
        return "unknown"
    return f"train {r.train:,}, validation {r.validation:,}, holdout {r.holdout:,}"


def total_rows(card: ModelCard) -> int | None:
    r = card.rows
    return None if r is None else r.train + r.validation + r.holdout


def metrics_table(card: ModelCard) -> list[str]:
    """Holdout MAE and RMSE of the model, each baseline and each compared service (the same
    learner on another feature service), with the model's improvement."""
    m = card.metrics
    if m is None:
        return ["holdout: none scored (register with --holdout FILE --label COLUMN)"]
    rows = [(name, base, m.improvement_pct(name)) for name, base in m.baselines.items()]
    rows += [
        (f"{service} (same learner)", other, m.comparison_improvement_pct(service))
        for service, other in m.comparisons.items()
    ]
    width = max([22, *(len(name) + 2 for name, _, _ in rows)])
    title = f"holdout ({m.rows:,} rows)"
    lines = [f"{title:<{width}}{'MAE':>10} {'RMSE':>10}   model better by (MAE, RMSE)"]
    lines.append(f"{'model':<{width}}{m.model.mae:>10.4g} {m.model.rmse:>10.4g}")
    for name, base, gain in rows:
        lines.append(
            f"{name:<{width}}{base.mae:>10.4g} {base.rmse:>10.4g}   "
            f"{gain.mae:+.1f}%, {gain.rmse:+.1f}%"
        )
    return lines


def scorer_text(card: ModelCard) -> str:
    """Which scorer serves the version, and why."""
    record = card.scorer
    if record is None:
        return "not recorded (verified when a server loads it)"
    detail = f"{record.splits:,} splits, {record.inputs:,} inputs" if record.splits else ""
    versions = ", ".join(f"{k} {v}" for k, v in sorted(record.library_versions.items()))
    return f"{record.scorer}: {record.reason}" + (f" ({detail}; {versions})" if detail else "")
