"""The pointing game (Zhang et al. 2016, "Top-down Neural Attention by Excitation Backprop", ECCV).

A map scores a *hit* when its maximum, after upsampling the map to the image, falls inside a
ground-truth box of the object it should explain; pointing accuracy is ``hits / (hits + misses)``.
The paper allows 15 pixels of tolerance on ~500 px photos; visattn's scenes are 28-64 px, so the
tolerance defaults to 0 and is a parameter.

Coordinates: boxes are ``xyxy`` in continuous pixel units, pixel ``(row, col)`` covering
``[col, col + 1) x [row, row + 1)`` (the COCO / torchvision convention: a box tight around
columns ``a..b`` has ``x1 = a, x2 = b + 1``). The map's maximum is tested at its pixel centre;
where upsampling leaves a plateau of equal maxima (a peak cell on the map's border), at the
plateau's centre. A constant map has no maximum and always misses. The tolerance grows each box by
that many pixels on every side (a square margin, not the disk of TorchRay's implementation).
"""
from __future__ import annotations

from typing import Sequence

import numpy as np
import torch
from scipy import ndimage

from ..errors import ConfigError
from .overlay import resize_map


def peak_location(heatmap: np.ndarray | torch.Tensor, image_size: Sequence[int]) -> tuple[float, float] | None:
    """``(x, y)`` of the maximum of ``heatmap`` upsampled (bilinear, in float64) to ``image_size = (H, W)``:
    the centre of the plateau of equal maxima holding the first one in row-major order (one pixel's
    centre when the maximum is a single pixel), or the plateau pixel nearest that centre when the centre
    falls outside it (an L- or ring-shaped plateau); ``None`` for a constant map."""
    upsampled = resize_map(heatmap, (int(image_size[0]), int(image_size[1])), dtype=torch.float64)
    if not np.isfinite(upsampled).all():
        raise ConfigError("the map holds NaN or infinite values; check the model and its input")
    grid = heatmap.detach().cpu().double().numpy() if torch.is_tensor(heatmap) else np.asarray(heatmap, np.float64)
    if np.ptp(grid) == 0:  # told on the map itself: upsampling in float32 gave a constant map noise, and a peak
        return None
    plateaus, _ = ndimage.label(upsampled == upsampled.max(), structure=np.ones((3, 3)))
    plateau = plateaus == plateaus.flat[int(np.argmax(upsampled))]
    rows, cols = np.nonzero(plateau)
    x, y = float(cols.mean()) + 0.5, float(rows.mean()) + 0.5
    if plateau[int(y), int(x)]:
        return x, y
    nearest = int(np.argmin((cols + 0.5 - x) ** 2 + (rows + 0.5 - y) ** 2))
    return float(cols[nearest]) + 0.5, float(rows[nearest]) + 0.5


def pointing_hit(
    heatmap: np.ndarray | torch.Tensor,
    box: Sequence[float] | np.ndarray,
    image_size: Sequence[int],
    *,
    tolerance: float = 0.0,
) -> bool:
    """Whether the map's maximum lands in the box.

    Args:
        heatmap: ``(h, w)`` map over the image (any grid; it is upsampled to ``image_size``).
        box: ``(4,)`` box ``x1, y1, x2, y2`` in the image's pixels, or ``(K, 4)`` boxes of which
            any may be hit (several instances of the target).
        image_size: ``(H, W)`` of the image the boxes refer to.
        tolerance: pixels by which every box is grown on each side.
    """
    boxes = np.asarray(box, dtype=np.float64).reshape(-1, 4)
    if boxes.size == 0:
        raise ConfigError("pointing needs at least one box")
    peak = peak_location(heatmap, image_size)
    if peak is None:
        return False
    x, y = peak
    inside = ((boxes[:, 0] - tolerance <= x) & (x <= boxes[:, 2] + tolerance)
              & (boxes[:, 1] - tolerance <= y) & (y <= boxes[:, 3] + tolerance))
    return bool(inside.any())


def pointing_accuracy(
    maps: Sequence[np.ndarray | torch.Tensor],
    boxes: Sequence[Sequence[float] | np.ndarray],
    image_sizes: Sequence[Sequence[int]],
    *,
    tolerance: float = 0.0,
) -> float:
    """Fraction of ``maps`` whose maximum lands in the matching box(es); see :func:`pointing_hit`.

    Args:
        maps: one ``(h, w)`` map per sample.
        boxes: one ``(4,)`` or ``(K, 4)`` xyxy box array per sample, in its image's pixels.
        image_sizes: one ``(H, W)`` per sample.
        tolerance: pixels by which every box is grown on each side.
    """
    if not len(maps) == len(boxes) == len(image_sizes) or not maps:
        raise ConfigError(f"got {len(maps)} maps, {len(boxes)} boxes and {len(image_sizes)} image sizes; "
                          "give one of each per sample (at least one)")
    hits = sum(pointing_hit(m, b, s, tolerance=tolerance) for m, b, s in zip(maps, boxes, image_sizes))
    return hits / len(maps)
