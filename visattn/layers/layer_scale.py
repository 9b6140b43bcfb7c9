"""LayerScale (Touvron et al. 2021, "Going deeper with Image Transformers", CaiT): a learned per-channel residual scale."""
import torch
from torch import nn


class LayerScale(nn.Module):
    """Multiply tokens by a learned vector ``gamma`` initialised to ``init_values``.

    Args:
        dim: channel count.
        init_values: initial scale, small (1e-5 .. 1e-1) so deep stacks start near identity.
    """

    def __init__(self, dim: int, init_values: float = 1e-5) -> None:
        super().__init__()
        self.gamma = nn.Parameter(init_values * torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.gamma
