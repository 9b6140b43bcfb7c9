"""Albumentations recipes that turn an ``(H, W, 3)`` uint8 RGB array into a normalised tensor.

Two recipes:

- ``"photo"``: random resized crop + flip for training; shorter-side resize + centre crop for
  evaluation (the ImageNet recipe, for users' photos).
- ``"small"``: resize, pad and random crop + flip for training; plain resize for evaluation
  (the CIFAR recipe, for tiny images such as 28x28 Fashion-MNIST where cropping a fraction of
  the image away destroys it).

Evaluation resizes as timm's ``create_transform`` does (torchvision on a PIL image: PIL's filters,
which average over the pixels a shrunk one covers, sizes truncated, torchvision's crop offset), so
timm's weights see what timm gives them. OpenCV's linear resize samples 4 pixels whatever the scale
and left moiré on shrunk photos. Training resizes the same way: the ``small`` recipe with evaluation's
resize, the ``photo`` recipe's random crops with evaluation's PIL filter, as timm's training transform
(OpenCV's area filter averages only where both sides shrink).
"""
from __future__ import annotations

import math
import os
import random
import reprlib
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Any, Literal

import albumentations as A
import numpy as np
import torch
from albumentations.pytorch import ToTensorV2
from PIL import Image
from torch import nn
from torchvision.transforms import InterpolationMode
from torchvision.transforms import functional as TF

from ..errors import ConfigError, is_count, is_index, is_many, is_number
from .auto_augment import TimmAutoAugment, auto_augment_problem
from .image_io import rgb_pixels
# The checks of recorded preprocessing moved to .preprocessing (building a model imports no albumentations);
# the names this module's __all__ gave stay importable from here.
from .preprocessing import (CLASSIFIER_PREPROCESSING, DEFAULT_CROP_PCT, DEFAULT_INTERPOLATION, IMAGENET_MEAN,
                            IMAGENET_STD, Interpolation, check_normalization, crop_problem, default_preprocessing,
                            interpolation_problem, preprocessing_problem, timm_data_config)

__all__ = [
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "AugmentationStream",
    "active_augmentation_stream",
    "sample_generator",
    "augmentation_problem",
    "ImageTransform",
    "Recipe",
    "eval_transforms",
    "eval_transform_of",
    "CLASSIFIER_PREPROCESSING",
    "default_preprocessing",
    "preprocessing_problem",
    "timm_data_config",
    "to_tensor",
    "to_model_input",
    "train_transforms",
]

Recipe = Literal["photo", "small"]
InputSize = int | Sequence[int]
PHOTO_CROP_SCALE = (0.6, 1.0)  # the photo recipe's training crops: the share of the image a crop keeps


class AugmentationStream:
    """A seed that the random draws of the samples read inside :meth:`active` come from: pipelines reseed from it on
    their first call there, and a caption's pick draws from its :attr:`generator`.

    A single-process DataLoader iterator of :class:`~visattn.data.datamodules.SplitLoadersMixin`'s loaders opens one
    from the base seed torch draws for each iterator, as a worker's seed is for a worker process; the training
    dataset (:class:`~visattn.data.datamodules.BatchSeeded`) opens one for each batch, from that base seed and the
    batch's indices, so a batch draws the same wherever and whenever it is loaded.
    """

    _generator: torch.Generator | None = None

    def __init__(self, seed: int) -> None:
        self.seed = seed

    @property
    def generator(self) -> torch.Generator:
        """A torch generator of this stream, seeded from it at first use."""
        if self._generator is None:
            self._generator = torch.Generator().manual_seed(self.seed % 2**63)
        return self._generator

    @contextmanager
    def active(self) -> Iterator[None]:
        """This stream as the one pipelines called inside draw from."""
        token = _active_stream.set(self)
        try:
            yield
        finally:
            _active_stream.reset(token)


_active_stream: ContextVar[AugmentationStream | None] = ContextVar("visattn_augmentation_stream", default=None)


