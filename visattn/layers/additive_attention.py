"""Additive (Bahdanau) soft attention over a set of feature vectors.

Papers: Bahdanau, Cho, Bengio, "Neural Machine Translation by Jointly Learning to Align and
Translate", ICLR 2015 (arXiv:1409.0473); used over image regions by Xu et al., "Show, Attend and
Tell: Neural Image Caption Generation with Visual Attention", ICML 2015 (arXiv:1502.03044).

The score of region ``p`` for query ``h`` is ``w^T tanh(W_f f_p + W_h h)``; a softmax over the
regions gives weights ``α`` (summing to 1) and the context is ``Σ_p α_p f_p``.

The score is computed as ``2 w^T σ(2u) - Σw`` with ``u = W_f f_p + W_h h``, which equals
``w^T tanh(u)`` (``tanh(u) = 2σ(2u) - 1``): PyTorch's CPU ``tanh`` kernel took 11x its ``sigmoid``
on the AMD EPYC we measured, and this ``(B, P, attn_dim)`` activation dominated a decoding step.
"""
import math
from typing import Optional

import torch
from torch import Tensor, nn

from .onednn_linear import linear


class AdditiveAttention(nn.Module):
    """Soft attention: context and weights for a query over ``P`` feature vectors.

    Args:
        feature_dim: size of each feature vector ``f_p``.
        query_dim: size of the query (the decoder's hidden state).
        attn_dim: size of the hidden layer the two are projected into.
    """

    def __init__(self, feature_dim: int, query_dim: int, *, attn_dim: int = 256) -> None:
        super().__init__()
        self.feature_proj = nn.Linear(feature_dim, attn_dim)
        self.query_proj = nn.Linear(query_dim, attn_dim)
        self.score = nn.Linear(attn_dim, 1)

    def project_features(self, features: Tensor) -> Tensor:
        """``2 W_f f`` for all regions, ``(B, P, attn_dim)``: the image's share of ``2u``; compute once
        per image, reuse every step."""
        return linear(features, 2 * self.feature_proj.weight, 2 * self.feature_proj.bias)

    def forward(
        self,
        features: Tensor,
        query: Tensor,
        *,
        projected: Optional[Tensor] = None,
        mask: Optional[Tensor] = None,
        rows: Optional[Tensor] = None,
        gates_buffer: Optional[Tensor] = None,
    ) -> tuple[Tensor, Tensor]:
        """Context ``(B, feature_dim)`` and weights ``α`` ``(B, P)``; with ``M`` queries per feature
        set, ``(B, M, feature_dim)`` and ``(B, M, P)``.

        Args:
            features: ``(B, P, feature_dim)`` region features.
            query: ``(B, query_dim)``, or ``(B, M, query_dim)`` for ``M`` queries over the same
                features (the beams of one image): the features are then shared, not copied ``M`` times.
            projected: ``project_features(features)``, to skip recomputing it each decoding step.
            mask: ``(B, P)`` bool, ``True`` for regions that may be attended; others get weight 0,
                and a row with none gets context 0.
            rows: ``(R,)`` the only queries that attend, indices into the ``B * M`` queries in image
                order (decoding: hypotheses that have not ended); the others get weight 0 and context 0.
            gates_buffer: flat memory for the ``(R, P, attn_dim)`` activation, at least that many
                elements of ``projected``'s dtype, reused by every decoding step (not under autograd).
                A fresh buffer that size is new memory from the OS each step on CPU, and its page
                faults cost the batched search's first steps six times their arithmetic.
        """
        if projected is None:
            projected = self.project_features(features)
        one_query = query.ndim == 2
        queries = query[:, None] if one_query else query  # (B, M, query_dim)
        doubled_query = linear(queries, 2 * self.query_proj.weight, 2 * self.query_proj.bias)  # (B, M, attn_dim)
        if rows is None:
            # In place: one (B, M, P, attn_dim) buffer per step instead of two (beam search is bound by this).
            gates = torch.add(projected[:, None], doubled_query[:, :, None],
                              out=_view(gates_buffer, (*queries.shape[:2], *projected.shape[1:]))).sigmoid_()  # σ(2u)
            alpha = self._weights(gates, None if mask is None else mask[:, None])  # (B, M, P)
        else:
            per_image = queries.shape[1]
            images = rows // per_image
            # (R, P, attn_dim): each attending query's image's projected features
            gates = torch.index_select(projected, 0, images, out=_view(gates_buffer, (len(rows), *projected.shape[1:])))
            gates.add_(doubled_query.flatten(0, 1).index_select(0, rows)[:, None])  # + (R, 1, attn_dim)
            row_alpha = self._weights(gates.sigmoid_(), None if mask is None else mask.index_select(0, images))  # (R, P)
            # (B * M, P), zero for the queries outside rows
            alpha = row_alpha.new_zeros(queries.shape[0] * per_image, row_alpha.shape[1]).index_copy_(0, rows, row_alpha)
            alpha = alpha.unflatten(0, queries.shape[:2])  # (B, M, P)
        context = torch.bmm(alpha, features)  # (B, M, feature_dim)
        return (context[:, 0], alpha[:, 0]) if one_query else (context, alpha)

    def _weights(self, gates: Tensor, mask: Optional[Tensor]) -> Tensor:
        """``α`` over the regions from ``σ(2u)`` ``(..., P, attn_dim)``; ``mask`` broadcasts to ``(..., P)``."""
        w, b = self.score.weight, self.score.bias
        scores = linear(gates, 2 * w, b - w.sum()).squeeze(-1)  # (..., P), w^T tanh(u) + b
        if mask is None:
            return scores.softmax(dim=-1)
        # A finite fill, not -inf: a fully masked row then stays finite (forward and backward),
        # and multiplying by the mask gives it weight 0 everywhere.
        scores = scores.masked_fill(~mask, torch.finfo(scores.dtype).min)
        return scores.softmax(dim=-1) * mask


def _view(buffer: Optional[Tensor], shape: tuple[int, ...]) -> Optional[Tensor]:
    """The first ``prod(shape)`` elements of a flat ``buffer`` as ``shape``; ``None`` without one."""
    return None if buffer is None else buffer[:math.prod(shape)].view(shape)
