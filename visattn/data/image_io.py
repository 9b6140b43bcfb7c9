"""Safe image decoding: the one function every dataset and CLI command uses to read an image.

:func:`decode_image` turns any file Pillow can read into an ``(H, W, 3)`` uint8 RGB array:
transparency is blended on a background colour, 16-bit and float images are rescaled rather
than clipped, EXIF orientation is applied, and a file whose header declares too many pixels is
refused before any pixel data is decoded. Every failure is an :class:`ImageDecodeError` with a
one-line message that names the file and the reason.
"""
from __future__ import annotations

import io
import errno
import json
import math
import os
import re
import reprlib
import stat
import warnings
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from ..errors import (ConfigError, ImageDecodeError, VisattnError, VisattnWarning, ignored_unless_busy, is_count,
                      is_whole, one_line, outside_visattn)
from ..fileio import missing_reason, written_by_command, written_by_visattn

__all__ = ["DEFAULT_MAX_PIXELS", "IMAGE_EXTENSIONS", "ImageFile", "decode_image", "list_images", "run_in_batches"]

# 64 megapixels: above most camera photos (not 108 or 200 MP phone sensors at full resolution), below
# Pillow's own warning threshold.
DEFAULT_MAX_PIXELS = 64 * 1024 * 1024
RAISE_MAX_PIXELS = "raise the limit: --max-pixels N, data.init_args.max_pixels, or max_pixels=N in Python"
# HEIC/HEIF cannot be decoded; they are listed so that a folder scan reports each one instead of
# skipping it silently.
IMAGE_EXTENSIONS = frozenset(
    {".jpg", ".jpeg", ".jpe", ".jfif", ".jif", ".png", ".gif", ".bmp", ".tif", ".tiff", ".webp",
     ".ppm", ".pgm", ".pbm", ".pnm", ".tga", ".ico", ".avif", ".heic", ".heif"}
)
# Only raster formats whose plugins decode in-process; e.g. EPS would run Ghostscript on load.
_SAFE_FORMATS = ("JPEG", "PNG", "GIF", "BMP", "DIB", "TIFF", "WEBP", "PPM", "TGA", "ICO", "AVIF")
_ALPHA_MODES = frozenset({"RGBA", "RGBa", "LA", "La", "PA"})
_HIGH_DEPTH_MODES = frozenset({"I", "I;16", "I;16L", "I;16B", "I;16N", "F"})
# ISO base media "ftyp" brands of HEIC/HEIF photos (iPhones); AVIF's share the box but not these.
_HEIF_BRANDS = frozenset({b"heic", b"heix", b"heim", b"heis", b"hevc", b"hevx", b"hevm", b"hevs"})
_APPLEDOUBLE_MAGIC = b"\x00\x05\x16\x07"
# Pixels are made RGB this many at a time (a strip of rows): converting a whole image held two to eight copies of
# it at once (a 108 MP RGBA PNG peaked at 2 GiB over its pixels).
_STRIP_PIXELS = 1 << 18
# Folders other programs keep among users' files: macOS zips' resource forks (``._photo.jpg``, which are no images)
# and a Synology NAS's thumbnails (real JPEGs: read as photos, each image was trained on twice, and the folder at a
# class folder's level was a class).
_BOOKKEEPING_FOLDERS = frozenset({"__MACOSX", "@eaDir"})

PathLike = str | os.PathLike
ImageSource = PathLike | bytes


