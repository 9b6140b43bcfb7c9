"""Deletion and insertion scores of saliency maps (Petsiuk, Das & Saenko 2018, "RISE: Randomized Input Sampling
for Explanation of Black-box Models", section 4.1): does the model rely on the pixels a map ranks first?

Deletion replaces the input's pixels, most salient first, with a fill, and follows the explained class's
probability down; insertion puts them back, most salient first, onto a blurred copy of the image (RISE's canvas: an
11-pixel Gaussian of sigma 5, narrower on images under 6 px), and follows it up. Each curve has ``steps + 1``
points, at ``0, 1/steps, ..., 1`` of the pixels, and its area (trapezoids over ``[0, 1]``) is the score: a faithful
map's deletion area is low and its insertion area high. Pixels are ranked by the map resampled to the input (ties,
as within a ViT's patch, in raster order).

What deleted pixels become decides what deletion measures. RISE's code fills zeros of the normalised input, the
dataset's mean colour; scattered mean-gray pixels on Fashion-MNIST's black canvas are themselves a pattern the
model reads, and random maps then delete "better" than the model's own (measured on 1000 test images: the shipped
SE-ResNet-20's Grad-CAM maps 0.326, random maps 0.215; filled with black, 0.189 and 0.451), so ``black`` is the
default here, as it is Quantus' pixel-flipping baseline; ``mean`` and ``blur`` (the insertion canvas) are the
others, and ``imputed`` fills each deleted pixel from its neighbours (ROAD's noisy linear imputation,
:mod:`visattn.explain.linear_imputation`), which leaves no mask shape for the model to read.

The pointing game asks whether a map finds the object; these ask whether it finds what the model used, which a
map can do on a wrong object, or fail to do on the right one.
"""
from __future__ import annotations

import functools
from typing import Callable, Literal, Sequence, Union

import torch
import torchvision.transforms.v2.functional as TF
from torch import Tensor, nn

from ..errors import ArgumentError, ConfigError, is_count
from ..modes import eval_mode
from ..wrapped_models import as_module
from .linear_imputation import noisy_linear_imputation

Fill = Literal["black", "mean", "blur", "imputed"]
FILLS = ("black", "mean", "blur", "imputed")
BLUR_KERNEL, BLUR_SIGMA = 11, 5.0  # RISE's insertion canvas
# what deleted pixels become: a tensor broadcast to the images, or a function of (images, deleted (B, 1, H, W))
DeletionFill = Union[Tensor, Callable[[Tensor, Tensor], Tensor]]


def deletion_fill(images: Tensor, fill: Fill, mean: Sequence[float], std: Sequence[float], *,
                  generator: torch.Generator | None = None) -> DeletionFill:
    """What deleted pixels of normalised ``images`` ``(B, C, H, W)`` become, broadcast to them: black or the mean
    colour through the normalisation ``mean``/``std`` (a gray input's, their first channel's), or the blurred
    image; for ``imputed``, the function that imputes them from the pixels left (its noise drawn from
    ``generator``)."""
    check_fill(fill)
    if fill == "imputed":
        return functools.partial(noisy_linear_imputation, generator=generator)
    if fill == "blur":
        return _blurred(images)
    channels = images.shape[1]
    mean_t = torch.as_tensor(mean, dtype=images.dtype, device=images.device)[:channels, None, None]
    std_t = torch.as_tensor(std, dtype=images.dtype, device=images.device)[:channels, None, None]
    colour = -mean_t / std_t if fill == "black" else torch.zeros_like(mean_t)  # (C, 1, 1)
    return colour.expand_as(images[0]).expand_as(images)


def check_fill(fill: str) -> None:
    if fill not in FILLS:
        raise ArgumentError("fill", fill, f"use one of {', '.join(FILLS)}")


def _blurred(images: Tensor) -> Tensor:
    # reflect padding needs the kernel's half under the image's side: a narrower kernel below 6 px
    kernel = min(BLUR_KERNEL, 2 * min(images.shape[-2:]) - 1)
    return TF.gaussian_blur(images, [kernel, kernel], [BLUR_SIGMA, BLUR_SIGMA])


@torch.no_grad()
def deletion_insertion_curves(
    model: nn.Module,
    images: Tensor,
    maps: Tensor,
    classes: Tensor,
    fill: DeletionFill,
    *,
    steps: int = 16,
) -> tuple[Tensor, Tensor]:
    """The explained classes' probabilities as the maps' pixels are deleted, and as they are inserted.

    Args:
        model: a classifier returning logits; run in eval mode.
        images: normalised model inputs ``(B, C, H, W)``.
        maps: one saliency map per image at the input's size ``(B, H, W)``; higher is more salient.
        classes: the class explained in each image ``(B,)``.
        fill: what deleted pixels become, broadcast to ``images``, or a function of the images and the deleted
            pixels ``(B, 1, H, W)`` giving the images with them filled (:func:`deletion_fill`).
        steps: points of each curve besides the first (the whole image, or the canvas); the model runs on the
            batch ``2 * (steps + 1)`` times.

    Returns:
        ``(deletion, insertion)``, each ``(B, steps + 1)``.
    """
    if not is_count(steps):
        raise ArgumentError("steps", steps, "give a whole number of curve steps, 1 or more")
    if maps.shape != (images.shape[0], *images.shape[-2:]):
        raise ConfigError(f"maps of shape {tuple(maps.shape)} do not cover images of shape {tuple(images.shape)}; "
                          "give one (H, W) map per image at the input's size")
    model = as_module(model)
    pixels = images.shape[-2] * images.shape[-1]
    order = maps.flatten(1).float().argsort(dim=1, descending=True, stable=True)  # (B, H * W), most salient first
    rank = torch.empty_like(order).scatter_(1, order, torch.arange(pixels, device=order.device).expand_as(order))
    rank = rank.view(images.shape[0], 1, *images.shape[-2:])  # (B, 1, H, W)
    canvas = _blurred(images)
    deletion, insertion = [], []
    with eval_mode(model):
        for count in torch.linspace(0, pixels, steps + 1).round().long().tolist():  # pixels moved at each point
            moved = rank < count
            deleted = fill(images, moved) if callable(fill) else torch.where(moved, fill, images)
            deletion.append(_class_probability(model, deleted, classes))
            insertion.append(_class_probability(model, torch.where(moved, images, canvas), classes))
    return torch.stack(deletion, dim=1), torch.stack(insertion, dim=1)


def _class_probability(model: nn.Module, images: Tensor, classes: Tensor) -> Tensor:
    return model(images).float().softmax(dim=1).gather(1, classes[:, None])[:, 0]  # (B,)


def curve_area(curves: Tensor) -> Tensor:
    """Area under each ``(..., points)`` curve, its points evenly spaced over ``[0, 1]`` (trapezoids)."""
    return torch.trapezoid(curves, dx=1.0 / (curves.shape[-1] - 1), dim=-1)
