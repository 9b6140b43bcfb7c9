"""The pointing game (Zhang et al. 2016, "Top-down Neural Attention by Excitation Backprop", ECCV).

A map scores a *hit* when its maximum, over the image, falls inside a ground-truth box of the
object it should explain; pointing accuracy is ``hits / (hits + misses)``.
The paper allows 15 pixels of tolerance on ~500 px photos; visattn's scenes are 28-64 px, so the
tolerance defaults to 0 and is a parameter.

Coordinates: boxes are ``xyxy`` in continuous pixel units, pixel ``(row, col)`` covering
``[col, col + 1) x [row, row + 1)`` (the COCO / torchvision convention: a box tight around
columns ``a..b`` has ``x1 = a, x2 = b + 1``). A ``(h, w)`` map's cells sit where
:class:`~visattn.explain.cell_centres.CellCentres` puts them (equal blocks unless told: a CNN's cells
at their receptive fields' centres), as it is drawn, and that surface peaks at its maximum cell's
centre, which is the point tested; for a plateau of equal maximum cells, the plateau's centre.
(Taking the maximum pixel of the map upsampled to pixels instead misses the cell centres by half a
pixel, and a lone maximum cell among low neighbours then loses to a flatter, lower region elsewhere.)
A constant map has no maximum and always misses. The tolerance grows each box by that many pixels
on every side (a square margin, not the disk of TorchRay's implementation).
"""
from __future__ import annotations

import math
from typing import Optional, Sequence

import numpy as np
import torch
from scipy import ndimage

from ..errors import ArgumentError, ConfigError, one_line
from .cell_centres import CellCentres


def peak_location(heatmap: np.ndarray | torch.Tensor, image_size: Optional[Sequence[int]], *,
                  centres: Optional[CellCentres] = None) -> tuple[float, float] | None:
    """``(x, y)`` in the pixels of an ``image_size = (H, W)`` image where ``heatmap`` peaks, its cells at
    ``centres`` (default: equal blocks of the image; given ``centres``, the size may be ``None``): its
    maximum cell's centre; for a plateau of equal maximum cells, the centre of the one holding the first
    in row-major order, or its cell nearest that centre where the map drawn between the cells is below its
    maximum there (an L- or ring-shaped plateau, or cells touching at a corner); ``None`` for a constant map."""
    if centres is None and image_size is None:
        raise ConfigError("give the image size or the map's cell centres to place its peak")
    grid = heatmap.detach().cpu().double().numpy() if torch.is_tensor(heatmap) else np.asarray(heatmap, np.float64)
    if grid.ndim != 2:
        raise ConfigError(f"heat map has shape {tuple(grid.shape)}; expected a 2-D (h, w) map")
    if not np.isfinite(grid).all():
        raise ConfigError("the map holds NaN or infinite values; check the model and its input")
    if centres is not None:
        centres.require_map(grid.shape)
    if np.ptp(grid) == 0:
        return None
    plateaus, _ = ndimage.label(grid == grid.max(), structure=np.ones((3, 3)))
    plateau = plateaus == plateaus.flat[int(np.argmax(grid))]
    rows, cols = np.nonzero(plateau)
    col, row = float(cols.mean()), float(rows.mean())  # in cells, cell k at k
    if not _at_the_maximum(plateau, row, col):
        nearest = int(np.argmin((cols - col) ** 2 + (rows - row) ** 2))
        col, row = float(cols[nearest]), float(rows[nearest])
    return (centres or CellCentres.blocks(grid.shape, image_size)).point(row, col)


def _at_the_maximum(plateau: np.ndarray, row: float, col: float) -> bool:
    """Whether the map drawn bilinearly between its cells is at its maximum at ``(row, col)`` (in cells): every
    cell that weighs on that point is of the ``plateau`` (two cells touching at a corner meet at a saddle)."""
    rows = {math.floor(row), math.ceil(row)}
    cols = {math.floor(col), math.ceil(col)}
    return all(plateau[r, c] for r in rows for c in cols)