def decode_image(
    source: ImageSource | bytearray | memoryview,
    *,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    background: tuple[int, int, int] = (255, 255, 255),
) -> np.ndarray:
    """Decode an image file (or its bytes) into an RGB array.

    Args:
        source: a path, or the encoded bytes of an image (``bytes``, ``bytearray`` or ``memoryview``).
        max_pixels: refuse images whose header declares more than this many pixels (width x
            height). Above Pillow's own limit (twice ``PIL.Image.MAX_IMAGE_PIXELS``, 179M pixels) it raises
            that limit, process-wide, as :func:`allow_pixels` does.
        background: RGB colour that transparent pixels are blended onto.

    Returns:
        ``(H, W, 3)`` uint8 array, EXIF orientation applied.

    Raises:
        ImageDecodeError: missing, empty, truncated, non-image or too large file, or a path that
            is not a regular file (a pipe, socket or device).
        ConfigError: ``source`` is neither a path nor bytes, or ``background`` is no RGB colour.
    """
    source = _checked_source(source)
    _check_background(background)
    if not is_count(max_pixels):  # "1000" was a TypeError in allow_pixels
        raise ConfigError(f"max_pixels={max_pixels!r}: give the most pixels (width x height) an image may declare, "
                          f"e.g. {DEFAULT_MAX_PIXELS}")
    name = "<bytes>" if isinstance(source, bytes) else os.fspath(source)
    fp = io.BytesIO(source) if isinstance(source, bytes) else source
    allow_pixels(max_pixels)  # else Pillow refuses a data module's max_pixels above its own limit
    try:
        if not isinstance(source, bytes):
            _check_regular_file(source)
        with _opened(fp) as img:
            _check_size(img.size, max_pixels)
            img.load()  # decodes now, so truncated data fails inside this try
            _exif_transpose(img)
            return rgb_pixels(img, background)
    except ImageDecodeError as err:
        raise ImageDecodeError(f"{name}: {err}") from None
    except Image.DecompressionBombError as err:  # Pillow's own limit, met in the header before max_pixels is checked
        pixels = re.search(r"\((\d+) pixels\)", str(err))
        raise ImageDecodeError(f"{name}: {_over_the_limit(pixels[1] if pixels else 'more', max_pixels)}") from None
    except Exception as err:  # noqa: BLE001 -- any decoder failure is the file's fault
        raise ImageDecodeError(f"{name}: {_reason(err, source)}") from None


def exif_orientation(path: Path) -> int:
    """``path``'s EXIF orientation tag, read from each format :func:`decode_image` turns by it (AVIF's included:
    read as 1, detection boxes would stay put while its pixels turn); 1 (as stored) without one or where it cannot
    be read, as decoding then leaves the pixels."""
    try:
        with _opened(path) as img:
            return int(img.getexif().get(0x0112, 1))
    except Exception:  # noqa: BLE001 -- the pixels decoded; a broken EXIF block only leaves them unturned
        return 1


def _opened(fp: Any) -> Image.Image:
    """``Image.open`` (the header only) without Pillow's warning over 89M pixels: ``max_pixels`` is the limit,
    checked next from the header (the warning would refuse images that limit lets through)."""
    with ignored_unless_busy(Image.DecompressionBombWarning):
        return Image.open(fp, formats=_available_formats())


@dataclass
class ImageFile:
    """One file of :func:`run_in_batches`: its decoded ``image`` and ``prepared`` form, or the ``error``."""

    path: Path
    image: Optional[np.ndarray] = None  # (H, W, 3) uint8, with keep_images
    prepared: Any = None  # what ``prepare`` made of the image
    error: Optional[VisattnError] = None
    source_shape: tuple[int, ...] = ()  # the decoded image's (H, W, 3), kept or not

    def error_line(self, as_json: bool = False) -> str:
        """The one-line report of an unreadable file: a JSON record or ``PATH: error: REASON``."""
        if as_json:
            return json.dumps({"file": str(self.path), "error": str(self.error)})
        return one_line(f"{self.path}: error: {str(self.error).removeprefix(f'{self.path}: ')}")  # the path once


def run_in_batches(
    files: Sequence[PathLike], batch_size: int, prepare: Callable[[np.ndarray], Any],
    run: Callable[[list[Any]], Iterable[Any]], *, keep_images: bool = False, max_pixels: int = DEFAULT_MAX_PIXELS,
) -> Iterator[tuple[ImageFile, Any]]:
    """``(file, result)`` for each of ``files`` in order, decoded and ``prepare``-d ``batch_size`` at a
    time so that ``run`` (a model) sees each batch's readable files at once. An unreadable file comes
    with its one-line ``error`` and result ``None``; the others go on. ``keep_images`` keeps each
    decoded ``image`` (for drawing on it); otherwise a batch holds only the prepared inputs, not
    ``batch_size`` full-resolution photos; ``max_pixels`` as :func:`decode_image` takes it."""
    for start in range(0, len(files), batch_size):
        batch = [_read_one(Path(path), prepare, keep_images, max_pixels) for path in files[start : start + batch_size]]
        readable = [item.prepared for item in batch if item.error is None]
        results = iter(run(readable) if readable else ())
        for item in batch:
            yield item, None if item.error is not None else next(results)


def _read_one(path: Path, prepare: Callable[[np.ndarray], Any], keep_image: bool, max_pixels: int) -> ImageFile:
    try:
        image = decode_image(path, max_pixels=max_pixels)
        return ImageFile(path, image if keep_image else None, prepare(image), source_shape=image.shape)
    except VisattnError as err:
        return ImageFile(path, error=err)