def active_augmentation_stream() -> AugmentationStream | None:
    """The stream that samples read now draw from; None outside one (the process's random states, seeded per
    DataLoader worker and by ``lightning.seed_everything``)."""
    return _active_stream.get()


def sample_generator() -> torch.Generator | None:
    """The torch generator a sample's own draws (not its pipeline's) take: the active stream's, else torch's global
    one (None)."""
    stream = active_augmentation_stream()
    return None if stream is None else stream.generator


class ImageTransform:
    """An albumentations pipeline called as ``transform(image) -> tensor``.

    The random state is re-seeded on the first call of each random stream: in an
    :class:`AugmentationStream` (each batch of visattn's training loaders, a single-process iterator of its other
    loaders), from that stream's seed; elsewhere from ``torch.initial_seed()`` whenever the process's is new, which
    a DataLoader worker's is (its iterator's base seed plus its id, unless a ``worker_init_fn`` reseeds it). So
    workers draw different augmentations, ``lightning.seed_everything`` makes runs repeatable, and an epoch's draws
    depend on the seed its iterator drew, not on the epochs before it in this process. The steps share one numpy
    and one Python generator: albumentations' own seeding gives each step a generator of the same seed, so steps
    reseeded together would draw the same numbers (every image erased would also be flipped).

    Args:
        transforms: albumentations transforms applied in order to an HWC uint8 RGB array;
            ``ToTensorV2`` is appended, so the result is a CHW tensor.
    """

    _seeded_for: object = None  # the stream (or process id and torch seed) the pipeline was last seeded for

    def __init__(self, transforms: Sequence[A.BasicTransform]) -> None:
        self.pipeline = A.Compose([*transforms, ToTensorV2()])

    def _seed_once(self) -> None:
        stream = _active_stream.get()
        key = (os.getpid(), torch.initial_seed()) if stream is None else stream
        if key != self._seeded_for:
            numbers = np.random.default_rng(torch.initial_seed() if stream is None else stream.seed)
            self.pipeline.set_random_state(numbers, random.Random(int(numbers.integers(2**63))))
            self._seeded_for = key

    def __call__(self, image: np.ndarray) -> torch.Tensor:
        self._seed_once()
        return self.pipeline(image=rgb_array(image))["image"]

    def __repr__(self) -> str:
        steps = ", ".join(type(t).__name__ for t in self.pipeline.transforms)
        return f"{type(self).__name__}([{steps}])"


def rgb_array(image: np.ndarray | Image.Image) -> np.ndarray:
    """``(H, W, 3)`` uint8 as it is; gray ``(H, W)`` or ``(H, W, 1)`` repeated to 3 channels; a PIL image as
    :func:`~visattn.data.image_io.decode_image` converts a file's (as timm's and torchvision's transforms take it);
    else one line."""
    if isinstance(image, Image.Image):
        return rgb_pixels(image)
    if not isinstance(image, np.ndarray):
        raise ConfigError(f"image: a {type(image).__name__}, not an (H, W, 3) uint8 array; "
                          "read files with visattn.data.image_io.decode_image")
    gray = image.ndim == 2 or (image.ndim == 3 and image.shape[2] == 1)
    if not gray and (image.ndim != 3 or image.shape[2] != 3):
        raise ConfigError(f"image: shape {image.shape}, not (H, W, 3) RGB; read files with "
                          "visattn.data.image_io.decode_image (it converts RGBA, palette and CMYK)")
    if image.dtype != np.uint8:  # PIL's resize refused other dtypes with a TypeError; rescaling them is a guess
        raise ConfigError(f"image: {image.dtype} pixels, not uint8 0..255; {_uint8_fix(image.dtype)}")
    if not image.size:  # resizing it to the model's size would divide by zero, or give a blank input
        raise ConfigError(f"image: shape {image.shape} has no pixels; check how it was decoded or cropped")
    return np.repeat(image.reshape(*image.shape[:2], 1), 3, axis=2) if gray else image


