"""DETR's transformer encoder-decoder over image features and learned object queries.

Paper: Carion, Massa, Synnaeve, Usunier, Kirillov, Zagoruyko, "End-to-End Object Detection with
Transformers", ECCV 2020 (arXiv:2005.12872), §3.2 and Fig. 10; layers as in Vaswani et al. 2017.

Post-norm layers, as the paper's: the encoder's self-attention adds the fixed 2-D position
encoding to queries and keys (not values) in every layer; the decoder starts from zeros, adds
the learned query embeddings ("object queries") to its queries and keys in every layer, and
cross-attends to the encoder memory (plus positions on the keys). The decoder returns the
normalised output of every layer, so each can be supervised (auxiliary decoding losses). The
feed-forward block is the ViT's :class:`~visattn.layers.mlp.Mlp`, with GELU where DETR's code and
Vaswani et al. use ReLU; the shipped DETR weights were trained with it.
"""
from typing import Optional

import torch
from torch import Tensor, nn

from .cross_attention import CrossAttention
from .mlp import Mlp


class DetrEncoderLayer(nn.Module):
    """``x = norm1(x + attn(x + pos, x + pos, x))`` then ``x = norm2(x + mlp(x))``.

    Args:
        dim: token size.
        num_heads: attention heads; ``dim`` must divide by them.
        mlp_ratio: MLP hidden size over ``dim``.
        dropout: dropout on attention probabilities, after attention and in the MLP.
    """

    def __init__(self, dim: int, num_heads: int, *, mlp_ratio: float = 8.0, dropout: float = 0.1) -> None:
        super().__init__()
        self.attn = CrossAttention(dim, num_heads, attn_drop=dropout)
        self.drop1 = nn.Dropout(dropout)
        self.norm1 = nn.LayerNorm(dim)
        self.mlp = Mlp(dim, int(dim * mlp_ratio), drop=dropout)
        self.norm2 = nn.LayerNorm(dim)

    def forward(self, x: Tensor, pos: Tensor, padding_mask: Optional[Tensor] = None) -> Tensor:
        q = k = x + pos
        x = self.norm1(x + self.drop1(self.attn(q, k, x, key_padding_mask=padding_mask)))
        return self.norm2(x + self.mlp(x))


class DetrDecoderLayer(nn.Module):
    """Self-attention among the queries, cross-attention to the memory, then the MLP; each post-norm.

    Args:
        dim: token size, of the queries and the memory.
        num_heads: attention heads; ``dim`` must divide by them.
        mlp_ratio: MLP hidden size over ``dim``.
        dropout: dropout on attention probabilities, after each attention and in the MLP.
    """

    def __init__(self, dim: int, num_heads: int, *, mlp_ratio: float = 8.0, dropout: float = 0.1) -> None:
        super().__init__()
        self.self_attn = CrossAttention(dim, num_heads, attn_drop=dropout)
        self.drop1 = nn.Dropout(dropout)
        self.norm1 = nn.LayerNorm(dim)
        self.cross_attn = CrossAttention(dim, num_heads, attn_drop=dropout)
        self.drop2 = nn.Dropout(dropout)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = Mlp(dim, int(dim * mlp_ratio), drop=dropout)
        self.norm3 = nn.LayerNorm(dim)

    def forward(
        self, x: Tensor, memory: Tensor, query_pos: Tensor, pos: Tensor, padding_mask: Optional[Tensor] = None
    ) -> Tensor:
        q = k = x + query_pos
        x = self.norm1(x + self.drop1(self.self_attn(q, k, x)))
        y = self.cross_attn(x + query_pos, memory + pos, memory, key_padding_mask=padding_mask)
        x = self.norm2(x + self.drop2(y))
        return self.norm3(x + self.mlp(x))


class DetrTransformer(nn.Module):
    """Encoder over feature tokens, decoder over ``num_queries`` object queries.

    Args:
        dim: token size (DETR's ``hidden_dim``).
        num_heads: attention heads.
        num_encoder_layers: encoder depth.
        num_decoder_layers: decoder depth.
        mlp_ratio: MLP hidden size over ``dim`` (2048 / 256 = 8 in the paper).
        dropout: dropout on attention probabilities, after attention and in the MLP.
    """

    def __init__(
        self,
        dim: int = 256,
        num_heads: int = 8,
        *,
        num_encoder_layers: int = 6,
        num_decoder_layers: int = 6,
        mlp_ratio: float = 8.0,
        dropout: float = 0.1,
    ) -> None:
        super().__init__()
        layer_args = dict(mlp_ratio=mlp_ratio, dropout=dropout)
        self.encoder = nn.ModuleList(DetrEncoderLayer(dim, num_heads, **layer_args) for _ in range(num_encoder_layers))
        self.decoder = nn.ModuleList(DetrDecoderLayer(dim, num_heads, **layer_args) for _ in range(num_decoder_layers))
        self.decoder_norm = nn.LayerNorm(dim)
        for p in self.parameters():
            if p.dim() > 1:
                nn.init.xavier_uniform_(p)

    def forward(self, x: Tensor, pos: Tensor, query_pos: Tensor, padding_mask: Optional[Tensor] = None) -> Tensor:
        """``x``, ``pos`` (B, N, dim) feature tokens and their encoding; ``query_pos`` (Q, dim);
        ``padding_mask`` (B, N) ``True`` on padding. Returns every decoder layer's output, (L, B, Q, dim)."""
        for layer in self.encoder:
            x = layer(x, pos, padding_mask)
        # A copy, not expand's view: a view of the weight made under no_grad is a leaf that requires grad yet has no
        # grad accumulator, which FlopCounterMode's module tracker (Lightning's model summary) fails on.
        query_pos = query_pos.expand(x.shape[0], -1, -1).clone()  # (B, Q, dim)
        out = torch.zeros_like(query_pos)
        outputs = []
        for layer in self.decoder:
            out = layer(out, x, query_pos, pos, padding_mask)
            outputs.append(self.decoder_norm(out))
        return torch.stack(outputs)
