"""Transformer feed-forward block (Vaswani et al. 2017, §3.3): two linear layers with a GELU between."""
from typing import Optional

import torch
from torch import nn


class Mlp(nn.Module):
    """``fc2(drop(act(fc1(x))))``, parameter names as timm's ``Mlp``.

    Args:
        in_features: input and, by default, output size.
        hidden_features: inner size; defaults to ``in_features``.
        out_features: output size; defaults to ``in_features``.
        drop: dropout after each linear layer.
    """

    def __init__(
        self,
        in_features: int,
        hidden_features: Optional[int] = None,
        out_features: Optional[int] = None,
        drop: float = 0.0,
    ) -> None:
        super().__init__()
        hidden_features = hidden_features or in_features
        self.fc1 = nn.Linear(in_features, hidden_features)
        self.act = nn.GELU()
        self.drop1 = nn.Dropout(drop)
        self.fc2 = nn.Linear(hidden_features, out_features or in_features)
        self.drop2 = nn.Dropout(drop)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.drop2(self.fc2(self.drop1(self.act(self.fc1(x)))))
