"""Fashion-MNIST (Xiao et al. 2017): 70k 28x28 grayscale product photos in 10 classes.

The idx files are looked for in ``$VISATTN_DATA`` (the folder itself or its ``fashion-mnist``
subfolder), then in ``/usr/share/datasets/fashion-mnist`` (Debian package
``dataset-fashion-mnist``), and only then downloaded through torchvision. A set ``$VISATTN_DATA``
is the only place looked at: a folder that is not there, a file, or a folder without the split's
files is a one-line error naming it, never a silent fall back to the system copy; so is a ``root``
given (a config's ``data.init_args.root``), which is looked at instead of all these. They are parsed
with numpy and kept in memory as uint8, once per process.
"""
from __future__ import annotations

import functools
import gzip
import os
import warnings
import zlib
from pathlib import Path
from typing import Callable, Literal, Sequence

import numpy as np
import torch
from torch.utils.data import Dataset

from ..errors import ConfigError, caught_warnings
from ..fileio import not_a_folder
from .image_io import path_argument
from .transforms import checked_transform, to_tensor

__all__ = [
    "FASHION_MNIST_CLASSES",
    "FASHION_MNIST_MEAN",
    "FASHION_MNIST_STD",
    "FashionMNIST",
    "find_fashion_mnist",
    "load_fashion_mnist",
    "read_idx",
]

FASHION_MNIST_CLASSES = (
    "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
    "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
)
# statistics of the training images, repeated for the 3 channels the models take
FASHION_MNIST_MEAN = (0.2860, 0.2860, 0.2860)
FASHION_MNIST_STD = (0.3530, 0.3530, 0.3530)
SYSTEM_DIR = Path("/usr/share/datasets/fashion-mnist")
DATA_ENV = "VISATTN_DATA"
Split = Literal["train", "test"]
_FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}
_UBYTE = 0x08  # the idx type code of unsigned bytes


class FashionMNIST(Dataset):
    """Fashion-MNIST images as 3-channel (RGB) samples.

    Each sample is ``(image, label)``. The transform receives a ``(28, 28, 3)`` uint8 array
    (the gray values repeated in 3 channels); without one, the image is a ``(3, 28, 28)`` float
    tensor in 0..1.

    Args:
        split: ``"train"`` (60000 images) or ``"test"`` (10000 images).
        transform: callable from an HWC uint8 array to a tensor, e.g. ``train_transforms(...)``.
        root: folder holding the idx files; default: search as described in the module docstring.
    """

    classes = FASHION_MNIST_CLASSES

    def __init__(
        self,
        split: Split = "train",
        transform: Callable[[np.ndarray], torch.Tensor] | None = None,
        *,
        root: str | os.PathLike | None = None,
    ) -> None:
        self.split = split
        self.transform = checked_transform(transform)
        images, labels = load_fashion_mnist(split, root=root)
        self.images, self.labels = shared_tensor(images), shared_tensor(labels)  # (N, 28, 28) uint8, (N,)

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        rgb = np.repeat(self.images[index].numpy()[:, :, None], 3, axis=2)  # (28, 28, 3)
        image = self.transform(rgb) if self.transform is not None else to_tensor(rgb)
        return image, int(self.labels[index])

    def __repr__(self) -> str:
        return f"{type(self).__name__}(split={self.split!r}, n={len(self)}, transform={self.transform})"


def shared_tensor(array: np.ndarray) -> torch.Tensor:
    """A read-only cached ``array`` as a tensor over its memory, which is never written: a spawned DataLoader
    worker (macOS, Windows) receives a tensor as shared memory, where an array was copied into each one (47 MB
    of training images a worker)."""
    with caught_warnings():
        warnings.filterwarnings("ignore", message="The given NumPy array is not writable")
        return torch.from_numpy(array)


