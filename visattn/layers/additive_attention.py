"""Additive (Bahdanau) soft attention over a set of feature vectors.

Papers: Bahdanau, Cho, Bengio, "Neural Machine Translation by Jointly Learning to Align and
Translate", ICLR 2015 (arXiv:1409.0473); used over image regions by Xu et al., "Show, Attend and
Tell: Neural Image Caption Generation with Visual Attention", ICML 2015 (arXiv:1502.03044).

The score of region ``p`` for query ``h`` is ``w^T tanh(W_f f_p + W_h h)``; a softmax over the
regions gives weights ``α`` (summing to 1) and the context is ``Σ_p α_p f_p``.
"""
from typing import Optional

import torch
from torch import Tensor, nn


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
        """``W_f f`` for all regions, ``(B, P, attn_dim)``; compute once per image, reuse every step."""
        return self.feature_proj(features)

    def forward(
        self,
        features: Tensor,
        query: Tensor,
        *,
        projected: Optional[Tensor] = None,
        mask: Optional[Tensor] = None,
    ) -> tuple[Tensor, Tensor]:
        """Context ``(B, feature_dim)`` and weights ``α`` ``(B, P)``.

        Args:
            features: ``(B, P, feature_dim)`` region features.
            query: ``(B, query_dim)``.
            projected: ``project_features(features)``, to skip recomputing it each decoding step.
            mask: ``(B, P)`` bool, ``True`` for regions that may be attended; others get weight 0,
                and a row with none gets context 0.
        """
        if projected is None:
            projected = self.project_features(features)
        # In place: one (B, P, attn_dim) buffer per step instead of two (beam search is bound by this).
        hidden = (projected + self.query_proj(query)[:, None, :]).tanh_()  # (B, P, attn_dim)
        scores = self.score(hidden).squeeze(-1)  # (B, P)
        if mask is not None:
            # A finite fill, not -inf: a fully masked row then stays finite (forward and backward),
            # and multiplying by the mask gives it weight 0 everywhere.
            scores = scores.masked_fill(~mask, torch.finfo(scores.dtype).min)
        alpha = scores.softmax(dim=-1)
        if mask is not None:
            alpha = alpha * mask
        context = torch.bmm(alpha[:, None, :], features).squeeze(1)  # (B, feature_dim)
        return context, alpha
