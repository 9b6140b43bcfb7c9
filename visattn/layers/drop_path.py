"""Stochastic depth (Huang et al. 2016, "Deep Networks with Stochastic Depth"): drop whole residual branches per sample."""
import torch
from torch import nn

from ..errors import ConfigError, is_number


def check_rate(name: str, value: object) -> float:
    """``value`` when it is a drop probability ``0 <= p < 1``, else a :class:`ConfigError` naming ``name``: a
    string would reach torch as a TypeError, and a stochastic depth of 2.0 fail only in the first training step."""
    if not (is_number(value) and 0 <= value < 1):
        raise ConfigError(f"{name}={value!r}: give a drop probability from 0 up to (not including) 1, e.g. 0.1")
    return float(value)


def drop_path(x: torch.Tensor, drop_prob: float = 0.0, training: bool = False) -> torch.Tensor:
    """Zero the residual branch of each sample with probability ``drop_prob``, rescaling survivors."""
    if drop_prob == 0.0 or not training:
        return x
    keep_prob = 1.0 - drop_prob
    mask = x.new_empty((x.shape[0],) + (1,) * (x.ndim - 1)).bernoulli_(keep_prob)  # (B, 1, ..., 1)
    if keep_prob > 0.0:  # a branch always dropped has no survivor to rescale: zeros, as timm's, not 0 / 0
        mask.div_(keep_prob)
    return x * mask


class DropPath(nn.Module):
    """:func:`drop_path` as a module: active in training mode only.

    Args:
        drop_prob: probability of zeroing a sample's residual branch.
    """

    def __init__(self, drop_prob: float = 0.0) -> None:
        super().__init__()
        self.drop_prob = drop_prob

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return drop_path(x, self.drop_prob, self.training)

    def extra_repr(self) -> str:
        return f"drop_prob={self.drop_prob}"