def _uint8_fix(dtype: np.dtype) -> str:
    if np.issubdtype(dtype, np.floating):
        return "for values in 0..1 give (image * 255).round().astype(np.uint8)"
    if dtype == np.bool_:
        return "give image.astype(np.uint8) * 255"
    return "rescale them to 0..255 and give image.astype(np.uint8), or read files with visattn.data.image_io.decode_image"


def train_transforms(
    input_size: InputSize = 224,
    mean: Sequence[float] = IMAGENET_MEAN,
    std: Sequence[float] = IMAGENET_STD,
    *,
    recipe: Recipe = "photo",
    scale: tuple[float, float] = PHOTO_CROP_SCALE,
    ratio: tuple[float, float] = (3 / 4, 4 / 3),
    padding: int = 4,
    hflip: bool = True,
    color_jitter: float = 0.0,
    auto_augment: str | None = None,
    random_erasing: float = 0.0,
    interpolation: Interpolation = DEFAULT_INTERPOLATION,
) -> ImageTransform:
    """Training augmentation: crop, flip, ``auto_augment``, colour jitter, random erasing, in timm's order.

    Args:
        input_size: output size: ``S``, ``(H, W)`` or timm-style ``(C, H, W)``.
        mean: per-channel mean of the 0..1 pixel values, subtracted before dividing by ``std``.
        std: per-channel standard deviation.
        recipe: ``"photo"`` (random resized crop) or ``"small"`` (pad + random crop).
        scale: ``"photo"`` only: range of the crop's area as a fraction of the image.
        ratio: ``"photo"`` only: range of the crop's aspect ratio.
        padding: ``"small"`` only: zero padding on each side before the random crop.
        hflip: random horizontal flips.
        color_jitter: brightness/contrast/saturation jitter strength; 0 turns it off.
        auto_augment: timm's policy string (``"rand-m9-mstd0.5-inc1"``: RandAugment, DeiT's; ``"augmix-m5-w4-d2"``;
            ``"original"``: AutoAugment), see :class:`~visattn.data.auto_augment.TimmAutoAugment`; None: none.
            Unlike timm, colour jitter stays on beside it when asked for.
        random_erasing: the probability of erasing a rectangle of 2-33% of the image (at most 30% of a square
            one; aspect 0.3-3.3, drawn uniformly) with random pixels (Zhong et al., "Random Erasing Data Augmentation", AAAI 2020; timm's ``re_prob``).
        interpolation: the filter resizing crops (``"photo"``) or whole images (``"small"``): evaluation's,
            as timm's training transform takes its data config's.
    """
    check_normalization(mean, std)
    problem = interpolation_problem(interpolation) or augmentation_problem(
        scale=scale, color_jitter=color_jitter, auto_augment=auto_augment, random_erasing=random_erasing)
    if problem:
        raise ConfigError(problem)
    height, width = _height_width(input_size)
    if recipe == "photo":
        steps: list[A.BasicTransform] = [
            PilRandomResizedCrop((height, width), scale=scale, ratio=ratio, resize_filter=interpolation)]
    elif recipe == "small":
        steps = [
            PilResize((height, width), None, interpolation),  # evaluation's resize, whatever the shape
            A.PadIfNeeded(height + 2 * padding, width + 2 * padding, border_mode=0, fill=0),
            A.RandomCrop(height, width),
        ]
    else:
        raise unknown_recipe(recipe)
    if hflip:
        steps.append(A.HorizontalFlip(p=0.5))
    if auto_augment is not None:
        steps.append(TimmAutoAugment(auto_augment, input_size=(height, width), mean=mean, interpolation=interpolation))
    if color_jitter > 0:  # every image, as timm's ColorJitter (albumentations' default is half of them)
        steps.append(A.ColorJitter(color_jitter, color_jitter, color_jitter, hue=0.0, p=1.0))
    steps += _channel_steps(input_size)
    if random_erasing > 0:
        steps.append(RandomErasing(scale=(0.02, 1 / 3), ratio=(0.3, 3.3), fill="random", p=random_erasing))
    return ImageTransform([*steps, A.Normalize(mean, std)])


