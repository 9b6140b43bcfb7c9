"""Convolutional Block Attention Module (CBAM).

Paper: Woo, Park, Lee, Kweon, "CBAM: Convolutional Block Attention Module", ECCV 2018
(arXiv:1807.06521).

Two gates applied in sequence: a channel gate from average- and max-pooled descriptors through a
shared MLP, then a spatial gate from a 7x7 convolution over the channel-wise max and mean maps.
"""
import torch
from torch import Tensor, nn

from ..errors import check_odd_kernel
from .se import reduced_channels


class ChannelGate(nn.Module):
    """``sigmoid(mlp(avgpool(x)) + mlp(maxpool(x)))`` with one MLP shared by both descriptors.

    Args:
        channels: number of input channels.
        reduction: bottleneck ratio of the shared MLP.
        min_hidden: lower bound on the MLP hidden width.
    """

    def __init__(self, channels: int, *, reduction: int = 16, min_hidden: int = 8):
        super().__init__()
        hidden = reduced_channels(channels, reduction, min_hidden)
        self.mlp = nn.Sequential(
            nn.Conv2d(channels, hidden, kernel_size=1),
            nn.ReLU(inplace=True),
            nn.Conv2d(hidden, channels, kernel_size=1),
        )

    def forward(self, x: Tensor) -> Tensor:
        avg = self.mlp(x.mean(dim=(2, 3), keepdim=True))  # (B, C, 1, 1)
        peak = self.mlp(x.amax(dim=(2, 3), keepdim=True))  # (B, C, 1, 1)
        return torch.sigmoid(avg + peak)


class SpatialGate(nn.Module):
    """``sigmoid(conv_kxk([max_c(x), mean_c(x)]))``: one weight per position, shared by all channels.

    The maps are stacked ``[max, mean]`` as in the authors' code (the paper's eq. 3 and timm write ``[mean, max]``);
    the convolution has a bias and no norm, as in eq. 3 (the authors' code and timm's ``CbamModule`` add a batch
    norm), so their weights need the norm folded in and the input channels swapped.

    Args:
        kernel_size: odd size of the square convolution (7 in the paper).
    """

    def __init__(self, *, kernel_size: int = 7):
        super().__init__()
        check_odd_kernel("kernel_size", kernel_size)  # an even one grows the map by a row and a column
        self.conv = nn.Conv2d(2, 1, kernel_size, padding=kernel_size // 2)

    def forward(self, x: Tensor) -> Tensor:
        pooled = torch.cat([x.amax(dim=1, keepdim=True), x.mean(dim=1, keepdim=True)], dim=1)  # (B, 2, H, W)
        return torch.sigmoid(self.conv(pooled))  # (B, 1, H, W)


class Cbam(nn.Module):
    """CBAM: ``x' = x * channel_gate(x)``, then ``x' * spatial_gate(x')``.

    Explainability: set ``keep_gate = True`` and each forward stores
    ``last_gate = {"channel": (B, C, 1, 1), "spatial": (B, 1, H, W)}``, detached gates in [0, 1].

    Args:
        channels: number of input (and output) channels.
        reduction: bottleneck ratio of the channel gate's shared MLP.
        min_hidden: lower bound on that MLP's hidden width.
        spatial_kernel_size: kernel size of the spatial gate's convolution.
        keep_gate: store the gates in ``last_gate`` on every forward.
    """

    def __init__(
        self,
        channels: int,
        *,
        reduction: int = 16,
        min_hidden: int = 8,
        spatial_kernel_size: int = 7,
        keep_gate: bool = False,
    ):
        super().__init__()
        self.channel = ChannelGate(channels, reduction=reduction, min_hidden=min_hidden)
        self.spatial = SpatialGate(kernel_size=check_odd_kernel("spatial_kernel_size", spatial_kernel_size))
        self.keep_gate = keep_gate
        self.last_gate: dict[str, Tensor] = {}

    def forward(self, x: Tensor) -> Tensor:
        channel_gate = self.channel(x)
        x = x * channel_gate
        spatial_gate = self.spatial(x)
        if self.keep_gate:
            self.last_gate = {"channel": channel_gate.detach(), "spatial": spatial_gate.detach()}
        return x * spatial_gate
