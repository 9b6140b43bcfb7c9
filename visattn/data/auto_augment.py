"""timm's learned and random augmentation policies as a step of an albumentations pipeline.

AutoAugment (Cubuk et al., "AutoAugment: Learning Augmentation Policies from Data", CVPR 2019),
RandAugment (Cubuk et al., "RandAugment: Practical automated data augmentation with a reduced search
space", CVPR Workshops 2020) and AugMix (Hendrycks et al., "AugMix: A Simple Data Processing Method to
Improve Robustness and Uncertainty", ICLR 2020), in timm's implementation and named by timm's
``auto_augment`` strings (``"rand-m9-mstd0.5-inc1"``, DeiT's), so a recipe from timm's ``train.py``
carries over as it is written.

timm's operations draw from Python's and NumPy's global random states. Here each image's draws are seeded
from the pipeline's own generator, so they follow visattn's augmentation seeding (repeatable runs, exact
resumes, distinct workers) and leave the global states as they were.
"""
from __future__ import annotations

import random
import re
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Callable

import albumentations as A
import numpy as np
from PIL import Image
from timm.data import auto_augment as timm_auto_augment
from timm.data.auto_augment import augment_and_mix_transform, auto_augment_transform, rand_augment_transform
from timm.data.transforms import str_to_pil_interp

__all__ = ["TimmAutoAugment", "auto_augment_problem"]

AUTO_AUGMENT_EXAMPLES = ("'rand-m9-mstd0.5-inc1' (RandAugment, DeiT's), 'augmix-m5-w4-d2' (AugMix) "
                         "or 'original' (AutoAugment's ImageNet policy)")


class TimmAutoAugment(A.ImageOnlyTransform):
    """timm's ``auto_augment`` policy (RandAugment, AugMix or AutoAugment) on an ``(H, W, 3)`` uint8 RGB array.

    Args:
        config: timm's policy string, e.g. ``"rand-m9-mstd0.5-inc1"`` or ``"augmix-m5-w4-d2"``.
        input_size: the side (or ``(H, W)``) of the images it sees: translations reach 45% of the shorter one.
        mean: the normalisation mean (0..1, 1 or 3 values): areas moved into the image are filled with it.
        interpolation: the filter of rotations, shears and translations, as timm's training transform.
    """

    def __init__(self, config: str, *, input_size: int | Sequence[int] = 224,
                 mean: Sequence[float] = (0.485, 0.456, 0.406), interpolation: str = "bilinear") -> None:
        super().__init__(p=1.0)
        self.config, self.input_size, self.mean, self.interpolation = config, input_size, tuple(mean), interpolation
        self.policy = timm_policy(config, input_size=input_size, mean=mean, interpolation=interpolation)

    def get_params(self) -> dict:
        return {"seed": int(self.random_generator.integers(2**32))}

    def apply(self, img: np.ndarray, seed: int, **params: object) -> np.ndarray:
        with global_random_seeded(seed):
            return np.asarray(self.policy(Image.fromarray(img)))

    def get_transform_init_args_names(self) -> tuple[str, ...]:
        return ("config", "input_size", "mean", "interpolation")


def timm_policy(config: str, *, input_size: int | Sequence[int], mean: Sequence[float],
                interpolation: str) -> Callable[[Image.Image], Image.Image]:
    """timm's PIL transform for ``config``, with the settings timm's ``create_transform`` gives it."""
    shorter = input_size if isinstance(input_size, int) else min(input_size[-2:])
    fill = [min(255, round(255 * m)) for m in mean]
    hparams = {"translate_const": int(shorter * 0.45), "img_mean": tuple(fill * 3 if len(fill) == 1 else fill),
               "interpolation": str_to_pil_interp(interpolation)}
    if config.startswith("rand"):
        policy = rand_augment_transform(config, hparams)
    elif config.startswith("augmix"):
        policy = augment_and_mix_transform(config, {**hparams, "translate_pct": 0.3})
    else:
        policy = auto_augment_transform(config, hparams)
    ops = getattr(policy, "ops", None) or [op for sub_policy in policy.policy for op in sub_policy]
    for op in ops:
        if op.aug_fn is timm_auto_augment.posterize:
            op.aug_fn = posterize
    return policy


