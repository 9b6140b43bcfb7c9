"""Noisy linear imputation (Rong, Leemann, Borisov, Kasneci & Kasneci 2022, "A Consistent and Efficient Evaluation
Strategy for Attribution Methods", ICML, section 4: ROAD, RemOve And Debias): removed pixels become the weighted mean
of their eight neighbours, solved for all of them at once, plus a little Gaussian noise.

A fixed fill (black, a mean colour) leaves the removed pixels' shape in the image, and a model can read the class
from that shape alone (the mask leaks it); imputing each pixel from its surroundings hides where pixels were
removed. The weights are ROAD's: 1/6 for the four pixels beside, 1/12 for the four diagonal ones, those outside
the image left out. A removed pixel's neighbours that are also removed are unknowns of the same sparse system, so
a removed region is filled smoothly from its border inwards. An image with every pixel removed has nothing to
impute from, and becomes zeros of the normalised input (its dataset's mean colour), noise added as elsewhere.
"""
from __future__ import annotations

from typing import Optional

import numpy as np
import scipy.sparse
import scipy.sparse.linalg
import torch
from torch import Tensor

NEIGHBOUR_WEIGHTS = (((-1, 0), 1 / 6), ((1, 0), 1 / 6), ((0, -1), 1 / 6), ((0, 1), 1 / 6),
                     ((-1, -1), 1 / 12), ((-1, 1), 1 / 12), ((1, -1), 1 / 12), ((1, 1), 1 / 12))
NOISE_STD = 0.01  # ROAD's, on the normalised input


def noisy_linear_imputation(images: Tensor, removed: Tensor, *, noise_std: float = NOISE_STD,
                            generator: Optional[torch.Generator] = None) -> Tensor:
    """``images`` ``(B, C, H, W)`` with the pixels where ``removed`` ``(B, 1, H, W)`` (or ``(B, H, W)``) is true
    imputed from their neighbours, plus noise of ``noise_std`` drawn from ``generator`` (on the CPU)."""
    removed = removed.reshape(images.shape[0], *images.shape[-2:])
    mask = removed.cpu().numpy()
    whole = mask.all(axis=(1, 2))  # nothing to impute from
    pixels = images.detach().to("cpu", torch.float64).numpy().copy()
    pixels[whole] = 0.0
    _impute(pixels, mask & ~whole[:, None, None])
    out = torch.from_numpy(pixels).to(images.device, images.dtype)
    noise = torch.randn(images.shape, generator=generator).to(images.device, images.dtype) * noise_std
    return torch.where(removed[:, None], out + noise, images)


def _impute(images: np.ndarray, mask: np.ndarray) -> None:
    """Solve, in place, for the pixels of ``images`` ``(B, C, H, W)`` where ``mask`` ``(B, H, W)`` is true: one
    sparse system for the batch, each image's equations apart from the others'."""
    _, height, width = mask.shape
    unknown = np.flatnonzero(mask)  # into (B, H, W)
    if unknown.size == 0:
        return
    values = images.transpose(1, 0, 2, 3).reshape(images.shape[1], -1)  # (C, B * H * W), a copy
    variable = np.full(mask.size, -1)
    variable[unknown] = np.arange(unknown.size)
    image, rest = np.divmod(unknown, height * width)
    rows, cols = np.divmod(rest, width)
    diagonal = np.zeros(unknown.size)
    right_side = np.zeros((unknown.size, values.shape[0]))
    entries_row, entries_col, entries_value = [], [], []
    for (dy, dx), weight in NEIGHBOUR_WEIGHTS:
        y, x = rows + dy, cols + dx
        inside = (y >= 0) & (y < height) & (x >= 0) & (x < width)
        equation = np.flatnonzero(inside)
        neighbour = (image[inside] * height + y[inside]) * width + x[inside]
        diagonal[equation] += weight
        is_unknown = variable[neighbour] >= 0
        entries_row.append(equation[is_unknown])
        entries_col.append(variable[neighbour[is_unknown]])
        entries_value.append(np.full(int(is_unknown.sum()), -weight))
        right_side[equation[~is_unknown]] += weight * values[:, neighbour[~is_unknown]].T
    # each removed pixel: (sum of its neighbours' weights) x - (weights of removed neighbours) . x = known part
    system = scipy.sparse.csc_matrix(
        (np.concatenate([diagonal, *entries_value]),
         (np.concatenate([np.arange(unknown.size), *entries_row]),
          np.concatenate([np.arange(unknown.size), *entries_col]))),
        shape=(unknown.size, unknown.size))
    images[image, :, rows, cols] = scipy.sparse.linalg.spsolve(system, right_side).reshape(unknown.size, -1)
