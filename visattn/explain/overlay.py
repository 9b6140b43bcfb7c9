"""Heat-map overlays: draw an explanation map over the image it explains.

The word panels follow the figures of Xu et al. 2015, "Show, Attend and Tell: Neural Image
Caption Generation with Visual Attention": one panel per generated word, its attention map
laid over the image.

Every function takes the image as an ``(H, W, 3)`` uint8 array and a map of any size ``(h, w)``;
the map is interpolated (linearly, between its cells' centres: equal blocks of the image unless
``centres`` says otherwise) to the image and min-max normalised to [0, 1] before drawing.
Figures are drawn with matplotlib's Agg backend, so no display is needed; a notebook shows one that is a cell's value.
"""
from __future__ import annotations

import math
import os
import re
import textwrap
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Optional, Sequence

import numpy as np
import torch

from ..errors import ArgumentError, ConfigError, VisattnWarning, caught_warnings, outside_visattn
from ..fileio import (atomic_path, figure_mark, output_errors, prepare_output_file, remove_stale_output,
                      write_failure)
from .cell_centres import CellCentres

# matplotlib is imported where a map is coloured or drawn: `caption` and `detect` without an attention output, which
# import this module with visattn.explain, would spend a third of a second importing it for nothing.
if TYPE_CHECKING:
    from matplotlib.figure import Figure

PathLike = str | os.PathLike


def resize_map(heatmap: np.ndarray | torch.Tensor, size: tuple[int, int], *,
               centres: Optional[CellCentres] = None, dtype: torch.dtype = torch.float32) -> np.ndarray:
    """A ``(h, w)`` map at each pixel of a ``size = (H, W)`` image in ``dtype`` (values not rescaled), its cells
    at ``centres``; by default equal blocks of the image, which is bilinear upsampling with ``align_corners=False``."""
    grid = torch.as_tensor(np.asarray(heatmap, dtype=np.float64) if not torch.is_tensor(heatmap) else heatmap)
    if grid.ndim != 2:
        raise ConfigError(f"heat map has shape {tuple(grid.shape)}; expected a 2-D (h, w) map")
    centres = centres or CellCentres.blocks(grid.shape, size)
    return centres.resample(grid.detach().cpu().to(dtype), size).to(dtype).numpy()


def normalize_map(heatmap: np.ndarray) -> np.ndarray:
    """Min-max scale to [0, 1]; a constant (or non-finite) map becomes all zeros."""
    heatmap = np.nan_to_num(np.asarray(heatmap, dtype=np.float32), nan=0.0, posinf=0.0, neginf=0.0)
    low, high = float(heatmap.min()), float(heatmap.max())
    if high - low <= 1e-12:
        return np.zeros_like(heatmap)
    return (heatmap - low) / (high - low)


def _check_image(image: np.ndarray) -> np.ndarray:
    image = np.asarray(image)
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        raise ConfigError(f"image has shape {image.shape} and dtype {image.dtype}; expected (H, W, 3) uint8")
    return image


def heatmap_overlay(
    image: np.ndarray, heatmap: np.ndarray, *, cmap: str = "jet", alpha: float = 0.5,
    centres: Optional[CellCentres] = None,
) -> np.ndarray:
    """Blend a colour-mapped heat map onto the image.

    Args:
        image: ``(H, W, 3)`` uint8 RGB image.
        heatmap: ``(h, w)`` map of any scale; interpolated to ``(H, W)`` and normalised to [0, 1].
        cmap: matplotlib colour map name.
        alpha: weight of the heat map in the blend (0: image only, 1: heat map only).
        centres: where the map's cells sit on the image (default: equal blocks).

    Returns:
        ``(H, W, 3)`` uint8 RGB image.
    """
    from matplotlib import colormaps

    image = _check_image(image)
    if not 0.0 <= alpha <= 1.0:
        raise ConfigError(f"alpha={alpha}: use a value between 0 and 1")
    if cmap not in colormaps:
        raise ConfigError(f"cmap={cmap!r}: not a matplotlib colour map; try 'jet', 'viridis' or 'inferno'")
    if not np.isfinite(np.asarray(heatmap, dtype=np.float32)).all():  # NaN would silently draw as no relevance
        raise ConfigError("heatmap holds NaN or infinite values; check how it was computed (a division by zero?)")
    heat = normalize_map(resize_map(heatmap, image.shape[:2], centres=centres))
    colours = colormaps[cmap](heat)[..., :3] * 255.0  # (H, W, 3) RGB, drop alpha
    blended = (1.0 - alpha) * image.astype(np.float32) + alpha * colours
    return np.clip(np.rint(blended), 0, 255).astype(np.uint8)


