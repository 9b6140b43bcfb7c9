"""Object detectors on registered backbones: FCOS (through torchvision) and a DETR-style set predictor.

Papers:
- Tian, Shen, Chen, He, "FCOS: Fully Convolutional One-Stage Object Detection", ICCV 2019 (arXiv:1904.01355).
- Carion, Massa, Synnaeve, Usunier, Kirillov, Zagoruyko, "End-to-End Object Detection with
  Transformers" (DETR), ECCV 2020 (arXiv:2005.12872).
- Lin et al., "Feature Pyramid Networks for Object Detection", CVPR 2017; Li et al., "Exploring
  Plain Vision Transformer Backbones for Object Detection" (ViTDet), ECCV 2022.

Backbones come from the registry: a ResNet (any attention variant) feeds torchvision's
``FeaturePyramidNetwork`` from its stages; a ViT feeds a :class:`SimpleFeaturePyramid` from its
last block's patch grid, with position embeddings resampled to each batch's grid.

Every detector follows torchvision's detection API: ``model(images, targets)`` with a list of
``(3, H, W)`` images in 0..1 and targets ``{"boxes": (N, 4) float32 xyxy pixels, "labels": (N,) int64}``
whose labels are 0-based class ids ``0..num_classes-1``; training targets outside that contract
(inverted or non-finite boxes included) raise a one-line ``ConfigError``. ``train()`` mode returns a
dict of scalar losses (their sum is the training objective); ``eval()`` mode returns one
``{"boxes", "scores", "labels"}`` dict per image in input pixels, sorted by score: FCOS's from
``score_thresh``, at most ``detections_per_img`` of them (fewer where zero-size boxes were among those
kept), DETR's one per query, unthresholded (as DETR's), with ``"queries"``, the query behind each
(its attention map's). Normalisation and resizing happen
inside, in torchvision's ``GeneralizedRCNNTransform`` (``min_size``, ``max_size``, ``image_mean``,
``image_std``). In ``eval()`` mode images of different sizes run in separate batches of one size
(:func:`detect_by_size`), so an image's detections never depend on the images batched with it.
"""
import math
import warnings
from collections import OrderedDict
from collections.abc import Callable, Sequence
from typing import Any, Optional, Union

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.modules.batchnorm import _BatchNorm  # BatchNorm1d-3d and SyncBatchNorm
from torchvision.models.detection import FCOS
from torchvision.models.detection import _utils as det_utils
from torchvision.models.detection.fcos import FCOSHead
from torchvision.models.detection.anchor_utils import AnchorGenerator
from torchvision.models.detection.transform import GeneralizedRCNNTransform, resize_boxes
from torchvision.ops import (MLP, batched_nms, box_convert, clip_boxes_to_image, generalized_box_iou,
                             generalized_box_iou_loss, nms, remove_small_boxes)
from torchvision.ops.feature_pyramid_network import FeaturePyramidNetwork, LastLevelP6P7

from ..errors import ConfigError, VisattnWarning, check_count, is_number, is_whole, outside_visattn
from ..layers.create_attn import ATTN_LAYERS
from ..layers.detr_transformer import DetrTransformer
from ..layers.pos_embed import resample_abs_pos_embed
from ..layers.simple_feature_pyramid import SimpleFeaturePyramid
from ..layers.sine_pos_embed import sine_position_encoding_2d
from ..registry import classifier_head, create_model, model_family, register_model, split_model_name
from .resnet import ResNet
from .vit import VisionTransformer, drop_pooled_head

Targets = list[dict[str, Tensor]]
Detections = list[dict[str, Tensor]]

# ---------------------------------------------------------------------------------------------
# backbones
# ---------------------------------------------------------------------------------------------