_PILLOW_LIMIT: list[Optional[int]] = []  # Pillow's limit before allow_pixels first raised it


def path_argument(name: str, value: object, kind: str = "folder") -> Path:
    """``value``, the argument ``name``, as a Path; one line when it is no path (``root=5`` was pathlib's TypeError)."""
    if not isinstance(value, (str, os.PathLike)):
        raise ConfigError(f"{name}={value!r}: give a {kind} path (a str or pathlib.Path)")
    return Path(value)


def allow_pixels(max_pixels: int) -> None:
    """Raise Pillow's own limit (``PIL.Image.MAX_IMAGE_PIXELS``, process-wide) so that images up to
    ``max_pixels`` open, as :func:`decode_image` does with its ``max_pixels``, until :func:`restore_pixel_limit`."""
    if Image.MAX_IMAGE_PIXELS is not None and 2 * Image.MAX_IMAGE_PIXELS < max_pixels:
        if not _PILLOW_LIMIT:
            _PILLOW_LIMIT.append(Image.MAX_IMAGE_PIXELS)
        Image.MAX_IMAGE_PIXELS = max_pixels // 2 + 1


def restore_pixel_limit() -> None:
    """Put back the limit :func:`allow_pixels` raised."""
    if _PILLOW_LIMIT:
        Image.MAX_IMAGE_PIXELS = _PILLOW_LIMIT.pop()


def list_images(paths: PathLike | Iterable[PathLike], *, recursive: bool = True, allow_empty: bool = True,
                exclude: Iterable[Optional[PathLike]] = (), rerun_of: Iterable[str] = ()) -> list[Path]:
    """Expand files and folders into image file paths.

    Folders contribute their image files (by extension, hidden files skipped, symlinked sub-folders
    followed) in sorted order; a file that cannot be read, such as a dangling link or a HEIC photo,
    is listed so that decoding it says why. Files named explicitly are kept whatever their
    extension, in the order given, and so are paths that do not exist (decoding says so), unless
    none of the paths does. Repeats are dropped, also a file named two ways (relative and absolute,
    through ``..`` or a link): it is listed once, as first named.

    Args:
        paths: one path or several.
        recursive: also look inside sub-folders of the folders given.
        allow_empty: ``False`` makes finding no image file at all a :class:`ConfigError`.
        exclude: folders whose files a folder of ``paths`` that holds them does not contribute
            (``None``s ignored): a command's output folder inside its input folder, so that a second
            run does not take the first run's drawings for input. A folder of ``paths`` that is
            itself excluded still counts, less the outputs of ``rerun_of``. Image files in them that
            visattn did not write are named in a warning.
        rerun_of: the commands writing to the ``exclude`` folders (``"detect --out"``): their outputs in an
            input folder that is also the output folder are an earlier run's, not input; other images there,
            those of other commands too, are.

    Raises:
        ImageDecodeError: none of the paths exists.
    """
    named = [paths] if isinstance(paths, (str, os.PathLike)) else list(paths) if isinstance(paths, Iterable) else [paths]
    if not all(isinstance(path, (str, os.PathLike)) for path in named):  # 5, None, [5]: TypeErrors deep inside
        raise ConfigError(f"paths={reprlib.repr(paths)}: give an image file or folder path, or a list of them")
    paths = named
    _refuse_all_missing(paths)
    found: dict[str, Path] = {}  # each file's real path -> the path it was first named by, in order
    outputs = [Path(folder).resolve() for folder in exclude if folder]
    left_out: list[Path] = []  # image files of an output folder that visattn did not write
    for path in map(Path, paths):
        if path.is_dir():
            inputs, user_files = _folder_inputs(path, recursive=recursive, outputs=outputs, rerun_of=set(rerun_of))
            for file, real in inputs:
                found.setdefault(real, file)
            left_out += user_files
        else:  # a file, or a path that does not exist: decoding it says so on its own line, and the rest go on
            found.setdefault(os.path.realpath(path), path)
    left_out = [file for file in left_out if os.path.realpath(file) not in found]
    if left_out:
        more = f" and {len(left_out) - 1} more" if len(left_out) > 1 else ""
        warnings.warn(f"not read as input: {left_out[0]}{more} in the output folder, which visattn did not write; "
                      "name them as inputs, or write the output elsewhere",
                      VisattnWarning, stacklevel=outside_visattn())
    if not found and not allow_empty:
        named = " ".join(map(str, paths))
        raise ConfigError(f"no image files found in {named}; give image files or folders holding them")
    return list(found.values())