def save_overlay(
    image: np.ndarray,
    heatmap: np.ndarray,
    path: PathLike,
    *,
    title: Optional[str] = None,
    cmap: str = "jet",
    alpha: float = 0.5,
    pixel_aspect: float = 1.0,
    centres: Optional[CellCentres] = None,
) -> None:
    """Write a figure of the image, the map laid over it and a colour bar (map scaled to [0, 1]).

    Args:
        image: ``(H, W, 3)`` uint8 RGB image.
        heatmap: ``(h, w)`` map; interpolated to the image and normalised.
        path: output image file, PNG unless its suffix names another format (``.jpg``, ``.svg``,
            ``.pdf``, ...); its folder is created if missing. Written atomically; a file already there
            is replaced only if visattn wrote it.
        title: figure title, e.g. the predicted label and its probability.
        cmap: matplotlib colour map name.
        alpha: weight of the heat map in the blend.
        pixel_aspect: height over width of one pixel as drawn: a model input squashed from another
            shape is drawn at the shape of its source.
        centres: where the map's cells sit on the image (default: equal blocks).
    """
    target = check_figure_path(path, flag="path")  # before drawing, as explain_image checks its out
    fig = overlay_figure(image, heatmap, title=title, cmap=cmap, alpha=alpha, pixel_aspect=pixel_aspect,
                         centres=centres)
    save_figure(fig, target, argument="path")


def overlay_figure(
    image: np.ndarray,
    heatmap: np.ndarray,
    *,
    title: Optional[str] = None,
    cmap: str = "jet",
    alpha: float = 0.5,
    pixel_aspect: float = 1.0,
    centres: Optional[CellCentres] = None,
    image_title: str = "image",
) -> Figure:
    """The figure :func:`save_overlay` writes; see it for the arguments. ``image_title`` names the left panel
    (what the model saw: an image, or a crop of one)."""
    from matplotlib.cm import ScalarMappable
    from matplotlib.colors import Normalize

    image = _check_image(image)
    blended = heatmap_overlay(image, heatmap, cmap=cmap, alpha=alpha, centres=centres)
    aspect = _drawn_aspect(image, pixel_aspect)
    # a wide image's figure as low as its panels (3 in wide) and titles: a 40x300 photo's was mostly blank, though
    # no lower than its colour bar's label fits beside
    fig = _figure(figsize=(7.5, min(3.6, max(2.5, round(8 * (3.0 * _drawn_ratio(image, aspect) + 0.7)) / 8))))
    left, right = fig.subplots(1, 2)
    left.imshow(image, aspect=aspect)
    left.set_title(image_title, parse_math=False)  # a label's `$` pairs were parsed as TeX: "$^$" failed to save
    right.imshow(blended, aspect=aspect)
    right.set_title("map")
    fig.colorbar(ScalarMappable(norm=Normalize(0.0, 1.0), cmap=cmap), ax=right, label="relevance (normalised)")
    for axis in (left, right):
        axis.set_axis_off()
    if title:
        fig.suptitle(_wrapped(title, fig, width=0.98 * fig.bbox.width), parse_math=False)
    return fig


def save_word_panels(
    image: np.ndarray,
    words: Sequence[str],
    maps: Sequence[np.ndarray],
    path: PathLike,
    *,
    columns: int = 5,
    cmap: str = "gray",
    alpha: float = 0.6,
    centres: Optional[CellCentres] = None,
) -> None:
    """Write a PNG with one panel per word: the image with that word's attention map laid over it.

    Args:
        image: ``(H, W, 3)`` uint8 RGB image.
        words: the generated words, one per panel.
        maps: one ``(h, w)`` attention map per word (e.g. a decoder's ``(T, h, w)`` unbound).
        path: output image file, as for :func:`save_overlay`.
        columns: panels per row.
        cmap: colour map of the attention (the paper's figures show white where it looks).
        alpha: weight of the map in the blend.
        centres: where the maps' cells sit on the image (default: equal blocks).
    """
    fig = word_panels_figure(image, words, maps, columns=columns, cmap=cmap, alpha=alpha, centres=centres)
    target = check_figure_path(path, flag="path")
    save_figure(fig, target, argument="path")


