"""Gradient-weighted attention rollout (Chefer, Gur & Wolf 2021, "Generic Attention-model Explainability for
Interpreting Bi-Modal and Encoder-Decoder Transformers", eqs. 5-6, their rule for self-attention).

Each block's attention ``A`` ``(heads, N, N)`` is weighed by the class score's gradient with respect to it, only
what raises the score is kept, and the heads are averaged: ``Ā = E_h[(∇A ⊙ A)^+]``. Starting from the identity
(each token is its own), the blocks are accumulated in forward order, ``R ← R + Ā R``. Row ``i`` of ``R`` says how
relevant each input token is to the class score through token ``i``; the map reads the rows the head reads, as
rollout's does. Unlike rollout's, the map depends on the class asked for.

jacobgil/vit-explain's ``grad_rollout`` is a variant of the same idea: it averages the heads before dropping the
negative part, and discards the weakest entries and renormalises the rows, as rollout does.
"""
from __future__ import annotations

import contextlib
from typing import Iterator, Sequence, Union

import torch
from torch import Tensor, nn

from ..errors import ConfigError
from .attention import (check_gives_attention, once_each_in_order, recorded_inputs, returns_attention,
                        timm_attention_modules, token_map)
from .gradcam import TargetClass, explained_classes


def gradient_rollout(
    attentions: Sequence[Tensor],
    gradients: Sequence[Tensor],
    grid: tuple[int, int],
    *,
    num_prefix_tokens: int = 1,
    pooled: Union[bool, Tensor] = False,
) -> tuple[Tensor, Tensor]:
    """Accumulate the blocks' gradient-weighted attention.

    Args:
        attentions: per-block attention probabilities in forward order, each ``(B, heads, N, N)``.
        gradients: the class score's gradient with respect to each, of the same shapes.
        grid, num_prefix_tokens, pooled: as :func:`attention_rollout` takes them.

    Returns:
        ``(map, relevance)``: the ``(B, rows, cols)`` map over the patches and the ``(B, N, N)`` relevance matrix.
    """
    if len(attentions) == 0 or len(attentions) != len(gradients):
        raise ConfigError(f"gradient rollout needs each block's attention and its gradient; got {len(attentions)} "
                          f"attention maps and {len(gradients)} gradients")
    relevance = None
    with torch.autocast(attentions[0].device.type, enabled=False):
        for attn, grad in zip(attentions, gradients):
            weighed = (grad.float() * attn.float()).clamp_min(0).mean(dim=1)  # (B, N, N)
            if relevance is None:
                relevance = torch.eye(weighed.shape[-1], device=weighed.device).expand_as(weighed)
            relevance = relevance + weighed @ relevance
    return token_map(relevance, grid, num_prefix_tokens, pooled=pooled), relevance


def attention_gradients(model: nn.Module, images: Tensor,
                        target_class: TargetClass = None) -> tuple[list[Tensor], tuple[Tensor, ...], Tensor]:
    """Every block's attention probabilities ``(B, heads, N, N)`` as ``model``'s forward of ``images`` used them, the
    gradient of each image's explained class score (``target_class``, else the predicted one) with respect to each,
    and those classes ``(B,)``. The caller holds the model in eval mode."""
    check_gives_attention(model, method="gradrollout")
    if getattr(model, "num_classes", None) == 0:
        raise ConfigError(f"gradrollout explains a class score, and this {type(model).__name__} has no classifier "
                          "head (num_classes=0); build it with num_classes=N, or use method 'rollout'")
    with torch.inference_mode(False), torch.enable_grad():
        inputs = images.detach().clone().requires_grad_(True)  # a graph also when the parameters are frozen
        if returns_attention(model):
            logits, attentions = model(inputs, return_attention=True)
            attentions = list(attentions)
        else:
            # each block's probabilities as its forward uses them: the input of attn_drop, the identity in eval mode
            dropouts = [module.attn_drop for module in timm_attention_modules(model)]
            with _timm_softmax_path(model), recorded_inputs(dropouts) as caught:
                logits = model(inputs)
            attentions = [probs for _, probs in once_each_in_order(model, caught, dropouts)]
        classes = explained_classes(logits, target_class)
        score = logits.gather(1, classes[:, None]).sum()  # images are independent in eval mode
        gradients = torch.autograd.grad(score, attentions)
    return [attn.detach() for attn in attentions], gradients, classes.detach()


@contextlib.contextmanager
def _timm_softmax_path(model: nn.Module) -> Iterator[None]:
    """timm's attention modules on their softmax path rather than the fused kernel inside the block, as they were
    on the way out."""
    modules = timm_attention_modules(model)
    fused = [module.fused_attn for module in modules]
    try:
        for module in modules:
            module.fused_attn = False
        yield
    finally:
        for module, was_fused in zip(modules, fused):
            module.fused_attn = was_fused
