"""Bottleneck Attention Module (BAM).

Paper: Park, Woo, Lee, Kweon, "BAM: Bottleneck Attention Module", BMVC 2018 (arXiv:1807.06514).

A channel branch (pooled descriptor through a bottleneck MLP) and a spatial branch (bottleneck of
dilated 3x3 convolutions) are broadcast-added into one 3-D gate ``sigmoid(channel + spatial)``,
applied residually as ``x * (1 + gate)``. BAM sits at the bottlenecks between network stages
rather than inside every block.
"""
import torch
from torch import Tensor, nn

from ..errors import ConfigError
from .se import reduced_channels


def _conv_bn_relu(in_chs: int, out_chs: int, kernel_size: int = 1, dilation: int = 1) -> list[nn.Module]:
    padding = dilation * (kernel_size - 1) // 2
    conv = nn.Conv2d(in_chs, out_chs, kernel_size, padding=padding, dilation=dilation, bias=False)
    return [conv, nn.BatchNorm2d(out_chs), nn.ReLU(inplace=True)]


class BamChannelBranch(nn.Module):
    """Channel logits ``(B, C, 1, 1)`` from the average-pooled descriptor through a bottleneck MLP.

    Args:
        channels: number of input (and output) channels.
        reduction: bottleneck ratio; the hidden width is ``channels // reduction``.
        min_hidden: lower bound on the hidden width.
    """

    def __init__(self, channels: int, *, reduction: int = 16, min_hidden: int = 8):
        super().__init__()
        hidden = reduced_channels(channels, reduction, min_hidden)
        self.mlp = nn.Sequential(*_conv_bn_relu(channels, hidden), nn.Conv2d(hidden, channels, kernel_size=1))

    def forward(self, x: Tensor) -> Tensor:
        # torch's BatchNorm error names neither BAM nor the fix; torch.fx's trace has no sizes to check
        if self.training and not isinstance(x, torch.fx.Proxy) and x.shape[0] == 1:
            raise ConfigError("BAM's channel gate: a training batch of one image, and its BatchNorm normalises each "
                              "channel over the batch; train with batches of 2 or more images "
                              "(data.init_args.batch_size), or call model.eval()")
        return self.mlp(x.mean(dim=(2, 3), keepdim=True))


class BamSpatialBranch(nn.Module):
    """Spatial logits ``(B, 1, H, W)``: 1x1 reduce, ``num_dilated`` dilated 3x3 convs, 1x1 to one map.

    Args:
        channels: number of input channels.
        reduction: bottleneck ratio; the hidden width is ``channels // reduction``.
        min_hidden: lower bound on the hidden width.
        dilation: dilation of the 3x3 convolutions.
        num_dilated: how many dilated 3x3 convolutions.
    """

    def __init__(
        self, channels: int, *, reduction: int = 16, min_hidden: int = 8, dilation: int = 4, num_dilated: int = 2
    ):
        super().__init__()
        hidden = reduced_channels(channels, reduction, min_hidden)
        layers = _conv_bn_relu(channels, hidden)
        for _ in range(num_dilated):
            layers += _conv_bn_relu(hidden, hidden, kernel_size=3, dilation=dilation)
        self.convs = nn.Sequential(*layers, nn.Conv2d(hidden, 1, kernel_size=1))

    def forward(self, x: Tensor) -> Tensor:
        return self.convs(x)


class Bam(nn.Module):
    """BAM: ``x * (1 + sigmoid(channel(x) + spatial(x)))``; the batch norms follow the authors' code.

    The branches are added as in the paper (eq. 2); the authors' released code multiplies them, so its weights
    give another function here.

    Explainability: set ``keep_gate = True`` and each forward stores detached tensors in [0, 1]:
    ``last_gate = {"gate": (B, C, H, W), "channel": (B, C, 1, 1), "spatial": (B, 1, H, W)}``, where
    ``"gate"`` is the applied gate and ``"channel"``/``"spatial"`` are each branch's logits through
    a sigmoid on their own (for drawing; the module never applies them separately).

    Args:
        channels: number of input (and output) channels.
        reduction: bottleneck ratio of both branches.
        min_hidden: lower bound on the bottleneck width.
        dilation: dilation of the spatial branch's 3x3 convolutions.
        keep_gate: store the gates in ``last_gate`` on every forward.
    """

    def __init__(
        self,
        channels: int,
        *,
        reduction: int = 16,
        min_hidden: int = 8,
        dilation: int = 4,
        keep_gate: bool = False,
    ):
        super().__init__()
        self.channel = BamChannelBranch(channels, reduction=reduction, min_hidden=min_hidden)
        self.spatial = BamSpatialBranch(channels, reduction=reduction, min_hidden=min_hidden, dilation=dilation)
        self.keep_gate = keep_gate
        self.last_gate: dict[str, Tensor] = {}

    def forward(self, x: Tensor) -> Tensor:
        channel_logits, spatial_logits = self.channel(x), self.spatial(x)
        gate = torch.sigmoid(channel_logits + spatial_logits)  # (B, C, H, W)
        if self.keep_gate:
            self.last_gate = {
                "gate": gate.detach(),
                "channel": torch.sigmoid(channel_logits).detach(),
                "spatial": torch.sigmoid(spatial_logits).detach(),
            }
        return x * (1 + gate)