def word_panels_figure(
    image: np.ndarray,
    words: Sequence[str],
    maps: Sequence[np.ndarray],
    *,
    columns: int = 5,
    cmap: str = "gray",
    alpha: float = 0.6,
    centres: Optional[CellCentres] = None,
    pixel_aspect: float = 1.0,
) -> Figure:
    """The figure :func:`save_word_panels` writes; see it for the arguments (``pixel_aspect`` as
    :func:`overlay_figure` takes it)."""
    image = _check_image(image)
    if len(words) != len(maps) or not words:
        raise ConfigError(f"got {len(words)} words and {len(maps)} maps; give one map per word (at least one)")
    columns = max(1, min(columns, len(words)))
    rows = math.ceil(len(words) / columns)
    aspect = _drawn_aspect(image, pixel_aspect)
    width, height = _panel_inches(_drawn_ratio(image, aspect))
    fig = _figure(figsize=(width * columns, (height + 0.25) * rows))  # 0.25 in: a title's line
    axes = np.atleast_1d(fig.subplots(rows, columns, squeeze=False)).ravel()
    for axis, word, heat in zip(axes, words, maps):
        axis.imshow(heatmap_overlay(image, heat, cmap=cmap, alpha=alpha, centres=centres), aspect=aspect)
        # wrapped to the panel: a long class name in a detection's title ran over its neighbours'
        axis.set_title(_wrapped(word, fig, width=0.95 * width * fig.dpi), parse_math=False)
    for axis in axes:
        axis.set_axis_off()
    return fig


# The most a drawn image's longer side may be over its shorter: a 3x5000 strip drawn at its shape in a panel of
# 250 pixels is not one pixel wide, and its figure showed titles only.
MOST_DRAWN_RATIO = 8.0


def _drawn_aspect(image: np.ndarray, pixel_aspect: float) -> float:
    """``pixel_aspect`` (height over width of a drawn pixel), stretched where the image would be drawn longer than
    ``MOST_DRAWN_RATIO`` times its width or height."""
    ratio = image.shape[0] * pixel_aspect / image.shape[1]  # drawn height over width
    return pixel_aspect * min(max(ratio, 1 / MOST_DRAWN_RATIO), MOST_DRAWN_RATIO) / ratio


def _drawn_ratio(image: np.ndarray, aspect: float) -> float:
    """Height over width of ``image`` drawn with pixels of ``aspect``."""
    return image.shape[0] * aspect / image.shape[1]


def _panel_inches(ratio: float) -> tuple[float, float]:
    """Width and height of a word panel for an image drawn ``ratio`` high over wide: 2 in square, a wide image's
    panel up to twice as wide and a tall one's up to twice as high, no higher than the image (a 40x300 strip's
    panels had been 0.3 in high in 2.2 in rows, a figure of blank rows)."""
    width = 2.0 * min(max(math.sqrt(1.0 / ratio), 1.0), 2.0)
    # in eighths of an inch, exact in binary floats: 2.3 in at 100 dpi is 229.99... pixels, the PNG 230
    return round(8 * width) / 8, round(8 * min(width * ratio, 4.0)) / 8


def _wrapped(text: str, fig: Figure, *, width: float) -> str:
    """``text`` in lines at most ``width`` pixels wide in ``fig``'s title font (matplotlib's 'large', for titles
    and the figure's alike), broken between words, and within a word longer than a line."""
    from matplotlib.font_manager import FontProperties

    renderer, font = fig.canvas.get_renderer(), FontProperties(size="large")

    def line_width(line: str) -> float:
        with caught_warnings():  # a glyph the font lacks is warned of once, when the figure is saved
            warnings.filterwarnings("ignore", "Glyph .* missing from font")
            return renderer.get_text_width_height_descent(line, font, ismath=False)[0]

    full = line_width(text)
    if full <= width:
        return text
    for chars in range(int(len(text) * width / full) + 1, 0, -1):  # from the characters an even font fits
        lines = textwrap.wrap(text, chars, break_long_words=True)
        if all(line_width(line) <= width for line in lines):
            return "\n".join(lines)
    return text


