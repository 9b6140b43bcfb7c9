"""ImageFolder: users' own photos laid out as ``root/<class name>/<image>``.

Broken files are skipped, not fatal. ``__getitem__`` decodes the requested image; if decoding
fails it marks that file bad and warns once naming it. For training it then returns the next
decodable sample instead, so batches keep their size. For evaluation that would count the
substitute twice, so evaluation datasets (see :func:`for_evaluation`) return ``None`` and their
DataLoaders batch with :func:`collate_present`, which leaves it out. The bad-file marks live in a
shared-memory tensor, so marks made in DataLoader worker processes are visible in the main
process (``num_skipped``) and later epochs skip the file without trying it again. Splits carved
from one folder (:meth:`ImageFolder.with_transform`, :meth:`ImageFiles.split`) share those marks,
and a substitute comes only from the broken file's own split.
"""
from __future__ import annotations

import bisect
import copy
import functools
import os
import reprlib
import unicodedata
import warnings
from collections import Counter
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Subset, default_collate

from ..errors import ConfigError, ImageDecodeError, VisattnWarning, first_few, is_count, is_many, outside_visattn
from ..fileio import not_a_folder
from .image_io import DEFAULT_MAX_PIXELS, IMAGE_EXTENSIONS, decode_image, is_bookkeeping, list_images, path_argument
from .transforms import checked_transform, to_tensor

__all__ = ["ImageFiles", "ImageFolder", "SkippedImageWarning", "collate_present", "decode_next_good",
           "check_class_count", "evaluation_batches", "for_evaluation", "find_classes", "seeded_subset"]

_LAYOUT = "expected root/<class name>/<image file>"


class SkippedImageWarning(VisattnWarning):
    """An image that could not be decoded and was skipped."""


class ImageFiles(Dataset):
    """A dataset over image files that skips the ones that fail to decode and counts them.

    A broken file is replaced by the next good one of its split (see :func:`decode_next_good`,
    :meth:`split`), or, with
    ``evaluation = True`` (see :func:`for_evaluation`), its sample is ``None``. The
    skip flags live in shared memory, so the counts include what DataLoader workers skipped.
    Subclasses call :meth:`_track` with their paths, read images with :meth:`_decode` and return
    ``None`` for a ``None`` image.
    """

    paths: list[Path]
    max_pixels: int = DEFAULT_MAX_PIXELS
    evaluation: bool = False  # score each image once, as annotated: see for_evaluation
    substitutes: Optional[np.ndarray] = None  # sorted positions a broken file may be replaced from; None: all

    def _track(self, paths: Sequence[Path], max_pixels: int) -> None:
        if not is_count(max_pixels):  # "1000" was a TypeError at the first image; 0 refused every image as too large
            raise ConfigError(f"max_pixels={max_pixels!r}: give the most pixels (width x height) an image file may "
                              f"declare, e.g. {DEFAULT_MAX_PIXELS}")
        # Paths kept as they are: parsed again, 200,000 of them took seconds
        self.paths, self.max_pixels = [p if isinstance(p, Path) else Path(p) for p in paths], max_pixels
        self._bad = torch.zeros(len(self.paths), dtype=torch.bool).share_memory_()

    def _decode(self, index: int) -> tuple[int, Optional[np.ndarray]]:
        """The index of the image actually read (``index`` or a later good one) and its pixels;
        ``(index, None)`` for a broken file in evaluation."""
        if not self.evaluation:
            return decode_next_good(self.paths, self._bad, int(index), among=self.substitutes,
                                    max_pixels=self.max_pixels)
        return int(index), _decode_or_mark(self.paths, self._bad, int(index), self.max_pixels)

    def any_readable(self, indices: Sequence[int]) -> bool:
        """Whether a file of ``indices`` decodes; stops at the first that does, marking (and warning
        about, once) the broken files before it."""
        return any(_decode_or_mark(self.paths, self._bad, int(i), self.max_pixels) is not None for i in indices)

    def is_broken(self, index: int) -> bool:
        """Whether file ``index`` failed to decode so far (in this process or its DataLoader workers)."""
        return bool(self._bad[index])

    def failure(self, index: int) -> str:
        """Why file ``index`` does not decode, read again: DataLoader workers share only that it failed."""
        try:
            decode_image(self.paths[index], max_pixels=self.max_pixels)
        except ImageDecodeError as err:
            return str(err)
        return f"{self.paths[index]}: could not be read when its batch was"  # changed since

    @property
    def num_skipped(self) -> int:
        """How many files failed to decode so far (in this process or its DataLoader workers)."""
        return int(self._bad.sum())

    @property
    def skipped(self) -> list[Path]:
        """The files that failed to decode so far."""
        return [self.paths[i] for i in self._bad.nonzero().flatten().tolist()]

    def split(self, indices: Sequence[int]) -> Subset:
        """``Subset(self, indices)`` whose broken files are replaced only by good files of ``indices``,
        so a training split never takes a validation image. A dataset serves one split: give each
        split its own view (:meth:`ImageFolder.with_transform`)."""
        self.substitutes = np.sort(np.asarray(indices, dtype=np.int64))
        return Subset(self, [int(i) for i in indices])

    def __len__(self) -> int:
        return len(self.paths)