def augmentation_problem(*, scale: object = PHOTO_CROP_SCALE, color_jitter: object = 0.0, auto_augment: object = None,
                         random_erasing: object = 0.0) -> str | None:
    """``SETTING=VALUE: what to give`` for a training augmentation setting :func:`train_transforms` cannot
    use; None when all can be used."""
    if not (isinstance(scale, (list, tuple)) and len(scale) == 2 and all(map(is_number, scale))
            and 0 < scale[0] <= scale[1] <= 1):
        return f"scale={reprlib.repr(scale)}: give the least and most of the image a crop keeps, e.g. [0.08, 1.0]"
    if not (is_number(color_jitter) and 0 <= color_jitter < math.inf):
        return f"color_jitter={color_jitter!r}: give a strength of 0 (off) or more, e.g. 0.4"
    if not (is_number(random_erasing) and 0 <= random_erasing <= 1):
        return f"random_erasing={random_erasing!r}: give the probability of erasing, 0 (off) to 1, e.g. 0.25"
    return None if auto_augment is None else auto_augment_problem(auto_augment)


class RandomErasing(A.Erasing):
    """Albumentations' ``Erasing``; an image too narrow for any rectangle passes unchanged, as albumentations
    means it to (its 2.0 version leaves out a parameter then, and fails)."""

    def get_params_dependent_on_data(self, params: dict, data: dict) -> dict:
        return {"seed": 0, **super().get_params_dependent_on_data(params, data)}


def eval_transforms(
    input_size: InputSize = 224,
    mean: Sequence[float] = IMAGENET_MEAN,
    std: Sequence[float] = IMAGENET_STD,
    *,
    recipe: Recipe = "photo",
    crop_pct: float = DEFAULT_CROP_PCT,
    interpolation: Interpolation = DEFAULT_INTERPOLATION,
) -> ImageTransform:
    """Deterministic evaluation preprocessing, timm's ``create_transform(..., is_training=False)``.

    Args:
        input_size: output size: ``S``, ``(H, W)`` or timm-style ``(C, H, W)``.
        mean: per-channel mean of the 0..1 pixel values.
        std: per-channel standard deviation.
        recipe: ``"photo"``: resize the shorter side to ``floor(S / crop_pct)`` (a non-square ``(H, W)``:
            keeping the aspect ratio, the smallest size covering ``floor((H, W) / crop_pct)``, sides rounded,
            as timm's ``ResizeKeepRatio``) and centre-crop; ``"small"``: resize the whole image to
            ``input_size`` (timm's ``"squash"`` at ``crop_pct`` 1, which the recipe always uses).
        crop_pct: ``"photo"`` only: fraction of the resized image the centre crop keeps.
        interpolation: the resize filter, ``"bilinear"`` or ``"bicubic"`` (timm's ViTs use bicubic).
    """
    check_normalization(mean, std)
    problem = crop_problem(crop_pct) or interpolation_problem(interpolation)
    if problem:
        raise ConfigError(problem)
    height, width = _height_width(input_size)
    if recipe == "photo":
        resized = (math.floor(height / crop_pct), math.floor(width / crop_pct))
        step = PilResize(resized[0] if resized[0] == resized[1] else resized, (height, width), interpolation,
                         keep_ratio=True)
    elif recipe == "small":
        step = PilResize((height, width), None, interpolation)
    else:
        raise unknown_recipe(recipe)
    return ImageTransform([step, *_channel_steps(input_size), A.Normalize(mean, std)])


