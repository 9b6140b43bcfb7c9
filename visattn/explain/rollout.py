"""Attention rollout (Abnar & Zuidema 2020, "Quantifying Attention Flow in Transformers").

Each block's attention is fused over heads, its weakest entries are optionally discarded, the
residual connection is modelled by adding the identity, rows are re-normalised, and the blocks
are multiplied in order: ``R = Â_L ··· Â_2 Â_1`` with ``Â = rownorm(A + I)``. Row ``i`` of ``R``
says how much of token ``i``'s final representation flows from each input token.

The paper averages the heads and keeps every entry (``head_fusion="mean"``, ``discard_ratio=0``,
the defaults). Max/min fusion and the discard ratio follow jacobgil/vit-explain, with two
differences: rows are re-normalised each to sum 1 (vit-explain divides without ``keepdim``, which
broadcasts over columns), and exactly ``int(ratio * N * N)`` entries are discarded, the prefix
tokens' attention to themselves kept.
"""
from __future__ import annotations

from typing import Literal, Sequence, Union

import torch
from torch import Tensor

from ..errors import ConfigError, is_number
from .attention import token_map

HeadFusion = Literal["mean", "max", "min"]


def fuse_heads(attn: Tensor, head_fusion: HeadFusion = "mean") -> Tensor:
    """``(B, heads, N, N)`` -> ``(B, N, N)`` by the mean, max or min over heads."""
    if head_fusion == "mean":
        return attn.mean(dim=1)
    if head_fusion == "max":
        return attn.amax(dim=1)
    if head_fusion == "min":
        return attn.amin(dim=1)
    raise ConfigError(f"head_fusion={head_fusion!r}: use 'mean', 'max' or 'min'")


def discard_lowest(attn: Tensor, ratio: float, num_prefix_tokens: int = 1) -> Tensor:
    """Zero the ``ratio`` fraction of smallest entries of each ``(N, N)`` matrix in ``attn`` ``(B, N, N)``.

    The prefix tokens' attention to themselves (the class token's own entry) is never discarded.
    """
    if not (is_number(ratio) and 0.0 <= ratio < 1.0):  # a string would be a TypeError
        raise ConfigError(f"discard_ratio={ratio!r}: use a number in [0, 1)")
    own = torch.arange(num_prefix_tokens, device=attn.device) * (attn.shape[-1] + 1)  # diagonal (p, p)
    # At most the unprotected entries: beyond them topk would pick protected ones (ratio 0.99 of 9 tokens, 5 prefix).
    count = min(int(attn.shape[-1] * attn.shape[-1] * ratio), attn.shape[-1] * attn.shape[-1] - len(own))
    if count == 0:
        return attn
    flat = attn.flatten(1).clone()  # (B, N * N)
    protected = torch.zeros_like(flat, dtype=torch.bool)
    protected[:, own] = True
    ranked = flat.masked_fill(protected, float("inf"))
    lowest = ranked.topk(count, dim=1, largest=False).indices
    return flat.scatter(1, lowest, 0.0).view_as(attn)


def attention_rollout(
    attentions: Sequence[Tensor],
    grid: tuple[int, int],
    *,
    num_prefix_tokens: int = 1,
    head_fusion: HeadFusion = "mean",
    discard_ratio: float = 0.0,
    pooled: Union[bool, Tensor] = False,
) -> tuple[Tensor, Tensor]:
    """Roll attention out through all blocks.

    Args:
        attentions: per-block attention probabilities in forward order, each ``(B, heads, N, N)``.
        grid: patch grid ``(rows, cols)``; ``N = num_prefix_tokens + rows * cols``.
        num_prefix_tokens: class/register tokens before the patches; the map is the class token's
            row of the rollout, or with no prefix tokens the mean of all rows.
        head_fusion: how the heads of a block are combined: ``"mean"``, ``"max"`` or ``"min"``.
        discard_ratio: fraction of each fused matrix's smallest entries set to zero before
            adding the identity (the paper keeps all: 0; vit-explain's option).
        pooled: the head averages the patch tokens (``global_pool="avg"``): the map is their
            rows' mean instead of the class token's row; or ``(B, rows * cols)`` weights, an attention pool's
            reading of each patch token (``global_pool="map"``), for their rows' weighted sum.

    Returns:
        ``(map, rollout)``: the ``(B, rows, cols)`` map over the patches and the full
        ``(B, N, N)`` rollout matrix, whose rows sum to 1.
    """
    if len(attentions) == 0:  # a list, or the blocks' maps stacked in one tensor
        raise ConfigError("attention rollout needs at least one block's attention")
    rollout = None
    # float32 also under autocast: bf16 products of 12 blocks left rows 0.004 off summing to 1, maps 0.8% off
    with torch.autocast(attentions[0].device.type, enabled=False):
        for attn in attentions:
            fused = discard_lowest(fuse_heads(attn.float(), head_fusion), discard_ratio, num_prefix_tokens)
            eye = torch.eye(fused.shape[-1], device=fused.device, dtype=fused.dtype)
            fused = fused + eye  # the residual path carries each token to itself
            fused = fused / fused.sum(dim=-1, keepdim=True)
            rollout = fused if rollout is None else fused @ rollout  # (B, N, N)
    return token_map(rollout, grid, num_prefix_tokens, pooled=pooled), rollout