def _refuse_all_missing(paths: list[PathLike]) -> None:
    """One line when none of ``paths`` exists, naming each (up to 3), so two typos take one run to find."""
    if paths and not any(Path(path).exists() for path in paths):
        named = [f"{path}: {missing_reason(path, 'file or folder')}" for path in paths[:3]]
        more = [f"and {len(paths) - 3} more paths that do not exist"] if len(paths) > 3 else []
        raise ImageDecodeError("; ".join(named + more))


def _folder_inputs(folder: Path, *, recursive: bool, outputs: list[Path],
                   rerun_of: set[str]) -> tuple[list[tuple[Path, str]], list[Path]]:
    """The image files of ``folder`` that are input (see :func:`list_images`), sorted, each with its real path, and
    those left out that visattn did not write: image files inside the resolved ``outputs`` folders."""
    inside = [output for output in outputs if folder.resolve() in output.parents]
    # the output folder given as input: an earlier run's drawings beside the photos are skipped, not read and
    # then refused as inputs their own outputs would replace
    own_output = folder.resolve() in outputs
    unlisted: list[Path] = []  # folders whose listing failed: each reported on its own line, as a file is
    images = [(file, real) for file, real in _folder_files(folder, recursive, unlisted)
              if file.suffix.lower() in IMAGE_EXTENSIONS]
    listed = images + [(file, os.path.realpath(file)) for file in unlisted]
    inputs, left_out = [], []
    for file, real in sorted(listed, key=lambda pair: pair[0]):
        if own_output and written_by_command(file) in rerun_of:
            continue
        if not (inside and any(output in file.resolve().parents for output in inside)):
            inputs.append((file, real))
        elif not written_by_visattn(file):  # an earlier run's output is no input; a user's file is named
            left_out.append(file)
    return inputs, left_out


def _folder_files(root: Path, recursive: bool, unlisted: list[Path]) -> Iterator[tuple[Path, str]]:
    """Everything under ``root`` that is not a folder (dangling links and pipes too, so that reading
    them reports them), with its real path, hidden and other programs' names skipped (:func:`is_bookkeeping`);
    symlinked sub-folders are followed, each real folder once, depth first in sorted order (as ``os.walk``).
    A link to a folder above ``root`` is not: it would list ``root``'s neighbours as ``root``'s own (an
    image-folder class taking the other classes' images). Folders that cannot be listed go to ``unlisted``
    (``os.walk`` passes over them: a folder without read permission would silently lose its images). A real
    path is the folder's joined with the name unless the file is a link: ``os.path.realpath`` of each file
    stats every folder above it (a 200,000-file image folder took 12 s to list)."""
    seen: set[str] = set()  # real paths: a link back up the tree ends here instead of looping
    above = Path(os.path.realpath(root)).parents
    pending = [os.fspath(root)]  # a stack: the next folder to list is last
    while pending:
        folder = pending.pop()
        real = os.path.realpath(folder)
        if real in seen or Path(real) in above:
            continue
        seen.add(real)
        try:
            with os.scandir(folder) as listing:
                entries = [entry for entry in listing if not is_bookkeeping(entry.name)]
        except OSError as err:
            if err.filename is not None:
                unlisted.append(Path(err.filename))
            continue
        subfolders = {entry.name for entry in entries if _is_folder(entry)}
        if recursive:
            pending += [os.path.join(folder, name) for name in sorted(subfolders, reverse=True)]
        parent = Path(folder)  # joined with each name: a Path parsed from each whole path cost 40 us a file
        for entry in entries:
            if entry.name not in subfolders:
                yield parent / entry.name, (os.path.realpath(entry.path) if entry.is_symlink()
                                            else os.path.join(real, entry.name))


def _is_folder(entry: os.DirEntry) -> bool:
    """Whether ``entry`` is a folder or a link to one, as ``os.walk`` tells (an entry that cannot be stat-ed is
    none)."""
    try:
        return entry.is_dir()
    except OSError:
        return False


def is_bookkeeping(name: str) -> bool:
    """Whether a file or folder name is another program's, not a user's data: a dot name (``.DS_Store``, AppleDouble
    ``._photo.jpg``, ``.git``) or a folder of :data:`_BOOKKEEPING_FOLDERS`."""
    return name.startswith(".") or name in _BOOKKEEPING_FOLDERS