class ImageFolder(ImageFiles):
    """Images in ``root/<class>/...`` (sub-folders searched too); classes are the sorted folder names.

    Each sample is ``(image, label)``; the transform receives an ``(H, W, 3)`` uint8 RGB array
    (without one, the image is a ``(3, H, W)`` float tensor in 0..1). In training, a class whose
    every file (of the split) has failed to decode is a :class:`ConfigError`, not an empty class.

    Args:
        root: the folder holding one sub-folder per class.
        transform: callable from an HWC uint8 array to a tensor, e.g. ``eval_transforms(...)``.
        classes: class names in label order; default: the sub-folders of ``root``. Give the
            training classes when reading a validation or test folder, so labels agree.
        max_pixels: images declaring more pixels are refused (and skipped).
    """

    def __init__(
        self,
        root: str | os.PathLike,
        transform: Callable[[np.ndarray], torch.Tensor] | None = None,
        *,
        classes: Sequence[str] | None = None,
        max_pixels: int = DEFAULT_MAX_PIXELS,
    ) -> None:
        self.root = path_argument("root", root)
        self.transform = checked_transform(transform)
        if is_many(classes):
            classes = list(classes)  # read once: a generator is empty the second time, a numpy array has no truth value
        if classes is not None and (not isinstance(classes, list) or not classes
                                    or not all(isinstance(c, str) for c in classes)):
            # "cat" was read as the classes c, a and t; [0, 1] was a TypeError in unicodedata
            raise ConfigError(f"classes={classes!r}: give the class folder names in label order, e.g. ['cat', 'dog']")
        self.classes = list(classes) if classes is not None else find_classes(self.root)
        repeated = sorted(name for name, n in Counter(unicodedata.normalize("NFC", c) for c in self.classes).items() if n > 1)
        if repeated:  # their folder's images would be read once under each label
            raise ConfigError(f"classes: {repeated} appear more than once; give each class once")
        self.class_to_idx = {name: i for i, name in enumerate(self.classes)}
        self.samples = self._find_samples()
        self._warn_of_loose_images()
        if classes is None:  # the classes come from this folder: each must be one a model can learn
            self._check_found_classes()
        self._track([path for path, _ in self.samples], max_pixels)
        self._labels = np.array(self.targets, dtype=np.int64)

    @property
    def targets(self) -> list[int]:
        """The label of every sample, in order."""
        return [label for _, label in self.samples]

    def __getitem__(self, index: int) -> Optional[tuple[torch.Tensor, int]]:
        i, image = self._decode(index)
        if image is None:
            return None
        if i != int(index):  # index is broken: its class may have no readable file left
            self._check_class_readable(self.samples[int(index)][1])
        return (self.transform(image) if self.transform is not None else to_tensor(image)), self.samples[i][1]

    def __repr__(self) -> str:
        return f"{type(self).__name__}({str(self.root)!r}, classes={len(self.classes)}, n={len(self)})"

    def with_transform(self, transform: Callable[[np.ndarray], torch.Tensor] | None) -> ImageFolder:
        """The same files read through ``transform``, for another split of this folder: the bad-file
        marks are shared, so a broken file is tried and warned about once over all splits."""
        view = copy.copy(self)
        view.transform = transform
        return view

    def _check_class_readable(self, label: int) -> None:
        """One line when every file of class ``label`` among the substitutes is marked broken:
        training would go on with a class it never sees."""
        pool = self.substitutes if self.substitutes is not None else np.arange(len(self.paths))
        members = pool[self._labels[pool] == label]
        if bool(self._bad[torch.from_numpy(members)].all()):
            name = self.classes[label]
            folder = class_folders(self.root).get(unicodedata.normalize("NFC", name), name)  # as it is spelled there
            raise ConfigError(f"{self.root / folder}: none of its {len(members)} training image files "
                              "can be decoded (see the warnings); replace them or remove the class folder")

    def _find_samples(self) -> list[tuple[Path, int]]:
        folders = class_folders(self.root)
        extra = sorted(folders[name] for name in set(folders) - {unicodedata.normalize("NFC", c) for c in self.classes})
        if extra:
            # capped: an ImageNet tree read with a 10-class model's labels named 990 folders and the 10
            raise ConfigError(f"{self.root}: class folders {reprlib.repr(extra)} are not among the classes "
                              f"({first_few(self.classes)}); "
                              "rename or move them, or train a model that has those classes")
        samples = [
            (path, label)
            for label, name in enumerate(self.classes)
            if (folder := folders.get(unicodedata.normalize("NFC", name))) is not None
            for path in list_images(self.root / folder)
        ]
        if not samples:
            raise ConfigError(f"{self.root}: no image files in its class folders ({_LAYOUT})")
        return samples

    def _warn_of_loose_images(self) -> None:
        """Image files beside the class folders belong to no class: read as no sample, they shrank ``n`` unsaid."""
        loose = sorted(path.name for path in self.root.iterdir() if path.suffix.lower() in IMAGE_EXTENSIONS
                       and not is_bookkeeping(path.name) and not path.is_dir())
        if loose:
            more = f" and {len(loose) - 1} more image files" if len(loose) > 1 else ""
            warnings.warn(f"{self.root}: {loose[0]}{more} sit beside the class folders, in no class, and are not read; "
                          "move each into its class's folder", VisattnWarning, stacklevel=outside_visattn())

    def _check_found_classes(self) -> None:
        check_class_count(self.root, self.classes)
        folded = Counter(name.casefold() for name in self.classes)
        alike = [name for name in self.classes if folded[name.casefold()] > 1]
        if alike:  # a class split in two by its spelling, or classes that cannot be copied to macOS or Windows
            warnings.warn(f"{self.root}: class folders {alike[:4]} differ only in case: they are separate classes "
                          "here, but one folder on macOS and Windows; merge them if they are one class",
                          VisattnWarning, stacklevel=outside_visattn())
        empty = sorted(set(self.classes) - {self.classes[label] for _, label in self.samples})
        if empty:
            raise ConfigError(f"{self.root}: class folders {reprlib.repr(empty)} hold no image files; add images or "
                              "remove them")


