"""Progress for long work: rows, rows/s and time left on stderr, via tqdm.

Quiet when stderr is not a terminal unless asked, so logs and CI output stay readable.
"""

from __future__ import annotations

import sys
from types import TracebackType

from tqdm import tqdm


class Progress:
    """A row counter; `total=None` when the end is unknown (no time-left estimate then)."""

    def __init__(self, label: str, total: int | None, unit: str = "rows") -> None:
        self._bar = tqdm(
            total=total,
            desc=label,
            unit=f" {unit}",
            unit_scale=True,
            file=sys.stderr,
            disable=not sys.stderr.isatty(),
            dynamic_ncols=True,
            mininterval=0.5,
        )

    def advance(self, rows: int, detail: str = "") -> None:
        if detail:
            self._bar.set_postfix_str(detail, refresh=False)
        self._bar.update(rows)

    def __enter__(self) -> Progress:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._bar.close()