class PilResize(A.DualTransform):
    """torchvision's ``Resize(size)`` then ``CenterCrop(crop)`` on the PIL image of an RGB array, as in
    timm's evaluation transform; boxes move with the image.

    Args:
        size: the shorter side (an int, the longer one truncated as torchvision does) or ``(H, W)``.
        crop: ``(H, W)`` of the centre crop; ``None`` for no crop.
        interpolation: PIL filter name (e.g. ``"bilinear"``, ``"bicubic"``).
        keep_ratio: resize to the smallest size of the image's aspect ratio covering ``size`` ``(H, W)``, sides
            rounded (timm's ``ResizeKeepRatio``), instead of to ``size`` exactly.
    """

    def __init__(self, size: int | tuple[int, int], crop: tuple[int, int] | None, interpolation: Interpolation,
                 keep_ratio: bool = False) -> None:
        super().__init__(p=1.0)
        self.size, self.crop, self.interpolation, self.keep_ratio = size, crop, interpolation, keep_ratio

    def get_params_dependent_on_data(self, params: dict, data: dict) -> dict:
        height, width = params["shape"][:2]
        if isinstance(self.size, int):
            longer = int(self.size * max(height, width) / min(height, width))
            resized = (self.size, longer) if height <= width else (longer, self.size)
        elif self.keep_ratio:
            scale = min(height / self.size[0], width / self.size[1])
            resized = (round(height / scale), round(width / scale))
        else:
            resized = tuple(self.size)
        crop = self.crop or resized
        # torchvision's centre-crop offset: round half to even
        return {"resized": resized, "crop": crop, "offset": [int(round((r - c) / 2.0)) for r, c in zip(resized, crop)]}

    def apply(self, img: np.ndarray, resized: tuple[int, int], crop: tuple[int, int], **params: object) -> np.ndarray:
        if self.crop is None:
            return pil_resize(img, resized, self.interpolation)
        image = TF.resize(Image.fromarray(img), list(resized), interpolation=InterpolationMode(self.interpolation))
        return np.asarray(TF.center_crop(image, list(crop)))

    def apply_to_bboxes(self, bboxes: np.ndarray, resized: tuple[int, int], crop: tuple[int, int],
                        offset: list[int], **params: object) -> np.ndarray:
        """Albumentations' normalised xyxy boxes: the resize keeps them, the crop shifts and rescales them."""
        moved = bboxes.astype(np.float32, copy=True)
        for axis, (size, kept, start) in enumerate(zip(resized, crop, offset)):
            columns = [1 - axis, 3 - axis]  # y for axis 0 (height), x for axis 1 (width)
            moved[:, columns] = (bboxes[:, columns] * size - start) / kept
        return moved

    def get_transform_init_args_names(self) -> tuple[str, ...]:
        return ("size", "crop", "interpolation", "keep_ratio")


class PilRandomResizedCrop(A.RandomResizedCrop):
    """Albumentations' ``RandomResizedCrop`` (timm's crop sampling, boxes moved with it) with the crop
    resized by PIL's ``resize_filter`` (bilinear or bicubic), as timm's training transform and visattn's
    evaluation resize: OpenCV's area filter averages only where both sides shrink, and steps where one side grows.

    Args:
        size: ``(H, W)`` output size.
        scale: range of the crop's area as a fraction of the image's.
        ratio: range of the crop's aspect ratio (width over height).
        resize_filter: PIL filter the crop is resized with (``"bilinear"`` or ``"bicubic"``).
    """

    def __init__(self, size: tuple[int, int], *, scale: tuple[float, float], ratio: tuple[float, float],
                 resize_filter: Interpolation = DEFAULT_INTERPOLATION) -> None:
        super().__init__(size, scale=scale, ratio=ratio)
        self.resize_filter = resize_filter

    def apply(self, img: np.ndarray, crop_coords: tuple[int, int, int, int], **params: object) -> np.ndarray:
        x_min, y_min, x_max, y_max = crop_coords
        return pil_resize(img[y_min:y_max, x_min:x_max], self.size, self.resize_filter)


def pil_resize(image: np.ndarray, size: Sequence[int], interpolation: Interpolation) -> np.ndarray:
    """``image`` resized to ``size = (H, W)`` by torchvision on its PIL image, whose filters average what a
    shrunk pixel covers; an image already that size is returned as it is (Fashion-MNIST at 28 px)."""
    if tuple(image.shape[:2]) == tuple(size):
        return image
    return np.asarray(TF.resize(Image.fromarray(image), list(size), interpolation=InterpolationMode(interpolation)))


