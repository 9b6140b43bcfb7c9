"""Squeeze-and-Excitation channel attention.

Paper: Hu, Shen, Sun, "Squeeze-and-Excitation Networks", CVPR 2018 (arXiv:1709.01507).

Each channel is rescaled by a gate in [0, 1] computed from the globally average-pooled
feature map through a two-layer bottleneck MLP (reduction ratio 16).
"""
import torch
from torch import Tensor, nn

from ..errors import check_count


def reduced_channels(channels: int, reduction: int, min_channels: int = 8) -> int:
    """Hidden width of an attention bottleneck: ``channels // reduction``, at least ``min_channels``.

    The floor keeps the bottleneck meaningful on narrow networks (e.g. 16-channel CIFAR stages). With the
    default floor of 8 and reduction 16 it also widens the 64-channel first stage of ResNet-18/34 to 8 (timm's
    SE rounds to 8 there too; the CBAM and BAM authors' code has 4).
    """
    return max(channels // check_count("reduction", reduction), min_channels)


class SqueezeExcite(nn.Module):
    """Squeeze-and-Excitation block: ``x * sigmoid(fc2(relu(fc1(avgpool(x)))))``.

    Explainability: set ``keep_gate = True`` and each forward stores
    ``last_gate = {"channel": (B, C, 1, 1)}``, the detached sigmoid gate in [0, 1].

    Args:
        channels: number of input (and output) channels.
        reduction: bottleneck ratio; the hidden width is ``channels // reduction``.
        min_hidden: lower bound on the hidden width.
        keep_gate: store the gate in ``last_gate`` on every forward.
    """

    def __init__(self, channels: int, *, reduction: int = 16, min_hidden: int = 8, keep_gate: bool = False):
        super().__init__()
        hidden = reduced_channels(channels, reduction, min_hidden)
        self.fc1 = nn.Conv2d(channels, hidden, kernel_size=1)
        self.act = nn.ReLU(inplace=True)
        self.fc2 = nn.Conv2d(hidden, channels, kernel_size=1)
        self.keep_gate = keep_gate
        self.last_gate: dict[str, Tensor] = {}

    def forward(self, x: Tensor) -> Tensor:
        squeezed = x.mean(dim=(2, 3), keepdim=True)  # (B, C, 1, 1)
        gate = torch.sigmoid(self.fc2(self.act(self.fc1(squeezed))))
        if self.keep_gate:
            self.last_gate = {"channel": gate.detach()}
        return x * gate
