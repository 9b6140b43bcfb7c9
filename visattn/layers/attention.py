"""Multi-head self-attention (Vaswani et al. 2017, "Attention Is All You Need").

The default path calls ``F.scaled_dot_product_attention``, which dispatches to the flash,
memory-efficient or math kernel. ``return_attention=True`` takes the explicit path instead and
also returns the softmax probabilities, so explain tools see the attention even when the fused
kernel is on.
Its logits and softmax are computed in float32, as the fused kernels accumulate, so fp16
autocast cannot overflow them.
"""
from typing import Optional, Union

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import ConfigError


class SelfAttention(nn.Module):
    """Multi-head self-attention with a fused QKV projection (parameter names as timm's ``Attention``).

    Args:
        dim: token embedding size.
        num_heads: number of heads; ``dim`` must divide by it.
        qkv_bias: bias on the QKV projection.
        attn_drop: dropout on the attention probabilities.
        proj_drop: dropout after the output projection.
    """

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
        if dim % num_heads:
            raise ConfigError(f"num_heads={num_heads}: the width {dim} must split evenly into heads; give a divisor "
                              f"of {dim}")
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.scale = self.head_dim**-0.5
        self.qkv = nn.Linear(dim, dim * 3, bias=qkv_bias)
        self.attn_drop = nn.Dropout(attn_drop)
        self.proj = nn.Linear(dim, dim)
        self.proj_drop = nn.Dropout(proj_drop)

    def forward(
        self, x: torch.Tensor, return_attention: bool = False
    ) -> Union[torch.Tensor, tuple[torch.Tensor, torch.Tensor]]:
        B, N, C = x.shape
        # (3, B, heads, N, head_dim)
        qkv = self.qkv(x).reshape(B, N, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)  # each (B, heads, N, head_dim)
        attn: Optional[torch.Tensor] = None
        if return_attention:
            attn = attention_probs(q, k, self.scale)
            x = self.attn_drop(attn).to(v.dtype) @ v
        else:
            x = F.scaled_dot_product_attention(q, k, v, dropout_p=self.attn_drop.p if self.training else 0.0)
        x = x.transpose(1, 2).reshape(B, N, C)  # (B, N, heads * head_dim)
        x = self.proj_drop(self.proj(x))
        return (x, attn) if return_attention else x


def attention_probs(q: torch.Tensor, k: torch.Tensor, scale: float,
                    keep: Optional[torch.Tensor] = None) -> torch.Tensor:
    """``softmax(q k^T * scale)`` in float32 ``(B, heads, Nq, Nk)`` (float64 for float64 ``q``), also under fp16/bf16
    autocast; ``keep`` (broadcast to it, e.g. ``(B, 1, 1, Nk)``) is ``False`` on keys no query may attend to.

    In fp16 the dot products of activations near 1e3 already exceed 65504, giving inf and NaN.
    """
    with torch.autocast(q.device.type, enabled=False):
        wide = torch.promote_types(q.dtype, torch.float32)
        logits = (q.to(wide) * scale) @ k.to(wide).transpose(-2, -1)  # (B, heads, Nq, Nk)
        if keep is not None:
            logits = logits.masked_fill(~keep, torch.finfo(logits.dtype).min)
        return logits.softmax(dim=-1)
