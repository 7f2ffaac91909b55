"""`python -m serving.cli`: the `carrara` command."""

import sys

from serving.cli.command import main

sys.exit(main())