def posterize(img: Image.Image, bits_to_keep: int, **kwargs: object) -> Image.Image:
    """timm's posterize, keeping no bit as the Pillow it was written for did (a black image): Pillow 11 refuses 0
    bits, which DeiT's ``rand-m9-mstd0.5-inc1`` asks for at magnitude 10, and a training epoch died in a ValueError."""
    if bits_to_keep <= 0:
        return Image.new(img.mode, img.size)
    return timm_auto_augment.posterize(img, bits_to_keep)


def auto_augment_problem(config: object) -> str | None:
    """``auto_augment=CONFIG: what to give`` unless timm builds a policy from ``config``; None when it does."""
    if not isinstance(config, str):
        return f"auto_augment={config!r}: give a timm policy string, e.g. {AUTO_AUGMENT_EXAMPLES}"
    # timm silently skips a section without a number: a typo (inc1 as incl) would go unnoticed
    # (RandAugment's t section names an op set, e.g. tweights, as timm reads it)
    valueless = [part for part in config.split("-")[1:] if not re.fullmatch(r"[a-z]+\d.*", part)
                 and not (config.startswith("rand") and part.startswith("t"))]
    if valueless:
        example = "m9, mstd0.5, inc1" if config.startswith(("rand", "augmix")) else "mstd0.5"  # AutoAugment's only
        return (f"auto_augment={config!r}: its section {valueless[0]!r} has no number, which timm skips; give each "
                f"setting with its value, e.g. {example}")
    try:
        policy = timm_policy(config, input_size=224, mean=(0.5,), interpolation="bilinear")
    except (AssertionError, KeyError, ValueError, IndexError) as error:  # what timm's parsers raise
        why = f" ({error})" if str(error) else ""
        return f"auto_augment={config!r}: timm cannot read it{why}; give e.g. {AUTO_AUGMENT_EXAMPLES}"
    problem = _degenerate_setting(policy)
    return f"auto_augment={config!r}: {problem}" if problem else None


def _degenerate_setting(policy: object) -> str | None:
    """What in a policy timm silently accepts would augment nothing, fail, or not be what it says."""
    if getattr(policy, "num_layers", 1) < 1:
        return "n0 applies no operation to any image; give n1 or more (timm's default: n2)"
    if getattr(policy, "width", 1) < 1:
        return "w0 mixes no augmented chain (every image came out darkened); give w1 or more (timm's default: w3)"
    if getattr(policy, "alpha", 1) <= 0:
        return "a0 gives no mixing weights (the first image failed); give an alpha above 0 (timm's default: a1)"
    ops = getattr(policy, "ops", None) or []
    if any(op.prob <= 0 for op in ops):
        return "p0 applies each operation with probability 0; give a probability above 0 (timm's default: p0.5)"
    if any(op.prob > 1 for op in ops):
        return "a probability above 1 acts as 1; give p1 or less (timm's default: p0.5)"
    too_strong = next((op for op in ops if op.magnitude > (op.magnitude_max or 10)), None)
    if too_strong is not None:
        top = too_strong.magnitude_max or 10
        return (f"magnitude {too_strong.magnitude:g} is above the largest timm applies ({top:g}, mmax), so it would "
                f"act as {top:g}; give m{top:g} or less, or raise mmax")
    return None


@contextmanager
def global_random_seeded(seed: int) -> Iterator[None]:
    """Python's and NumPy's global random states seeded with ``seed`` inside, and as they were after."""
    python_state, numpy_state = random.getstate(), np.random.get_state()
    random.seed(seed)
    np.random.seed(seed)
    try:
        yield
    finally:
        random.setstate(python_state)
        np.random.set_state(numpy_state)
