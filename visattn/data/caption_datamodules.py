"""LightningDataModules for image captioning: FashionScenes and Karpathy-split photo corpora.

``vocab`` (the :class:`~visattn.data.vocab.Vocabulary` as a list, built from training captions
only) and ``preprocessing`` are known right after construction, so a LightningCLI config can
link them into the captioning model, and they land in its checkpoints.

Batches are dicts (see :func:`collate_captions`):

- ``images`` ``(B, 3, H, W)`` float, ``captions`` ``(B, L)`` long (``<start> ... <end>`` padded
  with ``<pad>``), ``lengths`` ``(B,)`` long (start and end included). Training draws one of the
  image's reference captions at random on every access, so all of them are used over the epochs;
  validation and test use the first one.
- validation and test add ``references`` (every caption of each image, a list of lists of str);
  FashionScenes also adds ``boxes`` (a list of ``(N, 4)`` float xyxy tensors in the model
  input's pixel frame) and ``labels`` (a list of ``(N,)`` long tensors).

Scenes are not augmented: captions name positions, so any crop or flip would contradict them.
"""
from __future__ import annotations

import contextlib
import functools
import warnings
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any, Literal, get_args

import lightning.pytorch as pl
from torch.utils.data import Dataset

from ..errors import ArgumentError, ConfigError, VisattnWarning, caught_warnings, is_count, is_index, outside_visattn
from .datamodules import (COCO_VALIDATION_FIX, COCO_VALIDATION_SETTING, SplitLoadersMixin, check_img_size, per_channel,
                          split_images_dir)
from .coco import CaptionImages, CocoCaptions, KarpathyCaptions, KarpathySplit, read_karpathy
from .preprocessing import DEFAULT_CROP_PCT, DEFAULT_INTERPOLATION, IMAGENET_MEAN, IMAGENET_STD, Interpolation
from .caption_samples import CaptionSamples, SceneImages, collate_captions
from .scenes import SCENES_MEAN, SCENES_STD, check_scene_counts, scene_settings, scenes_split
from .transforms import ImageTransform, Recipe, eval_transform_of, train_transforms
from .vocab import SPECIAL_TOKENS, Vocabulary, tokenize

__all__ = [
    "CaptionSamples",
    "FashionScenesCaptionDataModule",
    "KarpathyCaptionDataModule",
    "SceneImages",
    "collate_captions",
]

Split = Literal["train", "val", "test"]


def _warn_of_unknown_splits(split_json: str, entries: list[dict]) -> None:
    """One line naming the images of a split that is not one of Karpathy's, which no stage reads: images marked
    ``"Train"`` or ``"dev"`` in a converted file were left out of training without a word (a captioning audit)."""
    unknown = Counter(e["split"] for e in entries if e["split"] not in get_args(KarpathySplit))
    if unknown:
        said = ", ".join(f"{n} in {split!r}" for split, n in sorted(unknown.items()))
        count = sum(unknown.values())
        are = "images are" if count > 1 else "image is"
        warnings.warn(f"{split_json}: {count} {are} in splits no stage reads ({said}); "
                      f"Karpathy's splits are {', '.join(map(repr, get_args(KarpathySplit)))}: rename theirs in the "
                      "file", VisattnWarning, stacklevel=outside_visattn())


def training_vocabulary(captions: Iterable[str], min_count: int, max_caption_len: int) -> Vocabulary:
    """:meth:`Vocabulary.build`, its errors naming the data module's setting; warns when training cuts
    (:class:`CaptionSamples` keeps ``max_caption_len - 2`` words) more than 1% of ``captions``, or every
    occurrence of a vocabulary word."""
    room = max_caption_len - 2
    counts, kept, lengths = Counter(), Counter(), []
    for caption in captions:
        words = tokenize(caption)
        counts.update(words)
        kept.update(words[:room])
        lengths.append(len(words))
    try:
        vocab = Vocabulary.from_counts(counts, min_count=min_count)
    except ArgumentError as err:
        raise err.for_flag(f"data.init_args.{err.argument}") from None
    _warn_of_cut_captions(lengths, room, [w for w in vocab.to_list()[len(SPECIAL_TOKENS):] if not kept[w]])
    _warn_of_unknown_words(counts, min_count)
    return vocab


