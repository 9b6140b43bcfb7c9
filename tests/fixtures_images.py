"""Writes a corpus of good, odd and broken image files for tests of every image entry point.

``write_image_corpus(tmp_path)`` returns ``{name: path}``. Names in :data:`BAD_IMAGES` must be
refused with a one-line ``ImageDecodeError``; the others must decode. :data:`EXPECTED_SHAPES`
gives the decoded ``(H, W, 3)`` shape of each good file.
"""
from __future__ import annotations

import io
import struct
import zlib
from pathlib import Path

import numpy as np
from PIL import Image

RED, GREEN, BLUE, WHITE = (255, 0, 0), (0, 255, 0), (0, 0, 255), (255, 255, 255)
RGBA_COLOUR = (0, 128, 255)
BAD_IMAGES = frozenset({"truncated_jpg", "empty_jpg", "text_png", "bomb_png"})
EXPECTED_SHAPES = {
    "rgb_jpg": (32, 48, 3),
    "rgb_png": (32, 48, 3),
    "cmyk_jpg": (16, 16, 3),
    "rgba_png": (20, 30, 3),
    "palette_png": (10, 20, 3),
    "gray16_png": (4, 3, 3),
    "exif_rotated_jpg": (40, 20, 3),  # stored 40 wide x 20 high, orientation 6 turns it upright
    "tiny_png": (1, 1, 3),
    "wide_png": (20, 3000, 3),
}


def write_image_corpus(directory: Path) -> dict[str, Path]:
    """Write every corpus file into ``directory`` and return ``{name: path}``."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    writers = {
        "rgb_jpg": ("photo.jpg", _rgb_jpg),
        "rgb_png": ("halves.png", _rgb_png),
        "truncated_jpg": ("broken.jpg", _truncated_jpg),
        "empty_jpg": ("empty.jpg", lambda: b""),
        "text_png": ("notes.png", lambda: b"this is a text file, not a PNG\n"),
        "bomb_png": ("bomb.png", lambda: png_header_bomb(30000, 30000)),
        "cmyk_jpg": ("cmyk.jpg", _cmyk_jpg),
        "rgba_png": ("rgba.png", _rgba_png),
        "palette_png": ("palette.png", _palette_png),
        "gray16_png": ("gray16.png", _gray16_png),
        "exif_rotated_jpg": ("rotated.jpg", _exif_rotated_jpg),
        "tiny_png": ("tiny.png", lambda: _encode(Image.new("RGB", (1, 1), GREEN), "PNG")),
        "wide_png": ("wide.png", lambda: _encode(Image.new("RGB", (3000, 20), BLUE), "PNG")),
    }
    paths = {}
    for name, (filename, write) in writers.items():
        paths[name] = directory / filename
        paths[name].write_bytes(write())
    return paths


def write_image_folder(
    root: Path,
    *,
    classes: tuple[str, ...] = ("cat", "dog"),
    per_class: int = 3,
    size: tuple[int, int] = (24, 32),
    broken: tuple[str, ...] = (),
) -> Path:
    """Write ``root/<class>/<i>.png`` images of ``size`` (width, height), class ``k`` filled with
    the gray value ``40 * k``, plus a truncated ``<class>/broken.jpg`` for each class in ``broken``."""
    root = Path(root)
    for k, name in enumerate(classes):
        (root / name).mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            Image.new("RGB", size, (40 * k,) * 3).save(root / name / f"{i}.png")
        if name in broken:
            (root / name / "broken.jpg").write_bytes(_truncated_jpg())
    return root


def png_header_bomb(width: int, height: int) -> bytes:
    """A 1x1 PNG whose header claims ``width`` x ``height``: a bomb that costs nothing to make."""
    data = bytearray(_encode(Image.new("L", (1, 1)), "PNG"))
    ihdr = 8  # the IHDR chunk follows the 8-byte signature: length(4) type(4) data(13) crc(4)
    data[ihdr + 8 : ihdr + 16] = struct.pack(">II", width, height)
    crc = zlib.crc32(bytes(data[ihdr + 4 : ihdr + 21]))
    data[ihdr + 21 : ihdr + 25] = struct.pack(">I", crc)
    return bytes(data)


def _encode(img: Image.Image, fmt: str, **options) -> bytes:
    buffer = io.BytesIO()
    img.save(buffer, fmt, **options)
    return buffer.getvalue()


def _rgb_jpg() -> bytes:
    return _encode(Image.new("RGB", (48, 32), (200, 100, 50)), "JPEG", quality=95)


def _rgb_png() -> bytes:
    pixels = np.zeros((32, 48, 3), np.uint8)
    pixels[:, :24] = RED
    pixels[:, 24:] = BLUE
    return _encode(Image.fromarray(pixels), "PNG")


def _cmyk_jpg() -> bytes:
    """CMYK (0, 255, 255, 0): pure red."""
    return _encode(Image.new("CMYK", (16, 16), (0, 255, 255, 0)), "JPEG", quality=95)


def _truncated_jpg() -> bytes:
    noise = np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8)
    data = _encode(Image.fromarray(noise), "JPEG", quality=90)
    return data[: len(data) // 2]


def _rgba_png() -> bytes:
    """Columns 0-9 fully transparent, 10-19 half transparent, 20-29 opaque, all RGBA_COLOUR."""
    pixels = np.zeros((20, 30, 4), np.uint8)
    pixels[..., :3] = RGBA_COLOUR
    pixels[:, 10:20, 3] = 128
    pixels[:, 20:, 3] = 255
    return _encode(Image.fromarray(pixels, "RGBA"), "PNG")


def _palette_png() -> bytes:
    """Left half palette index 0 (red, marked transparent), right half index 1 (green)."""
    img = Image.new("P", (20, 10), 0)
    img.putpalette([*RED, *GREEN])
    img.paste(1, (10, 0, 20, 10))
    return _encode(img, "PNG", transparency=0)


def _gray16_png() -> bytes:
    """Rows of 0, 32768 and 65535 across 3 columns (16-bit grayscale)."""
    values = np.array([[0, 32768, 65535]] * 4, np.uint16)
    return _encode(Image.fromarray(values), "PNG")


def _exif_rotated_jpg() -> bytes:
    """Stored 40x20 with a red left half; orientation 6 means 'rotate 90 degrees clockwise'."""
    pixels = np.zeros((20, 40, 3), np.uint8)
    pixels[:, :20] = RED
    exif = Image.Exif()
    exif[0x0112] = 6
    return _encode(Image.fromarray(pixels), "JPEG", quality=95, exif=exif)
