"""Simple feature pyramid: multi-scale maps from the single-scale output of a plain ViT.

Paper: Li, Mao, Girshick, He, "Exploring Plain Vision Transformer Backbones for Object Detection"
(ViTDet), ECCV 2022 (arXiv:2203.16527), §3 and Fig. 2(c).

The last ViT block's tokens, laid back on their stride-``p`` grid, feed one branch per scale:
two stride-2 deconvolutions for 4x, one for 2x, nothing for 1x, a 2x2 max-pool for 0.5x; each
branch then projects to ``out_channels`` with a 1x1 and a 3x3 conv, each followed by a
channel LayerNorm, as in the paper (eps 1e-6, detectron2's, which ViTDet's weights were trained with). There is
no top-down or lateral path.
"""
from collections import OrderedDict
from collections.abc import Sequence
from typing import Optional

from torch import Tensor, nn
from torchvision.models.convnext import LayerNorm2d
from torchvision.ops.feature_pyramid_network import ExtraFPNBlock

from ..errors import ConfigError


def _channel_norm(channels: int) -> LayerNorm2d:
    return LayerNorm2d(channels, eps=1e-6)


def _rescale(channels: int, scale: float) -> tuple[list[nn.Module], int]:
    """The paper's resampling layers for ``scale`` and the channels they output."""
    if scale == 4.0:
        half, quarter = channels // 2, channels // 4
        layers = [
            nn.ConvTranspose2d(channels, half, kernel_size=2, stride=2),
            _channel_norm(half),
            nn.GELU(),
            nn.ConvTranspose2d(half, quarter, kernel_size=2, stride=2),
        ]
        return layers, quarter
    if scale == 2.0:
        return [nn.ConvTranspose2d(channels, channels // 2, kernel_size=2, stride=2)], channels // 2
    if scale == 1.0:
        return [], channels
    if scale == 0.5:
        return [nn.MaxPool2d(kernel_size=2, stride=2)], channels
    raise ConfigError(f"pyramid scale {scale} is not supported; use 4.0, 2.0, 1.0 or 0.5")


class SimpleFeaturePyramid(nn.Module):
    """One feature map of stride ``s`` to maps of strides ``s / scale``, all with ``out_channels``.

    Args:
        in_channels: channels of the input map (the ViT's ``embed_dim``).
        out_channels: channels of every output map.
        scales: output scales relative to the input, finest first (4.0, 2.0, 1.0, 0.5).
        extra_blocks: torchvision FPN extra block (e.g. ``LastLevelP6P7``) adding coarser levels.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int = 256,
        *,
        scales: Sequence[float] = (4.0, 2.0, 1.0, 0.5),
        extra_blocks: Optional[ExtraFPNBlock] = None,
    ) -> None:
        super().__init__()
        if list(scales) != sorted(scales, reverse=True):
            raise ConfigError(f"pyramid scales {list(scales)} must go from fine to coarse, e.g. (2.0, 1.0, 0.5)")
        self.scales = tuple(scales)
        self.stages = nn.ModuleList()
        for scale in scales:
            layers, channels = _rescale(in_channels, scale)
            self.stages.append(nn.Sequential(
                *layers,
                nn.Conv2d(channels, out_channels, kernel_size=1, bias=False),
                _channel_norm(out_channels),
                nn.Conv2d(out_channels, out_channels, kernel_size=3, padding=1, bias=False),
                _channel_norm(out_channels),
            ))
        self.extra_blocks = extra_blocks
        self.out_channels = out_channels

    def forward(self, x: Tensor) -> "OrderedDict[str, Tensor]":
        results = [stage(x) for stage in self.stages]  # each (B, out_channels, H * scale, W * scale)
        names = [str(i) for i in range(len(results))]
        if self.extra_blocks is not None:
            results, names = self.extra_blocks(results, [x], names)
        return OrderedDict(zip(names, results))
