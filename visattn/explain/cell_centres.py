"""Where an explanation map's cells sit on the image they explain.

An ``(h, w)`` map is drawn and scored by placing each cell at a point of the image and interpolating
linearly between those points (flat beyond the outer ones). Coordinates are continuous pixels, pixel
``i`` covering ``[i, i + 1)`` (as the pointing game's boxes).

- A ViT's patches of ``p`` pixels tile the image from its top-left corner: cell ``k`` sits at
  ``p k + p/2``, and an image that is not a multiple of ``p`` loses its last ``H mod p`` rows (timm
  without ``dynamic_img_pad``) or is padded below them. So does every cell of a CNN whose downsampling
  layers never overlap (kernel = stride, no padding: ConvNeXt's patchify stem and downsampling).
- Any map without a known layout covers the image in equal blocks, cell ``k`` of ``h`` at
  ``(k + 1/2) H / h``: what upsampling with ``align_corners=False`` assumes (Grad-CAM tools draw every
  map that way). Where ``H`` is a multiple of the stride, tiles are these blocks.
- A ResNet's cell of stride ``s`` sits at the centre of its receptive field, pixel ``s k`` (continuous
  ``s k + 1/2``): an odd kernel centred by its padding, stride 2, centres output ``j`` on input ``2j``.
  That is ``(s - 1) / 2`` px above and left of its block's centre: 3.5 px for 8 px cells, 15.5 px for
  a ResNet-50's last stage (Araujo, Norris, Sim, "Computing Receptive Fields of Convolutional Neural
  Networks", Distill 2019). Other CNNs downsample off-centre in their own ways and are laid out in
  blocks (:func:`map_centres`).
- A grid average-pooled from such a map (a captioner's ``AdaptiveAvgPool2d``) sits at the mean of the
  cells each of its windows covers.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional, Sequence

import numpy as np
import torch
from timm.models.resnet import ResNet as TimmResNet
from torch import Tensor, nn

from ..errors import ConfigError
from ..models.resnet import ResNet


@dataclass(frozen=True)
class CellCentres:
    """Pixel coordinates of an ``(h, w)`` map's cell centres: ``rows[i]`` is row ``i``'s ``y``,
    ``cols[j]`` column ``j``'s ``x``, both increasing."""

    rows: tuple[float, ...]
    cols: tuple[float, ...]

    @classmethod
    def blocks(cls, map_size: Sequence[int], image_size: Sequence[int]) -> "CellCentres":
        """Each cell at the centre of its equal block of the image (patch grids, maps of unknown layout)."""
        return cls(*(_block_centres(cells, pixels) for cells, pixels in zip(map_size, image_size)))

    @classmethod
    def strided(cls, map_size: Sequence[int], image_size: Sequence[int]) -> "CellCentres":
        """A CNN feature map's cells at their receptive fields' centres, ``s k + 1/2``, with the stride
        ``s`` the power of two for which "same" padding gives ``ceil(H / s) = h`` cells; an axis that no
        power of two fits is laid out in blocks."""
        return cls(*(_strided_centres(cells, pixels) for cells, pixels in zip(map_size, image_size)))

    @classmethod
    def tiled(cls, map_size: Sequence[int], image_size: Sequence[int], stride: Sequence[int]) -> "CellCentres":
        """Cells of non-overlapping ``stride`` px tiles from the top-left corner, ``s k + s/2``, on each
        axis whose ``h`` cells are the ``floor`` or ``ceil`` of ``H / s`` (a remainder dropped or padded);
        otherwise (a map of an earlier layer) the power of two that gives ``floor(H / s) = h``, else blocks."""
        return cls(*(_tiled_centres(cells, pixels, s) for cells, pixels, s in zip(map_size, image_size, stride)))

    @property
    def map_size(self) -> tuple[int, int]:
        return len(self.rows), len(self.cols)

    def require_map(self, shape: Sequence[int]) -> None:
        """One line unless a map of ``shape`` (``(..., h, w)``) has these cells."""
        if tuple(shape[-2:]) != self.map_size:
            raise ConfigError(f"heat map has shape {tuple(shape)}; its cell centres are for a {self.map_size} grid")

    def pooled(self, grid: Sequence[int]) -> "CellCentres":
        """The centres of ``AdaptiveAvgPool2d(grid)``'s output cells: each window's mean centre."""
        return CellCentres(*(_pooled_centres(centres, size) for centres, size in zip((self.rows, self.cols), grid)))

    def scaled(self, factor_y: float, factor_x: float) -> "CellCentres":
        """The same centres on the image resized by ``factor_y`` (height) and ``factor_x`` (width)."""
        return CellCentres(tuple(y * factor_y for y in self.rows), tuple(x * factor_x for x in self.cols))

    def resample(self, maps: Tensor, size: Sequence[int]) -> Tensor:
        """``(..., h, w)`` maps interpolated at the centres of the ``size = (H, W)`` image's pixels,
        ``(..., H, W)`` in float32 (float64 for float64 maps), on the maps' device."""
        self.require_map(maps.shape)
        maps = maps.to(torch.float64 if maps.dtype == torch.float64 else torch.float32)
        if self == CellCentres.blocks(size, size):  # one cell per pixel, already in place
            return maps
        weight_y = _interpolation_matrix(self.rows, size[0]).to(maps)  # (H, h)
        weight_x = _interpolation_matrix(self.cols, size[1]).to(maps)  # (W, w)
        with torch.autocast(maps.device.type, enabled=False):  # autocast would multiply in 16 bits
            return weight_y @ maps @ weight_x.T

    def point(self, row: float, col: float) -> tuple[float, float]:
        """``(x, y)`` in pixels of the fractional cell position ``(row, col)`` (cell ``k`` at ``k``)."""
        return _at(self.cols, col), _at(self.rows, row)


