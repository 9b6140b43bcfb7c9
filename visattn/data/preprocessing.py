"""The evaluation settings a classifier's weights record (``preprocessing``: ``input_size``, ``mean``, ``std``,
``recipe``, ``crop_pct``, ``interpolation``): their defaults, their checks and timm's data fields for them.

Plain data, apart from the transforms that apply them (:mod:`visattn.data.transforms`): reading a weights index or
building a model imports this module, not albumentations.
"""
from __future__ import annotations

import copy
import math
import reprlib
from collections.abc import Sequence
from typing import TYPE_CHECKING, Literal

from ..errors import ConfigError, is_count, is_number

if TYPE_CHECKING:
    from torch import nn

__all__ = [
    "CLASSIFIER_PREPROCESSING",
    "DEFAULT_CROP_PCT",
    "DEFAULT_INTERPOLATION",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "INTERPOLATIONS",
    "default_preprocessing",
    "default_settings",
    "preprocessing_problem",
    "timm_data_config",
]

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
Interpolation = Literal["bilinear", "bicubic"]
INTERPOLATIONS = ("bilinear", "bicubic")
DEFAULT_INTERPOLATION: Interpolation = "bilinear"  # torchvision's ImageNet evaluation; timm records its own per weights
DEFAULT_CROP_PCT = 0.875  # timm's and torchvision's ImageNet evaluation: 224 of 256


def default_preprocessing(model: nn.Module, *, published: bool = True) -> dict:
    """The evaluation settings of a classifier whose weights recorded none: its input size, ImageNet's statistics
    and the photo recipe (what torchvision's and timm's ImageNet weights expect), under, if ``published``, how every
    weights published for its architecture were evaluated (``published_preprocessing``: CLIP's statistics, a ViT's
    bicubic filter). Without: the defaults that recorded settings lacking a field are evaluated with."""
    size = list(getattr(model, "input_size", (3, 224, 224)))
    published = copy.deepcopy(getattr(model, "published_preprocessing", {})) if published else {}
    return {"input_size": size, "mean": list(IMAGENET_MEAN), "std": list(IMAGENET_STD), "recipe": "photo", **published}


def default_settings(model: nn.Module) -> str:
    """What inference assumes for a classifier whose weights recorded no preprocessing, as words: the statistics,
    filter and crop of :func:`default_preprocessing` (``mean [0.485, ...], std [...]``)."""
    assumed = default_preprocessing(model)
    return ", ".join(f"{key} {assumed[key]}" for key in ("mean", "std", "interpolation", "crop_pct") if key in assumed)


def timm_data_config(preprocessing: dict) -> dict:
    """timm's data fields of a ``pretrained_cfg`` for recorded evaluation settings, so that
    ``timm.data.resolve_data_config(model=...)`` and ``timm.data.create_transform`` build this evaluation
    transform: the photo recipe is timm's centre crop at ``crop_pct`` 0.875, the small one its
    ``"squash"`` resize of the whole image."""
    photo = preprocessing.get("recipe", "photo") == "photo"
    # One value per input channel, or timm's Normalize fails: a one-channel model takes the first channel's, as
    # albumentations does a gray image; channels past the third repeat R, G and B's, as the stem's weights do
    # for them (timm's adapt_input_conv).
    channels = preprocessing["input_size"][0]

    def per_channel(values: Sequence[float]) -> tuple:
        return tuple(values[k % len(values)] for k in range(channels))

    return {"input_size": tuple(preprocessing["input_size"]), "mean": per_channel(preprocessing["mean"]),
            "std": per_channel(preprocessing["std"]),
            "interpolation": preprocessing.get("interpolation", DEFAULT_INTERPOLATION),
            "crop_pct": preprocessing.get("crop_pct", DEFAULT_CROP_PCT) if photo else 1.0,
            "crop_mode": "center" if photo else "squash"}


CLASSIFIER_PREPROCESSING = ("input_size", "mean", "std")  # what a classifier's recorded transform settings need


def preprocessing_problem(preprocessing: object, *, required: Sequence[str] = ()) -> str | None:
    """``preprocessing.FIELD=VALUE: what to give`` when recorded evaluation-transform settings (a weights
    index entry's or a training checkpoint's) would not build a transform, or would build one giving NaN;
    None when they would not. ``required``: the fields the reader cannot do without."""
    if not isinstance(preprocessing, dict):
        return f"preprocessing={reprlib.repr(preprocessing)}: give an object with input_size, mean and std"
    missing = [field for field in required if field not in preprocessing]
    if missing:
        return f"preprocessing has no {' or '.join(missing)}"
    if "input_size" in preprocessing and not _is_channels_height_width(size := preprocessing["input_size"]):
        return f"preprocessing.input_size={reprlib.repr(size)}: give [C, H, W], C being 1 (gray) or 3 (RGB)"
    for name in ("mean", "std"):
        problem = _statistics_problem(name, preprocessing[name]) if name in preprocessing else None
        if problem:
            return f"preprocessing.{problem}"
    problem = (crop_problem(preprocessing["crop_pct"]) if "crop_pct" in preprocessing else None) or (
        interpolation_problem(preprocessing["interpolation"]) if "interpolation" in preprocessing else None)
    return f"preprocessing.{problem}" if problem else None


def crop_problem(crop_pct: object) -> str | None:
    if is_number(crop_pct) and 0 < crop_pct <= 1:
        return None
    return f"crop_pct={reprlib.repr(crop_pct)}: give the fraction of the resized image kept, above 0 and at most 1"


def interpolation_problem(interpolation: object) -> str | None:
    if interpolation in INTERPOLATIONS:
        return None
    return f"interpolation={reprlib.repr(interpolation)}: give one of {', '.join(INTERPOLATIONS)}"


def _is_channels_height_width(size: object) -> bool:
    return isinstance(size, (list, tuple)) and len(size) == 3 and all(map(is_count, size)) and size[0] in (1, 3)


def check_normalization(mean: object, std: object) -> None:
    problem = _statistics_problem("mean", mean) or _statistics_problem("std", std)
    if problem:
        raise ConfigError(problem)


def _statistics_problem(name: str, values: object) -> str | None:
    """``NAME=VALUES: what to give`` unless ``values`` (a ``mean`` or ``std``) is 1 or 3 finite numbers,
    those of a std above 0: a std of 0 makes every pixel inf or NaN, and albumentations silently takes another
    count, normalising channels with values meant for others."""
    numbers = values if isinstance(values, (list, tuple)) else [values]
    low = 0 if name == "std" else -math.inf
    if len(numbers) in (1, 3) and all(is_number(v) and low < v < math.inf for v in numbers):
        return None
    above = " above 0" if name == "std" else ""
    return f"{name}={reprlib.repr(values)}: give 3 finite numbers{above} (one per RGB channel) or 1 for all"
