"""Multihead attention pooling (MAP): a learned query attends over the tokens and an MLP follows (Lee et al. 2019,
"Set Transformer", pooling by multihead attention; the ViT head of Zhai et al. 2022, "Scaling Vision Transformers",
which SigLIP's encoders use).

Parameter names and maths are timm's ``AttentionPoolLatent`` with one latent query, so its weights load.
"""
import torch
import torch.nn.functional as F
from torch import nn

from .mlp import Activation, Mlp


class AttentionPoolLatent(nn.Module):
    """``(B, N, C)`` tokens to one ``(B, C)`` vector: a learned latent query's multi-head attention over them,
    projected, then a pre-norm MLP with a residual.

    Args:
        dim: token size.
        num_heads: attention heads; ``dim`` must divide by them.
        mlp_ratio: MLP hidden size over ``dim``.
        norm_eps: the MLP's LayerNorm epsilon.
        act_layer: the MLP's activation (see :class:`~visattn.layers.mlp.Mlp`).
    """

    def __init__(self, dim: int, num_heads: int = 8, *, mlp_ratio: float = 4.0, norm_eps: float = 1e-6,
                 act_layer: Activation = "gelu") -> None:
        super().__init__()
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.scale = self.head_dim**-0.5
        self.latent = nn.Parameter(torch.zeros(1, 1, dim))
        self.q = nn.Linear(dim, dim)
        self.kv = nn.Linear(dim, dim * 2)
        self.proj = nn.Linear(dim, dim)
        self.norm = nn.LayerNorm(dim, eps=norm_eps)
        self.mlp = Mlp(dim, int(dim * mlp_ratio), act_layer=act_layer)
        nn.init.trunc_normal_(self.latent, std=dim**-0.5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """The pooled ``(B, C)``; explain reads the query's attention with ``attention_pool_reading``."""
        batch, tokens, dim = x.shape
        # (B, heads, 1, head_dim): the one latent query, shared by the batch
        q = self.q(self.latent).reshape(1, self.num_heads, 1, self.head_dim).expand(batch, -1, -1, -1)
        # each (B, heads, N, head_dim)
        k, v = self.kv(x).reshape(batch, tokens, 2, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)
        pooled = F.scaled_dot_product_attention(q, k, v)  # (B, heads, 1, head_dim)
        pooled = self.proj(pooled.reshape(batch, dim))  # (B, C): with one query, heads * head_dim in order
        return pooled + self.mlp(self.norm(pooled))
