"""ResNets with channel / spatial attention modules.

Papers:
- He, Zhang, Ren, Sun, "Deep Residual Learning for Image Recognition", CVPR 2016 (arXiv:1512.03385).
- He, Zhang, Zhang, Zhang, Xie, Li, "Bag of Tricks for Image Classification with Convolutional Neural
  Networks", CVPR 2019 (arXiv:1812.01187): ResNet-D, a deep 3x3 stem and average-pooled shortcuts.
- Xie, Girshick, Dollar, Tu, He, "Aggregated Residual Transformations for Deep Neural Networks", CVPR 2017
  (arXiv:1611.05431): ResNeXt's grouped 3x3 convs; Zagoruyko & Komodakis 2016 (arXiv:1605.07146): wide ResNets.
- Attention modules: SE (Hu 2018), ECA (Wang 2020), CBAM (Woo 2018), BAM (Park 2018),
  coordinate attention (Hou 2021), non-local (Wang 2018), global context (Cao 2019);
  see ``visattn/layers/``.

Parameter names are torchvision's (``conv1, bn1, layer1..layer4, fc``; blocks ``conv1, bn1, conv2,
bn2, (conv3, bn3), downsample.0/.1``), so torchvision and timm ResNet checkpoints load as they are;
the attention modules add keys of their own, which ``strict="attention"`` leaves at their initialisation.
timm names the block attention ``se`` whatever its type; ``adapt_state_dict`` renames it to ``attn`` for SE and ECA.

Where each attention goes, following its paper:
- SE, ECA, CBAM, coordinate attention: ``block.attn`` in every block, after the last BN and
  before the residual add.
- Global context: ``block.attn`` likewise, but not in the first stage (``c3+c4+c5`` in the paper).
- BAM: between stages, ``bam1``/``bam2``/``bam3`` after ``layer1``/``layer2``/``layer3``.
- Non-local: ``block.non_local`` after the residual add of every other block (the first, third,
  ...) of ``layer2`` (at most 2) and ``layer3`` (at most 3): the paper's 5-block ResNet-50 setting. The
  authors' code puts them after the second, fourth, ... (``non_local_blocks={2: (1, 3), 3: (1, 3, 5)}``).

``*d`` variants are ResNet-D (``stem_type="deep"``, ``avg_down=True``, as timm's ``resnet50d``), ``*t`` the
tiered deep stem (timm's ``ecaresnet50t``); their keys are timm's (``conv1.0/.1/.3/.4/.6``, shortcut
``downsample.1/.2``). Any ResNet takes the two arguments.

``*_resnet20_cifar`` variants are the He 2016 CIFAR layout (3x3 stride-1 stem, no max-pool, three
stages of three BasicBlocks), widened from 16/32/64 to 28/56/112 channels for 28-64 px inputs:
0.83M parameters plain, 0.84M with CBAM, every variant under 1M.
"""
import contextlib
import re
from functools import partial
from typing import Any, Iterator, Literal, Mapping, Optional, Sequence, Union

import torch
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from ..devices import model_device
from ..errors import ConfigError, check_count, is_count
from ..layers.create_attn import ATTN_LAYERS, create_attn
from ..layers.drop_path import DropPath, check_rate
from ..layers.eca import EfficientChannelAttention
from ..layers.global_pool import GlobalPool2d, PoolType, check_pool_type
from ..layers.patch_embed import check_image_layout
from ..layers.se import SqueezeExcite
from ..registry import check_num_classes, classifier_head, evaluated_with, register_model
from .features import Indices, take_indices


def _conv3x3(in_chs: int, out_chs: int, stride: int = 1, dilation: int = 1, groups: int = 1) -> nn.Conv2d:
    return nn.Conv2d(in_chs, out_chs, kernel_size=3, stride=stride, padding=dilation, dilation=dilation,
                     groups=groups, bias=False)


