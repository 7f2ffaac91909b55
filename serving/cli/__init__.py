"""The `carrara` command line: one module per command (or command group).

Each command module has `add(subparsers)` and a `run(args)` that imports its machinery when it
runs, so `carrara --help` stays fast. The top layer: it may import every other subpackage, and
nothing imports it.
"""

from serving.cli.command import main

__all__ = ["main"]