def _warn_of_unknown_words(counts: Counter, min_count: int, *, most: float = 0.1, suggested: float = 0.05) -> None:
    """One line when ``min_count`` leaves more than ``most`` of the training words out of the vocabulary: they train
    as ``<unk>``, which scoring drops (without it, min_count 50 silently leaves out 74% of a measured corpus's
    words)."""
    total = sum(counts.values())

    def rare(below: int) -> float:  # the share of the words seen fewer than ``below`` times
        return sum(n for n in counts.values() if n < below) / total

    if rare(min_count) <= most:
        return
    lower = max(m for m in range(1, min_count) if rare(m) <= suggested)
    warnings.warn(f"data.init_args.min_count {min_count} leaves {rare(min_count):.0%} of the {total} words of the "
                  f"training captions out of the vocabulary: they train as <unk>, which the scores leave out; give "
                  f"{lower}, which leaves {rare(lower):.0%}", VisattnWarning, stacklevel=outside_visattn())


def _warn_of_cut_captions(lengths: list[int], room: int, never_kept: list[str]) -> None:
    cut = sum(n > room for n in lengths)
    if cut <= 0.01 * len(lengths) and not never_kept:
        return
    unlearnt = (f"; {len(never_kept)} vocabulary words occur only past the cut ({', '.join(never_kept[:3])}"
                f"{', ...' if len(never_kept) > 3 else ''}), so the model never learns to say them" if never_kept else "")
    warnings.warn(f"data.init_args.max_caption_len {room + 2} keeps {room} word{'s' if room != 1 else ''}: {cut} of the {len(lengths)} "
                  f"training captions read for the vocabulary ({cut / len(lengths):.1%}) are longer, up to {max(lengths)} words, and train cut "
                  f"short{unlearnt}; give {max(lengths) + 2} to keep every caption whole",
                  VisattnWarning, stacklevel=outside_visattn())


@contextlib.contextmanager
def _quiet_about_wordless_images() -> Iterator[None]:
    """Quiet about images without a caption in words while a file is read again: building the vocabulary from
    it says so once."""
    with caught_warnings():
        warnings.filterwarnings("ignore", message=".*: no caption with a word in it$")
        yield


