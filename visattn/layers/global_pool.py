"""Global spatial pooling before a classifier: average, max, their mean or both side by side, or none.

Global average pooling of the last feature map in place of fully connected layers is from Lin, Chen,
Yan, "Network In Network", ICLR 2014 (arXiv:1312.4400), and is what He et al. 2016's ResNets use.
``"max"`` takes each channel's strongest response instead; ``"avgmax"`` is the mean of the two,
``"catavgmax"`` the two concatenated (twice the channels for the classifier), and ``""`` leaves the map
unpooled. The names and maths are timm's ``SelectAdaptivePool2d``
(``timm/layers/adaptive_avgmax_pool.py``), so code written for timm's ``global_pool`` argument works.
"""
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import ConfigError

PoolType = Literal["avg", "max", "avgmax", "catavgmax", ""]
POOL_TYPES: tuple[str, ...] = ("avg", "max", "avgmax", "catavgmax", "")


def check_pool_type(pool_type: object) -> str:
    """``pool_type`` when it is one of :data:`POOL_TYPES`, else a one-line :class:`ConfigError`."""
    if pool_type not in POOL_TYPES:
        raise ConfigError(f"global_pool={pool_type!r}: use 'avg', 'max', 'avgmax', 'catavgmax', or '' for no pooling")
    return pool_type


class GlobalPool2d(nn.Module):
    """Pool ``(B, C, H, W)`` to ``(B, C)`` (``flatten``) or ``(B, C, 1, 1)``, ``2C`` channels for
    ``"catavgmax"``; ``pool_type=""`` returns the map as it came, never flattened (timm's pass-through).

    Args:
        pool_type: ``"avg"``, ``"max"``, ``"avgmax"`` (``0.5 * (avg + max)``), ``"catavgmax"`` (the average's
            channels, then the maximum's) or ``""`` (no pooling).
        flatten: drop the two 1-sized spatial dimensions after pooling, for a linear classifier.
    """

    def __init__(self, pool_type: PoolType = "avg", *, flatten: bool = True) -> None:
        super().__init__()
        self.pool_type = check_pool_type(pool_type)
        self.flatten = flatten

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.pool_type:
            return x
        if self.pool_type == "avg":
            x = F.adaptive_avg_pool2d(x, 1)  # (B, C, 1, 1)
        elif self.pool_type == "max":
            x = F.adaptive_max_pool2d(x, 1)
        elif self.pool_type == "catavgmax":
            x = torch.cat((F.adaptive_avg_pool2d(x, 1), F.adaptive_max_pool2d(x, 1)), dim=1)  # (B, 2C, 1, 1)
        else:
            x = 0.5 * (F.adaptive_avg_pool2d(x, 1) + F.adaptive_max_pool2d(x, 1))
        return torch.flatten(x, 1) if self.flatten else x

    def feat_mult(self) -> int:
        """How many times the input's channels the pooled features have (timm's method of the same name)."""
        return 2 if self.pool_type == "catavgmax" else 1

    def extra_repr(self) -> str:
        return f"pool_type={self.pool_type!r}, flatten={self.flatten}"
