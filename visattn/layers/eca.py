"""Efficient Channel Attention (ECA).

Paper: Wang, Wu, Zhu, Li, Zuo, Hu, "ECA-Net: Efficient Channel Attention for Deep Convolutional
Neural Networks", CVPR 2020 (arXiv:1910.03151).

Like Squeeze-and-Excitation but without dimensionality reduction: the pooled channel descriptor
goes through a 1-D convolution across channels whose kernel size grows with ``log2(C)``.
"""
import math
from typing import Optional

import torch
from torch import Tensor, nn

from ..errors import check_odd_kernel


def eca_kernel_size(channels: int, gamma: int = 2, b: int = 1) -> int:
    """Adaptive kernel size ``k = |log2(C) / gamma + b / gamma|``, rounded to the nearest odd number (Eq. 12)."""
    k = int(abs((math.log2(channels) + b) / gamma))
    return k if k % 2 else k + 1


class EfficientChannelAttention(nn.Module):
    """ECA block: ``x * sigmoid(conv1d_k(avgpool(x)))`` with ``k`` adapted to the channel count.

    Explainability: set ``keep_gate = True`` and each forward stores
    ``last_gate = {"channel": (B, C, 1, 1)}``, the detached sigmoid gate in [0, 1].

    Args:
        channels: number of input (and output) channels; sets the kernel size.
        kernel_size: explicit odd 1-D kernel size, overriding the adaptive one. (The formula gives a ResNet-50
            5, 5, 5, 7 over its stages, as timm's; the authors' released ECA-Net50 weights use 3, 5, 5, 7.)
        gamma: slope of the adaptive kernel-size mapping.
        b: offset of the adaptive kernel-size mapping.
        keep_gate: store the gate in ``last_gate`` on every forward.
    """

    def __init__(
        self,
        channels: int,
        *,
        kernel_size: Optional[int] = None,
        gamma: int = 2,
        b: int = 1,
        keep_gate: bool = False,
    ):
        super().__init__()
        self.kernel_size = (eca_kernel_size(channels, gamma, b) if kernel_size is None
                            else check_odd_kernel("kernel_size", kernel_size))
        self.conv = nn.Conv1d(1, 1, self.kernel_size, padding=(self.kernel_size - 1) // 2, bias=False)
        self.keep_gate = keep_gate
        self.last_gate: dict[str, Tensor] = {}

    def forward(self, x: Tensor) -> Tensor:
        b, c = x.shape[:2]
        squeezed = x.mean(dim=(2, 3)).view(b, 1, c)  # channels as a 1-D sequence: (B, 1, C)
        gate = torch.sigmoid(self.conv(squeezed)).view(b, c, 1, 1)
        if self.keep_gate:
            self.last_gate = {"channel": gate.detach()}
        return x * gate
