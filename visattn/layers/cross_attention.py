"""Multi-head attention with separate query, key and value inputs (Vaswani et al. 2017, §3.2.2).

:class:`~visattn.layers.attention.SelfAttention` projects one token sequence to Q, K and V at
once. Here each comes from its own input, which covers decoder queries attending to encoder
memory and DETR's self-attention, where position encodings are added to queries and keys but not
to values (Carion et al. 2020, §3.2). Keys can be masked out (padding).
"""
from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import ConfigError
from .attention import attention_probs


class CrossAttention(nn.Module):
    """``softmax(q k^T / sqrt(d)) v`` over ``num_heads`` heads, with Q, K, V projected from separate inputs.

    Explainability: set ``keep_attention = True`` and each forward computes the probabilities
    explicitly (not with SDPA) and stores them, detached, as ``last_attention`` ``(B, heads, Nq, Nk)``.

    Args:
        dim: token size of queries, keys and values.
        num_heads: number of heads; ``dim`` must divide by it.
        qkv_bias: bias on the Q, K and V projections.
        attn_drop: dropout on the attention probabilities.
        proj_drop: dropout after the output projection.
    """

    keep_attention: bool = False
    last_attention: Optional[torch.Tensor] = None

    def __init__(
        self,
        dim: int,
        num_heads: int = 8,
        *,
        qkv_bias: bool = True,
        attn_drop: float = 0.0,
        proj_drop: float = 0.0,
    ) -> None:
        super().__init__()
        if dim % num_heads:  # as Attention's: a DETR's hidden_dim of 100 with 8 heads is otherwise a bare ValueError
            raise ConfigError(f"num_heads={num_heads}: the width {dim} must split evenly into heads; give a divisor "
                              f"of {dim}")
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.q = nn.Linear(dim, dim, bias=qkv_bias)
        self.k = nn.Linear(dim, dim, bias=qkv_bias)
        self.v = nn.Linear(dim, dim, bias=qkv_bias)
        self.attn_drop = attn_drop
        self.proj = nn.Linear(dim, dim)
        self.proj_drop = nn.Dropout(proj_drop)

    def _split_heads(self, x: torch.Tensor) -> torch.Tensor:
        batch, length, _ = x.shape
        return x.reshape(batch, length, self.num_heads, self.head_dim).transpose(1, 2)  # (B, heads, N, head_dim)

    def forward(
        self,
        query: torch.Tensor,
        key: torch.Tensor,
        value: torch.Tensor,
        key_padding_mask: Optional[torch.Tensor] = None,
    ) -> torch.Tensor:
        """``query`` (B, Nq, C), ``key`` and ``value`` (B, Nk, C), ``key_padding_mask`` (B, Nk) ``True``
        on keys to ignore; returns (B, Nq, C)."""
        q, k, v = self._split_heads(self.q(query)), self._split_heads(self.k(key)), self._split_heads(self.v(value))
        keep = None if key_padding_mask is None else ~key_padding_mask[:, None, None, :]  # (B, 1, 1, Nk)
        if self.keep_attention:
            probs = attention_probs(q, k, self.head_dim**-0.5, keep)
            self.last_attention = probs.detach()
            x = F.dropout(probs, self.attn_drop, self.training).to(v.dtype) @ v
        else:
            x = F.scaled_dot_product_attention(q, k, v, attn_mask=keep,
                                               dropout_p=self.attn_drop if self.training else 0.0)
        x = x.transpose(1, 2).flatten(2)  # (B, Nq, heads * head_dim)
        return self.proj_drop(self.proj(x))