def _figure(figsize: tuple[float, float]) -> Figure:
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    from .notebook_figure import NotebookFigure

    # A bare Figure on the Agg canvas: no pyplot state, no display, safe in threads and servers; a notebook shows it.
    fig = NotebookFigure(figsize=figsize, layout="constrained")
    FigureCanvasAgg(fig)
    return fig


# The formats visattn draws figures in: each takes the mark (figure_mark) by which a rerun may replace the file.
# Others are refused before drawing (a .tiff could be written once, then refused as a file "visattn did not write").
FIGURE_FORMATS = ("png", "jpg", "jpeg", "svg", "pdf")


def figure_format(path: PathLike) -> str:
    """The image format ``path``'s suffix names (``png`` without one); one line for one visattn does not write."""
    suffix = os.path.splitext(os.fspath(path))[1].lower().lstrip(".")
    if not suffix:
        return "png"
    if suffix not in FIGURE_FORMATS:
        raise ConfigError(f"{path}: cannot write .{suffix} images; name the file .png, .jpg, .svg or .pdf")
    return suffix


def check_figure_path(path: PathLike, *, flag: str) -> Path:
    """``path``, the argument ``flag``, checked before a figure is drawn to it: a format matplotlib writes, a
    place that takes a file (its folder created), and no file there that visattn did not write: a rerun
    replaces its own figure, never a user's photo."""
    if not isinstance(path, (str, os.PathLike)):
        raise ConfigError(f"{flag}: a {type(path).__name__}, not a file path; give a str or pathlib.Path")
    figure_format(path)
    return prepare_output_file(path, flag=flag)


def save_figure(fig: Figure, path: PathLike, *, argument: Optional[str] = None, command: Optional[str] = None) -> None:
    """Write ``fig`` to ``path`` atomically, marked as visattn's and as ``command``'s output (see
    :func:`visattn.fileio.figure_mark`).
    A failed write (a full disk, past the path's check) is one line naming ``argument``, the function
    argument ``path`` came in by; without one the OSError is left to the caller to name its option."""
    # The temp file's .tmp suffix would make matplotlib guess the format: name it from the real one.
    image_format = figure_format(path)
    try:
        with atomic_path(path) as tmp, _missing_glyphs_in_one_warning():  # a failed write leaves an earlier file
            fig.savefig(tmp, format=image_format, dpi=100, **figure_mark(image_format, command))  # a rerun may replace it
    except OSError as err:
        if argument is None:
            raise
        raise ArgumentError(argument, os.fspath(path), write_failure(err, "file")) from None


_MISSING_GLYPH = re.compile(r"Glyph (\d+) \(.*\) missing from font\(s\) (.+)\.$")


@contextmanager
def _missing_glyphs_in_one_warning() -> Iterator[None]:
    """matplotlib warns once for each character its fonts cannot draw (a Chinese caption's panel titles:
    a line each, pointing into matplotlib); one warning names them all and the fix. Other warnings pass."""
    with caught_warnings(record=True) as caught:
        warnings.simplefilter("always")
        yield
    missing: dict[str, str] = {}
    for warning in caught:
        glyph = _MISSING_GLYPH.match(str(warning.message))
        if glyph:
            missing[chr(int(glyph.group(1)))] = glyph.group(2)
        else:
            warnings.warn_explicit(warning.message, warning.category, warning.filename, warning.lineno)
    if missing:
        chars = "".join(sorted(missing))
        warnings.warn(f"the font {next(iter(missing.values()))} has no {chars[:20]}{'...' if len(chars) > 20 else ''}, "
                      "drawn as boxes in the titles; install a font that has them (e.g. Noto Sans CJK) and name it "
                      "in matplotlib's font.family", VisattnWarning, stacklevel=outside_visattn())


def save_panels(fig: Optional[Figure], path: Path, *, flag: str, folder: PathLike, command: str) -> Optional[str]:
    """A command's per-image panels (``caption``/``detect --attention-out``, the option ``flag`` naming
    ``folder``): ``fig`` written to ``path``, which is returned; ``None`` when there is nothing to draw
    (an empty caption, no detection), an earlier run's panel of that name removed so it cannot pass for
    this run's."""
    if fig is None:
        remove_stale_output(path)
        return None
    with output_errors(folder, flag=flag):
        save_figure(fig, check_figure_path(path, flag=flag), command=command)
    return str(path)
