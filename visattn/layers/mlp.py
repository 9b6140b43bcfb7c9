"""Transformer feed-forward block (Vaswani et al. 2017, §3.3): two linear layers with a GELU between.

The GELU is exact (Hendrycks & Gimpel 2016), or its tanh approximation, or CLIP's sigmoid one ("QuickGELU",
``x * sigmoid(1.702 x)``, Radford et al. 2021), as the weights were trained with.
"""
from typing import Literal, Optional

import torch
from torch import nn

from ..errors import ConfigError

Activation = Literal["gelu", "gelu_tanh", "quick_gelu"]


class QuickGELU(nn.Module):
    """``x * sigmoid(1.702 x)``: OpenAI CLIP's approximation of GELU, which its weights were trained with."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * torch.sigmoid(1.702 * x)


def activation(name: Activation) -> nn.Module:
    """The MLP activation of timm's name ``name``."""
    if name == "gelu":
        return nn.GELU()
    if name == "gelu_tanh":
        return nn.GELU(approximate="tanh")
    if name == "quick_gelu":
        return QuickGELU()
    raise ConfigError(f"act_layer={name!r}: use 'gelu' (exact), 'gelu_tanh' or 'quick_gelu' (OpenAI CLIP's)")


class Mlp(nn.Module):
    """``fc2(drop(act(fc1(x))))``, parameter names as timm's ``Mlp``.

    Args:
        in_features: input and, by default, output size.
        hidden_features: inner size; defaults to ``in_features``.
        out_features: output size; defaults to ``in_features``.
        drop: dropout after each linear layer.
        act_layer: the activation between them (timm's names): ``"gelu"``, ``"gelu_tanh"`` or ``"quick_gelu"``.
    """

    def __init__(
        self,
        in_features: int,
        hidden_features: Optional[int] = None,
        out_features: Optional[int] = None,
        drop: float = 0.0,
        act_layer: Activation = "gelu",
    ) -> None:
        super().__init__()
        hidden_features = hidden_features or in_features
        self.fc1 = nn.Linear(in_features, hidden_features)
        self.act = activation(act_layer)
        self.drop1 = nn.Dropout(drop)
        self.fc2 = nn.Linear(hidden_features, out_features or in_features)
        self.drop2 = nn.Dropout(drop)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.drop2(self.fc2(self.drop1(self.act(self.fc1(x)))))
