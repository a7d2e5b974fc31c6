"""The ``hybrid`` command's process entry: ``python -m hybrid`` and the console script."""

import gc
import sys
from typing import NoReturn

from hybrid.cli import main


def run() -> NoReturn:
    """Run the command line, then exit without the collector's teardown passes.

    Everything the commands open is closed by their own context managers before ``main``
    returns; what is left is the interpreter's finalization, whose garbage-collection passes over
    trio, ssl and cryptography objects take 0.2-0.5 s on a loaded machine. Freezing the heap skips
    them, so a phone whose desktop stopped waiting exits well within the 1 s it is allowed.
    """
    code = main()
    gc.freeze()
    sys.exit(code)


if __name__ == "__main__":
    run()