def decode_next_good(
    paths: Sequence[Path], bad: torch.Tensor, index: int, *, among: Sequence[int] | None = None,
    max_pixels: int = DEFAULT_MAX_PIXELS,
) -> tuple[int, np.ndarray]:
    """Decode ``paths[index]``, or the next file (wrapping around) of ``among`` that decodes.

    Files that fail are marked in ``bad`` (a shared-memory bool tensor, so marks made in
    DataLoader workers reach the main process), warned about once and never tried again.

    Args:
        among: sorted positions the substitute may come from (the split ``index`` belongs to);
            default: all of ``paths``.

    Returns:
        The index of the file decoded and its ``(H, W, 3)`` uint8 image.

    Raises:
        ConfigError: no file decodes.
    """
    order = range(len(paths)) if among is None else among
    start = bisect.bisect_left(order, index)  # where index is in order
    for offset in range(len(order)):
        i = int(order[(start + offset) % len(order)])
        image = _decode_or_mark(paths, bad, i, max_pixels)
        if image is not None:
            return i, image
    folder = paths[0].parent if paths else "the images folder"
    raise ConfigError(f"{folder}: none of the {len(order)} image files listed can be decoded (see the warnings); "
                      "replace or remove them")


def _decode_or_mark(paths: Sequence[Path], bad: torch.Tensor, i: int, max_pixels: int) -> Optional[np.ndarray]:
    """``paths[i]``'s pixels, or ``None`` when it is marked bad or fails now (then marked and warned about once)."""
    if bad[i]:
        return None
    try:
        return decode_image(paths[i], max_pixels=max_pixels)
    except ImageDecodeError as err:
        bad[i] = True
        warnings.warn(f"skipping {err}", SkippedImageWarning, stacklevel=outside_visattn())
        return None


def for_evaluation(dataset: Dataset) -> Dataset:
    """Make the image files under ``dataset`` give each image once, as annotated; returns ``dataset``.

    A broken file gives ``None`` instead of the next good image, which would be scored twice, and
    COCO detection targets keep their crowd regions (``iscrowd``), which mAP ignores matches to.
    Wrappers that keep their source in ``.dataset`` (``Subset``, caption samples) are looked through.
    Batch such a dataset with :func:`collate_present`.
    """
    files, _ = image_files_of(dataset)
    if files is not None:
        files.evaluation = True
    return dataset


def image_files_of(dataset: Optional[Dataset]) -> tuple[Optional[ImageFiles], Sequence[int]]:
    """The image files under ``dataset`` (through :class:`Subset` and sample wrappers with a ``dataset``)
    and the positions of its samples among them; ``None`` for data that is not read from files."""
    if isinstance(dataset, Subset):
        files, _ = image_files_of(dataset.dataset)
        return files, list(dataset.indices)
    if isinstance(dataset, ImageFiles):
        return dataset, range(len(dataset))
    inner = getattr(dataset, "dataset", None)
    return image_files_of(inner) if isinstance(inner, Dataset) else (None, ())


