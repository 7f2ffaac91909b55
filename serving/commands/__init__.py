"""One module per `carrara` command (or command group): `add(subparsers)` and a lazy `run`.

Each module imports only argparse-level code at the top; the work is imported inside `run`.
"""

from types import ModuleType

from serving.commands import apply, sample_data

COMMANDS: tuple[ModuleType, ...] = (sample_data, apply)
