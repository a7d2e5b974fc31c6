"""Allows ``python -m hybrid``."""

import sys

from hybrid.cli import main

sys.exit(main())