def skipped_images(dataset: Optional[Dataset]) -> dict[str, int]:
    """``{"skipped": k}``: the image files under ``dataset`` (see :func:`image_files_of`) that failed to
    decode so far, which an evaluation left out; empty for data not read from files."""
    files, _ = image_files_of(dataset)
    return {} if files is None else {"skipped": files.num_skipped}


def collate_present(samples: Sequence[Any], collate: Callable[[list], Any] = default_collate) -> Any:
    """``collate`` over the samples that are not ``None`` (broken files left out); ``None`` when none is.

    Use ``functools.partial(collate_present, collate=...)`` as a DataLoader's ``collate_fn``.
    """
    present = [sample for sample in samples if sample is not None]
    return collate(present) if present else None


def evaluation_batches(dataset: Dataset, *, batch_size: int, num_workers: int = 0,
                       collate: Callable[[list], Any] = default_collate) -> DataLoader:
    """Batches of ``dataset`` in order that score each image once (:func:`for_evaluation`); a batch of
    only broken files is ``None``, which the caller passes over."""
    # its own generator: the workers' seeds are not drawn from the caller's global RNG, so scoring leaves it as it was
    return DataLoader(for_evaluation(dataset), batch_size=batch_size, num_workers=num_workers,
                      collate_fn=functools.partial(collate_present, collate=collate),
                      generator=torch.Generator().manual_seed(0))


def seeded_subset(dataset: Dataset, limit: Optional[int], *, seed: int = 0) -> Dataset:
    """``limit`` samples of ``dataset`` drawn with a seeded permutation and kept in dataset order (all
    of it when ``limit`` is None or covers it): files sorted by class, or annotations grouped by
    image, would otherwise give their first class or images only."""
    if limit is None or limit >= len(dataset):
        return dataset
    pick = np.random.default_rng(seed).permutation(len(dataset))[:limit]
    return Subset(dataset, sorted(pick.tolist()))


SPLIT_FOLDERS = ("train", "val", "test")


def split_folders(root: Path) -> list[str]:
    """The split folders (``train``, ``val``, ``test``) an image folder has: none when it holds other
    folders too, which are classes, one of them maybe named like a split (CIFAR-100's ``train``)."""
    if not root.is_dir():
        return []
    folders = {path.name for path in root.iterdir() if _is_class_dir(path)}
    return [name for name in SPLIT_FOLDERS if name in folders] if folders <= set(SPLIT_FOLDERS) else []


def find_classes(root: str | os.PathLike) -> list[str]:
    """Sorted names of the class sub-folders of ``root`` (hidden and other programs' folders ignored), in
    composed Unicode form (NFC).

    Raises:
        ConfigError: ``root`` is missing, not a folder, or has no sub-folders.
    """
    return sorted(class_folders(path_argument("root", root)))


def class_folders(root: Path) -> dict[str, str]:
    """``{class name: folder name}`` of ``root``'s class sub-folders, each name in composed form (NFC): macOS and
    its zip files write "éclair" decomposed (NFD), which looks the same yet sorts before "fig", where the composed
    one sorts after it: a copy of the folder made elsewhere numbered the classes otherwise, and recorded the label
    in another form.

    Raises:
        ConfigError: ``root`` is missing, not a folder, has no sub-folders, or two of one name in two forms.
    """
    if not root.is_dir():
        raise ConfigError(f"{root}: {not_a_folder(root)} ({_LAYOUT})")
    folders: dict[str, str] = {}
    for path in sorted(root.iterdir()):
        if _is_class_dir(path):
            other = folders.setdefault(unicodedata.normalize("NFC", path.name), path.name)
            if other != path.name:
                raise ConfigError(f"{root}: class folders {ascii(other)} and {ascii(path.name)} are one name in two "
                                  "Unicode forms (composed and decomposed, as macOS writes it); merge them into one")
    if not folders:
        raise ConfigError(f"{root}: no class sub-folders ({_LAYOUT})")
    return folders


def check_class_count(root: str | os.PathLike, classes: Sequence[str]) -> None:
    """One line unless ``root``'s class folders are two or more, as a classifier to train needs."""
    if len(classes) < 2:
        raise ConfigError(f"{root}: one class folder ({classes[0]}); a classifier needs two or more "
                          f"({_LAYOUT}; did you give the class folder instead of its parent?)")


def _is_class_dir(path: Path) -> bool:
    return path.is_dir() and not is_bookkeeping(path.name)
