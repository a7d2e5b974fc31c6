"""Entry point: ``python -m bench [--quick] [--relay-cmd CMD] ...`` (see ``--help``)."""

import sys

from bench.cli import main

sys.exit(main())