def _conv1x1(in_chs: int, out_chs: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(in_chs, out_chs, kernel_size=1, stride=stride, bias=False)


def _downsample(in_chs: int, out_chs: int, stride: int, avg_down: bool = False,
                dilated: bool = False) -> Optional[nn.Module]:
    """Projection shortcut (1x1 conv + BN) where the shape changes, else ``None`` (identity). ``avg_down``
    (ResNet-D) averages 2x2 before a stride-1 projection, where the strided 1x1 conv drops 3 of 4 positions;
    at a stage that dilates instead of striding, timm averages 2x2 at stride 1 (``dilated``)."""
    if stride == 1 and in_chs == out_chs:
        return None
    if not avg_down:
        return nn.Sequential(_conv1x1(in_chs, out_chs, stride), nn.BatchNorm2d(out_chs))
    if stride > 1:
        pool = nn.AvgPool2d(2, stride, ceil_mode=True, count_include_pad=False)
    else:
        pool = _SamePaddedAverage() if dilated else nn.Identity()
    return nn.Sequential(pool, _conv1x1(in_chs, out_chs), nn.BatchNorm2d(out_chs))


class _SamePaddedAverage(nn.Module):
    """2x2 mean at stride 1 over the input zero-padded by one row and column at the far edges (timm's
    ``AvgPool2dSame(2, 1)``, whose padding counts in the mean): the shortcut of a dilated ResNet-D stage."""

    def forward(self, x: Tensor) -> Tensor:
        return nn.functional.avg_pool2d(nn.functional.pad(x, (0, 1, 0, 1)), 2, stride=1)


StemType = Literal["", "deep", "deep_tiered"]


def _deep_stem(in_chans: int, out_chs: int, stem_width: int, tiered: bool) -> nn.Sequential:
    """ResNet-C/D's three 3x3 convs in place of the 7x7 (the first strided), of ``stem_width``, ``stem_width`` and
    ``out_chs`` channels; tiered narrows the first to 3/4."""
    first = 3 * (stem_width // 4) if tiered else stem_width
    return nn.Sequential(
        _conv3x3(in_chans, first, stride=2), nn.BatchNorm2d(first), nn.ReLU(inplace=True),
        _conv3x3(first, stem_width), nn.BatchNorm2d(stem_width), nn.ReLU(inplace=True),
        _conv3x3(stem_width, out_chs),
    )


class _ResidualBlock(nn.Module):
    """What BasicBlock and Bottleneck share: attention before the add, the add, an optional non-local after."""

    def _init_residual(
        self,
        out_chs: int,
        downsample: Optional[nn.Module],
        attn_layer: Optional[str],
        attn_kwargs: Optional[Mapping],
        non_local: bool,
        drop_path: float,
    ) -> None:
        attn_kwargs = attn_kwargs or {}
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample
        self.attn = create_attn(attn_layer, out_chs, **attn_kwargs)
        self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()
        self.non_local = create_attn("non_local", out_chs, **attn_kwargs) if non_local else None

    def _add_residual(self, out: Tensor, x: Tensor) -> Tensor:
        if self.attn is not None:
            out = self.attn(out)
        shortcut = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.drop_path(out) + shortcut)
        if self.non_local is not None:
            out = self.non_local(out)
        return out


class BasicBlock(_ResidualBlock):
    """Two 3x3 convs (ResNet-18/34 and the CIFAR ResNets).

    Args:
        in_chs: input channels.
        planes: channels of both convs, and the output's (``expansion`` 1).
        stride: the first conv's stride.
        dilation: dilation of the second conv, and of the first unless ``first_dilation`` is given.
        first_dilation: dilation of the first conv in a stage's first block, where it differs from ``dilation``.
        downsample: shortcut projection when the block changes shape; ``None`` for the identity.
        attn_layer: ``create_attn`` name of the attention applied before the residual add; ``None`` for none.
        attn_kwargs: keyword arguments for the attention and non-local modules (e.g. ``keep_gate=True``).
        non_local: put a non-local block after the residual add.
        drop_path: stochastic depth rate of the residual branch.
    """

    expansion = 1

    def __init__(
        self,
        in_chs: int,
        planes: int,
        *,
        stride: int = 1,
        dilation: int = 1,
        first_dilation: Optional[int] = None,
        downsample: Optional[nn.Module] = None,
        attn_layer: Optional[str] = None,
        attn_kwargs: Optional[Mapping] = None,
        non_local: bool = False,
        drop_path: float = 0.0,
    ):
        super().__init__()
        self.conv1 = _conv3x3(in_chs, planes, stride, first_dilation or dilation)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = _conv3x3(planes, planes, dilation=dilation)
        self.bn2 = nn.BatchNorm2d(planes)
        self._init_residual(planes, downsample, attn_layer, attn_kwargs, non_local, drop_path)

    def zero_init_last(self) -> None:
        nn.init.zeros_(self.bn2.weight)

    def forward(self, x: Tensor) -> Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self._add_residual(out, x)


class Bottleneck(_ResidualBlock):
    """1x1 reduce, 3x3 (carrying the stride, "ResNet v1.5" as in torchvision), 1x1 expand by 4; the 3x3 in
    ``cardinality`` groups of ``base_width / 64 * planes`` channels each (ResNeXt; 1 group of ``planes`` plain).

    Args:
        in_chs: input channels.
        planes: the block's width; the 3x3 conv has ``int(planes * base_width / 64) * cardinality`` channels,
            the output ``planes * 4``.
        stride: the 3x3 conv's stride.
        dilation: dilation of the 3x3 conv, unless ``first_dilation`` is given.
        first_dilation: dilation of the 3x3 conv in a stage's first block, where it differs from ``dilation``.
        cardinality: groups of the 3x3 conv.
        base_width: channels of each group per 64 ``planes``.
        downsample: shortcut projection when the block changes shape; ``None`` for the identity.
        attn_layer: ``create_attn`` name of the attention applied before the residual add; ``None`` for none.
        attn_kwargs: keyword arguments for the attention and non-local modules (e.g. ``keep_gate=True``).
        non_local: put a non-local block after the residual add.
        drop_path: stochastic depth rate of the residual branch.
    """

    expansion = 4

    def __init__(
        self,
        in_chs: int,
        planes: int,
        *,
        stride: int = 1,
        dilation: int = 1,
        first_dilation: Optional[int] = None,
        cardinality: int = 1,
        base_width: int = 64,
        downsample: Optional[nn.Module] = None,
        attn_layer: Optional[str] = None,
        attn_kwargs: Optional[Mapping] = None,
        non_local: bool = False,
        drop_path: float = 0.0,
    ):
        super().__init__()
        out_chs = planes * self.expansion
        width = int(planes * base_width / 64) * cardinality  # as torchvision and timm round it
        self.conv1 = _conv1x1(in_chs, width)
        self.bn1 = nn.BatchNorm2d(width)
        self.conv2 = _conv3x3(width, width, stride, first_dilation or dilation, groups=cardinality)
        self.bn2 = nn.BatchNorm2d(width)
        self.conv3 = _conv1x1(width, out_chs)
        self.bn3 = nn.BatchNorm2d(out_chs)
        self._init_residual(out_chs, downsample, attn_layer, attn_kwargs, non_local, drop_path)

    def zero_init_last(self) -> None:
        nn.init.zeros_(self.bn3.weight)

    def forward(self, x: Tensor) -> Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return self._add_residual(out, x)


BlockType = type[Union[BasicBlock, Bottleneck]]


class ResNet(nn.Module):
    """ResNet with optional attention modules, torchvision-compatible parameter names.

    Args:
        block: ``BasicBlock`` or ``Bottleneck``.
        layers: number of blocks per stage (4 stages for ImageNet, 3 for the CIFAR layout).
        widths: ``planes`` of each stage; a stage outputs ``planes * block.expansion`` channels.
        num_classes: classifier size; 0 leaves ``fc`` an identity (features only).
        in_chans: input image channels.
        small_input: CIFAR stem (3x3 stride-1 conv, no max-pool) for 28-64 px images.
        stem_type: ``""`` the 7x7 conv to ``widths[0]`` channels; ``"deep"`` three 3x3 convs of ``stem_width``,
            ``stem_width`` and ``2 * stem_width`` channels (ResNet-C), which the first stage takes in, as timm's;
            ``"deep_tiered"`` the first of them 3/4 as wide (timm's ``*t``).
        stem_width: the deep stem's inner width: timm's default, 64; its ``*d`` and ``*t`` models (and visattn's)
            take 32, a stem ending at 64 channels.
        avg_down: average-pool shortcuts (ResNet-D): 2x2 average, then a stride-1 1x1 projection.
        cardinality: groups of a Bottleneck's 3x3 conv (ResNeXt's; timm's name, torchvision's ``groups``).
        base_width: channels of each group per 64 ``planes`` (timm's name, torchvision's ``width_per_group``):
            ResNeXt-50 32x4d is 32 groups of 4, Wide ResNet-50-2 one group at 128.
        output_stride: the final map's stride, a power of two (timm's 8, 16 or 32): stages past it dilate their
            3x3 convs instead of striding (Yu & Koltun 2016, as DeepLab's backbones), keeping every weight's shape.
        attn_layer: ``create_attn`` name placed as ``block.attn`` in the blocks of ``attn_stages``.
        attn_stages: 1-based stages that get ``attn_layer``; ``None`` for all.
        bam: put a BAM module after every stage but the last (``bam1``, ``bam2``, ...).
        non_local_blocks: ``{stage: block indices}`` that get a non-local block after them.
        attn_kwargs: keyword arguments for every attention module built (e.g. ``keep_gate=True``).
        drop_rate: dropout before the classifier.
        drop_path_rate: stochastic depth of the last block, rising linearly from 0 at the first.
        global_pool: timm's head pooling: ``"avg"``, ``"max"``, ``"avgmax"`` (mean of the two), ``"catavgmax"``
            (both, concatenated: the classifier takes ``head_hidden_size = 2 * num_features``), or ``""`` for none,
            where ``forward`` returns the ``(B, num_features, h, w)`` map and ``num_classes`` must be 0 (timm
            builds a classifier on it and fails at the first forward).
        zero_init_residual: zero the last BN's weight (gamma) in every block, so that each block starts
            as ``relu(shortcut(x))`` (Goyal et al. 2017); torchvision's name, timm's ``zero_init_last``.
            timm defaults to True; False here, the init the README's measured training runs used.
    """

    classifier = "fc"

    def __init__(
        self,
        *,
        block: BlockType = BasicBlock,
        layers: Sequence[int] = (2, 2, 2, 2),
        widths: Sequence[int] = (64, 128, 256, 512),
        num_classes: int = 1000,
        in_chans: int = 3,
        small_input: bool = False,
        stem_type: StemType = "",
        stem_width: int = 64,
        avg_down: bool = False,
        output_stride: int = 32,
        cardinality: int = 1,
        base_width: int = 64,
        attn_layer: Optional[str] = None,
        attn_stages: Optional[Sequence[int]] = None,
        bam: bool = False,
        non_local_blocks: Optional[Mapping[int, Sequence[int]]] = None,
        attn_kwargs: Optional[Mapping] = None,
        drop_rate: float = 0.0,
        drop_path_rate: float = 0.0,
        global_pool: PoolType = "avg",
        zero_init_residual: bool = False,
    ):
        super().__init__()
        check_count("in_chans", in_chans)
        check_rate("drop_rate", drop_rate)
        check_rate("drop_path_rate", drop_path_rate)
        _check_head(num_classes, global_pool)
        _check_stem(stem_type, stem_width, small_input)
        group_kwargs = _group_kwargs(block, cardinality, base_width)
        first_reduction = 1 if small_input else 4  # the stem's stride
        plan = _stage_plan(len(layers), first_reduction, _check_output_stride(output_stride, first_reduction))
        non_local_blocks = _stage_numbers(non_local_blocks)
        _check_stages(block, layers, widths)
        _check_placement(layers, attn_stages, non_local_blocks)
        attn_kwargs = attn_kwargs or {}
        self.num_classes = num_classes
        self.in_chans = in_chans
        self.input_size = (in_chans, 32, 32) if small_input else (in_chans, 224, 224)
        stem_chs = 2 * stem_width if stem_type else widths[0]
        self._make_stem(in_chans, stem_chs, small_input, stem_type, stem_width)
        self.stage_names = [f"layer{i}" for i in range(1, len(layers) + 1)]
        self._make_stages(
            block, stem_chs, layers, widths, plan, attn_layer, attn_stages, non_local_blocks, attn_kwargs,
            drop_path_rate, avg_down, group_kwargs,
        )
        self.num_features = widths[-1] * block.expansion
        if bam:
            for i, width in enumerate(widths[:-1], start=1):
                setattr(self, f"bam{i}", create_attn("bam", width * block.expansion, **attn_kwargs))
        self.feature_info = _feature_info(block, stem_chs, widths, small_input, plan, bam)
        self.global_pool = GlobalPool2d(global_pool)
        self.drop = nn.Dropout(drop_rate)
        self.fc = nn.Linear(self.head_hidden_size, num_classes) if num_classes > 0 else nn.Identity()
        self.grad_checkpointing = False
        self._init_weights(zero_init_residual)
        if self._attention_named_as_in_timm():
            # timm's SE/ECA state dicts load through load_state_dict (and timm's load_checkpoint) too, as into timm's
            self.register_load_state_dict_pre_hook(_read_timm_attention_names)

    def _make_stem(self, in_chans: int, width: int, small_input: bool, stem_type: StemType, stem_width: int) -> None:
        if small_input:
            self.conv1 = _conv3x3(in_chans, width)
        elif stem_type:
            self.conv1 = _deep_stem(in_chans, width, stem_width, tiered=stem_type == "deep_tiered")
        else:
            self.conv1 = nn.Conv2d(in_chans, width, kernel_size=7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.Identity() if small_input else nn.MaxPool2d(kernel_size=3, stride=2, padding=1)

    def _make_stages(
        self,
        block: BlockType,
        stem_chs: int,
        layers: Sequence[int],
        widths: Sequence[int],
        plan: Sequence[tuple[int, int, int]],
        attn_layer: Optional[str],
        attn_stages: Optional[Sequence[int]],
        non_local_blocks: Optional[Mapping[int, Sequence[int]]],
        attn_kwargs: Mapping,
        drop_path_rate: float,
        avg_down: bool,
        group_kwargs: Mapping[str, int],
    ) -> None:
        num_blocks = sum(layers)
        drop_paths = [drop_path_rate * i / max(num_blocks - 1, 1) for i in range(num_blocks)]
        in_chs = stem_chs
        for stage, (depth, planes, (stage_stride, dilation, _)) in enumerate(zip(layers, widths, plan), start=1):
            with_non_local = set((non_local_blocks or {}).get(stage, ()))
            previous_dilation = plan[stage - 2][1] if stage > 1 else 1
            blocks = []
            for i in range(depth):
                stride = stage_stride if i == 0 else 1
                blocks.append(block(
                    in_chs,
                    planes,
                    stride=stride,
                    dilation=dilation,
                    first_dilation=previous_dilation if i == 0 else dilation,
                    downsample=_downsample(in_chs, planes * block.expansion, stride, avg_down, dilated=dilation > 1),
                    attn_layer=attn_layer if attn_stages is None or stage in attn_stages else None,
                    attn_kwargs=attn_kwargs,
                    non_local=i in with_non_local,
                    drop_path=drop_paths.pop(0),
                    **group_kwargs,
                ))
                in_chs = planes * block.expansion
            setattr(self, f"layer{stage}", nn.Sequential(*blocks))

    def _init_weights(self, zero_init_last: bool) -> None:
        if model_device(self).type == "meta":  # torch's kaiming_normal_ draws even there: half a meta build's time
            return
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, (nn.BatchNorm2d, nn.GroupNorm)):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
        for m in self.modules():
            if hasattr(m, "init_affinity"):  # the fan-out init above would saturate their softmax
                m.init_affinity()
            # Non-local / GC blocks start as the identity; the blocks only when asked to.
            is_block = isinstance(m, _ResidualBlock)
            if hasattr(m, "zero_init_last") and (zero_init_last or not is_block):
                m.zero_init_last()

    def forward_stages(self, x: Tensor) -> list[Tensor]:
        """Every stage's output (after its BAM, where there is one), finest first: the features an FPN takes."""
        return self.forward_intermediates(x, indices=list(range(1, len(self.feature_info))), intermediates_only=True)

    def forward_intermediates(
        self, x: Tensor, indices: Indices = None, norm: bool = False, stop_early: bool = False,
        output_fmt: str = "NCHW", intermediates_only: bool = False,
    ) -> Union[list[Tensor], tuple[Tensor, list[Tensor]]]:
        """timm's feature API: ``(forward_features(x), maps)``, or the maps alone with ``intermediates_only``.
        Level 0 is the stem after its ReLU (before the max-pool), level k stage k's output after its BAM;
        ``indices`` takes the last n levels (an int), those listed, or all (None); ``stop_early`` skips the stages
        past the last one taken; ``norm`` has no final norm to apply, as in timm's ResNets."""
        if output_fmt != "NCHW":
            raise ConfigError(f"output_fmt={output_fmt!r}: a ResNet's feature maps are NCHW; drop output_fmt")
        taken, last = take_indices(len(self.feature_info), indices)
        check_image_layout(x, self.in_chans, self.bn1.weight)
        x = self.relu(self.bn1(self.conv1(x)))
        maps = [x] if 0 in taken else []
        x = self.maxpool(x)
        for i, name in enumerate(self.stage_names[:last] if stop_early else self.stage_names, start=1):
            x = self._run_stage(getattr(self, name), x)
            bam = getattr(self, f"bam{i}", None)
            if bam is not None:
                x = bam(x)
            if i in taken:
                maps.append(x)
        return maps if intermediates_only else (x, maps)

    def prune_intermediate_layers(self, indices: Indices = 1, prune_norm: bool = False,
                                  prune_head: bool = True) -> list[int]:
        """Drop the stages past the last level in ``indices`` (and the head, with ``prune_head`` or when stages
        go), as timm's ResNets do for a features-only model; returns the levels taken."""
        taken, last = take_indices(len(self.feature_info), indices)
        for i, name in enumerate(self.stage_names, start=1):
            if i > last:
                setattr(self, name, nn.Sequential())  # empty: the map passes through unchanged
                if hasattr(self, f"bam{i}"):
                    setattr(self, f"bam{i}", nn.Identity())
        if last == 0:
            self.maxpool = nn.Identity()
        if last < len(self.stage_names):
            self.num_features = self.feature_info[last]["num_chs"]
        if prune_head or last < len(self.stage_names):
            self.reset_classifier(0, "")
        return taken

    def _run_stage(self, stage: nn.Sequential, x: Tensor) -> Tensor:
        if not (self.grad_checkpointing and self.training and torch.is_grad_enabled()):
            return stage(x)
        # Compiled, the recomputation's running-statistics updates are not applied again (measured: as without
        # checkpointing, to 6e-7), and dynamo takes only dispatch modes as a context_fn (others fail to compile).
        compiled = torch.compiler.is_compiling()
        for block in stage:  # per block, as timm's checkpoint_seq over the stages
            kept = {} if compiled else {"context_fn": partial(_running_stats_kept, block)}
            x = checkpoint(block, x, use_reentrant=False, **kept)
        return x

    @property
    def head_hidden_size(self) -> int:
        """The features the classifier takes: the pooled ``num_features``, twice them for ``catavgmax`` (timm's)."""
        return self.num_features * self.global_pool.feat_mult()

    def forward_features(self, x: Tensor) -> Tensor:
        """Pre-pool feature map ``(B, num_features, H / 32, W / 32)`` (``H / 4`` for the CIFAR layout, ``H / 8``
        or ``H / 16`` at those ``output_stride``)."""
        return self.forward_stages(x)[-1]

    def forward_head(self, x: Tensor, pre_logits: bool = False) -> Tensor:
        x = self.drop(self.global_pool(x))  # (B, head_hidden_size); unpooled (B, num_features, h, w) for ""
        return x if pre_logits else self.fc(x)

    def forward(self, x: Tensor) -> Tensor:
        return self.forward_head(self.forward_features(x))

    def get_classifier(self) -> nn.Module:
        return self.fc

    def group_matcher(self, coarse: bool = False) -> dict[str, Any]:
        """timm's parameter groups, in depth order (layer-wise learning-rate decay in
        ``timm.optim.create_optimizer_v2(..., layer_decay=)``): the stem, then each block (``coarse``: each
        stage); a BAM module with its stage's last block (``coarse``: with its stage)."""
        if coarse:
            return {"stem": r"^conv1|bn1|maxpool", "blocks": [(r"^layer(\d+)", None), (r"^bam(\d+)", None)]}
        return {"stem": r"^conv1|bn1|maxpool", "blocks": [(r"^layer(\d+)\.(\d+)", None), (r"^bam(\d+)", (99999,))]}

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        """Keep only each block's input for the backward pass and recompute the rest there (timm's
        switch of the same name); it acts in training with gradients on, inference is unchanged.
        Gradients are unchanged, and drop-path draws the same masks when recomputed. Unlike timm's
        ``checkpoint_seq``, the recomputation leaves the BN running statistics alone (timm updates
        them twice a step), so a checkpointed run trains exactly as one without."""
        self.grad_checkpointing = enable

    def reset_classifier(self, num_classes: int, global_pool: Optional[PoolType] = None) -> None:
        """Replace ``fc`` with a freshly initialised one of ``num_classes`` outputs (0: identity);
        ``global_pool`` switches the pooling as in timm (``None`` keeps it)."""
        if global_pool is None:
            global_pool = self.global_pool.pool_type
        num_classes = check_num_classes(num_classes)
        _check_head(num_classes, global_pool)
        if global_pool != self.global_pool.pool_type and hasattr(self, "visattn_kwargs"):
            # what save_weights records, so that ARCH.TAG rebuilds with this pooling
            self.visattn_kwargs = {**self.visattn_kwargs, "global_pool": global_pool}
        self.global_pool = GlobalPool2d(global_pool)
        self.num_classes = num_classes
        self.fc = classifier_head(self, self.head_hidden_size, num_classes)

    def _attention_named_as_in_timm(self) -> bool:
        """Whether the blocks hold attention timm names ``se`` (SE, ECA), whose weights are renamed on the way."""
        return any(isinstance(m, _TIMM_SAME_ATTN) for m in self.modules())

    def adapt_state_dict(self, state: dict[str, Tensor], *,
                         source_grid: Optional[tuple[int, int]] = None) -> dict[str, Tensor]:
        """timm names every block's attention ``se`` whatever its type; rename it to ``attn`` where
        this model's block attention is the same module as timm's (SE, ECA). ``source_grid``, a ViT's
        patch grid, has no meaning here."""
        if not self._attention_named_as_in_timm():
            return state
        return {_TIMM_ATTENTION_KEY.sub(r"\1.attn.", key): value for key, value in state.items()}

    def timm_state_dict(self) -> dict[str, Tensor]:
        """This model's weights as timm's ResNet of the same layout names them, for its ``load_state_dict``: SE and
        ECA block attention under ``se`` (what :meth:`adapt_state_dict` reads back), the rest as they are. timm's
        names drop the first underscore: ``se_resnet50`` is its ``seresnet50``, ``eca_resnet50d`` its
        ``ecaresnet50d``. (The reverse of reading timm's weights, so that weights fine-tuned here load there.)
        Attention timm's ResNets lack or parametrise otherwise (CBAM, BAM, coordinate, global-context, non-local) is
        one line: its weights under visattn's names would be silently dropped by a non-strict load in timm."""
        other = next((m for m in self.modules() if isinstance(m, tuple(ATTN_LAYERS.values()))
                      and not isinstance(m, _TIMM_SAME_ATTN)), None)
        if other is not None:
            raise ConfigError(f"timm_state_dict: timm's ResNets have no {type(other).__name__} of the same parameters "
                              "(where timm has that attention, its widths, norms or biases differ); save this "
                              "model's weights with visattn.save_weights or torch.save(model.state_dict(), ...) "
                              "(timm_state_dict covers plain, SE and ECA ResNets)")
        state = self.state_dict()
        if not self._attention_named_as_in_timm():
            return state
        return {re.sub(r"^(layer\d+\.\d+)\.attn\.", r"\1.se.", key): value for key, value in state.items()}


# Block attention whose timm module has the same parameters and maths (timm seresnet*, and a
# plain-stem timm ResNet built with attn_layer="eca"), so the rename alone gives the same logits.
_TIMM_SAME_ATTN = (SqueezeExcite, EfficientChannelAttention)
_TIMM_ATTENTION_KEY = re.compile(r"^(layer\d+\.\d+)\.se\.")  # a block's attention as timm names it


def _read_timm_attention_names(module: nn.Module, state_dict: dict[str, Tensor], prefix: str, *args: Any) -> None:
    """``load_state_dict``'s pre-hook: the keys of ``module`` (under ``prefix``) that name a block's attention as
    timm does, renamed in place as :meth:`ResNet.adapt_state_dict` renames them; one whose new name is taken stays
    (a strict load names it as unexpected, rather than one of the two weights silently replacing the other)."""
    for key in [k for k in state_dict if k.startswith(prefix)]:
        renamed = prefix + _TIMM_ATTENTION_KEY.sub(r"\1.attn.", key[len(prefix):])
        if renamed != key and renamed not in state_dict:
            state_dict[renamed] = state_dict.pop(key)


def _stage_plan(num_stages: int, first_reduction: int, output_stride: int) -> list[tuple[int, int, int]]:
    """Each stage's stride, dilation and output reduction: a stage whose stride would take the map past
    ``output_stride`` dilates by it instead (timm's ``make_blocks``)."""
    plan, reduction, dilation = [], first_reduction, 1
    for stage in range(1, num_stages + 1):
        stride = 2 if stage > 1 else 1
        if reduction >= output_stride:
            dilation, stride = dilation * stride, 1
        reduction *= stride
        plan.append((stride, dilation, reduction))
    return plan


def _feature_info(block: BlockType, stem_chs: int, widths: Sequence[int], small_input: bool,
                  plan: Sequence[tuple[int, int, int]], bam: bool) -> list[dict[str, Any]]:
    """timm's ``feature_info``: channels, stride and module of the stem's output and each stage's."""
    info = [dict(num_chs=stem_chs, reduction=1 if small_input else 2, module="relu")]
    for stage, (planes, (_, _, reduction)) in enumerate(zip(widths, plan), start=1):
        module = f"bam{stage}" if bam and stage < len(widths) else f"layer{stage}"
        info.append(dict(num_chs=planes * block.expansion, reduction=reduction, module=module))
    return info


def _group_kwargs(block: BlockType, cardinality: object, base_width: object) -> dict[str, int]:
    """The block's ``cardinality`` and ``base_width``; none for a BasicBlock, which has no grouped layout."""
    cardinality, base_width = check_count("cardinality", cardinality), check_count("base_width", base_width)
    if block is Bottleneck:
        return {"cardinality": cardinality, "base_width": base_width}
    if (cardinality, base_width) != (1, 64):
        raise ConfigError(f"cardinality={cardinality}, base_width={base_width}: a BasicBlock ResNet (ResNet-18/34, "
                          "the CIFAR layout) has no grouped or widened 3x3 conv; give block=Bottleneck, or the "
                          "defaults 1 and 64")
    return {}


def _check_output_stride(output_stride: object, first_reduction: int) -> int:
    if not is_count(output_stride) or output_stride & (output_stride - 1):
        raise ConfigError(f"output_stride={output_stride!r}: give a power of two (8, 16 or 32 for an ImageNet "
                          "ResNet; 32 does not dilate)")
    if output_stride < first_reduction:  # it would silently give the stem's stride
        raise ConfigError(f"output_stride={output_stride}: the stem alone strides {first_reduction}; give "
                          f"{first_reduction} or more (8, 16 or 32 for an ImageNet ResNet)")
    return int(output_stride)


def _check_head(num_classes: int, global_pool: str) -> None:
    """An unpooled ``(B, C, h, w)`` map has no linear classifier (older timm asserted this too)."""
    if check_pool_type(global_pool) == "" and num_classes > 0:
        raise ConfigError(f"global_pool='' leaves the feature map unpooled and num_classes={num_classes} needs "
                          "pooled features: give num_classes=0 for the map, or global_pool='avg'")


def _check_stem(stem_type: object, stem_width: object, small_input: bool) -> None:
    if stem_type not in ("", "deep", "deep_tiered"):
        raise ConfigError(f"stem_type={stem_type!r}: give '' (the 7x7 conv), 'deep' or 'deep_tiered'")
    if stem_type and small_input:
        raise ConfigError(f"stem_type={stem_type!r} with small_input=True: the CIFAR stem is one stride-1 3x3 conv; "
                          "give stem_type='' or small_input=False")
    check_count("stem_width", stem_width)
    if stem_type == "deep_tiered" and stem_width < 4:
        raise ConfigError(f"stem_width={stem_width}: a tiered stem's first conv takes 3/4 of it; give at least 4")


def _stage_numbers(non_local_blocks: Optional[Mapping]) -> dict[int, tuple[int, ...]]:
    """``{stage: block indices}`` with stages also given as JSON writes them (``"2"``): a weights
    index stores this argument with string keys."""
    blocks = {}
    for stage, indices in (non_local_blocks or {}).items():
        if isinstance(stage, bool) or not str(stage).isdigit():
            raise ConfigError(f"non_local_blocks stage {stage!r}: give stage numbers, e.g. {{2: [0, 2], 3: [0]}}")
        blocks[int(stage)] = tuple(indices)
    return blocks


def _check_stages(block: object, layers: object, widths: object) -> None:
    """One line for a stage layout that would build and fail in its first forward (fewer ``widths`` than
    ``layers`` built fewer stages: no ``layer3``) or deep in the construction (a negative depth)."""
    if not (isinstance(block, type) and issubclass(block, nn.Module)):
        raise ConfigError(f"block={block!r}: give a block class, BasicBlock or Bottleneck (visattn.models.resnet)")
    _check_per_stage("layers", layers)
    _check_per_stage("widths", widths)
    if len(layers) != len(widths):
        raise ConfigError(f"layers={list(layers)} and widths={list(widths)}: give one width per stage "
                          f"({len(layers)} stages, {len(widths)} widths)")


def _check_per_stage(name: str, values: object) -> None:
    if not (isinstance(values, Sequence) and values and all(is_count(v) for v in values)):
        raise ConfigError(f"{name}={values!r}: give a list of whole numbers >= 1, one per stage")


def _check_placement(
    layers: Sequence[int], attn_stages: Optional[Sequence[int]], non_local_blocks: Optional[Mapping]
) -> None:
    stages = range(1, len(layers) + 1)
    for stage in attn_stages or ():
        if stage not in stages:
            raise ConfigError(f"attn_stages has stage {stage}, but this ResNet has stages {list(stages)}")
    for stage, indices in (non_local_blocks or {}).items():
        if stage not in stages or any(not 0 <= i < layers[stage - 1] for i in indices):
            raise ConfigError(
                f"non_local_blocks {{{stage}: {list(indices)}}} is out of range: stage sizes are {list(layers)}"
            )


def paper_non_local_blocks(layers: Sequence[int]) -> dict[int, tuple[int, ...]]:
    """Wang 2018's 5-block setting: every other block of stage 2 (at most 2) and stage 3 (at most 3)."""
    return {stage: tuple(range(0, layers[stage - 1], 2))[:most] for stage, most in ((2, 2), (3, 3))
            if stage <= len(layers)}


def _attn_placement(attn: Optional[str], layers: Sequence[int]) -> dict:
    """ResNet keyword arguments that put attention ``attn`` where its paper puts it, for the stage depths
    ``layers`` the model is built with."""
    if attn in ("non_local", "gc", "bam"):
        _check_per_stage("layers", layers)  # before placing blocks by them
        if len(layers) < 2:  # non-local and GC go in stages 2 on, BAM between stages: none would be built
            raise ConfigError(f"layers={list(layers)}: {attn} attention needs at least 2 stages")
    if attn == "bam":
        return {"bam": True}
    if attn == "non_local":
        return {"non_local_blocks": paper_non_local_blocks(layers)}
    if attn == "gc":
        return {"attn_layer": "gc", "attn_stages": tuple(range(2, len(layers) + 1))}  # all but the first
    return {"attn_layer": attn}


_IMAGENET_DEPTHS: dict[int, tuple[BlockType, tuple[int, ...]]] = {
    18: (BasicBlock, (2, 2, 2, 2)),
    34: (BasicBlock, (3, 4, 6, 3)),
    50: (Bottleneck, (3, 4, 6, 3)),
    101: (Bottleneck, (3, 4, 23, 3)),
}
CIFAR_LAYERS = (3, 3, 3)
CIFAR_WIDTHS = (28, 56, 112)


def _create_resnet(depth: int, attn: Optional[str] = None, **kwargs) -> ResNet:
    block, layers = _IMAGENET_DEPTHS[depth]
    return _create_placed(attn, {"block": block, "layers": layers}, kwargs)


def _create_resnet_d(depth: int, attn: Optional[str] = None, stem_type: StemType = "deep", **kwargs) -> ResNet:
    return _create_resnet(depth, attn, **{"stem_type": stem_type, "stem_width": 32, "avg_down": True, **kwargs})


def _create_resnext(depth: int, cardinality: int, base_width: int, attn: Optional[str] = None, **kwargs) -> ResNet:
    return _create_resnet(depth, attn, **{"cardinality": cardinality, "base_width": base_width, **kwargs})


def _create_resnet_cifar(attn: Optional[str] = None, **kwargs) -> ResNet:
    defaults = dict(block=BasicBlock, layers=CIFAR_LAYERS, widths=CIFAR_WIDTHS, small_input=True, num_classes=10)
    return _create_placed(attn, defaults, kwargs)


def _create_placed(attn: Optional[str], defaults: dict, kwargs: dict) -> ResNet:
    # the user's ``layers`` over the defaults (as timm's builders take them), and attention placed for them
    placement = _attn_placement(attn, kwargs.get("layers", defaults["layers"]))
    return ResNet(**{**defaults, **placement, **kwargs})


def _running_stats_kept(block: nn.Module) -> tuple[contextlib.nullcontext, contextlib.AbstractContextManager]:
    """``checkpoint``'s ``context_fn``: the forward as usual; the recomputation normalises with the
    batch's statistics again but does not update the running ones, which the forward already did."""
    return contextlib.nullcontext(), _batch_statistics_only(block)


@contextlib.contextmanager
def _batch_statistics_only(module: nn.Module) -> Iterator[None]:
    # Momentum 0 keeps running = 1 * running + 0 * batch exactly, with the same tensors saved for backward
    # as the forward (checkpoint compares them); the step count is put back too.
    norms = [m for m in module.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats]
    saved = [(norm.momentum, norm.num_batches_tracked.clone()) for norm in norms]
    for norm in norms:
        norm.momentum = 0.0
    try:
        yield
    finally:
        for norm, (momentum, steps) in zip(norms, saved):
            norm.momentum = momentum
            norm.num_batches_tracked.copy_(steps)


@register_model
def resnet18(**kwargs) -> ResNet:
    """ResNet-18 (He 2016)."""
    return _create_resnet(18, **kwargs)


@register_model
def se_resnet18(**kwargs) -> ResNet:
    """ResNet-18 with Squeeze-and-Excitation in every block (Hu 2018)."""
    return _create_resnet(18, attn="se", **kwargs)


@register_model
def eca_resnet18(**kwargs) -> ResNet:
    """ResNet-18 with ECA in every block (Wang 2020)."""
    return _create_resnet(18, attn="eca", **kwargs)


@register_model
def cbam_resnet18(**kwargs) -> ResNet:
    """ResNet-18 with CBAM in every block (Woo 2018)."""
    return _create_resnet(18, attn="cbam", **kwargs)


@register_model
def bam_resnet18(**kwargs) -> ResNet:
    """ResNet-18 with BAM between stages (Park 2018)."""
    return _create_resnet(18, attn="bam", **kwargs)


@register_model
def coord_resnet18(**kwargs) -> ResNet:
    """ResNet-18 with coordinate attention in every block (Hou 2021)."""
    return _create_resnet(18, attn="coord", **kwargs)


@register_model
def nl_resnet18(**kwargs) -> ResNet:
    """ResNet-18 with non-local blocks in stages 2-3 (Wang 2018)."""
    return _create_resnet(18, attn="non_local", **kwargs)


@register_model
def gc_resnet18(**kwargs) -> ResNet:
    """ResNet-18 with global context blocks in stages 2-4 (Cao 2019)."""
    return _create_resnet(18, attn="gc", **kwargs)


@register_model
def resnet34(**kwargs) -> ResNet:
    """ResNet-34 (He 2016)."""
    return _create_resnet(34, **kwargs)


@register_model
def se_resnet34(**kwargs) -> ResNet:
    """ResNet-34 with Squeeze-and-Excitation in every block (Hu 2018)."""
    return _create_resnet(34, attn="se", **kwargs)


@register_model
def eca_resnet34(**kwargs) -> ResNet:
    """ResNet-34 with ECA in every block (Wang 2020)."""
    return _create_resnet(34, attn="eca", **kwargs)


@register_model
def cbam_resnet34(**kwargs) -> ResNet:
    """ResNet-34 with CBAM in every block (Woo 2018)."""
    return _create_resnet(34, attn="cbam", **kwargs)


@register_model
def bam_resnet34(**kwargs) -> ResNet:
    """ResNet-34 with BAM between stages (Park 2018)."""
    return _create_resnet(34, attn="bam", **kwargs)


@register_model
def coord_resnet34(**kwargs) -> ResNet:
    """ResNet-34 with coordinate attention in every block (Hou 2021)."""
    return _create_resnet(34, attn="coord", **kwargs)


@register_model
def nl_resnet34(**kwargs) -> ResNet:
    """ResNet-34 with non-local blocks in stages 2-3 (Wang 2018)."""
    return _create_resnet(34, attn="non_local", **kwargs)


@register_model
def gc_resnet34(**kwargs) -> ResNet:
    """ResNet-34 with global context blocks in stages 2-4 (Cao 2019)."""
    return _create_resnet(34, attn="gc", **kwargs)


@register_model
def resnet50(**kwargs) -> ResNet:
    """ResNet-50 (He 2016)."""
    return _create_resnet(50, **kwargs)


@register_model
def se_resnet50(**kwargs) -> ResNet:
    """ResNet-50 with Squeeze-and-Excitation in every block (Hu 2018)."""
    return _create_resnet(50, attn="se", **kwargs)


@register_model
def eca_resnet50(**kwargs) -> ResNet:
    """ResNet-50 with ECA in every block (Wang 2020)."""
    return _create_resnet(50, attn="eca", **kwargs)


@register_model
def cbam_resnet50(**kwargs) -> ResNet:
    """ResNet-50 with CBAM in every block (Woo 2018)."""
    return _create_resnet(50, attn="cbam", **kwargs)


@register_model
def bam_resnet50(**kwargs) -> ResNet:
    """ResNet-50 with BAM between stages (Park 2018)."""
    return _create_resnet(50, attn="bam", **kwargs)


@register_model
def coord_resnet50(**kwargs) -> ResNet:
    """ResNet-50 with coordinate attention in every block (Hou 2021)."""
    return _create_resnet(50, attn="coord", **kwargs)


@register_model
def nl_resnet50(**kwargs) -> ResNet:
    """ResNet-50 with non-local blocks in stages 2-3 (Wang 2018)."""
    return _create_resnet(50, attn="non_local", **kwargs)


@register_model
def gc_resnet50(**kwargs) -> ResNet:
    """ResNet-50 with global context blocks in stages 2-4 (Cao 2019)."""
    return _create_resnet(50, attn="gc", **kwargs)


@register_model
def resnet101(**kwargs) -> ResNet:
    """ResNet-101 (He 2016)."""
    return _create_resnet(101, **kwargs)


@register_model
def se_resnet101(**kwargs) -> ResNet:
    """ResNet-101 with Squeeze-and-Excitation in every block (Hu 2018)."""
    return _create_resnet(101, attn="se", **kwargs)


@register_model
def eca_resnet101(**kwargs) -> ResNet:
    """ResNet-101 with ECA in every block (Wang 2020)."""
    return _create_resnet(101, attn="eca", **kwargs)


@register_model
def cbam_resnet101(**kwargs) -> ResNet:
    """ResNet-101 with CBAM in every block (Woo 2018)."""
    return _create_resnet(101, attn="cbam", **kwargs)


@register_model
def bam_resnet101(**kwargs) -> ResNet:
    """ResNet-101 with BAM between stages (Park 2018)."""
    return _create_resnet(101, attn="bam", **kwargs)


@register_model
def coord_resnet101(**kwargs) -> ResNet:
    """ResNet-101 with coordinate attention in every block (Hou 2021)."""
    return _create_resnet(101, attn="coord", **kwargs)


@register_model
def nl_resnet101(**kwargs) -> ResNet:
    """ResNet-101 with non-local blocks in stages 2-3 (Wang 2018)."""
    return _create_resnet(101, attn="non_local", **kwargs)


@register_model
def gc_resnet101(**kwargs) -> ResNet:
    """ResNet-101 with global context blocks in stages 2-4 (Cao 2019)."""
    return _create_resnet(101, attn="gc", **kwargs)


@register_model
@evaluated_with(interpolation="bicubic")
def resnet18d(**kwargs) -> ResNet:
    """ResNet-18-D: deep stem, average-pooled shortcuts (He 2019); timm's ``resnet18d`` weights load."""
    return _create_resnet_d(18, **kwargs)


@register_model
@evaluated_with(interpolation="bicubic")
def resnet34d(**kwargs) -> ResNet:
    """ResNet-34-D: deep stem, average-pooled shortcuts (He 2019); timm's ``resnet34d`` weights load."""
    return _create_resnet_d(34, **kwargs)


@register_model
@evaluated_with(interpolation="bicubic")
def resnet50d(**kwargs) -> ResNet:
    """ResNet-50-D: deep stem, average-pooled shortcuts (He 2019); timm's ``resnet50d`` weights load."""
    return _create_resnet_d(50, **kwargs)


@register_model
@evaluated_with(interpolation="bicubic")
def resnet101d(**kwargs) -> ResNet:
    """ResNet-101-D: deep stem, average-pooled shortcuts (He 2019); timm's ``resnet101d`` weights load."""
    return _create_resnet_d(101, **kwargs)


@register_model
@evaluated_with(interpolation="bicubic")
def eca_resnet50d(**kwargs) -> ResNet:
    """ResNet-50-D with ECA in every block (Wang 2020); timm's ``ecaresnet50d`` weights load."""
    return _create_resnet_d(50, attn="eca", **kwargs)


@register_model
@evaluated_with(interpolation="bicubic")
def eca_resnet101d(**kwargs) -> ResNet:
    """ResNet-101-D with ECA in every block (Wang 2020); timm's ``ecaresnet101d`` weights load."""
    return _create_resnet_d(101, attn="eca", **kwargs)


@register_model
@evaluated_with(interpolation="bicubic")
def eca_resnet50t(**kwargs) -> ResNet:
    """ResNet-50-D with a tiered deep stem and ECA in every block; timm's ``ecaresnet50t`` weights load."""
    return _create_resnet_d(50, attn="eca", stem_type="deep_tiered", **kwargs)


@register_model
def resnext50_32x4d(**kwargs) -> ResNet:
    """ResNeXt-50 32x4d (Xie 2017); torchvision's and timm's weights load."""
    return _create_resnext(50, 32, 4, **kwargs)


@register_model
def resnext101_32x8d(**kwargs) -> ResNet:
    """ResNeXt-101 32x8d (Xie 2017); torchvision's and timm's weights load."""
    return _create_resnext(101, 32, 8, **kwargs)


@register_model
def wide_resnet50_2(**kwargs) -> ResNet:
    """Wide ResNet-50-2: Bottleneck 3x3 convs twice as wide (Zagoruyko 2016); torchvision's and timm's weights load."""
    return _create_resnext(50, 1, 128, **kwargs)


@register_model
@evaluated_with(interpolation="bicubic")
def se_resnext50_32x4d(**kwargs) -> ResNet:
    """SE-ResNeXt-50 32x4d (Hu 2018); timm's ``seresnext50_32x4d`` weights load."""
    return _create_resnext(50, 32, 4, attn="se", **kwargs)


@register_model
@evaluated_with(interpolation="bicubic")
def se_resnext101_32x4d(**kwargs) -> ResNet:
    """SE-ResNeXt-101 32x4d (Hu 2018); timm's ``seresnext101_32x4d`` weights load."""
    return _create_resnext(101, 32, 4, attn="se", **kwargs)


@register_model
def resnet20_cifar(**kwargs) -> ResNet:
    """CIFAR-layout ResNet-20 for 28-64 px images (He 2016)."""
    return _create_resnet_cifar(**kwargs)


@register_model
def se_resnet20_cifar(**kwargs) -> ResNet:
    """CIFAR-layout ResNet-20 for 28-64 px images with Squeeze-and-Excitation in every block (Hu 2018)."""
    return _create_resnet_cifar(attn="se", **kwargs)


@register_model
def eca_resnet20_cifar(**kwargs) -> ResNet:
    """CIFAR-layout ResNet-20 for 28-64 px images with ECA in every block (Wang 2020)."""
    return _create_resnet_cifar(attn="eca", **kwargs)


@register_model
def cbam_resnet20_cifar(**kwargs) -> ResNet:
    """CIFAR-layout ResNet-20 for 28-64 px images with CBAM in every block (Woo 2018)."""
    return _create_resnet_cifar(attn="cbam", **kwargs)


@register_model
def bam_resnet20_cifar(**kwargs) -> ResNet:
    """CIFAR-layout ResNet-20 for 28-64 px images with BAM between stages (Park 2018)."""
    return _create_resnet_cifar(attn="bam", **kwargs)


@register_model
def coord_resnet20_cifar(**kwargs) -> ResNet:
    """CIFAR-layout ResNet-20 for 28-64 px images with coordinate attention in every block (Hou 2021)."""
    return _create_resnet_cifar(attn="coord", **kwargs)


@register_model
def nl_resnet20_cifar(**kwargs) -> ResNet:
    """CIFAR-layout ResNet-20 for 28-64 px images with non-local blocks in stages 2-3 (Wang 2018)."""
    return _create_resnet_cifar(attn="non_local", **kwargs)


@register_model
def gc_resnet20_cifar(**kwargs) -> ResNet:
    """CIFAR-layout ResNet-20 for 28-64 px images with global context blocks in stages 2-3 (Cao 2019)."""
    return _create_resnet_cifar(attn="gc", **kwargs)