def map_centres(model: nn.Module, map_size: Sequence[int], image_size: Sequence[int]) -> CellCentres:
    """Where the cells of ``model``'s ``(h, w)`` maps (any method's) sit on an ``image_size`` input: a CNN
    that downsamples with centred odd kernels (ResNets, EfficientNets, MobileNets, RegNets) at their
    receptive fields' centres (:meth:`CellCentres.strided`), any other model's in equal blocks, as Grad-CAM
    tools draw them: a ViT's patches are such blocks, and other CNNs downsample off-centre in their own
    ways (ConvNeXt's 4x4 patchify stem, VGG's and DenseNet's 2x2 pooling, TF "same" padding)."""
    if centred_strides(model):
        return CellCentres.strided(tuple(map_size), tuple(image_size))
    stride = tiled_stride(model)
    if stride is not None:
        return CellCentres.tiled(tuple(map_size), tuple(image_size), stride)
    return CellCentres.blocks(tuple(map_size), tuple(image_size))


def centred_strides(model: nn.Module) -> bool:
    """Whether every downsampling in ``model`` is an odd kernel centred by its padding, so a stride-s cell
    ``k`` looks at pixel ``s k``: each strided convolution or pooling layer, or a visattn or timm ResNet
    (ResNet-D's 2x2 average-pooled shortcuts sit half a pixel of each stage's input to the lower right, which adds
    up over the stages: a uniform-weight ResNet-50-D's gradient centre lies 7 px off its cell's)."""
    if isinstance(model, (ResNet, TimmResNet)):
        return True
    strided = [m for m in model.modules() if isinstance(m, _DOWNSAMPLING) and max(_pair(m.stride)) > 1]
    return bool(strided) and all(map(_centred, strided))


def tiled_stride(model: nn.Module) -> Optional[tuple[int, int]]:
    """The total ``(y, x)`` stride of a model whose every downsampling layer tiles its input without
    overlap (kernel = stride, no padding: a ViT's patch embedding, ConvNeXt's stem and downsampling);
    ``None`` for any other model."""
    strided = [m for m in model.modules() if isinstance(m, _DOWNSAMPLING) and max(_pair(m.stride)) > 1]
    if not strided or not all(_pair(m.kernel_size) == _pair(m.stride) and not any(_pair(m.padding))
                              for m in strided):
        return None
    return tuple(math.prod(_pair(m.stride)[axis] for m in strided) for axis in (0, 1))


_DOWNSAMPLING = (nn.Conv2d, nn.MaxPool2d, nn.AvgPool2d)


def _centred(layer: nn.Module) -> bool:
    """An odd kernel padded by half its (dilated) extent on every side; timm's "same" layers pad in forward."""
    dilation = _pair(getattr(layer, "dilation", 1))
    return all(k % 2 == 1 and p == d * (k - 1) // 2 for k, p, d in
               zip(_pair(layer.kernel_size), _pair(layer.padding), dilation))


def _pair(value: int | Sequence[int]) -> tuple[int, ...]:
    return tuple(value) if isinstance(value, (tuple, list)) else (value, value)


def _block_centres(cells: int, pixels: int) -> tuple[float, ...]:
    return tuple((k + 0.5) * pixels / cells for k in range(cells))


def _strided_centres(cells: int, pixels: int) -> tuple[float, ...]:
    if cells > 1:
        stride = 2 ** math.ceil(math.log2(pixels / cells))  # ceil(H / s) = h needs H / h <= s < H / (h - 1)
        if math.ceil(pixels / stride) == cells:
            return tuple(stride * k + 0.5 for k in range(cells))
    return _block_centres(cells, pixels)  # one cell: its place does not matter, the map is flat along it


def _tiled_centres(cells: int, pixels: int, stride: int) -> tuple[float, ...]:
    if cells not in (pixels // stride, -(-pixels // stride)) and cells > 1:  # an earlier layer's map
        stride = 2 ** math.floor(math.log2(pixels / cells))  # floor(H / s) = h needs H / (h + 1) < s <= H / h
        if pixels // stride != cells:
            return _block_centres(cells, pixels)
    return tuple(stride * k + stride / 2 for k in range(cells))


def _pooled_centres(centres: tuple[float, ...], size: int) -> tuple[float, ...]:
    n = len(centres)
    # AdaptiveAvgPool's window k covers cells floor(k n / size) .. ceil((k + 1) n / size) - 1
    return tuple(float(np.mean(centres[k * n // size: -(-(k + 1) * n // size)])) for k in range(size))


def _interpolation_matrix(centres: tuple[float, ...], pixels: int) -> Tensor:
    """``(pixels, cells)`` weights of linear interpolation between the cell centres, flat beyond them."""
    identity = np.eye(len(centres))
    points = np.arange(pixels) + 0.5
    return torch.from_numpy(np.stack([np.interp(points, centres, column) for column in identity], axis=1))


def _at(centres: tuple[float, ...], position: float) -> float:
    return float(np.interp(position, np.arange(len(centres)), centres))
