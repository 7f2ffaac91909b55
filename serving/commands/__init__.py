"""One module per `carrara` command (or command group): `add(subparsers)` and a lazy `run`.

Each module imports only argparse-level code at the top; the work is imported inside `run`.
"""

from types import ModuleType

from serving.commands import (
    apply,
    check_consistency,
    demo,
    materialize,
    models,
    predict,
    sample_data,
    score,
    serve,
    train,
)

COMMANDS: tuple[ModuleType, ...] = (
    sample_data,
    apply,
    materialize,
    train,
    models,
    serve,
    predict,
    score,
    check_consistency,
    demo,
)