def eval_transform_of(preprocessing: dict) -> ImageTransform:
    """The evaluation transform recorded evaluation settings describe (a weights entry's or checkpoint's)."""
    p = preprocessing
    return eval_transforms(p["input_size"], p["mean"], p["std"], recipe=p.get("recipe", "photo"),
                           crop_pct=p.get("crop_pct", DEFAULT_CROP_PCT), interpolation=p.get("interpolation", DEFAULT_INTERPOLATION))


_NON_FINITE_FIX = "check how they were computed (a division by zero?), or replace them with torch.nan_to_num"


def check_image_batch(images: object, *, channels: int = 3) -> None:
    """One line unless ``images`` is a floating-point ``(B, channels, H, W)`` tensor of finite pixels, what a model's
    evaluation transform gives stacked (a path, an array or uint8 pixels are not)."""
    fix = "decode files with visattn.data.image_io.decode_image and apply the model's transform()"
    _check_float_pixels(images, "images", ("B", channels, "H", "W"), "normalised floats", fix)
    if not torch.isfinite(images).all():  # else NaN probabilities, captions and maps come back silently
        raise ConfigError(f"images: some pixels are NaN or infinite; {_NON_FINITE_FIX}")


# Resampling (bilinear, bicubic) may overshoot 0..1 a little; 0..255 or normalised pixels go far beyond.
_UNIT_RANGE_SLACK = 0.05


def check_unit_images(images: object, *, channels: int = 3) -> None:
    """One line unless ``images`` is a sequence (or stacked batch) of ``(channels, H, W)`` tensors of floats in 0..1
    or uint8 pixels, with at least one pixel, what detectors take (they normalise inside; sizes may differ)."""
    fix = "decode files with visattn.data.image_io.decode_image and convert them with visattn.data.transforms.to_tensor"
    if isinstance(images, (str, bytes)) or not isinstance(images, (Sequence, torch.Tensor)):
        raise ConfigError(f"images: a {type(images).__name__}, not a list of ({channels}, H, W) tensors; {fix}")
    if isinstance(images, torch.Tensor) and images.ndim == 3:
        raise ConfigError(f"images: one tensor of shape {tuple(images.shape)}, not a list of images; pass [image] "
                          f"for one image, or a list (or a stacked batch) of ({channels}, H, W) tensors")
    for k, image in enumerate(images):
        _check_float_pixels(image, f"image {k}", (channels, "H", "W"), "floats in 0..1 or uint8", fix, bytes_ok=True)
        if not image.numel():  # resizing it to the model's size would divide by zero
            raise ConfigError(f"image {k}: shape {tuple(image.shape)} has no pixels; leave it out, or check how it "
                              "was decoded or cropped")
    # (n, 2) pixel ranges read back together: one device sync for the batch, not one per image.
    floats = [k for k, image in enumerate(images) if image.is_floating_point()]  # uint8 pixels are in range
    ranges = [torch.stack(torch.aminmax(images[k])).float() for k in floats]
    spans = torch.stack([r.to(ranges[0].device) for r in ranges]).tolist() if ranges else []
    for k, (low, high) in zip(floats, spans):
        if not (math.isfinite(low) and math.isfinite(high)):  # a NaN pixel makes both NaN, so it passed the range
            raise ConfigError(f"image {k}: some pixels are NaN or infinite; {_NON_FINITE_FIX}")
        if low < -_UNIT_RANGE_SLACK or high > 1 + _UNIT_RANGE_SLACK:
            raise ConfigError(f"image {k}: pixels span {low:.3g}..{high:.3g}, not 0..1; pixels in 0..255? "
                              "divide by 255 (and pass them unnormalised: detectors normalise inside)")


