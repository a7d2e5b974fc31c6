"""Chromium as the desktop against our phone and relay: fake BlueZ, processes, page, harness.

See ``tests/chromium/README.md`` for how the pieces fit and what Chromium was seen to do.
"""