def load_fashion_mnist(
    split: Split = "train", *, root: str | os.PathLike | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Read one split as read-only arrays, cached per process.

    Args:
        split: ``"train"`` or ``"test"``.
        root: folder holding the idx files; default: search (see :func:`find_fashion_mnist`).

    Returns:
        ``images`` ``(N, 28, 28)`` uint8 and ``labels`` ``(N,)`` uint8 in 0..9.
    """
    if not isinstance(split, str) or split not in _FILES:  # a list was a TypeError (unhashable)
        raise ConfigError(f"split={split!r}: Fashion-MNIST has splits 'train' and 'test'")
    folder = find_fashion_mnist(root, splits=(split,))
    images_name, labels_name = _FILES[split]
    return _read_split(_existing(folder, images_name), _existing(folder, labels_name))


def find_fashion_mnist(
    root: str | os.PathLike | None = None, *, download: bool = True, splits: Sequence[Split] = ("train", "test"),
    setting: str = "root",
) -> Path:
    """The folder holding the Fashion-MNIST idx files of ``splits`` (``.gz`` or not).

    Args:
        root: look only here (and in its ``fashion-mnist`` subfolder).
        download: with no ``root`` and no local copy, try torchvision's download.
        splits: the splits whose two files the folder must hold (a test-only copy serves ``"test"``).
        setting: what the caller calls ``root``, for the error (a data module's ``data.init_args.root``).

    Raises:
        ConfigError: the files are nowhere to be found, or ``root`` (or ``$VISATTN_DATA``, with no ``root``)
            is not a folder holding them: it is then the only place looked at.
    """
    if isinstance(splits, str) or not splits or not all(split in _FILES for split in splits):  # else a KeyError
        raise ConfigError(f"splits={splits!r}: give some of the splits 'train' and 'test', e.g. ('test',)")
    if root is not None:
        return _given_folder(path_argument(setting, root), splits, setting)
    if os.environ.get(DATA_ENV):
        return _visattn_data_folder(os.environ[DATA_ENV], splits)
    if _has_files(SYSTEM_DIR, splits):
        return SYSTEM_DIR
    if download:
        folder = _download()
        if folder is not None and _has_files(folder, splits):
            return folder
    raise ConfigError(
        f"Fashion-MNIST {'/'.join(splits)} idx files not found in {SYSTEM_DIR} (and no download): "
        "run `apt-get install dataset-fashion-mnist` or set VISATTN_DATA to the folder holding them"
    )


def read_idx(path: str | os.PathLike, *, ndim: int) -> np.ndarray:
    """Parse an idx file of unsigned bytes (optionally gzipped) into an array with ``ndim`` axes.

    Raises:
        ConfigError: unreadable file, wrong magic number, or a size that does not match.
    """
    path = Path(path)
    try:
        with (gzip.open(path) if path.suffix == ".gz" else open(path, "rb")) as f:
            data = f.read()
    except (OSError, EOFError, zlib.error) as err:
        raise ConfigError(f"{path}: cannot read ({err}); re-download or reinstall the file") from None
    # magic: two zero bytes, the type code, the number of axes; then one big-endian int32 per axis
    header_size = 4 + 4 * ndim
    if len(data) < header_size or data[:4] != bytes([0, 0, _UBYTE, ndim]):
        raise ConfigError(f"{path}: not an idx file of {ndim}-d unsigned bytes (bad magic number); re-download or "
                          "reinstall the file")
    shape = tuple(int(n) for n in np.frombuffer(data, ">i4", count=ndim, offset=4))
    if len(data) - header_size != int(np.prod(shape)):
        size = len(data) - header_size
        raise ConfigError(f"{path}: header says {shape} but holds {size} bytes (truncated?); re-download or reinstall "
                          "the file")
    return np.frombuffer(data, np.uint8, offset=header_size).reshape(shape)


@functools.lru_cache(maxsize=4)
def _read_split(images_path: Path, labels_path: Path) -> tuple[np.ndarray, np.ndarray]:
    images, labels = read_idx(images_path, ndim=3), read_idx(labels_path, ndim=1)
    if images.shape[1:] != (28, 28):
        raise ConfigError(f"{images_path}: images are {images.shape[1:]}, expected 28x28; re-download or reinstall "
                          "the file")
    if len(images) != len(labels):
        raise ConfigError(f"{labels_path}: {len(labels)} labels for {len(images)} images; re-download or reinstall "
                          "the images and labels files of one split")
    if labels.max(initial=0) >= len(FASHION_MNIST_CLASSES):
        raise ConfigError(f"{labels_path}: label {labels.max()} out of range 0..9; re-download or reinstall the file")
    return images, labels  # np.frombuffer over bytes: read-only, so the cache cannot be altered


def _given_folder(root: str | os.PathLike, splits: Sequence[Split], setting: str) -> Path:
    """``root`` (or its ``fashion-mnist`` subfolder) holding the files of ``splits``; one line naming
    ``setting`` otherwise: the system copy is not what the user pointed at."""
    folder = _folder_with_files(Path(root), splits)
    if folder is not None:
        return folder
    problem = _no_files(splits) if Path(root).is_dir() else not_a_folder(root)
    raise ConfigError(f"{setting}={root}: {problem}; give the folder holding {_wanted(splits)}, or leave {setting} "
                      f"out to read ${DATA_ENV} or {SYSTEM_DIR}")


def _visattn_data_folder(value: str, splits: Sequence[Split]) -> Path:
    """The folder of ``$VISATTN_DATA`` (itself or its ``fashion-mnist`` subfolder) holding the files
    of ``splits``; one line naming the variable otherwise, since falling back to the system copy
    would score or train on data the user did not ask for."""
    base = Path(value).expanduser()
    folder = _folder_with_files(base, splits)
    if folder is not None:
        return folder
    if not base.exists():
        problem = "names nothing that exists"
    elif not base.is_dir():
        problem = "is not a folder"
    else:
        problem = _no_files(splits)
    raise ConfigError(
        f"{DATA_ENV}={value} {problem}, and a set {DATA_ENV} is the only place Fashion-MNIST is read from: "
        f"put {_wanted(splits)} there or in its fashion-mnist subfolder (each raw or gzipped as .gz), "
        f"or unset {DATA_ENV} to use {SYSTEM_DIR} or torchvision's download"
    )


def _folder_with_files(base: Path, splits: Sequence[Split]) -> Path | None:
    return next((folder for folder in (base, base / "fashion-mnist") if _has_files(folder, splits)), None)


def _no_files(splits: Sequence[Split]) -> str:
    return f"holds no Fashion-MNIST {'/'.join(splits)} idx files (nor does its fashion-mnist subfolder)"


def _wanted(splits: Sequence[Split]) -> str:
    return " and ".join(f"{name}(.gz)" for split in splits for name in _FILES[split])


def _has_files(folder: Path, splits: Sequence[Split]) -> bool:
    return all(_existing(folder, name) for split in splits for name in _FILES[split])


def _existing(folder: Path, name: str) -> Path | None:
    for path in (folder / f"{name}.gz", folder / name):
        if path.is_file():
            return path
    return None


def _download() -> Path | None:
    cache = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "visattn"
    try:
        from torchvision.datasets import FashionMNIST as TorchvisionFashionMNIST

        TorchvisionFashionMNIST(cache, download=True)
    except Exception:  # noqa: BLE001 -- offline or a mirror down: fall through to the error
        return None
    return cache / "FashionMNIST" / "raw"