def pointing_hit(
    heatmap: np.ndarray | torch.Tensor,
    box: Sequence[float] | np.ndarray,
    image_size: Optional[Sequence[int]],
    *,
    tolerance: float = 0.0,
    centres: Optional[CellCentres] = None,
) -> bool:
    """Whether the map's maximum lands in the box.

    Args:
        heatmap: ``(h, w)`` map over the image (any grid).
        box: ``(4,)`` box ``x1, y1, x2, y2`` in the image's pixels, or ``(K, 4)`` boxes of which
            any may be hit (several instances of the target).
        image_size: ``(H, W)`` of the image the boxes refer to, whose equal blocks place the map's cells
            unless ``centres`` does (then it may be ``None``).
        tolerance: pixels by which every box is grown on each side.
        centres: where the map's cells sit on the image.
    """
    try:
        boxes = np.asarray(box, dtype=np.float64)
    except (TypeError, ValueError):  # ragged lists or text
        boxes = None
    if boxes is not None and boxes.size == 0:
        raise ConfigError("pointing needs at least one box")
    if boxes is None or boxes.ndim not in (1, 2) or boxes.shape[-1] != 4:  # one line instead of numpy's reshape error
        given = one_line(repr(box)) if boxes is None or boxes.size <= 8 else f"an array of shape {boxes.shape}"
        raise ConfigError(f"box={given}: give x1, y1, x2, y2 pixels, or a (K, 4) array of such boxes")
    boxes = boxes.reshape(-1, 4)
    # Each would silently count as a miss, lowering the accuracy of a dataset with swapped or NaN boxes.
    if not np.isfinite(boxes).all() or (boxes[:, 2:] < boxes[:, :2]).any():
        raise ArgumentError("box", box if boxes.shape[0] == 1 else "...", "give finite x1, y1, x2, y2 pixels with "
                            "x2 >= x1 and y2 >= y1")
    if not (np.isfinite(tolerance) and tolerance >= 0):
        raise ArgumentError("tolerance", tolerance, "give pixels >= 0 to grow each box by")
    peak = peak_location(heatmap, image_size, centres=centres)
    if peak is None:
        return False
    x, y = peak
    # Half-open, as pixels are: a peak on the edge two boxes share (a ViT patch centre) is in the right/lower one only
    inside = ((boxes[:, 0] - tolerance <= x) & (x < boxes[:, 2] + tolerance)
              & (boxes[:, 1] - tolerance <= y) & (y < boxes[:, 3] + tolerance))
    return bool(inside.any())


def pointing_accuracy(
    maps: Sequence[np.ndarray | torch.Tensor],
    boxes: Sequence[Sequence[float] | np.ndarray],
    image_sizes: Sequence[Sequence[int]],
    *,
    tolerance: float = 0.0,
    centres: Optional[CellCentres] = None,
) -> float:
    """Fraction of ``maps`` whose maximum lands in the matching box(es); see :func:`pointing_hit`.

    Args:
        maps: one ``(h, w)`` map per sample, or a ``(B, h, w)`` batch of them (what ``explain_batch`` returns).
        boxes: one ``(4,)`` or ``(K, 4)`` xyxy box array per sample, in its image's pixels.
        image_sizes: one ``(H, W)`` per sample.
        tolerance: pixels by which every box is grown on each side.
        centres: where the maps' cells sit on their images (:func:`~visattn.explain.map_centres`; default:
            equal blocks of each image).
    """
    if not len(maps) == len(boxes) == len(image_sizes) or len(maps) == 0:  # `not maps` fails on a batch tensor
        raise ConfigError(f"got {len(maps)} maps, {len(boxes)} boxes and {len(image_sizes)} image sizes; "
                          "give one of each per sample (at least one)")
    hits = sum(pointing_hit(m, b, s, tolerance=tolerance, centres=centres) for m, b, s in zip(maps, boxes, image_sizes))
    return hits / len(maps)