def _checked_source(source: object) -> ImageSource:
    if isinstance(source, (bytearray, memoryview)):
        return bytes(source)
    if not isinstance(source, (str, os.PathLike, bytes)):
        raise ConfigError(f"source: a {type(source).__name__}, not a file path or an image file's bytes; give a "
                          "path (str or pathlib.Path) or the bytes (an open file's .read())")
    return source


def _check_background(background: object) -> None:
    if not (isinstance(background, (tuple, list)) and len(background) == 3
            and all(is_whole(v) and v <= 255 for v in background)):
        raise ConfigError(f"background={reprlib.repr(background)}: give an RGB colour, three ints 0..255, "
                          "e.g. (255, 255, 255) for white")


def _check_regular_file(path: PathLike) -> None:
    """Refuse pipes, sockets and devices before opening them: reading a FIFO waits forever for a writer."""
    mode = os.stat(path).st_mode  # follows symlinks: a dangling one raises FileNotFoundError
    if not (stat.S_ISREG(mode) or stat.S_ISDIR(mode)):  # a folder gets its own reason from open()
        raise ImageDecodeError("not a regular file (a pipe, socket or device); give an image file")


def _available_formats() -> tuple[str, ...]:
    Image.init()
    return tuple(f for f in _SAFE_FORMATS if f in Image.OPEN)


def _check_size(size: tuple[int, int], max_pixels: int) -> None:
    width, height = size
    if width * height > max_pixels:
        raise ImageDecodeError(_over_the_limit(f"{width}x{height} = {width * height}", max_pixels))


def _over_the_limit(pixels: str, max_pixels: int) -> str:
    return (f"image is {pixels} pixels, over the limit of {max_pixels} (possible decompression bomb; for files you "
            f"trust, {RAISE_MAX_PIXELS})")


def _exif_transpose(img: Image.Image) -> None:
    try:
        ImageOps.exif_transpose(img, in_place=True)
    except Exception:  # noqa: BLE001 -- broken EXIF is common in real photos; pixels are fine
        pass