class _CaptionDataModule(SplitLoadersMixin, pl.LightningDataModule):
    """Vocabulary, transforms, splits and DataLoaders shared by the caption data modules.

    Subclasses call ``save_hyperparameters()``, set ``self.vocabulary`` and implement
    ``_source(split, transform)`` (the images of a split as ``(image, captions[, extras])``).
    """

    task = "captioning"  # the task whose model these batches feed; `visattn fit` pairs them

    recipe: Recipe = "photo"

    def __init__(self) -> None:
        super().__init__()
        self.vocabulary = Vocabulary()
        self.datasets: dict[Split, CaptionSamples] = {}

    @property
    def vocab(self) -> list[str]:
        """The vocabulary as saved with weights (:meth:`Vocabulary.to_list`)."""
        return self.vocabulary.to_list()

    @property
    def collate_fn(self) -> Callable[[list], dict[str, Any]]:
        return functools.partial(collate_captions, pad_id=self.vocabulary.pad_id)

    @property
    def input_size(self) -> tuple[int, int]:
        raise NotImplementedError

    @property
    def preprocessing(self) -> dict:
        """The evaluation transform's settings, for checkpoints; ``input_size`` is timm-style ``[C, H, W]``."""
        h = self.hparams
        return {"input_size": [3, *self.input_size], "mean": per_channel(h.mean), "std": per_channel(h.std),
                "recipe": self.recipe}

    def eval_transform(self) -> ImageTransform:
        return eval_transform_of(self.preprocessing)

    def train_transform(self) -> ImageTransform:
        return self.eval_transform()

    def setup(self, stage: str | None = None) -> None:
        h = self.hparams
        if stage in (None, "fit", "validate") and "train" not in self.datasets:
            train = self._source("train", self.train_transform())
            self.datasets["train"] = CaptionSamples(train, self.vocabulary, max_len=h.max_caption_len, train=True)
            self.datasets["val"] = CaptionSamples(self._source("val", self.eval_transform()), self.vocabulary,
                                                  max_len=h.max_caption_len)
            self._check_validation_readable()
        if stage in (None, "test", "predict") and "test" not in self.datasets:
            self.datasets["test"] = CaptionSamples(self._source("test", self.eval_transform()), self.vocabulary,
                                                   max_len=h.max_caption_len)

    def _source(self, split: Split, transform: ImageTransform) -> Dataset:
        raise NotImplementedError

    def _check_options(self) -> None:
        h = self.hparams
        self._check_setting_types()
        self._check_loader_options()
        if h.img_size is not None:  # FashionScenes: None draws at canvas_size
            check_img_size(h.img_size)
        if not is_index(h.max_caption_len) or h.max_caption_len < 3:  # "28" was a TypeError, 28.5 one at the first cut
            raise ConfigError(f"data.init_args.max_caption_len={h.max_caption_len!r}: must be a whole number >= 3 "
                              "(<start>, a word, <end>)")


class FashionScenesCaptionDataModule(_CaptionDataModule):
    """Captioned :class:`~visattn.data.scenes.FashionScenes` (train, val and test scenes from
    disjoint Fashion-MNIST images).

    Args:
        batch_size: samples per batch.
        num_workers: DataLoader worker processes (0 loads in the main process).
        persistent_workers: keep the training workers from epoch to epoch instead of starting new ones
            (seconds an epoch under spawn, as on macOS and Windows); they draw what new ones would.
        canvas_size: side of the generated scenes in pixels.
        img_size: side of the square images the model takes; default: ``canvas_size``.
        num_train: training scenes.
        num_val: validation scenes.
        num_test: test scenes.
        min_items: fewest items per scene.
        max_items: most items per scene.
        seed: seed of the scenes.
        max_caption_len: longest encoded caption, ``<start>`` and ``<end>`` included; the
            default fits every scene caption (the longest, three items with their places, "a pair
            of ... trousers" among them, has 28 tokens, 26 words).
        min_count: words seen fewer times in the training captions become ``<unk>``.
        vocab_scenes: the vocabulary is built from the captions of this many training scenes
            (all of them if fewer); the grammar's every word occurs within the first hundred.
        mean: per-channel normalisation mean (default: the scenes' own statistics).
        std: per-channel normalisation standard deviation.
        root: folder holding the Fashion-MNIST idx files; default: ``$VISATTN_DATA``, then the Debian package.
    """

    path_settings = {"root": "folder"}

    recipe: Recipe = "small"

    def __init__(
        self,
        *,
        batch_size: int = 64,
        num_workers: int = 2,
        persistent_workers: bool = False,
        canvas_size: int = 64,
        img_size: int | None = None,
        num_train: int = 20000,
        num_val: int = 1000,
        num_test: int = 1000,
        min_items: int = 1,
        max_items: int = 3,
        seed: int = 0,
        max_caption_len: int = 28,
        min_count: int = 1,
        vocab_scenes: int = 1000,
        mean: Sequence[float] = SCENES_MEAN,
        std: Sequence[float] = SCENES_STD,
        root: str | None = None,
    ) -> None:
        super().__init__()
        self.save_hyperparameters()
        self._check_options()
        check_scene_counts(self.hparams)
        for key in ("num_train", "vocab_scenes"):  # else no caption: a refusal blaming min_count
            if not is_count(self.hparams[key]):
                raise ConfigError(f"data.init_args.{key}={self.hparams[key]!r}: the vocabulary comes from the training "
                                  "scenes' captions; give 1 or more")
        train = scenes_split(self.hparams, "train")  # checks the scene options and finds Fashion-MNIST early
        self._check_preprocessing()  # as the Karpathy data module does: mean "0.5" had been taken
        captions = (c for i in range(min(vocab_scenes, len(train))) for c in train[i].captions)
        self.vocabulary = training_vocabulary(captions, min_count, max_caption_len)

    @property
    def input_size(self) -> tuple[int, int]:
        side = self.hparams.img_size or self.hparams.canvas_size
        return side, side

    @property
    def preprocessing(self) -> dict:
        """Also how the scenes are drawn, so ``visattn evaluate --dataset fashion-scenes`` draws the same."""
        return {**super().preprocessing, "scenes": scene_settings(self.hparams)}

    def _source(self, split: Split, transform: ImageTransform) -> Dataset:
        return SceneImages(scenes_split(self.hparams, split), transform)


