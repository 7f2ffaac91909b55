"""A LightGBM text model parsed first where a malformed one cannot take this process down.

LightGBM aborts the whole process (`[LightGBM] [Fatal] Model format error ... terminate
called`) on some malformed model texts instead of raising. So a text is parsed by LightGBM in a
child process before any long-lived process (the server, a registration) parses it: a crash
there becomes a ModelError naming the version and LightGBM's own reason. The check costs a
child's start (about a second), so it runs at registration and the card records the sha256 of
the text it passed (`checked_sha256`); a load parses in-process only a text whose sha256 is
that record, and checks any other text in a child first.
"""

from __future__ import annotations

import subprocess
import sys

from serving.errors import ModelError

CHECK_TIMEOUT_S = 120.0
_CHILD = "import sys, lightgbm; lightgbm.Booster(model_str=sys.stdin.read())"


def check_parses(text: str, label: str) -> None:
    """Raise ModelError, naming `label`, when LightGBM cannot parse `text` (in a child)."""
    try:
        result = subprocess.run(
            [sys.executable, "-c", _CHILD],
            input=text,
            capture_output=True,
            text=True,
            timeout=CHECK_TIMEOUT_S,
            check=False,
        )
    except subprocess.TimeoutExpired:
        raise ModelError(
            f"{label}: LightGBM did not parse model.txt in {CHECK_TIMEOUT_S:g} s"
        ) from None
    except OSError as exc:
        raise ModelError(f"{label}: cannot start a process to check model.txt: {exc}") from exc
    if result.returncode != 0:
        raise ModelError(f"{label}: model.txt is malformed: {_reason(result.stderr)}")


def _reason(stderr: str) -> str:
    """LightGBM's first fatal message, else the last line the child wrote."""
    lines = [line.strip() for line in stderr.splitlines() if line.strip()]
    fatal = [line for line in lines if "[Fatal]" in line]
    found = fatal[0] if fatal else (lines[-1] if lines else "the parser crashed")
    return found if len(found) <= 300 else found[:300] + "..."