def rgb_pixels(img: Image.Image, background: tuple[int, int, int] = (255, 255, 255)) -> np.ndarray:
    """``(H, W, 3)`` uint8 pixels of an opened image as :func:`decode_image` gives a file's (transparency blended
    onto ``background``, 16-bit and float pixels rescaled), without its EXIF turn: a PIL image a user opened.
    Pixels that do not decode (Pillow decodes an opened file here) are an :class:`ImageDecodeError` naming it."""
    try:
        img.load()
    except Exception as err:  # noqa: BLE001 -- any decoder failure is the file's fault
        name = getattr(img, "filename", None) or "<image>"
        raise ImageDecodeError(f"{name}: {_reason(err, name)}") from None
    width, height = img.size
    rows = max(1, _STRIP_PIXELS // max(width, 1))
    value_range = _value_range(img, rows) if img.mode in _HIGH_DEPTH_MODES else None
    if height <= rows:  # one strip: the image itself, not a cropped copy of it
        pixels = _rgb_strip(img, background, value_range)
    else:
        pixels = np.empty((height, width, 3), dtype=np.uint8)
        for top, strip in _strips(img, rows):
            pixels[top : top + rows] = _rgb_strip(strip, background, value_range)
    pixels.flags.writeable = False  # as Pillow's arrays are: a transform cannot alter an image kept for drawing
    return pixels


def _strips(img: Image.Image, rows: int) -> Iterator[tuple[int, Image.Image]]:
    """``(top, strip)``: ``img`` ``rows`` rows at a time from row ``top``, each with its palette and transparency;
    ``img`` itself, not a cropped copy, when one strip holds it."""
    if img.height <= rows:
        yield 0, img
        return
    for top in range(0, img.height, rows):
        yield top, img.crop((0, top, img.width, min(top + rows, img.height)))


def _rgb_strip(strip: Image.Image, background: tuple[int, int, int],
               value_range: Optional[tuple[float, float]]) -> np.ndarray:
    """``(h, W, 3)`` uint8 pixels of a strip; ``value_range``: a high-depth image's, see :func:`_value_range`."""
    if strip.mode in _HIGH_DEPTH_MODES:
        rgb = np.repeat(_rescaled(strip, value_range)[..., None], 3, axis=2)  # (h, W, 3)
        key = strip.info.get("transparency")
        if isinstance(key, int):  # a 16-bit gray PNG's tRNS chunk: the one gray value that is transparent
            rgb[np.asarray(strip) == key] = background
        return rgb
    if strip.mode in _ALPHA_MODES or "transparency" in strip.info:
        rgba = strip.convert("RGBA")
        canvas = Image.new("RGBA", rgba.size, (*background, 255))
        return np.asarray(Image.alpha_composite(canvas, rgba).convert("RGB"))
    return np.asarray(strip if strip.mode == "RGB" else strip.convert("RGB"))


def _value_range(img: Image.Image, rows: int) -> Optional[tuple[float, float]]:
    """The values a 16-bit, 32-bit or float image's pixels map from onto 0..255, instead of clipping them; ``None``:
    clip them.

    Integer pixels that fit in 16 bits use the full 16-bit range, and floats within 0..1 that range
    (torchvision's convention), so brightness stays comparable across images; wider integers and
    other floats are stretched from their min to their max, and an image of one such value is clipped
    to 0..255 (it was black whatever its value).
    """
    low, high = math.inf, -math.inf
    for _, strip in _strips(img, rows):
        values = _finite_values(strip)
        low, high = min(low, float(values.min())), max(high, float(values.max()))
    if img.mode == "F" and low >= 0 and high <= 1:
        return 0.0, 1.0
    if img.mode != "F" and low >= 0 and high <= 65535:
        return 0.0, 65535.0
    return None if high == low else (low, high)


def _rescaled(strip: Image.Image, value_range: Optional[tuple[float, float]]) -> np.ndarray:
    values = _finite_values(strip)  # rescaled in place: each float64 temporary is 8 bytes a pixel
    if value_range is None:
        return np.clip(np.rint(values, out=values), 0, 255, out=values).astype(np.uint8)
    low, high = value_range
    values -= low
    values *= 255.0 / (high - low)
    return np.rint(values, out=values).astype(np.uint8)


def _finite_values(strip: Image.Image) -> np.ndarray:
    values = np.asarray(strip, dtype=np.float64)  # (h, W), a copy
    values[~np.isfinite(values)] = 0.0
    return values


def _reason(err: Exception, source: ImageSource) -> str:
    if isinstance(err, FileNotFoundError):
        return missing_reason(source) if isinstance(source, (str, os.PathLike)) else "no such file"
    if isinstance(err, OSError) and err.errno == errno.ELOOP:
        return "symbolic link loop; point the link at an image file"
    # Opening a folder without read permission raises a PermissionError, not an IsADirectoryError.
    folder = not isinstance(source, bytes) and os.path.isdir(source)
    if isinstance(err, (IsADirectoryError, PermissionError)) and folder:
        return _folder_reason(source)
    if isinstance(err, PermissionError):
        return "permission denied; give read permission to it (chmod +r) or leave it out"
    if isinstance(err, UnidentifiedImageError):
        return _unidentified_reason(_head(source, 12))
    text = " ".join(str(err).split()) or type(err).__name__
    if "truncated" in text.lower() or isinstance(err, (EOFError, SyntaxError)):
        return f"truncated or corrupt image data: {text} (re-export or remove the file)"
    return f"cannot decode image: {text}"


def _folder_reason(folder: ImageSource) -> str:
    """Why a folder stands where an image file was read: one a scan could not list lost its images."""
    try:
        os.scandir(folder).close()
    except OSError as err:
        return (f"a folder that cannot be listed ({err.strerror or type(err).__name__}), so its images were not "
                "read; give read permission to it (chmod +rx) or leave it out")
    return "is a folder, not an image file"


def _head(source: ImageSource, size: int) -> bytes:
    if isinstance(source, bytes):
        return source[:size]
    with open(source, "rb") as file:
        return file.read(size)


def _unidentified_reason(head: bytes) -> str:
    if not head:
        return "empty file (0 bytes); copy it again from its source, or remove it"
    if head[4:8] == b"ftyp" and head[8:12] in _HEIF_BRANDS:
        return "HEIC/HEIF is not supported by Pillow; convert it to JPEG or PNG"
    if head[:4] == _APPLEDOUBLE_MAGIC:
        return ("an AppleDouble file (the ._ twin macOS writes beside each file on other disks: its metadata, not an "
                "image); leave out the files named ._*")
    return ("not a supported image (unknown format or not an image at all); give JPEG, PNG, WebP, TIFF, BMP, GIF "
            "or AVIF files, or remove it")
