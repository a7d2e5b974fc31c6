"""Drawing a ``FIDO:/`` URL as a QR code (terminal text, PNG, SVG) and reading one back from images.

The URL is all QR-alphanumeric characters, and ``qrcode``'s segment optimisation encodes it as a
six-character alphanumeric segment (``FIDO:/``) followed by a numeric segment, the densest layout
(section 3.4); a typical 180-character URL then fits version 5 at error-correction level M.

Terminal output packs two module rows into one line with Unicode half blocks. It follows the
``qrencode -t UTF8`` convention: *light* modules and the quiet zone are drawn as blocks, so the code
has the right polarity on the usual dark-background terminal; ``invert=True`` is for light
backgrounds. Reading images (``decode_qr_image``) uses the zxing-cpp reader.
"""

from __future__ import annotations

import os
from pathlib import Path

import qrcode
import qrcode.constants
import qrcode.exceptions
import qrcode.image.pil
import qrcode.image.svg

from hybrid.qr.errors import QrImageError, QrRenderError

ERROR_CORRECTION = qrcode.constants.ERROR_CORRECT_M
TERMINAL_QUIET_ZONE = 2
# files get the standard 4-module quiet zone; a terminal has little room to spare
FILE_QUIET_ZONE = 4
PNG_BOX_SIZE = 8

_HALF_BLOCKS = {(False, False): " ", (True, False): "▀", (False, True): "▄", (True, True): "█"}


def _build(url: str, border: int) -> qrcode.QRCode:
    code = qrcode.QRCode(error_correction=ERROR_CORRECTION, border=border)
    try:
        code.add_data(url)  # optimize=20 (default) splits out the numeric run
        code.make(fit=True)
    except (qrcode.exceptions.DataOverflowError, ValueError) as exc:
        raise QrRenderError(f"cannot draw a QR code for {len(url)} characters: {exc}") from None
    return code


def qr_modules(url: str) -> list[list[bool]]:
    """The module matrix without quiet zone; ``True`` is a dark module."""
    return [list(row) for row in _build(url, 0).get_matrix()]


def render_terminal(
    url: str, *, invert: bool = False, quiet_zone: int = TERMINAL_QUIET_ZONE
) -> str:
    """The QR code as lines of half-block characters (no trailing newline).

    Each character covers two module rows; a ~180-digit URL gives 41 columns and 21 lines.
    """
    modules = qr_modules(url)
    size = len(modules) + 2 * quiet_zone
    # "lit" cells are printed as blocks: light modules, or dark ones when inverted
    lit = [[not invert] * size for _ in range(size)]
    for y, row in enumerate(modules):
        for x, dark in enumerate(row):
            lit[y + quiet_zone][x + quiet_zone] = dark if invert else not dark
    if size % 2:
        lit.append([False] * size)  # the terminal background below the last row
    lines = []
    for y in range(0, len(lit), 2):
        top, bottom = lit[y], lit[y + 1]
        lines.append("".join(_HALF_BLOCKS[t, b] for t, b in zip(top, bottom, strict=True)))
    return "\n".join(lines)


def save_png(url: str, path: str | os.PathLike[str], *, box_size: int = PNG_BOX_SIZE) -> Path:
    """Write the QR code as a black-on-white PNG; returns the path written."""
    code = _build(url, FILE_QUIET_ZONE)
    code.box_size = box_size
    image = code.make_image(image_factory=qrcode.image.pil.PilImage)
    return _save(image, path, "PNG")


def save_svg(url: str, path: str | os.PathLike[str]) -> Path:
    """Write the QR code as an SVG (white background, one path of dark modules)."""
    code = _build(url, FILE_QUIET_ZONE)
    image = code.make_image(image_factory=qrcode.image.svg.SvgPathFillImage)
    return _save(image, path, None)


def _save(image: object, path: str | os.PathLike[str], kind: str | None) -> Path:
    target = Path(path)
    try:
        with target.open("wb") as stream:
            if kind is None:
                image.save(stream)  # type: ignore[attr-defined]
            else:
                image.save(stream, kind)  # type: ignore[attr-defined]
    except OSError as exc:
        raise QrRenderError(f"cannot write {target}: {exc.strerror or exc}") from None
    return target


def decode_qr_image(path: str | os.PathLike[str]) -> str:
    """The text of the first QR code found in an image file (PNG, JPEG, ... anything PIL reads)."""
    import zxingcpp
    from PIL import Image

    target = Path(path)
    try:
        with Image.open(target) as image:
            image.load()
            pixels = image.convert("L")
    except OSError as exc:
        reason = getattr(exc, "strerror", None) or str(exc) or type(exc).__name__
        raise QrImageError(f"cannot read image {target}: {' '.join(reason.split())}") from None
    except Exception as exc:  # PIL raises assorted types (e.g. DecompressionBombError) on junk
        raise QrImageError(f"cannot read image {target}: {type(exc).__name__}") from None
    results = zxingcpp.read_barcodes(
        pixels, formats=zxingcpp.BarcodeFormats(zxingcpp.BarcodeFormat.QRCode)
    )
    for result in results:
        if result.valid and result.text:
            return result.text
    raise QrImageError(f"no QR code found in {target}")
