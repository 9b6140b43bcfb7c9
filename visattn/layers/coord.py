"""Coordinate attention.

Paper: Hou, Zhou, Feng, "Coordinate Attention for Efficient Mobile Network Design", CVPR 2021
(arXiv:2103.02907).

Global pooling is factorised into two 1-D poolings, along the width and along the height, so the
gates keep the position along the other axis: each output value is rescaled by a row gate and a
column gate, ``y[c, i, j] = x[c, i, j] * g_h[c, i] * g_w[c, j]``.
"""
import torch
from torch import Tensor, nn

from .se import reduced_channels


class CoordinateAttention(nn.Module):
    """Coordinate attention with a shared 1x1 conv + BN + h-swish encoder and one 1x1 conv per axis.

    Explainability: set ``keep_gate = True`` and each forward stores detached gates in [0, 1]:
    ``last_gate = {"height": (B, C, H, 1), "width": (B, C, 1, W)}``.

    Args:
        channels: number of input (and output) channels.
        reduction: bottleneck ratio of the shared encoder (32 in the paper).
        min_hidden: lower bound on the encoder width (8 in the paper).
        keep_gate: store the gates in ``last_gate`` on every forward.
    """

    def __init__(self, channels: int, *, reduction: int = 32, min_hidden: int = 8, keep_gate: bool = False):
        super().__init__()
        hidden = reduced_channels(channels, reduction, min_hidden)
        self.encode = nn.Sequential(
            nn.Conv2d(channels, hidden, kernel_size=1),
            nn.BatchNorm2d(hidden),
            nn.Hardswish(inplace=True),
        )
        self.conv_h = nn.Conv2d(hidden, channels, kernel_size=1)
        self.conv_w = nn.Conv2d(hidden, channels, kernel_size=1)
        self.keep_gate = keep_gate
        self.last_gate: dict[str, Tensor] = {}

    def forward(self, x: Tensor) -> Tensor:
        h, w = x.shape[2:]
        pooled_h = x.mean(dim=3, keepdim=True)  # (B, C, H, 1)
        pooled_w = x.mean(dim=2, keepdim=True).transpose(2, 3)  # (B, C, W, 1)
        encoded = self.encode(torch.cat([pooled_h, pooled_w], dim=2))  # (B, hidden, H + W, 1)
        enc_h, enc_w = encoded.split([h, w], dim=2)
        gate_h = torch.sigmoid(self.conv_h(enc_h))  # (B, C, H, 1)
        gate_w = torch.sigmoid(self.conv_w(enc_w.transpose(2, 3)))  # (B, C, 1, W)
        if self.keep_gate:
            self.last_gate = {"height": gate_h.detach(), "width": gate_w.detach()}
        return x * gate_h * gate_w
