"""hybrid: the FIDO hybrid transport (caBLE v2, CTAP 2.2 section 11.5) in Python.

The package holds both roles (the desktop that shows the QR code and the phone that scans it) and
the pure protocol core they share. The relay lives in the sibling ``relay`` package.
"""

__version__ = "0.1.0"
