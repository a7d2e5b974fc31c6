"""QR rendering: PNG, SVG and terminal output all read back to the same URL with zxing-cpp."""

import re
import xml.etree.ElementTree as ET

import pytest
import zxingcpp
from cryptography.hazmat.primitives.asymmetric import ec
from PIL import Image

from hybrid.qr.errors import QrError, QrImageError, QrRenderError
from hybrid.qr.payload import QrPayload
from hybrid.qr.render import (
    decode_qr_image,
    qr_modules,
    render_terminal,
    save_png,
    save_svg,
)


def browser_url(request_type: str = "ga", **extra) -> str:
    key = ec.generate_private_key(ec.SECP256R1())
    payload = QrPayload.create(
        key, bytes(range(16)), request_type=request_type, timestamp=1764201234
    )
    if extra:
        payload = QrPayload(**{**payload.__dict__, **extra})
    return payload.to_url()


def image_from_modules(dark: list[list[bool]], scale: int = 6, border: int = 4) -> Image.Image:
    size = len(dark) + 2 * border
    image = Image.new("L", (size, size), 255)
    for y, row in enumerate(dark):
        for x, is_dark in enumerate(row):
            if is_dark:
                image.putpixel((x + border, y + border), 0)
    return image.resize((size * scale, size * scale), Image.NEAREST)


def read(image: Image.Image) -> str:
    results = zxingcpp.read_barcodes(image, formats=zxingcpp.BarcodeFormat.QRCode)
    assert len(results) == 1
    return results[0].text


@pytest.mark.parametrize("request_type", ["ga", "mc"])
def test_png_reads_back_to_the_same_url(tmp_path, request_type):
    url = browser_url(request_type)
    path = save_png(url, tmp_path / "code.png")
    assert path.read_bytes().startswith(b"\x89PNG")
    assert decode_qr_image(path) == url


def test_url_is_encoded_as_alphanumeric_prefix_plus_numeric_digits():
    url = browser_url()
    assert len(url) >= 170
    # 6 alphanumeric + ~170 numeric characters fit version 5-M; byte mode would need version 8
    assert len(qr_modules(url)) == 37


def test_svg_is_valid_xml_whose_modules_read_back_to_the_same_url(tmp_path):
    url = browser_url()
    path = save_svg(url, tmp_path / "code.svg")
    root = ET.parse(path).getroot()
    assert root.tag.endswith("svg")
    paths = [el for el in root.iter() if el.tag.endswith("path")]
    assert len(paths) == 1
    squares = re.findall(r"M(\d+),(\d+)H", paths[0].get("d"))
    size = int(root.get("viewBox").split()[2])
    dark = [[False] * size for _ in range(size)]
    for x, y in squares:
        dark[int(y)][int(x)] = True
    assert read(image_from_modules(dark, border=0)) == url


def terminal_to_modules(text: str, invert: bool = False) -> list[list[bool]]:
    rows: list[list[bool]] = []
    for line in text.splitlines():
        top = [c in "█▀" for c in line]
        bottom = [c in "█▄" for c in line]
        rows += [top, bottom]
    # blocks are light modules unless inverted
    return [[lit if invert else not lit for lit in row] for row in rows]


@pytest.mark.parametrize("invert", [False, True])
def test_terminal_text_fits_80_columns_and_reads_back(invert):
    url = browser_url(key6=[0, 1], unknown={7: b"\x00" * 8})
    assert len(url) >= 180
    text = render_terminal(url, invert=invert)
    lines = text.splitlines()
    assert max(len(line) for line in lines) <= 80
    assert len(lines) <= 30
    assert set(text) <= set(" ▀▄█\n")
    modules = terminal_to_modules(text, invert)
    if not invert:
        # the quiet zone is drawn (light) so a dark terminal background does not swallow it
        assert lines[0] == "█" * len(lines[0])
    assert read(image_from_modules(modules)) == url


def test_terminal_rendering_is_two_module_rows_per_line():
    url = browser_url()
    size = len(qr_modules(url)) + 4
    lines = render_terminal(url).splitlines()
    assert len(lines) == (size + 1) // 2
    assert all(len(line) == size for line in lines)


def test_missing_file_is_a_clear_error(tmp_path):
    with pytest.raises(QrImageError, match="cannot read image .*missing.png"):
        decode_qr_image(tmp_path / "missing.png")


def test_non_image_file_is_a_clear_error(tmp_path):
    path = tmp_path / "notes.png"
    path.write_text("not an image")
    with pytest.raises(QrImageError, match="cannot read image"):
        decode_qr_image(path)


def test_image_without_a_code_is_a_clear_error(tmp_path):
    path = tmp_path / "blank.png"
    Image.new("L", (200, 200), 255).save(path)
    with pytest.raises(QrImageError, match="no QR code found"):
        decode_qr_image(path)


def test_unwritable_path_and_oversized_text_are_render_errors(tmp_path):
    with pytest.raises(QrRenderError, match="cannot write"):
        save_png(browser_url(), tmp_path / "no-such-dir" / "code.png")
    with pytest.raises(QrRenderError):
        render_terminal("FIDO:/" + "1" * 8000)
    assert issubclass(QrRenderError, QrError)
