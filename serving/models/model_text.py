"""A LightGBM text model parsed first where a malformed one cannot take this process down.

LightGBM aborts the whole process (`[LightGBM] [Fatal] Model format error ... terminate
called`) on some malformed model texts instead of raising. So a text is parsed by LightGBM in a
child process before any long-lived process (the server, a registration) parses it: a crash
there becomes a ModelError naming the version and LightGBM's own reason. The child is a bare
interpreter (`-I -S`) that loads LightGBM's shared library with ctypes and calls its parser:
no Python package is imported, so a check costs tens of milliseconds, not the second an
`import lightgbm` takes. It runs at registration, and the card records the sha256 of the text
it passed (`checked_sha256`); a load parses in-process without a child only a text whose
sha256 is that record.
"""

from __future__ import annotations

import functools
import importlib.util
import subprocess
import sys
from pathlib import Path

from serving.errors import ModelError

CHECK_TIMEOUT_S = 120.0
_CHILD = """
import ctypes, sys
lib = ctypes.cdll.LoadLibrary(sys.argv[1])
lib.LGBM_GetLastError.restype = ctypes.c_char_p
handle, iterations = ctypes.c_void_p(), ctypes.c_int()
text = ctypes.c_char_p(sys.stdin.buffer.read())
if lib.LGBM_BoosterLoadModelFromString(text, ctypes.byref(iterations), ctypes.byref(handle)):
    sys.stderr.write(lib.LGBM_GetLastError().decode(errors="replace"))
    sys.exit(1)
lib.LGBM_BoosterFree(handle)
"""


def check_parses(text: str, label: str) -> None:
    """Raise ModelError, naming `label`, when LightGBM cannot parse `text` (in a child)."""
    try:
        result = subprocess.run(
            [sys.executable, "-I", "-S", "-c", _CHILD, _library()],
            input=text.encode(),
            capture_output=True,
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
        reason = _reason(result.stderr.decode(errors="replace"))
        raise ModelError(f"{label}: model.txt is malformed: {reason}")


@functools.cache
def _library() -> str:
    """LightGBM's shared library, found without importing the package."""
    spec = importlib.util.find_spec("lightgbm")
    for folder in (spec.submodule_search_locations or []) if spec else []:
        for name in ("lib_lightgbm.so", "lib_lightgbm.dylib", "lib_lightgbm.dll"):
            path = Path(folder) / "lib" / name
            if path.exists():
                return str(path)
    raise ModelError("LightGBM's shared library (lib_lightgbm) was not found")


def _reason(stderr: str) -> str:
    """LightGBM's first error message, else the last line the child wrote."""
    lines = [line.strip() for line in stderr.replace("[LightGBM]", "\n").splitlines()]
    lines = [line for line in lines if line]
    errors = [line for line in lines if "[Fatal]" in line or "error" in line.lower()]
    found = errors[0] if errors else (lines[-1] if lines else "the parser crashed")
    return found if len(found) <= 300 else found[:300] + "..."