def _check_float_pixels(images: object, name: str, dims: tuple[int | str, ...], pixels: str, fix: str,
                        bytes_ok: bool = False) -> None:
    """One line unless ``images`` is a floating-point (or with ``bytes_ok``, uint8) tensor shaped ``dims`` (an int:
    that size; a str: any)."""
    shape = f"({', '.join(map(str, dims))})"
    if not isinstance(images, torch.Tensor):
        raise ConfigError(f"{name}: a {type(images).__name__}, not a tensor {shape}; {fix}")
    fixed = [(i, size) for i, size in enumerate(dims) if isinstance(size, int)]
    if images.ndim != len(dims) or any(images.shape[i] != size for i, size in fixed):
        raise ConfigError(f"{name}: shape {tuple(images.shape)}, not {shape}; {fix}")
    if not (images.is_floating_point() or bytes_ok and images.dtype == torch.uint8):
        raise ConfigError(f"{name}: {images.dtype} pixels, not {pixels}; {fix}")


def to_model_input(images: torch.Tensor, model: nn.Module) -> torch.Tensor:
    """Float ``images`` on ``model``'s device in its parameters' dtype: float64 pixels
    (``np.random.rand``, ``array / 255.``) or half ones give what float32 ones give a float32 model."""
    weight = next((p for p in model.parameters() if p.is_floating_point()), None)
    return images if weight is None else images.to(weight.device, weight.dtype)


def to_byte_tensor(image: np.ndarray) -> torch.Tensor:
    """``(H, W, 3)`` uint8 array -> ``(3, H, W)`` uint8 tensor: a quarter of :func:`to_tensor`'s memory, for
    detectors, whose transform turns each image into floats in its turn."""
    return torch.from_numpy(np.array(image.transpose(2, 0, 1)))  # a writable copy: decoded arrays are read-only


def checked_transform(transform: Any) -> Any:
    """``transform`` when it is None or callable; one line otherwise, not a TypeError at the first sample."""
    if transform is not None and not callable(transform):
        raise ConfigError(f"transform={transform!r}: give a callable from an (H, W, 3) uint8 array to a tensor, e.g. "
                          "eval_transforms(224), or None")
    return transform


def to_tensor(image: np.ndarray) -> torch.Tensor:
    """``(H, W, 3)`` uint8 array -> ``(3, H, W)`` float32 tensor in 0..1, no normalisation."""
    if not isinstance(image, np.ndarray) or image.ndim != 3:  # else a transpose error naming no image
        shape = f"shape {image.shape}" if isinstance(image, np.ndarray) else f"a {type(image).__name__}"
        raise ConfigError(f"image: {shape}; give an (H, W, 3) uint8 array, as decode_image returns (a gray "
                          "(H, W) one as image[..., None].repeat(3, -1))")
    # One writable float copy: torch warns about wrapping a read-only array (decoded images are),
    # which ascontiguousarray passes through when the transpose is already contiguous (1x1 images).
    return torch.from_numpy(np.array(image.transpose(2, 0, 1), dtype=np.float32)).div_(255)


def unknown_recipe(recipe: str) -> ConfigError:
    return ConfigError(f"recipe={recipe!r}: unknown transform recipe (use 'photo' or 'small')")


def _channel_steps(input_size: InputSize) -> list[A.BasicTransform]:
    """For a one-channel model (``input_size`` ``(1, H, W)``: ``in_chans=1``), the gray image it takes."""
    channels = input_size[0] if not is_index(input_size) and len(input_size) == 3 else 3
    if channels not in (1, 3):
        raise ConfigError(f"input_size={tuple(input_size)!r}: images have 3 channels (RGB) or 1 (gray), not {channels}")
    return [A.ToGray(num_output_channels=1, p=1.0)] if channels == 1 else []


def _height_width(input_size: InputSize) -> tuple[int, int]:
    # "28" had been a TypeError, 28.5 "not iterable", and True a side of 1 pixel
    if is_index(input_size):
        size = (input_size,)
    else:
        size = tuple(input_size) if is_many(input_size) else ()
    if len(size) not in (1, 2, 3) or not all(is_count(side) for side in size):
        raise ConfigError(f"input_size={input_size!r}: expected S, (H, W) or (C, H, W), in whole numbers >= 1")
    return (size[0], size[0]) if len(size) == 1 else (size[-2], size[-1])
