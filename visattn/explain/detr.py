"""Where a DETR-style detector looks: each detection's cross-attention over the image.

Carion, Massa, Synnaeve, Usunier, Kirillov, Zagoruyko, "End-to-End Object Detection with
Transformers", ECCV 2020 (arXiv:2005.12872), §4.2 and fig. 6: the last decoder layer's attention
of a predicted object's query over the encoder's feature grid falls on the object's extremities.
Here it is averaged over the heads and laid over the input image, one map per detection.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..errors import ConfigError

Detections = list[dict[str, Tensor]]


def has_decoder_attention(model: nn.Module) -> bool:
    """Whether ``model`` is a DETR-style detector, whose queries' cross-attention can be shown."""
    return hasattr(getattr(model, "transformer", None), "decoder")


def detection_attention(model: nn.Module, images: list[Tensor]) -> tuple[Detections, list[Tensor]]:
    """Detections of a DETR-style ``model`` in eval mode (as ``model(images)`` gives them) and, per
    image, the maps ``(D, H, W)`` of its ``D`` detections at that image's size: the last decoder
    layer's cross-attention of each detection's query, averaged over heads (each sums to 1 over
    the feature grid before resizing)."""
    if not has_decoder_attention(model):
        raise ConfigError(f"{type(model).__name__} has no decoder attention to show; use a DETR-style "
                          "detector (`visattn models 'detr_*'`)")
    attention = model.transformer.decoder[-1].cross_attn
    seen: dict[str, object] = {}
    hooks = [model.transform.register_forward_hook(lambda module, args, out: seen.update(batch=out[0])),
             model.input_proj.register_forward_hook(lambda module, args, out: seen.update(grid=out.shape[-2:]))]
    attention.keep_attention = True
    try:
        with torch.no_grad():
            detections = model(images)
        probs = attention.last_attention.float().mean(dim=1)  # (B, Q, h * w)
    finally:
        attention.keep_attention, attention.last_attention = False, None
        for hook in hooks:
            hook.remove()
    batch, (rows, cols) = seen["batch"], seen["grid"]
    padded_h, padded_w = batch.tensors.shape[-2:]
    maps = []
    for image_probs, found, (height, width), image in zip(probs, detections, batch.image_sizes, images):
        grid = image_probs[found["queries"]].view(-1, rows, cols)
        # the grid covers the padded batch: keep the cells over this image, then scale them to it
        grid = grid[:, : math.ceil(height * rows / padded_h), : math.ceil(width * cols / padded_w)]
        maps.append(F.interpolate(grid[None], size=tuple(image.shape[-2:]), mode="bilinear")[0])
    return detections, maps