def create_backbone(
    name: str,
    *,
    kwargs: Optional[dict[str, Any]] = None,
    pretrained: Union[bool, str] = False,
    max_size: int = 1333,
) -> Union[ResNet, VisionTransformer]:
    """A registered ResNet or ViT without classifier.

    A ViT's position embeddings are laid out for the largest padded batch (``max_size`` rounded up
    to 32) unless ``kwargs`` give ``img_size``; smaller grids resample them on the fly.
    """
    arch, tag = split_model_name(name)
    if tag is not None:  # one place says which weights a backbone starts from
        raise ConfigError(f"backbone {name!r}: give the architecture, backbone {arch!r}, and the weights as "
                          f"pretrained_backbone {name!r}")
    family = model_family(name)
    if family not in ("resnet", "vit"):
        raise ConfigError(f"backbone {name!r} is a {family} model; detectors take a ResNet or ViT backbone")
    kwargs = dict(kwargs or {})
    if family == "vit":
        kwargs.setdefault("img_size", -(-max_size // 32) * 32)
    # A plain ResNet checkpoint leaves a CBAM backbone's attention modules at their init.
    return drop_pooled_head(create_model(name, pretrained=pretrained, num_classes=0, strict="attention", **kwargs))


def freeze_norms(backbone: nn.Module, freeze: bool) -> None:
    """With ``freeze``, the batch norms of a ResNet backbone's convolutions (stem, blocks, shortcuts) keep the
    statistics and scale its weights brought, as torchvision's ``FrozenBatchNorm2d`` keeps them in its detectors
    built on pretrained backbones, and DETR's: eval mode and no gradient, here and in every later ``train()`` (the
    detectors' override). Without, a few photos a batch re-estimate them (106 running statistics move in one step
    of torchvision's COCO weights). Attention modules' norms train: they start afresh
    from a plain ResNet's weights, and a non-local block's, initialised to zero, frozen kept the block off."""
    if not freeze:
        return
    if isinstance(backbone, VisionTransformer) or not any(isinstance(m, _BatchNorm) for m in backbone.modules()):
        raise ConfigError("freeze_backbone_norms=True: the backbone has no batch norm (a ViT normalises each token); "
                          "leave freeze_backbone_norms False")
    attention = {id(inner) for module in backbone.modules() if isinstance(module, tuple(ATTN_LAYERS.values()))
                 for inner in module.modules()}
    for module in backbone.modules():
        if isinstance(module, _BatchNorm) and id(module) not in attention:
            module.eval().requires_grad_(False)


def freeze_leading_layers(backbone: nn.Module, trainable: Optional[int]) -> None:
    """torchvision's ``trainable_backbone_layers``: only the last ``trainable`` of a ResNet backbone's stem and stages
    (a BAM module with the stage it follows) train; ``None``: all of them. The others keep their weights and their
    batch norms' statistics (eval mode, here and in every later ``train()``), as torchvision's, whose frozen layers
    are always on ``FrozenBatchNorm2d``: in train mode their statistics would move with each batch."""
    if trainable is None:
        return
    if not isinstance(backbone, ResNet):
        raise ConfigError(f"trainable_backbone_layers={trainable!r} counts a ResNet backbone's stem and stages; "
                          "a ViT backbone has neither: leave it None")
    layers = ["stem", *backbone.stage_names]
    if not (is_whole(trainable) and trainable <= len(layers)):
        raise ConfigError(f"trainable_backbone_layers={trainable!r}: give 0 to {len(layers)} (the stem and "
                          f"{len(layers) - 1} stages, counted from the last), or None for all")
    frozen = layers[:len(layers) - trainable]
    for name, module in backbone.named_modules():
        top = name.split(".")[0]
        layer = top if top.startswith("layer") else f"layer{top[3:]}" if top.startswith("bam") else "stem"
        if name and layer in frozen:
            module.requires_grad_(False)
            if isinstance(module, _BatchNorm):
                module.eval()


def resnet_stage_channels(body: ResNet) -> list[int]:
    return [info["num_chs"] for info in body.feature_info[1:]]


def resnet_stage_strides(body: ResNet) -> list[int]:
    """Stride of each stage's output (``feature_info``'s reductions): the stem's (4 for ImageNet, 1 for CIFAR), doubled
    by every later stage up to an ``output_stride``."""
    return [info["reduction"] for info in body.feature_info[1:]]


def vit_feature_map(body: VisionTransformer, x: Tensor) -> Tensor:
    """Last-block patch tokens on their grid, ``(B, embed_dim, H / patch, W / patch)``; the class token is dropped.

    The position embeddings are resampled to this input's grid, so any size divisible by the patch works.
    """
    tokens = body.patch_embed.proj(x)  # (B, C, h, w)
    batch, channels, *grid = tokens.shape
    tokens = tokens.flatten(2).transpose(1, 2)  # (B, h * w, C)
    pos = resample_abs_pos_embed(
        body.pos_embed, new_size=tuple(grid), old_size=body.grid_size, num_prefix_tokens=body.embedded_prefix_tokens
    )
    tokens = body.norm(body.blocks(body.with_prefix_and_positions(tokens, pos)))
    return tokens[:, body.num_prefix_tokens:].transpose(1, 2).reshape(batch, channels, *grid)  # (B, C, h, w)


class DetectorTransform(GeneralizedRCNNTransform):
    """torchvision's detection transform (normalise, resize, batch), except that no side is resized
    to zero: a 3000x20 panorama at ``max_size`` 128 keeps a 1 px height instead of crashing, and uint8
    images become floats in 0..1 one at a time, as they are normalised (a batch of photos converted up front
    held four bytes a pixel each: 6.4 GB for eight 48-megapixel photos)."""

    def normalize(self, image: Tensor) -> Tensor:
        if image.dtype != torch.uint8:
            return super().normalize(image)
        image = unit_floats(image)  # a copy of its own: normalised in place, as torchvision's arithmetic
        mean = torch.as_tensor(self.image_mean, dtype=image.dtype, device=image.device)
        std = torch.as_tensor(self.image_std, dtype=image.dtype, device=image.device)
        return image.sub_(mean[:, None, None]).div_(std[:, None, None])

    def resize(self, image: Tensor, target: Optional[dict[str, Tensor]] = None) -> tuple[Tensor, Optional[dict[str, Tensor]]]:
        height, width = image.shape[-2:]
        size = min(self.min_size)  # the smallest size training may draw; evaluation uses min_size[-1]
        scale = min(size / min(height, width), self.max_size / max(height, width))
        if min(height, width) * scale >= 1 or self.fixed_size is not None:
            return super().resize(image, target)
        new_size = (max(1, int(height * scale)), max(1, int(width * scale)))
        image = F.interpolate(image[None], size=new_size, mode="bilinear", align_corners=False)[0]
        if target is not None:
            target = {**target, "boxes": resize_boxes(target["boxes"], (height, width), new_size)}
        return image, target


def unit_floats(image: Tensor) -> Tensor:
    """uint8 pixels as float32 in 0..1, as ``visattn.data.transforms.to_tensor`` gives them."""
    return image.to(torch.float32).div_(255)


class ResNetFpn(nn.Module):
    """ResNet stages through a feature pyramid network (Lin 2017) plus P6/P7 (torchvision's ``LastLevelP6P7``).

    Args:
        body: a ResNet without classifier.
        out_channels: channels of every pyramid level.
        stages: 1-based stages that feed the FPN, finest first.
    """

    def __init__(self, body: ResNet, *, out_channels: int = 256, stages: Sequence[int] = (2, 3, 4)) -> None:
        super().__init__()
        num_stages = len(body.stage_names)
        if not stages or any(not 1 <= s <= num_stages for s in stages) or list(stages) != sorted(set(stages)):
            raise ConfigError(f"fpn_stages={list(stages)}: pick increasing stages among 1..{num_stages}")
        self.body = body
        self.stages = tuple(stages)
        channels = resnet_stage_channels(body)
        self.fpn = FeaturePyramidNetwork(
            [channels[s - 1] for s in stages], out_channels, extra_blocks=LastLevelP6P7(out_channels, out_channels)
        )
        self.out_channels = out_channels
        strides = [resnet_stage_strides(body)[s - 1] for s in stages]
        self.strides = strides + [strides[-1] * 2, strides[-1] * 4]

    def forward(self, x: Tensor) -> "OrderedDict[str, Tensor]":
        outputs = self.body.forward_stages(x)
        return self.fpn(OrderedDict((str(i), outputs[s - 1]) for i, s in enumerate(self.stages)))


class VitPyramid(nn.Module):
    """ViT patch grid through ViTDet's simple feature pyramid plus P6/P7.

    Args:
        body: a ViT without classifier.
        out_channels: channels of every pyramid level.
        scales: pyramid scales relative to the patch grid, finest first.
    """

    def __init__(
        self, body: VisionTransformer, *, out_channels: int = 256, scales: Sequence[float] = (2.0, 1.0, 0.5)
    ) -> None:
        super().__init__()
        self.body = body
        self.pyramid = SimpleFeaturePyramid(
            body.embed_dim, out_channels, scales=scales, extra_blocks=LastLevelP6P7(out_channels, out_channels)
        )
        self.out_channels = out_channels
        strides = [round(body.patch_embed.patch_size[0] / scale) for scale in scales]
        self.strides = strides + [strides[-1] * 2, strides[-1] * 4]

    def forward(self, x: Tensor) -> "OrderedDict[str, Tensor]":
        return self.pyramid(vit_feature_map(self.body, x))


def check_image_settings(*, min_size: object, max_size: object, image_mean: object, image_std: object) -> None:
    """One line for resize and normalisation settings that give a result which looks like one: a size of 0
    resizes every image to 1 px, which still gives confident boxes, and a std of 0 gives NaN boxes."""
    if check_count("min_size", min_size) > check_count("max_size", max_size):  # the long side's cap wins: ignored
        raise ConfigError(f"min_size={min_size}, max_size={max_size}: the short side is resized to min_size unless "
                          "the long side would pass max_size, so min_size above it is never reached; give min_size "
                          "<= max_size")
    for name, values, low in (("image_mean", image_mean, -math.inf), ("image_std", image_std, 0.0)):
        if values is not None and not (isinstance(values, (list, tuple)) and len(values) == 3
                                       and all(is_number(v) and low < v < math.inf for v in values)):
            above = " above 0" if low == 0 else ""
            raise ConfigError(f"{name}={values!r}: give 3 finite numbers{above}, one per RGB channel (or leave it "
                              "out for ImageNet's)")


def check_image_list(images: object) -> None:
    """One line unless ``images`` is a list of ``(3, H, W)`` tensors of floats in 0..1 or uint8, what a detector's
    forward takes; shapes and types only, so no device sync (a channels-last image, or one tensor for the batch, is
    otherwise torchvision's error from deep inside its transform)."""
    if isinstance(images, torch.fx.Proxy):
        return
    if not isinstance(images, (list, tuple)):
        kind = f"one tensor of shape {tuple(images.shape)}" if isinstance(images, Tensor) else f"a {type(images).__name__}"
        batch = isinstance(images, Tensor) and images.ndim == 4
        raise ConfigError(f"images: {kind}, not a list of (3, H, W) tensors; pass "
                          f"{'list(images) for a batch' if batch else '[image] for one image'}")
    for k, image in enumerate(images):
        pixels = isinstance(image, Tensor) and (image.is_floating_point() or image.dtype == torch.uint8)
        if not (pixels and image.ndim == 3 and image.shape[0] == 3):
            what = f"shape {tuple(image.shape)}, {str(image.dtype).removeprefix('torch.')}" if isinstance(image, Tensor) \
                else f"a {type(image).__name__}"
            fix = "give float RGB pixels in 0..1 (or uint8 ones)"
            if pixels and image.ndim == 3:
                fix = ("it is channels-last: image.permute(2, 0, 1)" if image.shape[-1] == 3 else
                       "for a gray image: image.expand(3, -1, -1)" if image.shape[0] == 1 else fix)
            raise ConfigError(f"image {k}: {what}, but a detector takes (3, H, W) floats in 0..1 or uint8; {fix}")


def _check_detr_losses(**weights: object) -> None:
    """DETR's loss and matching weights: each finite and 0 or more, not all of the three losses' 0 (the loss was 0
    and nothing trained, or NaN at every step), and ``eos_coef`` a weight in (0, 1]."""
    for name, value in weights.items():
        if not (is_number(value) and 0 <= value < math.inf) or (name == "eos_coef" and not 0 < value <= 1):
            what = "a weight in (0, 1] (0.1 in DETR)" if name == "eos_coef" else "a finite weight of 0 or more"
            raise ConfigError(f"{name}={value!r}: give {what}")
    if not any(weights[name] for name in ("class_weight", "bbox_weight", "giou_weight")):
        raise ConfigError("class_weight, bbox_weight and giou_weight are all 0: the loss is 0 and nothing trains; give "
                          "DETR's 1, 5 and 2")


def check_probability(name: str, value: object) -> float:
    """``value`` when it is a number from 0 to 1, else one line naming ``name``: a score threshold above 1 or
    NaN never kept a detection."""
    if not (is_number(value) and 0 <= value <= 1):
        raise ConfigError(f"{name}={value!r}: give a number from 0 to 1")
    return float(value)


def _size_divisible(stride: int) -> int:
    # torchvision pads batches to multiples of 32; a feature stride that does not divide 32 needs more.
    return math.lcm(32, stride)


def detect_by_size(detect: Callable[[list[Tensor]], Detections], images: list[Tensor]) -> Detections:
    """``detect`` run once per group of same-size images, the detections back in the images' order.

    A batch pads every image to its largest one, and padding changes a smaller image's features
    everywhere, not only at its border: global pooling (SE, CBAM, ECA) and GroupNorm's statistics
    take the padding in. Same-size images pad alike, so each gets the detections it gets alone.
    """
    groups: dict[tuple[int, ...], list[int]] = {}
    for index, image in enumerate(images):
        groups.setdefault(tuple(image.shape[-2:]), []).append(index)
    if len(groups) == 1:
        return detect(images)
    detections: list[dict[str, Tensor]] = [{} for _ in images]
    for indices in groups.values():
        for index, found in zip(indices, detect([images[i] for i in indices])):
            detections[index] = found
    return detections


# ---------------------------------------------------------------------------------------------
# training targets
# ---------------------------------------------------------------------------------------------


def _check_targets(targets: Any, *, images: Sequence[Tensor], num_classes: int) -> None:
    """Refuse training targets that the losses would misread (a label equal to ``num_classes`` is
    DETR's "no object", an inverted box gives a negative GIoU loss, a box wholly outside its image gives
    FCOS no location and DETR coordinates past 1) or that crash deep inside torchvision.

    Runs every training step, so the value checks of the whole batch cost one device sync.
    """
    num_images = len(images)
    if targets is None:
        raise ConfigError('targets: none in train mode; give one {"boxes", "labels"} dict per image, '
                          "or call model.eval() to detect")
    if not isinstance(targets, Sequence) or len(targets) != num_images:
        got = f"{len(targets)} dicts" if isinstance(targets, Sequence) else f"a {type(targets).__name__}"
        raise ConfigError(f'targets: {got} for {num_images} images; give a list with one {{"boxes", "labels"}} '
                          "dict per image")
    masks, flags = [], []
    for i, target in enumerate(targets):
        boxes, labels = _target_tensors(target, index=i)
        x1, y1, x2, y2 = boxes.unbind(-1)
        height, width = images[i].shape[-2:]
        outside = (x2 <= 0) | (y2 <= 0) | (x1 >= width) | (y1 >= height)
        bad_boxes = ~boxes.isfinite().all(-1) | (x2 <= x1) | (y2 <= y1) | outside  # (N,)
        bad_labels = (labels < 0) | (labels >= num_classes)  # (N,)
        masks.append((bad_boxes, bad_labels))
        within_a_pixel = boxes.amax() <= 1 if len(boxes) else torch.zeros((), dtype=torch.bool, device=boxes.device)
        flags.append(torch.stack([bad_boxes.any(), bad_labels.any(), within_a_pixel]))
    flagged = torch.stack(flags).tolist() if flags else []
    for i, (any_bad_box, any_bad_label, _) in enumerate(flagged):
        bad_boxes, bad_labels = masks[i]
        if any_bad_box:
            j = int(bad_boxes.nonzero()[0, 0])
            box = [round(v, 2) for v in targets[i]["boxes"][j].tolist()]
            height, width = images[i].shape[-2:]
            where = f'targets[{i}]["boxes"][{j}] {box}'
            x1, y1, x2, y2 = targets[i]["boxes"][j].tolist()  # not the rounded ones: 60.001 > 60 keeps the rule
            if math.isfinite(x1 + y1 + x2 + y2) and x2 > x1 and y2 > y1:  # a box that keeps the rule is outside
                raise ConfigError(f"{where}: the box lies wholly outside its {width}x{height} image; give boxes as "
                                  "x1, y1, x2, y2 in the pixels of their own image")
            raise ConfigError(f"{where}: boxes are (N, 4) finite x1, y1, x2, y2 with x2 > x1 and y2 > y1, in pixels "
                              f"of their {width}x{height} image")
        if any_bad_label:
            label = int(targets[i]["labels"][bad_labels][0])
            raise ConfigError(f'targets[{i}]["labels"]: {label} is outside 0..{num_classes - 1} '
                              f"(num_classes={num_classes}); labels are 0-based class indices")
    boxed = [row[2] for row, target in zip(flagged, targets) if len(target["boxes"])]
    if boxed and all(boxed) and max(max(image.shape[-2:]) for image in images) > 2:
        warnings.warn("targets: every box of the batch lies within the first pixel of its image; boxes are x1, y1, "
                      "x2, y2 in pixels, so fractions of the image's width and height (0..1) train a detector of "
                      "specks: multiply them by the image's width and height", VisattnWarning,
                      stacklevel=outside_visattn())


def _target_tensors(target: Any, *, index: int) -> tuple[Tensor, Tensor]:
    """A target's ``(N, 4)`` float32 boxes and ``(N,)`` int64 labels, the dtypes every loss indexes with."""
    where = f"targets[{index}]"
    if not isinstance(target, dict) or not all(isinstance(target.get(k), Tensor) for k in ("boxes", "labels")):
        raise ConfigError(f'{where}: give a dict with "boxes" (N, 4) float32 and "labels" (N,) int64 tensors')
    boxes, labels = target["boxes"], target["labels"]
    if boxes.dtype != torch.float32:
        raise ConfigError(f'{where}["boxes"]: dtype {boxes.dtype}; boxes are float32 pixels, e.g. boxes.float()')
    if boxes.ndim != 2 or boxes.shape[1] != 4:
        raise ConfigError(f'{where}["boxes"]: shape {tuple(boxes.shape)}; boxes are (N, 4) x1, y1, x2, y2, '
                          "one row per object")
    if labels.dtype != torch.int64:
        raise ConfigError(f'{where}["labels"]: dtype {labels.dtype}; labels are int64 class indices, '
                          "e.g. labels.long()")
    if labels.shape != boxes.shape[:1]:
        raise ConfigError(f'{where}["labels"]: shape {tuple(labels.shape)} for {len(boxes)} boxes; labels are (N,), '
                          "one class index per box")
    return boxes, labels


# ---------------------------------------------------------------------------------------------
# FCOS
# ---------------------------------------------------------------------------------------------


class FcosDetector(FCOS):
    """torchvision's FCOS on a registered backbone's feature pyramid.

    torchvision's FCOS classifies with ``num_classes`` sigmoid outputs and a focal loss, labels
    ``0..num_classes-1``; background is the absence of a match, not a class. Anchor sizes equal
    each level's stride, so a level regresses the locations whose largest distance to a box side
    is in ``[4, 8) x stride`` (the finest from 0, the coarsest to infinity), as in the paper.

    Args:
        backbone: registered ResNet or ViT name.
        num_classes: object classes (no background class).
        backbone_kwargs: builder arguments of the backbone (``widths``, ``img_size``, ``drop_path_rate``, ...).
        pretrained_backbone: ``pretrained`` for the backbone: ``True`` for its default shipped weights,
            another shipped ``ARCH.TAG``, or a file, loaded with ``strict="attention"``.
        out_channels: channels of the pyramid and the head; a multiple of 32 (the head's GroupNorm).
        fpn_stages: ResNet stages that feed the FPN (default: the last three).
        pyramid_scales: ViT pyramid scales relative to the patch grid.
        min_size: images are resized so their short side is this ...
        max_size: ... and their long side at most this.
        image_mean: per-channel mean of the 0..1 input (default ImageNet's).
        image_std: per-channel std (default ImageNet's).
        center_sampling_radius: positives lie within this many strides of a box centre.
        score_thresh: detections scoring below are dropped before NMS (0.05, the paper's setting for
            evaluation, so mAP counts low-scoring detections; torchvision's ``FCOS`` defaults to 0.2).
        nms_thresh: class-wise NMS IoU threshold.
        detections_per_img: most detections kept per image.
        topk_candidates: most candidates per level before NMS.
        freeze_backbone_norms: keep the batch norms of a ResNet backbone's convolutions as its weights brought
            them (:func:`freeze_norms`), for fine-tuning from ``pretrained_backbone`` or torchvision's FCOS weights at a
            few photos a batch.
        trainable_backbone_layers: train only the last this many of a ResNet backbone's stem and stages
            (torchvision's argument; its FCOS trains 3 of 5 on pretrained backbones); None: all.
    """

    classifier = "head.classification_head.cls_logits"
    backbone_prefix = "backbone.body."  # the registered backbone, without the FPN and P6/P7 made here

    def __init__(
        self,
        *,
        backbone: str = "resnet50",
        num_classes: int = 80,
        backbone_kwargs: Optional[dict[str, Any]] = None,
        pretrained_backbone: Union[bool, str] = False,
        out_channels: int = 256,
        fpn_stages: Optional[Sequence[int]] = None,
        pyramid_scales: Sequence[float] = (2.0, 1.0, 0.5),
        min_size: int = 800,
        max_size: int = 1333,
        image_mean: Optional[list[float]] = None,
        image_std: Optional[list[float]] = None,
        center_sampling_radius: float = 1.5,
        score_thresh: float = 0.05,
        nms_thresh: float = 0.6,
        detections_per_img: int = 100,
        topk_candidates: int = 1000,
        freeze_backbone_norms: bool = False,
        trainable_backbone_layers: Optional[int] = None,
    ) -> None:
        check_count("num_classes", num_classes)  # a zero-size class head fails in its first forward
        check_image_settings(min_size=min_size, max_size=max_size, image_mean=image_mean, image_std=image_std)
        for name, value in (("score_thresh", score_thresh), ("nms_thresh", nms_thresh)):
            check_probability(name, value)
        if not (is_number(center_sampling_radius) and 0 < center_sampling_radius < math.inf):
            # no location lies within 0 strides of a centre: no positive, box and centerness losses 0, nothing learnt
            raise ConfigError(f"center_sampling_radius={center_sampling_radius!r}: give how many strides around a "
                              "box's centre hold its positives, above 0 (1.5 in the paper)")
        for name, value in (("detections_per_img", detections_per_img), ("topk_candidates", topk_candidates)):
            check_count(name, value)
        if check_count("out_channels", out_channels) % 32:
            raise ConfigError(f"out_channels={out_channels}: FCOS's GroupNorm(32) head needs a multiple of 32")
        body = create_backbone(backbone, kwargs=backbone_kwargs, pretrained=pretrained_backbone, max_size=max_size)
        if isinstance(body, ResNet):
            stages = fpn_stages or range(max(1, len(body.stage_names) - 2), len(body.stage_names) + 1)
            neck: Union[ResNetFpn, VitPyramid] = ResNetFpn(body, out_channels=out_channels, stages=stages)
        elif fpn_stages is not None:
            raise ConfigError(f"fpn_stages is for ResNet backbones; {backbone!r} is a ViT: set pyramid_scales instead")
        else:
            neck = VitPyramid(body, out_channels=out_channels, scales=pyramid_scales)
        anchor_generator = AnchorGenerator(tuple((s,) for s in neck.strides), ((1.0,),) * len(neck.strides))
        super().__init__(
            neck, num_classes, min_size=min_size, max_size=max_size, image_mean=image_mean, image_std=image_std,
            anchor_generator=anchor_generator, head=FcosHead(out_channels, 1, num_classes),
            center_sampling_radius=center_sampling_radius,
            score_thresh=score_thresh, nms_thresh=nms_thresh, detections_per_img=detections_per_img,
            topk_candidates=topk_candidates, size_divisible=_size_divisible(max(neck.strides[:-2])),
        )
        self.transform = DetectorTransform(
            min_size, max_size, self.transform.image_mean, self.transform.image_std,
            size_divisible=self.transform.size_divisible,
        )
        self.num_classes = num_classes
        self.input_size = (3, min_size, min_size)
        self.head.register_forward_hook(_head_outputs_at_least_float32)
        self.freeze_backbone_norms, self.trainable_backbone_layers = freeze_backbone_norms, trainable_backbone_layers
        freeze_norms(body, freeze_backbone_norms)
        freeze_leading_layers(body, trainable_backbone_layers)

    def train(self, mode: bool = True) -> "FcosDetector":
        super().train(mode)
        freeze_norms(self.backbone.body, self.freeze_backbone_norms)
        freeze_leading_layers(self.backbone.body, self.trainable_backbone_layers)
        return self

    def forward(self, images: list[Tensor], targets: Optional[Targets] = None) -> Union[dict[str, Tensor], Detections]:
        check_image_list(images)
        if self.training:
            _check_targets(targets, images=images, num_classes=self.num_classes)
            return super().forward(images, targets)
        return _without_empty_boxes(detect_by_size(super().forward, images))

    def postprocess_detections(self, head_outputs: dict[str, list[Tensor]], anchors: list[list[Tensor]],
                               image_shapes: list[tuple[int, int]]) -> Detections:
        """torchvision's (each level's ``topk_candidates`` above ``score_thresh``, class-wise NMS, the best
        ``detections_per_img``), without the locations in the padding the transform adds past each resized image (to
        ``size_divisible``, and to the batch's largest): a model that never saw such a flat band found objects
        there, clipped to slivers along the image's edge, and ranked them above the real ones. Its NMS is
        :func:`class_wise_nms`, which ``torch.export`` takes."""
        detections = []
        for index, image_shape in enumerate(image_shapes):
            candidates = []
            for level, level_anchors in enumerate(anchors[index]):
                centres = (level_anchors[:, :2] + level_anchors[:, 2:]) / 2  # (locations, 2): x, y
                inside = (centres[:, 0] < image_shape[1]) & (centres[:, 1] < image_shape[0])
                # each (locations inside, channels)
                outputs = [head_outputs[name][level][index, inside]
                           for name in ("cls_logits", "bbox_ctrness", "bbox_regression")]
                candidates.append(self._level_candidates(*outputs, level_anchors[inside], image_shape))
            boxes, scores, labels = (torch.cat(parts) for parts in zip(*candidates))
            keep = class_wise_nms(boxes, scores, labels, self.nms_thresh)[:self.detections_per_img]
            detections.append({"boxes": boxes[keep], "scores": scores[keep], "labels": labels[keep]})
        return detections

    def _level_candidates(self, logits: Tensor, ctrness: Tensor, regression: Tensor, anchors: Tensor,
                          image_shape: tuple[int, int]) -> tuple[Tensor, Tensor, Tensor]:
        """One level's best ``topk_candidates`` (location, class) pairs scoring above ``score_thresh``: boxes clipped
        to the image ``(N, 4)``, scores ``(N,)`` and labels ``(N,)``, as torchvision's FCOS picks them."""
        num_classes = logits.shape[-1]
        scores = torch.sqrt(torch.sigmoid(logits) * torch.sigmoid(ctrness)).flatten()  # (locations * classes,)
        above = scores > self.score_thresh
        flat = torch.where(above)[0]
        # torchvision's k: a tensor while tracing, so a traced graph takes another candidate count
        scores, best = scores[above].topk(det_utils._topk_min(flat, self.topk_candidates, 0))
        flat = flat[best]
        locations = torch.div(flat, num_classes, rounding_mode="floor")
        boxes = self.box_coder.decode(regression[locations], anchors[locations])
        return clip_boxes_to_image(boxes, image_shape), scores, flat % num_classes

    @torch.no_grad()
    def reorder_classes(self, order: Sequence[int]) -> None:
        """Make class ``k`` the class that was ``order[k]``: one output channel per class (one anchor per location)."""
        logits = self.head.classification_head.cls_logits
        logits.weight.copy_(logits.weight[list(order)])
        logits.bias.copy_(logits.bias[list(order)])

    @torch.no_grad()
    def reset_class_head(self) -> None:
        """The class logits as torchvision's ``FCOSClassificationHead`` initialises them (prior 0.01)."""
        logits = self.head.classification_head.cls_logits
        nn.init.normal_(logits.weight, std=0.01)
        nn.init.constant_(logits.bias, -math.log((1 - 0.01) / 0.01))

    def classes_in(self, state: dict[str, Tensor]) -> Optional[int]:
        """The class count of a state dict's class logits that take this head's features; None without them."""
        weight, ours = state.get(f"{self.classifier}.weight"), self.head.classification_head.cls_logits.weight
        return int(weight.shape[0]) if weight is not None and weight.shape[1:] == ours.shape[1:] else None

    def reset_classifier(self, num_classes: int) -> None:
        """A fresh class head of ``num_classes`` outputs, as torchvision initialises it (timm's method's name)."""
        check_count("num_classes", num_classes)
        head, old = self.head.classification_head, self.head.classification_head.cls_logits
        head.cls_logits = nn.Conv2d(old.in_channels, num_classes, old.kernel_size, padding=old.padding,
                                    device=old.weight.device, dtype=old.weight.dtype)  # one anchor per location
        head.num_classes = self.num_classes = num_classes
        self.reset_class_head()


class FcosHead(FCOSHead):
    """torchvision's FCOS head, its losses divided by the foreground locations averaged over DDP processes, as
    mmdetection's FCOS divides them: divided by each process's own count (torchvision's), a process with few
    objects weighed each of them more than one process on the whole batch does."""

    def compute_loss(self, targets: Targets, head_outputs: dict[str, Tensor], anchors: list[Tensor],
                     matched_idxs: list[Tensor]) -> dict[str, Tensor]:
        losses = super().compute_loss(targets, head_outputs, anchors, matched_idxs)
        own = max(1.0, float(sum(int((matched >= 0).sum()) for matched in matched_idxs)))
        scale = own / mean_over_processes(own, head_outputs["cls_logits"].device)
        return {name: loss * scale for name, loss in losses.items()}


def class_wise_nms(boxes: Tensor, scores: Tensor, labels: Tensor, iou_threshold: float) -> Tensor:
    """torchvision's ``batched_nms``: indices of the boxes kept, best first, NMS within each label. Under
    ``torch.export`` its offset per label without its Python branches on the box count, which is data-dependent
    there (export stopped at them): boxes clipped to the image are at least 0, so the largest coordinate beside a
    0 is torchvision's offset, and no box at all gives no keep instead of an error."""
    if not torch.compiler.is_exporting():
        return batched_nms(boxes, scores, labels, iou_threshold)
    largest = torch.cat([boxes.new_zeros(1), boxes.flatten()]).max()
    shifted = boxes + (labels.to(boxes) * (largest + 1))[:, None]  # (N, 4), each label apart from the others
    # torchvision's fake nms tells export that at least 2 boxes are kept, which the exported graph asserts (an
    # image of fewer detections stopped it): two boxes below 0, apart from all others, are kept and dropped
    extra = shifted.new_tensor([[-4.0, -4.0, -3.0, -3.0], [-2.0, -2.0, -1.0, -1.0]])
    keep = nms(torch.cat([shifted, extra]), torch.cat([scores, scores.new_zeros(2)]), iou_threshold)
    return keep[keep < boxes.shape[0]]


def _without_empty_boxes(detections: Detections) -> Detections:
    """Detections less the boxes of zero width or height: torchvision's FCOS never drops small boxes,
    and one clipped to a 1 px side of the image is a line, not an object."""
    kept = []
    for found in detections:
        keep = remove_small_boxes(found["boxes"], _EMPTY_BOX_SIDE)
        kept.append({name: value[keep] for name, value in found.items()})
    return kept


# remove_small_boxes keeps sides of at least this: any box wider and higher than a point (float32
# pixel coordinates step by at most 1e-4 up to 2048 px).
_EMPTY_BOX_SIDE = 1e-6


def _head_outputs_at_least_float32(head: nn.Module, inputs: Any, outputs: dict[str, Tensor]) -> dict[str, Tensor]:
    """Under bf16 autocast the head's convolutions run in bf16, but box decoding, the focal and GIoU
    losses and NMS need float32: bf16 steps by 0.25 px at 32-64 px coordinates and 0.5 px at 64-128.
    A float64 model's stay float64 (``.float()`` had rounded them: its detections were float32)."""
    return {name: value.to(torch.promote_types(value.dtype, torch.float32)) for name, value in outputs.items()}


def _create_fcos(backbone: str, kwargs: dict[str, Any], **defaults: Any) -> FcosDetector:
    return FcosDetector(**{"backbone": backbone, **defaults, **kwargs})


# ---------------------------------------------------------------------------------------------
# DETR
# ---------------------------------------------------------------------------------------------


@torch.no_grad()
def hungarian_match(
    logits: Tensor,
    boxes: Tensor,
    targets: Targets,
    *,
    class_weight: float = 1.0,
    bbox_weight: float = 5.0,
    giou_weight: float = 2.0,
) -> list[tuple[Tensor, Tensor]]:
    """DETR's optimal one-to-one matching of predictions to targets, per image.

    The cost of pairing a prediction with a target is ``-class_weight * p(target class)
    + bbox_weight * L1(boxes) - giou_weight * GIoU(boxes)``; ``scipy.optimize.linear_sum_assignment``
    finds the pairing of least total cost.

    Args:
        logits: ``(B, Q, K + 1)`` class logits, the last class being "no object".
        boxes: ``(B, Q, 4)`` predicted boxes, normalised cxcywh.
        targets: per image ``{"boxes": (N, 4) normalised cxcywh, "labels": (N,)}``.

    Returns:
        Per image ``(prediction indices, target indices)``, int64 tensors of length ``min(Q, N)``.
    """
    from scipy.optimize import linear_sum_assignment  # a quarter second of import, for training only

    matches = []
    for image_logits, image_boxes, target in zip(logits.float(), boxes.float(), targets):
        if len(target["labels"]) == 0:
            empty = torch.zeros(0, dtype=torch.int64)
            matches.append((empty, empty))
            continue
        target_boxes = target["boxes"].float()
        prob = image_logits.softmax(-1)[:, target["labels"]]  # (Q, N)
        giou = generalized_box_iou(
            box_convert(image_boxes, "cxcywh", "xyxy"), box_convert(target_boxes, "cxcywh", "xyxy")
        )  # (Q, N)
        cost = bbox_weight * torch.cdist(image_boxes, target_boxes, p=1) - class_weight * prob - giou_weight * giou
        # Non-finite costs come from non-finite predictions, which scipy refuses: the pairing made
        # without them leaves the loss to show them, and the task then skips the step (NonFiniteLossGuard).
        cost = torch.nan_to_num(cost, nan=0.0, posinf=0.0, neginf=0.0)
        rows, cols = linear_sum_assignment(cost.cpu().numpy())
        matches.append((torch.as_tensor(rows, dtype=torch.int64), torch.as_tensor(cols, dtype=torch.int64)))
    return matches


def mean_over_processes(count: float, device: torch.device) -> float:
    """``count`` averaged over DDP processes (itself in one process), at least 1: the normaliser of a loss summed
    over boxes or locations. DDP averages the processes' gradients, so each process's summed loss divided by this
    equals one process's on the whole batch; divided by its own count, a process with few boxes weighed each of
    them more."""
    total = torch.tensor(float(count), device=device)
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.all_reduce(total)
        total = total / torch.distributed.get_world_size()
    return max(float(total), 1.0)


class DetrDetector(nn.Module):
    """DETR-style set prediction (Carion 2020) on a registered backbone's last feature map.

    The map (a ResNet's last stage, or a ViT's patch grid) is projected to ``hidden_dim`` by a
    1x1 conv and flattened to tokens; a :class:`~visattn.layers.detr_transformer.DetrTransformer`
    turns ``num_queries`` learned queries into one prediction each: a class among ``num_classes + 1``
    (the last is "no object") and a box (sigmoid cxcywh, relative to the unpadded image). Training
    matches predictions to targets with :func:`hungarian_match` and returns the weighted losses of
    every decoder layer: ``loss_ce``, ``loss_bbox``, ``loss_giou`` for the last and ``loss_ce_0``,
    ... for the auxiliary ones, each already multiplied by its weight, so their sum is the objective.

    Args:
        backbone: registered ResNet or ViT name.
        num_classes: object classes, without the "no object" class.
        backbone_kwargs: builder arguments of the backbone.
        pretrained_backbone: ``pretrained`` for the backbone: ``True`` for its default shipped weights,
            another shipped ``ARCH.TAG``, or a file, loaded with ``strict="attention"``.
        hidden_dim: transformer token size.
        num_heads: attention heads.
        num_encoder_layers: encoder depth.
        num_decoder_layers: decoder depth.
        mlp_ratio: transformer MLP hidden size over ``hidden_dim``.
        dropout: transformer dropout.
        num_queries: predictions per image (more than the most objects an image holds).
        aux_loss: supervise every decoder layer, not only the last.
        eos_coef: cross-entropy weight of the "no object" class.
        class_weight: weight of the class cost and loss.
        bbox_weight: weight of the L1 box cost and loss.
        giou_weight: weight of the GIoU cost and loss.
        min_size: images are resized so their short side is this ...
        max_size: ... and their long side at most this.
        image_mean: per-channel mean of the 0..1 input (default ImageNet's).
        image_std: per-channel std (default ImageNet's).
        freeze_backbone_norms: keep the batch norms of a ResNet backbone's convolutions as its weights brought
            them (:func:`freeze_norms`), as DETR trains; for fine-tuning from ``pretrained_backbone``.
        trainable_backbone_layers: train only the last this many of a ResNet backbone's stem and stages
            (torchvision's argument; DETR trains 3 of 5, the stem and layer1 frozen); None: all.
    """

    classifier = "class_embed"
    backbone_prefix = "backbone."

    def __init__(
        self,
        *,
        backbone: str = "resnet50",
        num_classes: int = 80,
        backbone_kwargs: Optional[dict[str, Any]] = None,
        pretrained_backbone: Union[bool, str] = False,
        hidden_dim: int = 256,
        num_heads: int = 8,
        num_encoder_layers: int = 6,
        num_decoder_layers: int = 6,
        mlp_ratio: float = 8.0,
        dropout: float = 0.1,
        num_queries: int = 100,
        aux_loss: bool = True,
        eos_coef: float = 0.1,
        class_weight: float = 1.0,
        bbox_weight: float = 5.0,
        giou_weight: float = 2.0,
        min_size: int = 800,
        max_size: int = 1333,
        image_mean: Optional[list[float]] = None,
        image_std: Optional[list[float]] = None,
        freeze_backbone_norms: bool = False,
        trainable_backbone_layers: Optional[int] = None,
    ) -> None:
        super().__init__()
        check_count("num_classes", num_classes)
        check_count("num_queries", num_queries)  # with none, it would silently detect nothing
        check_image_settings(min_size=min_size, max_size=max_size, image_mean=image_mean, image_std=image_std)
        _check_detr_losses(class_weight=class_weight, bbox_weight=bbox_weight, giou_weight=giou_weight,
                           eos_coef=eos_coef)
        if not (is_number(mlp_ratio) and 0 < mlp_ratio < math.inf):  # 0 built MLPs of no width, which trained
            raise ConfigError(f"mlp_ratio={mlp_ratio!r}: give the MLP's width over hidden_dim, above 0 (8 in DETR)")
        self.num_classes = num_classes
        self.input_size = (3, min_size, min_size)
        self.aux_loss, self.eos_coef = aux_loss, eos_coef
        self.class_weight, self.bbox_weight, self.giou_weight = class_weight, bbox_weight, giou_weight
        self.backbone = create_backbone(
            backbone, kwargs=backbone_kwargs, pretrained=pretrained_backbone, max_size=max_size
        )
        self.freeze_backbone_norms, self.trainable_backbone_layers = freeze_backbone_norms, trainable_backbone_layers
        freeze_norms(self.backbone, freeze_backbone_norms)
        freeze_leading_layers(self.backbone, trainable_backbone_layers)
        if isinstance(self.backbone, ResNet):
            channels, stride = resnet_stage_channels(self.backbone)[-1], resnet_stage_strides(self.backbone)[-1]
        else:
            channels, stride = self.backbone.embed_dim, self.backbone.patch_embed.patch_size[0]
        self.transform = DetectorTransform(
            min_size, max_size, image_mean or [0.485, 0.456, 0.406], image_std or [0.229, 0.224, 0.225],
            size_divisible=_size_divisible(stride),
        )
        self.input_proj = nn.Conv2d(channels, hidden_dim, kernel_size=1)
        self.transformer = DetrTransformer(
            hidden_dim, num_heads, num_encoder_layers=num_encoder_layers, num_decoder_layers=num_decoder_layers,
            mlp_ratio=mlp_ratio, dropout=dropout,
        )
        self.query_embed = nn.Embedding(num_queries, hidden_dim)
        self.class_embed = nn.Linear(hidden_dim, num_classes + 1)
        self.bbox_embed = MLP(hidden_dim, [hidden_dim, hidden_dim, 4], activation_layer=nn.ReLU)

    def train(self, mode: bool = True) -> "DetrDetector":
        super().train(mode)
        freeze_norms(self.backbone, self.freeze_backbone_norms)
        freeze_leading_layers(self.backbone, self.trainable_backbone_layers)
        return self

    def forward(self, images: list[Tensor], targets: Optional[Targets] = None) -> Union[dict[str, Tensor], Detections]:
        check_image_list(images)
        if not self.training:
            return detect_by_size(self._detect, images)
        _check_targets(targets, images=images, num_classes=self.num_classes)
        self.check_query_count(max((len(t["labels"]) for t in targets), default=0))
        batch, targets = self.transform(images, targets)
        logits, boxes = self._predict(batch.tensors, batch.image_sizes)  # (L, B, Q, K + 1), (L, B, Q, 4)
        return self._losses(logits, boxes, _normalised_targets(targets, batch.image_sizes))

    @torch.no_grad()
    def reorder_classes(self, order: Sequence[int]) -> None:
        """Make class ``k`` the class that was ``order[k]``; the last row, "no object", stays last."""
        rows = [*order, self.num_classes]
        self.class_embed.weight.copy_(self.class_embed.weight[rows])
        self.class_embed.bias.copy_(self.class_embed.bias[rows])

    def reset_class_head(self) -> None:
        self.class_embed.reset_parameters()

    def classes_in(self, state: dict[str, Tensor]) -> Optional[int]:
        """The class count of a state dict's class layer that takes this model's features (less "no object")."""
        weight = state.get(f"{self.classifier}.weight")
        fits = weight is not None and weight.ndim == 2 and weight.shape[1] == self.class_embed.in_features
        return int(weight.shape[0]) - 1 if fits else None

    def reset_classifier(self, num_classes: int) -> None:
        """A fresh class layer of ``num_classes`` classes and "no object" (timm's method's name)."""
        check_count("num_classes", num_classes)
        self.class_embed = classifier_head(self, self.class_embed.in_features, num_classes + 1)
        self.num_classes = num_classes

    def check_query_count(self, most: int, source: str = "targets") -> None:
        """One line when an image of ``source`` holds ``most`` objects, more than ``num_queries``: matching is
        one-to-one, and the objects beyond would silently go unmatched and untrained."""
        queries = self.query_embed.num_embeddings
        if most > queries:
            raise ConfigError(f"{source}: an image holds {most} objects, more than num_queries={queries} (one object "
                              f"per query; the rest would go unmatched); build the model with num_queries of at least "
                              f"{most} (in a config: model_kwargs: {{num_queries: {most}}})")

    def _detect(self, images: list[Tensor]) -> Detections:
        original_sizes = [(int(img.shape[-2]), int(img.shape[-1])) for img in images]
        batch, _ = self.transform(images)
        logits, boxes = self._predict(batch.tensors, batch.image_sizes)
        detections = self._detections(logits[-1], boxes[-1], batch.image_sizes)
        return self.transform.postprocess(detections, batch.image_sizes, original_sizes)

    def _predict(self, images: Tensor, image_sizes: list[tuple[int, int]]) -> tuple[Tensor, Tensor]:
        if isinstance(self.backbone, ResNet):
            features = self.backbone.forward_features(images)
        else:
            features = vit_feature_map(self.backbone, images)
        x = self.input_proj(features)  # (B, D, h, w)
        padding = _padding_mask(images, image_sizes, x.shape[-2:])  # (B, h, w)
        pos = sine_position_encoding_2d(padding, x.shape[1]).to(x.dtype)
        # features and positions flattened to (B, h * w, D) tokens, the padding to (B, h * w)
        tokens = self.transformer(
            x.flatten(2).transpose(1, 2), pos.flatten(2).transpose(1, 2), self.query_embed.weight, padding.flatten(1)
        )  # (L, B, Q, D)
        logits, boxes = self.class_embed(tokens), self.bbox_embed(tokens)
        # float32 under bf16 autocast: matching, losses and pixel boxes need more than bf16's 8 bits; float64 stays
        wide = torch.promote_types(logits.dtype, torch.float32)
        return logits.to(wide), boxes.to(wide).sigmoid()

    def _losses(self, logits: Tensor, boxes: Tensor, targets: Targets) -> dict[str, Tensor]:
        num_boxes = mean_over_processes(sum(len(t["labels"]) for t in targets), logits.device)  # DETR's normaliser
        losses = self._set_losses(logits[-1], boxes[-1], targets, num_boxes)
        if self.aux_loss:
            for i in range(len(logits) - 1):
                aux = self._set_losses(logits[i], boxes[i], targets, num_boxes)
                losses.update({f"{key}_{i}": value for key, value in aux.items()})
        return losses

    def _set_losses(self, logits: Tensor, boxes: Tensor, targets: Targets, num_boxes: float) -> dict[str, Tensor]:
        """Weighted cross entropy over all queries, L1 and GIoU over matched ones, per target box."""
        matches = hungarian_match(
            logits, boxes, targets,
            class_weight=self.class_weight, bbox_weight=self.bbox_weight, giou_weight=self.giou_weight,
        )
        image_idx = torch.cat([torch.full_like(pred, i) for i, (pred, _) in enumerate(matches)]).to(logits.device)
        pred_idx = torch.cat([pred for pred, _ in matches]).to(logits.device)
        target_labels = torch.cat([t["labels"][tgt.to(t["labels"].device)] for t, (_, tgt) in zip(targets, matches)])
        target_boxes = torch.cat([t["boxes"][tgt.to(t["boxes"].device)] for t, (_, tgt) in zip(targets, matches)])
        classes = torch.full(logits.shape[:2], self.num_classes, dtype=torch.int64, device=logits.device)  # (B, Q)
        classes[image_idx, pred_idx] = target_labels
        class_weights = torch.ones(self.num_classes + 1, device=logits.device)
        class_weights[-1] = self.eos_coef
        matched = boxes[image_idx, pred_idx]  # (M, 4)
        giou = generalized_box_iou_loss(
            box_convert(matched, "cxcywh", "xyxy"), box_convert(target_boxes, "cxcywh", "xyxy"), reduction="sum"
        )
        ce = F.cross_entropy(logits.transpose(1, 2), classes, weight=class_weights)
        return {
            "loss_ce": self.class_weight * ce,
            "loss_bbox": self.bbox_weight * F.l1_loss(matched, target_boxes, reduction="sum") / num_boxes,
            "loss_giou": self.giou_weight * giou / num_boxes,
        }

    def _detections(self, logits: Tensor, boxes: Tensor, image_sizes: list[tuple[int, int]]) -> Detections:
        """Every query's best real class, sorted by score, boxes in the resized image's pixels, with
        the index of the query behind each (``queries``, for its attention map)."""
        scores, labels = logits.softmax(-1)[..., :-1].max(-1)  # (B, Q)
        detections = []
        for image_scores, image_labels, image_boxes, (height, width) in zip(scores, labels, boxes, image_sizes):
            scale = image_boxes.new_tensor([width, height, width, height])
            pixels = clip_boxes_to_image(box_convert(image_boxes, "cxcywh", "xyxy") * scale, (height, width))
            order = image_scores.argsort(descending=True)
            detections.append({"boxes": pixels[order], "scores": image_scores[order], "labels": image_labels[order],
                               "queries": order})
        return detections


def _normalised_targets(targets: Targets, image_sizes: list[tuple[int, int]]) -> Targets:
    """Target boxes as cxcywh relative to each (resized, unpadded) image, the space DETR predicts in. A box past the
    image's edge is its part inside (as DETR's data pipeline crops them): its centre and size past 1 are no box the
    sigmoid can give, yet it would be matched and scored as if it were."""
    out = []
    for target, (height, width) in zip(targets, image_sizes):
        scale = target["boxes"].new_tensor([width, height, width, height])
        boxes = clip_boxes_to_image(target["boxes"], (height, width))
        out.append({"boxes": box_convert(boxes, "xyxy", "cxcywh") / scale, "labels": target["labels"]})
    return out


def _padding_mask(images: Tensor, image_sizes: list[tuple[int, int]], size: Sequence[int]) -> Tensor:
    """``(B, h, w)`` bool, ``True`` where a feature covers the batch padding beyond an image's own size."""
    mask = torch.ones(images.shape[0], *images.shape[-2:], dtype=torch.bool, device=images.device)
    for image_mask, (height, width) in zip(mask, image_sizes):
        image_mask[:height, :width] = False
    return F.interpolate(mask[:, None].float(), size=tuple(size)).bool()[:, 0]


def _create_detr(backbone: str, kwargs: dict[str, Any], **defaults: Any) -> DetrDetector:
    return DetrDetector(**{"backbone": backbone, **defaults, **kwargs})


# ---------------------------------------------------------------------------------------------
# registered detectors: hyperparameters only
# ---------------------------------------------------------------------------------------------

# 64 px FashionScenes (items 20-28 px): FPN on stage 3 of the CIFAR ResNet, stride 4, plus 8 and 16. Every
# item has 5-7 locations a side at stride 4; a stride-2 level would cost 2.2x the training step for nothing.
_SCENES_FCOS = dict(num_classes=10, min_size=64, max_size=64, out_channels=128, fpn_stages=(3,))
# COCO scale: torchvision's fcos_resnet50_fpn setting (stages 2-4, strides 8-128).
_COCO_FCOS = dict(num_classes=80, min_size=800, max_size=1333, out_channels=256)
# ViT-S/16 at 512 px: ViTDet pyramid at strides 8, 16, 32, plus 64 and 128.
_VIT_FCOS = dict(num_classes=80, min_size=512, max_size=512, out_channels=256, pyramid_scales=(2.0, 1.0, 0.5))


@register_model
def fcos_resnet20_cifar(**kwargs: Any) -> FcosDetector:
    """FCOS on a CIFAR-layout ResNet-20 for 64 px FashionScenes."""
    return _create_fcos("resnet20_cifar", kwargs, **_SCENES_FCOS)


@register_model
def fcos_se_resnet20_cifar(**kwargs: Any) -> FcosDetector:
    """FCOS on a CIFAR-layout SE-ResNet-20 (Hu 2018) for 64 px FashionScenes."""
    return _create_fcos("se_resnet20_cifar", kwargs, **_SCENES_FCOS)


@register_model
def fcos_cbam_resnet20_cifar(**kwargs: Any) -> FcosDetector:
    """FCOS on a CIFAR-layout CBAM-ResNet-20 (Woo 2018) for 64 px FashionScenes."""
    return _create_fcos("cbam_resnet20_cifar", kwargs, **_SCENES_FCOS)


@register_model
def fcos_resnet50(**kwargs: Any) -> FcosDetector:
    """FCOS on ResNet-50 with FPN P3-P7, 800-1333 px (torchvision's ``fcos_resnet50_fpn`` layout)."""
    return _create_fcos("resnet50", kwargs, **_COCO_FCOS)


@register_model
def fcos_cbam_resnet50(**kwargs: Any) -> FcosDetector:
    """FCOS on CBAM-ResNet-50 (Woo 2018) with FPN P3-P7, 800-1333 px."""
    return _create_fcos("cbam_resnet50", kwargs, **_COCO_FCOS)


@register_model
def fcos_vit_small_patch16_224(**kwargs: Any) -> FcosDetector:
    """FCOS on ViT-S/16 through ViTDet's simple feature pyramid, 512 px."""
    return _create_fcos("vit_small_patch16_224", kwargs, **_VIT_FCOS)


# 64 px FashionScenes: the CIFAR ResNet's last stage (stride 4, a 16x16 grid), a 3+3-layer transformer.
_SCENES_DETR = dict(
    num_classes=10, min_size=64, max_size=64, hidden_dim=128, num_heads=8, num_encoder_layers=3,
    num_decoder_layers=3, mlp_ratio=4.0, num_queries=16,
)
# COCO scale: the paper's DETR (ResNet-50 C5, 6+6 layers, 256 wide, 100 queries).
_COCO_DETR = dict(num_classes=80, min_size=800, max_size=1333)
# ViT-S/16 at 512 px: the 32x32 patch grid as the memory.
_VIT_DETR = dict(num_classes=80, min_size=512, max_size=512)


@register_model
def detr_resnet20_cifar(**kwargs: Any) -> DetrDetector:
    """DETR-style detector on a CIFAR-layout ResNet-20 for 64 px FashionScenes."""
    return _create_detr("resnet20_cifar", kwargs, **_SCENES_DETR)


@register_model
def detr_se_resnet20_cifar(**kwargs: Any) -> DetrDetector:
    """DETR-style detector on a CIFAR-layout SE-ResNet-20 (Hu 2018) for 64 px FashionScenes."""
    return _create_detr("se_resnet20_cifar", kwargs, **_SCENES_DETR)


@register_model
def detr_cbam_resnet20_cifar(**kwargs: Any) -> DetrDetector:
    """DETR-style detector on a CIFAR-layout CBAM-ResNet-20 (Woo 2018) for 64 px FashionScenes."""
    return _create_detr("cbam_resnet20_cifar", kwargs, **_SCENES_DETR)


@register_model
def detr_resnet50(**kwargs: Any) -> DetrDetector:
    """DETR on ResNet-50, 800-1333 px (Carion 2020's base model)."""
    return _create_detr("resnet50", kwargs, **_COCO_DETR)


@register_model
def detr_cbam_resnet50(**kwargs: Any) -> DetrDetector:
    """DETR on CBAM-ResNet-50 (Woo 2018), 800-1333 px."""
    return _create_detr("cbam_resnet50", kwargs, **_COCO_DETR)


@register_model
def detr_vit_small_patch16_224(**kwargs: Any) -> DetrDetector:
    """DETR-style detector on ViT-S/16 patch tokens, 512 px."""
    return _create_detr("vit_small_patch16_224", kwargs, **_VIT_DETR)
