"""Where a detector looks: one map per detection, laid over the input image.

- DETR-style detectors: the query's cross-attention. Carion, Massa, Synnaeve, Usunier, Kirillov,
  Zagoruyko, "End-to-End Object Detection with Transformers", ECCV 2020 (arXiv:2005.12872), §4.2
  and fig. 6: the last decoder layer's attention of a predicted object's query over the encoder's
  feature grid falls on the object's extremities. Here it is averaged over the heads.
- Every other detector (FCOS): gradient × input of the detection's score over the image's pixels.
  Shrikumar, Greenside, Shcherbina, Kundaje, "Not Just a Black Box: Learning Important Features
  Through Propagating Activation Differences", 2016 (arXiv:1605.01713); Simonyan, Vedaldi,
  Zisserman, "Deep Inside Convolutional Networks", ICLR 2014 workshop (arXiv:1312.6034).

Both take torchvision-API detectors on ``(3, H, W)`` images in 0..1; each detection's map is at its
image's size, or at most ``max_side`` pixels on its longer side (to draw it: a 12 MP photo's maps take
48 MB a detection at its full size).
"""
from __future__ import annotations

import warnings
from functools import partial
from typing import Any, Optional

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from ..errors import ArgumentError, ConfigError, VisattnWarning, is_count, outside_visattn
from ..models.detection import detect_by_size
from .cell_centres import map_centres
from ..modes import eval_mode, model_lock

Detections = list[dict[str, Tensor]]


def has_decoder_attention(model: nn.Module) -> bool:
    """Whether ``model`` is a DETR-style detector, whose queries' cross-attention can be shown."""
    return hasattr(getattr(model, "transformer", None), "decoder")


def detection_maps(model: nn.Module, images: list[Tensor], *, min_score: float = 0.0,
                   max_side: Optional[int] = None) -> tuple[Detections, list[Tensor]]:
    """Detections of ``model`` in eval mode scoring at least ``min_score`` (as ``model(images)`` gives
    them) and, per image, the maps ``(D, H, W)`` of its ``D`` detections at that image's size (shrunk to
    :func:`map_size` with ``max_side``): the query's cross-attention of a DETR-style detector, else
    gradient × input of the detection's score."""
    check_max_side(max_side)
    if has_decoder_attention(model):
        return detection_attention(model, images, min_score=min_score, max_side=max_side)
    return detection_saliency(model, images, min_score=min_score, max_side=max_side)


def check_max_side(value: Optional[int], argument: str = "max_side") -> None:
    """One line unless ``value`` is a whole number of pixels or None: 0 or -5 would draw 1x1 maps."""
    if value is not None and not is_count(value):
        raise ArgumentError(argument, value, "give a whole number of pixels >= 1, or None for the images' size")


def map_size(image_size: tuple[int, int], max_side: Optional[int] = None) -> tuple[int, int]:
    """``image_size`` ``(H, W)`` scaled so that its longer side is at most ``max_side`` (None: as it is)."""
    scale = 1.0 if max_side is None else min(1.0, max_side / max(image_size))
    return max(1, round(image_size[0] * scale)), max(1, round(image_size[1] * scale))


def detection_attention(model: nn.Module, images: list[Tensor], *, min_score: float = 0.0,
                        max_side: Optional[int] = None) -> tuple[Detections, list[Tensor]]:
    """A DETR-style detector's detections and each one's last-decoder-layer cross-attention, averaged
    over heads (each sums to 1 over the feature grid before resizing); see :func:`detection_maps`."""
    if not has_decoder_attention(model):
        raise ConfigError(f"{type(model).__name__} has no decoder attention to show; use a DETR-style "
                          "detector (`visattn models 'detr_*'`)")
    # One forward per image size, as the detector itself runs them: the attention read is that forward's.
    found = detect_by_size(partial(_with_attention, model, min_score=min_score, max_side=max_side), images)
    return [{k: v for k, v in f.items() if k != "attention"} for f in found], [f["attention"] for f in found]


def _with_attention(model: nn.Module, images: list[Tensor], *, min_score: float,
                    max_side: Optional[int]) -> Detections:
    """:func:`detection_attention` of same-size images, each detection's map under ``"attention"``."""
    attention = model.transformer.decoder[-1].cross_attn
    seen: dict[str, Any] = {}
    with model_lock(model):  # the flag and hooks are this call's alone, so no other thread's maps are taken
        hooks = [model.transform.register_forward_hook(lambda module, args, out: seen.update(batch=out[0])),
                 model.input_proj.register_forward_hook(lambda module, args, out: seen.update(grid=out.shape[-2:]))]
        kept, attention.keep_attention = attention.keep_attention, True
        try:
            with torch.no_grad():
                detections = _scoring(model(images), min_score)
            probs = attention.last_attention.float().mean(dim=1)  # (B, Q, h * w)
        finally:
            attention.keep_attention = kept  # a caller that keeps the attention itself still has it
            if not kept:
                attention.last_attention = None
            for hook in hooks:
                hook.remove()
    rows, cols = seen["grid"]
    grids = [image_probs[found["queries"]].view(-1, rows, cols) for image_probs, found in zip(probs, detections)]
    maps = _on_images(grids, seen["batch"], images, model.backbone, max_side)
    return [{**found, "attention": image_maps} for found, image_maps in zip(detections, maps)]