class KarpathyCaptionDataModule(_CaptionDataModule):
    """Users' captioned photos described by a Karpathy split JSON (``dataset_flickr8k.json``,
    ``dataset_coco.json``), or by COCO captions JSON files.

    Args:
        split_json: the Karpathy split JSON; ``None`` when ``train_annotations`` is given. Without images
            in split ``val``, no validation.
        images_dir: the images folder (Karpathy ``filepath`` and COCO ``file_name`` are relative to it).
        batch_size: samples per batch.
        num_workers: DataLoader worker processes (0 loads in the main process).
        persistent_workers: keep the training workers from epoch to epoch instead of starting new ones
            (seconds an epoch under spawn, as on macOS and Windows); they draw what new ones would.
        img_size: side of the square images the model takes.
        max_caption_len: longest encoded caption, ``<start>`` and ``<end>`` included.
        min_count: words seen fewer times in the training captions become ``<unk>``.
        train_splits: the Karpathy splits trained on (``restval`` is COCO's extra training part).
        augment: random resized crops for training (never flips: captions say left and right).
        mean: per-channel normalisation mean (default: ImageNet's).
        std: per-channel normalisation standard deviation.
        crop_pct: evaluation's centre crop's share of the resized image (timm's ``crop_pct``; with an encoder from
            timm weights, give their ``pretrained_cfg``'s, e.g. 0.9 for its augreg ViTs).
        interpolation: resize filter, ``"bilinear"`` or ``"bicubic"`` (timm's ViTs: bicubic), of evaluation and of
            training's crops, as timm's training transform.
        train_annotations: COCO captions JSON for training (the variant without a Karpathy file).
        val_annotations: COCO captions JSON for validation; without it, no validation.
        test_annotations: COCO captions JSON for test; needed only for ``test`` and ``predict``.
        val_images_dir: the folder of ``val_annotations``' images (COCO's ``val2014``); default: ``images_dir``.
        test_images_dir: the folder of ``test_annotations``' images; default: ``images_dir``.
    """

    path_settings = {"split_json": "file", "images_dir": "folder", "train_annotations": "file",
                     "val_annotations": "file", "test_annotations": "file", "val_images_dir": "folder",
                     "test_images_dir": "folder"}

    def __init__(
        self,
        split_json: str | None,
        images_dir: str,
        *,
        batch_size: int = 32,
        num_workers: int = 2,
        persistent_workers: bool = False,
        img_size: int = 224,
        max_caption_len: int = 20,
        min_count: int = 5,
        train_splits: Sequence[KarpathySplit] = ("train", "restval"),
        augment: bool = False,
        mean: Sequence[float] = IMAGENET_MEAN,
        std: Sequence[float] = IMAGENET_STD,
        crop_pct: float = DEFAULT_CROP_PCT,
        interpolation: Interpolation = DEFAULT_INTERPOLATION,
        train_annotations: str | None = None,
        val_annotations: str | None = None,
        test_annotations: str | None = None,
        val_images_dir: str | None = None,
        test_images_dir: str | None = None,
    ) -> None:
        super().__init__()
        self.save_hyperparameters()
        self._check_options()
        self._check_preprocessing()
        if (split_json is None) == (train_annotations is None):
            raise ConfigError("KarpathyCaptionDataModule: give either data.init_args.split_json or "
                              "data.init_args.train_annotations (COCO)")
        if split_json is not None:
            # kept for setup's splits: each read and tokenized the whole file again (4 reads in all)
            self._karpathy_entries = entries = read_karpathy(split_json)
            self.karpathy_splits = {e["split"] for e in entries}
            # one split by name, as KarpathyCaptions (training's images) takes it: "train" had been the splits t, r, ...
            trained = [train_splits] if isinstance(train_splits, str) else list(train_splits)
            captions = [c for e in entries if e["split"] in trained for c in e["captions"]]
            if not captions:  # the vocabulary's own error would blame min_count
                raise ConfigError(f"{split_json}: no image is in the training splits {trained} "
                                  f"(data.init_args.train_splits); its splits are {sorted(self.karpathy_splits)}")
            _warn_of_unknown_splits(split_json, entries)
        else:
            self._coco_train = CocoCaptions(train_annotations, images_dir)  # setup trains on it: no second read
            captions = [c for cs in self._coco_train.captions for c in cs]
        self.vocabulary = training_vocabulary(captions, min_count, max_caption_len)

    @property
    def input_size(self) -> tuple[int, int]:
        return self.hparams.img_size, self.hparams.img_size

    @property
    def preprocessing(self) -> dict:
        h = self.hparams
        return {**super().preprocessing, "crop_pct": h.crop_pct, "interpolation": h.interpolation}

    @property
    def num_skipped(self) -> int:
        """Broken image files skipped so far, each counted once over all splits set up (splits may share files)."""
        return len({path for samples in self.datasets.values() for path in samples.dataset.skipped})

    def train_transform(self) -> ImageTransform:
        """The photo recipe's random crops (no flips: captions say left and right), or evaluation's transform
        when ``augment`` is off."""
        h = self.hparams
        if not h.augment:
            return self.eval_transform()
        return train_transforms(self.input_size, h.mean, h.std, recipe="photo", hflip=False,
                                interpolation=h.interpolation)

    def _source(self, split: Split, transform: ImageTransform) -> Dataset:
        h = self.hparams
        if h.split_json is not None:
            if split == "val" and "val" not in self.karpathy_splits:
                return CaptionImages([])  # no validation, as for COCO files without val_annotations
            splits = h.train_splits if split == "train" else split
            with _quiet_about_wordless_images():
                return KarpathyCaptions(h.split_json, h.images_dir, split=splits, transform=transform,
                                        entries=self._karpathy_entries)
        annotations = {"train": h.train_annotations, "val": h.val_annotations, "test": h.test_annotations}[split]
        if annotations is None and split == "val":
            return CaptionImages([])  # empty: no validation
        if annotations is None:
            raise ConfigError(f"KarpathyCaptionDataModule: set data.init_args.{split}_annotations to use the {split} "
                              "split")
        if split == "train":
            self._coco_train.transform = transform
            return self._coco_train
        return CocoCaptions(annotations, split_images_dir(h, split), transform=transform)

    def how_to_validate(self) -> str:
        """What to give this data module for a validation split, where it has none."""
        h = self.hparams
        if h.split_json is not None:
            return f'give some images of {h.split_json} the split "val"'
        return COCO_VALIDATION_SETTING

    def _validation_source(self) -> tuple[str, str]:
        h = self.hparams
        if h.split_json is not None:
            return (f"{h.split_json} (split val, images in {h.images_dir})",
                    "point data.init_args.images_dir at the folder holding them, or replace them")
        return f"{h.val_annotations} (images in {split_images_dir(h, 'val')})", COCO_VALIDATION_FIX