def detection_saliency(model: nn.Module, images: list[Tensor], *, min_score: float = 0.0,
                       max_side: Optional[int] = None) -> tuple[Detections, list[Tensor]]:
    """A detector's detections and each one's gradient × input map ``|Σ_c x_c ∂s/∂x_c|`` over its
    image's 0..1 pixels ``x``, for its score ``s``, averaged over blocks of pixels when shrunk by
    ``max_side``; see :func:`detection_maps`.

    One backward pass per detection scoring at least ``min_score``. Grad-CAM was tried and left out:
    on the shipped FCOS (87 detections of 40 test scenes) its maps peaked in their detection's box
    for 0.44 (backbone's last stage) to 0.59 (stage 2) of detections, under the image's brightness
    (0.49); gradient × input scored 0.92 there, and 0.909 on all 1000 test scenes.
    """
    with torch.inference_mode(False), torch.enable_grad(), eval_mode(model):
        # inputs that need a gradient put every activation on the graph, even with frozen parameters
        inputs = [image.detach().clone().requires_grad_(True) for image in images]
        detections = _scoring(model(inputs), min_score)
        _warn_of_a_long_wait(detections, inputs)
        maps = []
        for pixels, found in zip(inputs, detections):
            # each (3, H, W) gradient reduced to its (H, W) map at once: kept for every detection, a photo's
            # gradients take gigabytes (93 detections of a 12 MP photo: 13 GB)
            size = map_size(tuple(pixels.shape[-2:]), max_side)
            image_maps = [_shrunk(_gradient_times_input(score, pixels), size) for score in found["scores"]]
            maps.append(torch.stack(image_maps) if image_maps else pixels.new_zeros((0, *size)))
    return [{k: v.detach() for k, v in found.items()} for found in detections], maps


# Pixel-passes (a detection's backward pass through its image's pixels) above which maps take minutes: 52
# detections of a 12 MP photo (6.2e8) took 31 s more than detecting alone on 2 CPU cores, 87 of 48 MP 143 s.
SLOW_SALIENCY_PIXELS = 2e8


def _warn_of_a_long_wait(detections: Detections, images: list[Tensor]) -> None:
    passes = [(len(found["scores"]), image[0].numel()) for found, image in zip(detections, images)]
    if sum(count * pixels for count, pixels in passes) > SLOW_SALIENCY_PIXELS:
        count, largest = sum(count for count, _ in passes), max(pixels for _, pixels in passes) / 1e6
        warnings.warn(f"attention maps of {count} detections take a backward pass each, through images of up to "
                      f"{largest:.3g} MP: this may take minutes; raise the score threshold (--score-threshold) for "
                      "fewer detections, or give smaller images", VisattnWarning, stacklevel=outside_visattn())


def _gradient_times_input(score: Tensor, pixels: Tensor) -> Tensor:
    gradient = torch.autograd.grad(score, pixels, retain_graph=True)[0]  # (3, H, W)
    return (gradient * pixels).sum(dim=0).abs().detach()  # (H, W)


def _shrunk(heat: Tensor, size: tuple[int, int]) -> Tensor:
    """An ``(H, W)`` map averaged over blocks to ``size`` (itself at its own size)."""
    return heat if tuple(heat.shape) == size else F.interpolate(heat[None, None], size=size, mode="area")[0, 0]


def _scoring(detections: Detections, min_score: float) -> Detections:
    return [{k: v[found["scores"] >= min_score] for k, v in found.items()} for found in detections]


def _on_images(grids: list[Tensor], batch: Any, images: list[Tensor], backbone: nn.Module,
               max_side: Optional[int] = None) -> list[Tensor]:
    """Each image's ``(D, rows, cols)`` maps over the padded batch ``batch`` (an ``ImageList``) at its own
    pixels, ``(D, H, W)``, or :func:`map_size`'s: the cells sit where ``backbone``'s do in the padded batch (:func:`map_centres`),
    which holds the image resized to ``image_sizes`` in its top-left corner (so a cell the image does not
    fill stays where it was)."""
    padded = tuple(batch.tensors.shape[-2:])
    maps = []
    for grid, (height, width), image in zip(grids, batch.image_sizes, images):
        size = map_size(tuple(image.shape[-2:]), max_side)
        centres = map_centres(backbone, grid.shape[-2:], padded).scaled(size[0] / height, size[1] / width)
        maps.append(centres.resample(grid.float(), size))
    return maps
