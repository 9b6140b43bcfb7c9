"""Fashion-MNIST loading, transforms, ImageFolder skipping and the data modules."""
from __future__ import annotations

import gzip
import random
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from fixtures_images import write_image_folder
from PIL import Image
from torch.utils.data import DataLoader, Dataset

from visattn.data import (
    FASHION_MNIST_CLASSES,
    FashionMNIST,
    FashionMNISTDataModule,
    ImageFolder,
    ImageFolderDataModule,
    SkippedImageWarning,
    eval_transforms,
    find_fashion_mnist,
    load_fashion_mnist,
    split_indices,
    train_transforms,
)
from visattn.errors import ConfigError


def _fashion_mnist_absent() -> bool:
    try:
        find_fashion_mnist(download=False)
    except ConfigError:
        return True
    return False


needs_fashion_mnist = pytest.mark.skipif(
    _fashion_mnist_absent(),
    reason="Fashion-MNIST idx files absent: apt-get install dataset-fashion-mnist or set VISATTN_DATA",
)


def _write_idx(path: Path, array: np.ndarray) -> None:
    header = bytes([0, 0, 0x08, array.ndim]) + np.array(array.shape, ">i4").tobytes()
    with gzip.open(path, "wb") as f:
        f.write(header + array.astype(np.uint8).tobytes())


def _write_fake_fashion_mnist(folder: Path, n: int = 5, prefixes: tuple[str, ...] = ("train", "t10k")) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for prefix in prefixes:
        _write_idx(folder / f"{prefix}-images-idx3-ubyte.gz", np.full((n, 28, 28), 7))
        _write_idx(folder / f"{prefix}-labels-idx1-ubyte.gz", np.arange(n) % 10)


# --- Fashion-MNIST -------------------------------------------------------------------------


@needs_fashion_mnist
def test_fashion_mnist_sizes_labels_and_classes():
    train, test = FashionMNIST("train"), FashionMNIST("test")
    assert (len(train), len(test)) == (60000, 10000)
    assert np.bincount(train.labels).tolist() == [6000] * 10
    assert set(np.unique(test.labels)) == set(range(10))
    assert len(FASHION_MNIST_CLASSES) == 10 and FASHION_MNIST_CLASSES[9] == "Ankle boot"
    image, label = train[0]
    assert image.shape == (3, 28, 28) and image.dtype == torch.float32 and 0 <= label <= 9
    assert torch.equal(image[0], image[2]) and 0 <= image.min() and image.max() <= 1


def test_fashion_mnist_class_names_follow_the_label_ids_as_torchvisions_do():
    """Labels 5 and 6 swapped their names ("Shirt" printed for sandals) and every test had passed: they compared
    the names with themselves, their count or a set. The scenes' caption words are indexed by the same ids."""
    import torchvision

    from visattn.data.scenes import ITEM_WORDS

    assert FASHION_MNIST_CLASSES == tuple(torchvision.datasets.FashionMNIST.classes)
    words_and_names = zip(ITEM_WORDS, FASHION_MNIST_CLASSES, strict=True)
    assert all(word.rstrip("s") in name.lower() for word, name in words_and_names)  # "sandal" in "Sandal", ...


def test_visattn_data_takes_precedence_and_subfolder(tmp_path, monkeypatch):
    _write_fake_fashion_mnist(tmp_path / "fashion-mnist")
    monkeypatch.setenv("VISATTN_DATA", str(tmp_path))
    images, labels = load_fashion_mnist("test")
    assert images.shape == (5, 28, 28) and labels.tolist() == [0, 1, 2, 3, 4]
    assert not images.flags.writeable  # the per-process cache cannot be altered by a caller


def test_a_folder_with_only_the_test_files_serves_the_test_split(tmp_path):
    _write_fake_fashion_mnist(tmp_path, n=3, prefixes=("t10k",))
    images, labels = load_fashion_mnist("test", root=tmp_path)
    assert images.shape == (3, 28, 28) and labels.tolist() == [0, 1, 2]
    with pytest.raises(ConfigError, match=rf"^root={tmp_path}: holds no Fashion-MNIST train idx files \(nor does its "
                                          r"fashion-mnist subfolder\); give the folder holding train-images"):
        load_fashion_mnist("train", root=tmp_path)


def _visattn_data_problem(monkeypatch, value: str, split: str = "test") -> str:
    monkeypatch.setenv("VISATTN_DATA", value)
    with pytest.raises(ConfigError) as info:
        load_fashion_mnist(split)
    message = str(info.value)
    assert f"VISATTN_DATA={value} " in message and "unset VISATTN_DATA" in message and "\n" not in message
    return message


def test_a_visattn_data_folder_that_is_not_there_is_named_not_skipped(tmp_path, monkeypatch):
    message = _visattn_data_problem(monkeypatch, str(tmp_path / "nonexist"))
    assert "names nothing that exists" in message
    assert "t10k-images-idx3-ubyte(.gz) and t10k-labels-idx1-ubyte(.gz)" in message


def test_a_visattn_data_file_is_named_not_skipped(tmp_path, monkeypatch):
    (tmp_path / "fmnist.tar").write_bytes(b"not a folder")
    assert "is not a folder" in _visattn_data_problem(monkeypatch, str(tmp_path / "fmnist.tar"))


def test_a_visattn_data_folder_without_the_splits_files_is_named_not_skipped(tmp_path, monkeypatch):
    (tmp_path / "t10k-images-idx3-ubyte.gz").write_bytes(b"")  # the labels are missing
    message = _visattn_data_problem(monkeypatch, str(tmp_path))
    assert "holds no Fashion-MNIST test idx files" in message


def test_a_visattn_data_folder_with_only_the_test_files_is_not_mixed_with_the_system_train_split(tmp_path, monkeypatch):
    _write_fake_fashion_mnist(tmp_path, n=3, prefixes=("t10k",))
    monkeypatch.setenv("VISATTN_DATA", str(tmp_path))
    images, labels = load_fashion_mnist("test")
    assert images.shape == (3, 28, 28) and labels.tolist() == [0, 1, 2]
    message = _visattn_data_problem(monkeypatch, str(tmp_path), split="train")
    assert "train-images-idx3-ubyte(.gz) and train-labels-idx1-ubyte(.gz)" in message
    with pytest.raises(ConfigError, match=f"VISATTN_DATA={tmp_path} "):
        FashionMNIST("train")


def test_a_valid_visattn_data_folder_is_used_instead_of_the_system_copy(tmp_path, monkeypatch):
    _write_fake_fashion_mnist(tmp_path, n=4)
    monkeypatch.setenv("VISATTN_DATA", str(tmp_path))
    assert find_fashion_mnist(download=False) == tmp_path
    train, test = FashionMNIST("train"), FashionMNIST("test")
    assert (len(train), len(test)) == (4, 4) and test.labels.tolist() == [0, 1, 2, 3]


def test_an_explicit_root_is_the_only_place_looked_at(tmp_path, monkeypatch):
    _write_fake_fashion_mnist(tmp_path / "env", n=4)
    monkeypatch.setenv("VISATTN_DATA", str(tmp_path / "env"))
    for root, problem in ((tmp_path / "nonexist", "no such folder"),
                          (tmp_path / "env" / "train-images-idx3-ubyte.gz", "a file, not a folder")):
        with pytest.raises(ConfigError, match=f"^root={root}: {problem}; give the folder holding") as info:
            load_fashion_mnist("test", root=root)
        assert "\n" not in str(info.value)


def test_corrupt_idx_file_is_named(tmp_path):
    _write_fake_fashion_mnist(tmp_path)
    (tmp_path / "train-labels-idx1-ubyte.gz").write_bytes(gzip.compress(b"\x00\x00\x08\x03rubbish"))
    with pytest.raises(ConfigError) as info:
        load_fashion_mnist("train", root=tmp_path)
    assert str(info.value) == (f"{tmp_path / 'train-labels-idx1-ubyte.gz'}: not an idx file of 1-d unsigned bytes "
                               "(bad magic number); re-download or reinstall the file")
    (tmp_path / "t10k-images-idx3-ubyte.gz").write_bytes(b"not gzip at all")
    with pytest.raises(ConfigError, match="t10k-images-idx3-ubyte.gz: cannot read"):
        load_fashion_mnist("test", root=tmp_path)


def test_missing_files_say_where_and_how_to_fix(tmp_path, monkeypatch):
    import visattn.data.fashion_mnist as fashion_mnist

    monkeypatch.delenv("VISATTN_DATA", raising=False)
    monkeypatch.setattr(fashion_mnist, "SYSTEM_DIR", tmp_path / "system")
    monkeypatch.setattr(fashion_mnist, "_download", lambda: None)
    with pytest.raises(ConfigError, match="apt-get install dataset-fashion-mnist") as info:
        FashionMNIST("train")
    assert str(tmp_path / "system") in str(info.value) and "\n" not in str(info.value)


def test_a_data_module_root_that_is_not_there_is_named_by_its_setting(tmp_path):
    """It said "idx files not found in ...: run `apt-get install dataset-fashion-mnist` or set VISATTN_DATA",
    which neither said the folder was missing nor named the setting the user gave."""
    data = FashionMNISTDataModule(root=str(tmp_path / "nodata"), num_workers=0)
    with pytest.raises(ConfigError) as info:
        data.prepare_data()
    assert str(info.value) == (f"data.init_args.root={tmp_path / 'nodata'}: no such folder; give the folder holding "
                               "train-images-idx3-ubyte(.gz) and train-labels-idx1-ubyte(.gz), or leave "
                               "data.init_args.root out to read $VISATTN_DATA or /usr/share/datasets/fashion-mnist")


@pytest.mark.parametrize("stage, needed", [("fit", "train"), ("validate", "train"), ("test", "t10k"),
                                           ("predict", "t10k")])
def test_a_data_module_prepares_only_the_split_its_stage_reads(tmp_path, stage, needed):
    """A fit, which carves validation from the train split, had refused to start without the t10k files
    (a DDP audit's VISATTN_DATA held only the train files)."""
    from types import SimpleNamespace

    data = FashionMNISTDataModule(root=str(tmp_path), num_workers=0)
    data.trainer = SimpleNamespace(state=SimpleNamespace(fn=stage))
    other = "t10k" if needed == "train" else "train"
    _write_fake_fashion_mnist(tmp_path, prefixes=(other,))
    with pytest.raises(ConfigError, match=rf"holds no Fashion-MNIST {'test' if needed == 't10k' else 'train'} idx"):
        data.prepare_data()
    _write_fake_fashion_mnist(tmp_path, prefixes=(needed,))
    data.prepare_data()


# --- transforms ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("make", "recipe", "size", "source"),
    [
        (train_transforms, "small", 28, (28, 28)),
        (train_transforms, "photo", (3, 32, 32), (50, 70)),
        (eval_transforms, "small", 32, (28, 28)),
        (eval_transforms, "photo", (32, 48), (50, 70)),
    ],
)
def test_transform_shape_dtype(make, recipe, size, source):
    image = np.random.default_rng(0).integers(0, 256, (*source, 3), dtype=np.uint8)
    out = make(size, recipe=recipe)(image)
    height, width = (size, size) if isinstance(size, int) else size[-2:]
    assert out.shape == (3, height, width) and out.dtype == torch.float32


def test_eval_transform_normalises_per_channel():
    mean, std = (0.5, 0.25, 0.0), (0.5, 0.25, 2.0)
    out = eval_transforms(8, mean, std)(np.full((16, 16, 3), 51, np.uint8))  # 51 / 255 = 0.2
    expected = [(0.2 - m) / s for m, s in zip(mean, std)]
    torch.testing.assert_close(out.mean(dim=(1, 2)), torch.tensor(expected), atol=1e-5, rtol=0)


@pytest.mark.parametrize(("input_size", "crop_pct", "interpolation"),
                         [((3, 224, 160), 0.875, "bicubic"), ((3, 96, 128), 0.9, "bilinear")])
@pytest.mark.parametrize("source", [(301, 247), (247, 301), (123, 457)])  # portrait, landscape, long
def test_a_non_square_photo_evaluation_keeps_the_aspect_ratio_as_timm(input_size, crop_pct, interpolation, source):
    """timm resizes a photo to cover floor((H, W) / crop_pct) keeping its aspect ratio (ResizeKeepRatio), then
    centre-crops; visattn squashed the photo to exactly that size, so timm's non-square weights saw stretched
    images. The small recipe still squashes the whole image, as timm's "squash" crop mode does."""
    from PIL import Image
    from timm.data import create_transform

    image = np.random.default_rng(0).integers(0, 256, (*source, 3), dtype=np.uint8)
    mean, std = (0.5, 0.4, 0.3), (0.2, 0.3, 0.4)
    for recipe, timm_crop_pct, crop_mode in [("photo", crop_pct, "center"), ("small", 1.0, "squash")]:
        by_timm = create_transform(input_size, interpolation=interpolation, crop_pct=timm_crop_pct,
                                   crop_mode=crop_mode, mean=mean, std=std)(Image.fromarray(image))
        ours = eval_transforms(input_size, mean, std, recipe=recipe, crop_pct=crop_pct, interpolation=interpolation)
        torch.testing.assert_close(ours(image), by_timm, rtol=0, atol=1e-5)


@pytest.mark.parametrize("interpolation", ["bilinear", "bicubic"])
@pytest.mark.parametrize("shape", [(375, 500), (60, 300), (28, 28), (20, 90)])
def test_the_small_recipe_resizes_training_images_as_evaluation_does(shape, interpolation):
    """Training resized with OpenCV's linear filter (4 pixels whatever the scale) and evaluation with PIL's,
    which averages what a shrunk pixel covers: a 375x500 image at 64 px differed by 0.14 on average. OpenCV's
    area filter then averaged only where both sides shrink: rows 3 px apart in a 60x300 image became moire."""
    rng = np.random.default_rng(0)
    ramp = np.linspace(0, 255, shape[1])[None, :, None] + rng.normal(0, 40, (*shape, 3))
    ramp[::3] = 255  # fine rows
    image = np.clip(ramp, 0, 255).astype(np.uint8)
    trained = train_transforms(64, recipe="small", padding=0, hflip=False, interpolation=interpolation)(image)
    evaluated = eval_transforms(64, recipe="small", interpolation=interpolation)(image)
    torch.testing.assert_close(trained, evaluated, rtol=0, atol=0)


@pytest.mark.parametrize("interpolation", ["bilinear", "bicubic"])
@pytest.mark.parametrize("shape", [(60, 300), (375, 500), (40, 30)])
def test_the_photo_recipe_resizes_its_crop_as_timms_training_transform_does(shape, interpolation):
    """Its crop was resized by OpenCV's area filter whenever one side shrank: no averaging along a side
    that shrinks unless both do, and steps along one that grows (a 40x30 crop at 64 px). A crop of the
    whole image (scale 1, the image's ratio) leaves nothing random but the filter."""
    from PIL import Image
    from timm.data import create_transform

    image = np.random.default_rng(0).integers(0, 256, (*shape, 3), dtype=np.uint8)
    ratio = shape[1] / shape[0]
    ours = train_transforms(64, scale=(1.0, 1.0), ratio=(ratio, ratio), hflip=False, interpolation=interpolation)
    by_timm = create_transform(64, is_training=True, scale=(1.0, 1.0), ratio=(ratio, ratio), hflip=0.0,
                               color_jitter=None, interpolation=interpolation)(Image.fromarray(image))
    torch.testing.assert_close(ours(image), by_timm, rtol=0, atol=1e-6)


def test_an_image_folder_trains_with_the_filter_it_evaluates_with(tmp_path):
    """`interpolation: bicubic` had set evaluation's filter only: training resized bilinear. The small recipe's
    training image is the evaluation image, padded, shifted by up to 4 px and maybe flipped."""
    image = np.random.default_rng(0).integers(0, 256, (40, 50, 3), dtype=np.uint8)
    for name in ("cat", "dog"):
        (tmp_path / name).mkdir()
        Image.fromarray(image).save(tmp_path / name / "a.png")
    data = ImageFolderDataModule(tmp_path, img_size=32, recipe="small", interpolation="bicubic")
    evaluated, train = data.eval_transform()(image), data.train_transform()
    for seed in range(4):
        random.seed(seed)
        np.random.seed(seed)
        trained = train(image)
        views = [view[:, max(dy, 0):32 + min(dy, 0), max(dx, 0):32 + min(dx, 0)]
                 for view in (evaluated, evaluated.flip(-1)) for dy in range(-4, 5) for dx in range(-4, 5)]
        shifted = [trained[:, max(-dy, 0):32 + min(-dy, 0), max(-dx, 0):32 + min(-dx, 0)]
                   for _ in range(2) for dy in range(-4, 5) for dx in range(-4, 5)]
        assert any(torch.allclose(a, b, atol=1e-6) for a, b in zip(views, shifted))


def test_unknown_recipe():
    with pytest.raises(ConfigError, match="recipe='huge'"):
        train_transforms(28, recipe="huge")


def test_augmentation_repeats_under_a_torch_seed():
    image = np.random.default_rng(0).integers(0, 256, (40, 40, 3), dtype=np.uint8)
    runs = []
    for _ in range(2):
        torch.manual_seed(123)
        transform = train_transforms(24)
        runs.append(torch.stack([transform(image) for _ in range(4)]))
    torch.testing.assert_close(runs[0], runs[1])
    assert not torch.equal(runs[0][0], runs[0][1])  # still random from call to call


class _SameImage(Dataset):
    def __init__(self) -> None:
        self.image = np.random.default_rng(0).integers(0, 256, (40, 40, 3), dtype=np.uint8)
        self.transform = train_transforms(24)

    def __len__(self) -> int:
        return 2

    def __getitem__(self, index: int) -> torch.Tensor:
        return self.transform(self.image)


def test_dataloader_workers_draw_different_augmentations():
    first, second = DataLoader(_SameImage(), batch_size=1, num_workers=2)  # one sample per worker
    assert not torch.equal(first, second)


def test_a_single_process_loader_augments_each_epoch_anew_from_the_runs_seed():
    """Loading in the main process (num_workers 0), every epoch had drawn the same crops and flips, whatever the
    run's seed: the augmentation of a sample was one draw for the whole run."""
    from visattn.data.datamodules import EpochSeededLoader

    loader = EpochSeededLoader(_SameImage(), batch_size=2, shuffle=False, num_workers=0)

    def epochs(seed: int) -> list[torch.Tensor]:
        torch.manual_seed(seed)
        return [next(iter(loader)) for _ in range(2)]

    first, second = epochs(0)
    assert not torch.equal(first, second)  # each epoch draws anew
    assert all(map(torch.equal, epochs(0), (first, second)))  # the run's seed repeats them
    assert not torch.equal(epochs(1)[0], first)  # and another seed draws others


# --- ImageFolder ---------------------------------------------------------------------------


def test_image_folder_classes_and_samples(tmp_path):
    root = write_image_folder(tmp_path, classes=("b_dog", "a_cat"), per_class=2)
    folder = ImageFolder(root)
    assert folder.classes == ["a_cat", "b_dog"] and len(folder) == 4
    image, label = folder[0]
    assert image.shape == (3, 32, 24) and label == 0  # the fixture's size is (width, height)
    # labels follow the sorted names: "a_cat" was written second, so it is filled with 40
    assert abs(float(image.mean()) - 40 / 255) < 1e-6
    assert float(folder[3][0].mean()) == 0 and folder[3][1] == 1


def test_image_folder_skips_and_counts_broken_file(tmp_path):
    root = write_image_folder(tmp_path, per_class=2, broken=("cat",))
    folder = ImageFolder(root, eval_transforms(16))
    broken = [i for i, (path, _) in enumerate(folder.samples) if path.name == "broken.jpg"]
    with pytest.warns(SkippedImageWarning, match="broken.jpg"):
        image, label = folder[broken[0]]
    assert image.shape == (3, 16, 16)
    assert folder.num_skipped == 1 and folder.skipped == [root / "cat" / "broken.jpg"]


def test_image_folder_skips_inside_dataloader_workers(tmp_path):
    root = write_image_folder(tmp_path, per_class=3, broken=("cat", "dog"))
    folder = ImageFolder(root, eval_transforms(16))
    batches = list(DataLoader(folder, batch_size=2, num_workers=2))  # workers warn on their own stderr
    assert sum(len(labels) for _, labels in batches) == len(folder) == 8
    assert folder.num_skipped == 2  # marks made in the worker processes reach this process


@pytest.mark.parametrize("layout", ["missing", "empty", "no_class_folders", "no_images"])
def test_image_folder_bad_layouts_name_the_folder(tmp_path, layout):
    root = tmp_path / "photos"
    if layout != "missing":
        root.mkdir()
    if layout == "no_class_folders":
        (root / "loose.png").write_bytes(b"")
    if layout == "no_images":
        (root / "cat").mkdir()
        (root / "cat" / "notes.txt").write_text("no images here")
    with pytest.raises(ConfigError, match="photos"):
        ImageFolder(root)


def test_image_folder_with_training_classes_rejects_unknown_folder(tmp_path):
    root = write_image_folder(tmp_path, classes=("cat", "dog", "fox"), per_class=1)
    with pytest.raises(ConfigError, match="fox"):
        ImageFolder(root, classes=["cat", "dog"])
    assert len(ImageFolder(root, classes=["cat", "dog", "fox", "owl"])) == 3


# --- data modules --------------------------------------------------------------------------


@needs_fashion_mnist
def test_fashion_mnist_splits_are_disjoint_and_deterministic():
    def split(seed: int) -> tuple[set[int], set[int]]:
        data = FashionMNISTDataModule(seed=seed, num_workers=0)
        data.setup("fit")
        return set(data.datasets["train"].indices), set(data.datasets["val"].indices)

    train, val = split(0)
    assert len(val) == 6000 and len(train) == 54000 and not train & val
    assert (train, val) == split(0)
    assert split(1)[1] != val


@needs_fashion_mnist
def test_fashion_mnist_data_module_batches_and_limit():
    data = FashionMNISTDataModule(batch_size=16, num_workers=0, limit=40)
    assert data.num_classes == 10 and data.class_names == list(FASHION_MNIST_CLASSES)
    assert eval_transforms(**data.preprocessing)(np.zeros((28, 28, 3), np.uint8)).shape == (3, 28, 28)
    images, labels = next(iter(data.train_dataloader()))
    assert images.shape == (16, 3, 28, 28) and labels.dtype == torch.int64
    assert len(data.datasets["train"]) == len(data.datasets["val"]) == 40
    assert len(data.test_dataloader().dataset) == 40
    assert data.test_dataloader().dataset.dataset.split == "test"


@needs_fashion_mnist
def test_validation_and_test_loaders_keep_every_sample():
    """The last, partial batch is dropped in training only (BatchNorm statistics); dropped from validation and test,
    the metrics would be scored on fewer samples than the split holds, without a word."""
    data = FashionMNISTDataModule(batch_size=7, num_workers=0, limit=10)  # 10 samples a split: batches of 7 and 3
    data.setup()
    assert sum(len(labels) for _, labels in data.train_dataloader()) == 7 and data.train_dataloader().drop_last
    for split in ("val", "test"):
        loader = getattr(data, f"{split}_dataloader")()
        assert sum(len(labels) for _, labels in loader) == len(data.datasets[split]) == 10, split
        assert not loader.drop_last, split


@needs_fashion_mnist
def test_fashion_mnist_trains_on_augmented_images_and_validates_on_evaluation_ones():
    """Each split's transform belongs to it: swapped, augment did nothing for training and validation was
    randomly cropped and flipped (noisy val metrics)."""
    data = FashionMNISTDataModule(num_workers=0, limit=8, augment=True, hflip=True)
    data.setup("fit")
    images, _ = load_fashion_mnist("train")
    train, val, evaluate = data.datasets["train"], data.datasets["val"], data.eval_transform()

    def evaluated(subset, i: int) -> torch.Tensor:
        return evaluate(np.repeat(images[subset.indices[i]][:, :, None], 3, axis=2))

    torch.manual_seed(0)
    assert all(torch.equal(val[i][0], evaluated(val, i)) for i in range(len(val)))
    assert not all(torch.equal(train[i][0], evaluated(train, i)) for i in range(len(train)))


def test_data_module_option_checks():
    # named by their config keys, as batch_size and num_workers are
    with pytest.raises(ConfigError, match=r"^data.init_args.val_fraction=1.0: give the share of training images held "
                                          r"out for validation, from 0 up to \(not including\) 1, e.g. 0.1$"):
        FashionMNISTDataModule(val_fraction=1.0)
    with pytest.raises(ConfigError, match="^data.init_args.limit=0: give a whole number of samples, 1 or more, or "
                                          "null for all$"):
        FashionMNISTDataModule(limit=0)


@pytest.mark.parametrize("setting, message", [
    # from Python, which checks no types as the CLI's parser does: "no" had augmented, and the rest were TypeErrors
    # deep inside (a comparison, numpy's seeding, a slice) or, for 8.5, the DataLoader's
    ({"augment": "no"}, "augment='no': FashionMNISTDataModule takes True or False, not a str"),
    ({"val_fraction": "0.1"}, "val_fraction='0.1': FashionMNISTDataModule takes a number, not a str"),
    ({"batch_size": "8"}, "batch_size='8': give 1 or more samples per batch"),
    ({"batch_size": 8.5}, "batch_size=8.5: give 1 or more samples per batch"),
    ({"num_workers": "0"}, "num_workers='0': give 0 (load in the main process) to"),
    ({"seed": -1}, "seed=-1: give a whole number of 0 or more"),
    ({"limit": 2.5}, "limit=2.5: give a whole number of samples, 1 or more, or null for all"),
    ({"recipe": "big"}, "recipe='big': unknown transform recipe (use 'photo' or 'small')"),  # was refused at setup
])
def test_a_data_module_setting_of_the_wrong_type_is_one_line_naming_it(setting, message):
    with pytest.raises(ConfigError, match=f"^{re.escape('data.init_args.' + message)}"):
        FashionMNISTDataModule(**{"num_workers": 0, **setting})


@pytest.mark.parametrize("module, settings, message", [
    # each had been refused by the dataset the value reached, naming that dataset's argument: "annotations=5" for
    # val_annotations, "images_dir=3" for val_images_dir, "root=4" for val_root, and without the data module's key
    ("CocoDetectionDataModule", {"train_annotations": 5, "images_dir": "x"}, "train_annotations=5: give a file path"),
    ("CocoDetectionDataModule", {"train_annotations": "a.json", "images_dir": "x", "val_images_dir": 3},
     "val_images_dir=3: give a folder path"),
    ("KarpathyCaptionDataModule", {"split_json": "s.json", "images_dir": "x", "test_annotations": 2},
     "test_annotations=2: give a file path"),
    ("KarpathyCaptionDataModule", {"split_json": None, "images_dir": ["x"], "train_annotations": "a.json"},
     "images_dir=['x']: give a folder path"),
    ("ImageFolderDataModule", {"root": "r", "val_root": 4}, "val_root=4: give a folder path"),
    ("FashionMNISTDataModule", {"root": 1}, "root=1: give a folder path"),
    ("FashionScenesCaptionDataModule", {"root": 2}, "root=2: give a folder path"),
    ("FashionScenesDetectionDataModule", {"root": 2}, "root=2: give a folder path"),
])
def test_a_path_setting_that_is_no_path_is_named_as_the_data_modules_setting(module, settings, message):
    import visattn.data

    with pytest.raises(ConfigError, match=f"^{re.escape('data.init_args.' + message)}"):
        getattr(visattn.data, module)(**settings)


def test_one_mean_and_std_for_all_channels_is_recorded_as_a_list():
    """0.5 was a TypeError ("'float' object is not iterable"), and "0.5" was refused spelt ['0', '.', '5']."""
    data = FashionMNISTDataModule(num_workers=0, mean=0.5, std=0.25)
    assert (data.preprocessing["mean"], data.preprocessing["std"]) == ([0.5], [0.25])
    with pytest.raises(ConfigError, match=re.escape("data.init_args.mean=['0.5']: give 3 finite numbers")):
        FashionMNISTDataModule(num_workers=0, mean="0.5")


def test_a_mean_and_std_given_as_numpy_arrays_are_recorded_as_lists():
    """They had been taken (as list(mean)) before one number was; then refused as mean=[array([0.5])]."""
    data = FashionMNISTDataModule(num_workers=0, mean=np.array([0.5]), std=np.array([0.25]))
    assert (data.preprocessing["mean"], data.preprocessing["std"]) == ([0.5], [0.25])


@pytest.mark.parametrize("input_size", ["28", 28.5, True, (3, 0, 28)])
def test_an_input_size_that_is_no_whole_number_of_pixels_is_one_line(input_size):
    """"28" was a TypeError, 28.5 "'float' object is not iterable", and True built a 1 x 1 pixel transform."""
    for transforms in (eval_transforms, train_transforms):
        with pytest.raises(ConfigError, match=f"^input_size={re.escape(repr(input_size))}: expected S, \\(H, W\\) or"):
            transforms(input_size)


@pytest.mark.parametrize("call, message", [
    (lambda: split_indices("10", 0.1, 0), "n='10': give the number of samples, a whole number of 0 or more"),
    (lambda: split_indices(10, 0.1, -1), "seed=-1: give a whole number of 0 or more"),
    (lambda: split_indices(10, 0.1, 0, labels=[0, 1]), "labels=[0, 1]: give one label per sample, 10, not 2"),
])
def test_split_indices_arguments_numpy_cannot_use_are_one_line(call, message):
    """numpy's "axis 0 is out of bounds" and "expected non-negative integer", and an IndexError, named none."""
    with pytest.raises(ConfigError, match=f"^{re.escape(message)}$"):
        call()


@pytest.mark.parametrize("kwargs, message", [
    ({"classes": "cat"}, "classes='cat': give the class folder names"),  # had been the classes c, a and t
    ({"classes": [0, 1]}, "classes=[0, 1]: give the class folder names"),  # a TypeError in unicodedata
    ({"max_pixels": "1000"}, "max_pixels='1000': give the most pixels"),  # a TypeError at the first image
    ({"transform": "eval"}, "transform='eval': give a callable"),  # a TypeError at the first image
    ({"root": 5}, "root=5: give a folder path (a str or pathlib.Path)"),  # pathlib's TypeError
])
def test_an_image_folder_argument_of_the_wrong_type_is_one_line(tmp_path, kwargs, message):
    root = write_image_folder(tmp_path / "train")
    with pytest.raises(ConfigError, match=f"^{re.escape(message)}"):
        ImageFolder(**{"root": root, **kwargs})


@pytest.mark.parametrize("given", [np.array(["dog", "cat"]), (name for name in ["dog", "cat"]), ("dog", "cat")])
def test_image_folder_classes_given_as_any_sequence_of_names_are_its_label_order(tmp_path, given):
    """A numpy array of names was "truth value of an array ... is ambiguous", and a generator, read twice by the
    check, gave no class: "class folders ['cat', 'dog'] are not among the classes ()"."""
    root = write_image_folder(tmp_path / "train")
    folder = ImageFolder(root, classes=given)
    assert folder.classes == ["dog", "cat"] and folder.class_to_idx == {"dog": 0, "cat": 1}


def test_decode_image_refuses_a_max_pixels_that_is_no_count(tmp_path):
    """"1000" was a TypeError in Pillow's limit; 0 refused each image as a decompression bomb."""
    from visattn.data import decode_image

    path = write_image_folder(tmp_path / "train") / "cat" / "0.png"
    for max_pixels in ("1000", 0):
        with pytest.raises(ConfigError, match=f"^max_pixels={re.escape(repr(max_pixels))}: give the most pixels"):
            decode_image(path, max_pixels=max_pixels)


def test_fashion_mnist_splits_that_are_no_split_names_are_one_line():
    """A list split was a TypeError (unhashable), and splits "test" a KeyError 't'."""
    with pytest.raises(ConfigError, match=r"^split=\['test'\]: Fashion-MNIST has splits 'train' and 'test'$"):
        load_fashion_mnist(["test"])
    with pytest.raises(ConfigError, match=r"^splits='test': give some of the splits 'train' and 'test'"):
        find_fashion_mnist(splits="test")
    with pytest.raises(ConfigError, match=r"^root=5: give a folder path"):
        FashionMNIST("test", root=5)


def test_image_folder_data_module(tmp_path):
    root = write_image_folder(tmp_path / "train", classes=("cat", "dog", "fox"), per_class=4)
    data = ImageFolderDataModule(str(root), img_size=16, batch_size=4, num_workers=0, val_fraction=0.25)
    assert data.num_classes == 3 and data.class_names == ["cat", "dog", "fox"]
    data.setup("fit")
    train, val = data.datasets["train"], data.datasets["val"]
    assert len(train) == 9 and len(val) == 3 and not set(train.indices) & set(val.indices)
    images, _ = next(iter(data.train_dataloader()))
    assert images.shape == (4, 3, 16, 16)
    with pytest.raises(ConfigError, match="test_root"):
        data.test_dataloader()


@pytest.mark.filterwarnings("ignore::UserWarning")  # the skipped file's warning; num_skipped counts it
def test_an_image_folders_max_pixels_reaches_its_datasets(tmp_path):
    """Photos over the default 64 Mi pixels (a 108 MP phone photo) could not be trained on: the data module had
    no setting for the limit its datasets apply."""
    root = write_image_folder(tmp_path / "train", per_class=3)  # 24x32 = 768 pixels each
    Image.new("RGB", (40, 40)).save(root / "cat" / "large.png")
    for max_pixels, skipped in [(1000, 1), (1600, 0)]:
        data = ImageFolderDataModule(str(root), val_root=str(root), img_size=16, batch_size=8, num_workers=0,
                                     max_pixels=max_pixels)
        data.setup("fit")
        assert sum(len(images) for images, _ in data.val_dataloader()) == 7 - skipped
        assert data.num_skipped == skipped
    with pytest.raises(ConfigError, match=r"^data.init_args.max_pixels=0: give the most pixels \(width x height\) "):
        ImageFolderDataModule(str(root), max_pixels=0)


def test_an_image_folder_of_split_folders_is_one_line_naming_the_roots_to_give(tmp_path):
    """A root holding train/ and test/ (the layout `evaluate --dataset imagefolder:DIR` reads) had trained a
    two-class "test vs train" model without a word (from a fine-tuning journey audit)."""
    for split in ("train", "test"):
        write_image_folder(tmp_path / "photos" / split)
    with pytest.raises(ConfigError, match=rf"^data.init_args.root {tmp_path}/photos: its folders are the splits train, "
                                          rf"test, not classes; give root {tmp_path}/photos/train, test_root "
                                          rf"{tmp_path}/photos/test$"):
        ImageFolderDataModule(str(tmp_path / "photos"))
    data = ImageFolderDataModule(str(tmp_path / "photos" / "train"), test_root=str(tmp_path / "photos" / "test"))
    assert data.class_names == ["cat", "dog"]
    write_image_folder(tmp_path / "photos" / "bird")  # a class beside folders named like splits: all classes
    assert ImageFolderDataModule(str(tmp_path / "photos")).class_names == ["bird", "test", "train"]


def test_class_folders_outside_the_classes_are_named_in_a_bounded_line(tmp_path):
    """An ImageNet tree read with a small model's labels named every folder and every label."""
    root = write_image_folder(tmp_path / "photos", classes=tuple(f"f{k:02}" for k in range(12)), per_class=1)
    with pytest.raises(ConfigError) as info:
        ImageFolder(root, classes=[f"c{k:02}" for k in range(12)])
    assert str(info.value) == (f"{root}: class folders ['f00', 'f01', 'f02', 'f03', 'f04', 'f05', ...] are not among "
                               "the classes (c00, c01, c02, c03, c04, c05, c06, c07, c08, c09 (+2 more)); rename or "
                               "move them, or train a model that has those classes")


def test_testing_an_image_folder_without_a_test_root_names_the_config_key(tmp_path):
    data = ImageFolderDataModule(str(write_image_folder(tmp_path / "photos")), img_size=8, num_workers=0)
    with pytest.raises(ConfigError, match=r"^ImageFolderDataModule: set data\.init_args\.test_root to test or predict "
                                          r"\(the test split is never carved from root\)$"):
        data.setup("test")


def test_image_folder_data_module_separate_roots(tmp_path):
    root = write_image_folder(tmp_path / "train", per_class=3)
    val_root = write_image_folder(tmp_path / "val", classes=("dog",), per_class=2)
    data = ImageFolderDataModule(str(root), val_root=str(val_root), test_root=str(root), num_workers=0)
    data.setup()
    assert len(data.datasets["train"]) == 6 and len(data.datasets["test"]) == 6
    assert data.datasets["val"].targets == [1, 1]  # "dog" keeps its training label
    with pytest.raises(ConfigError, match="missing"):
        ImageFolderDataModule(str(tmp_path / "missing"))


def test_a_classifiers_transform_takes_gray_arrays_and_names_other_layouts():
    from visattn.inference.classifier import load_classifier

    classifier = load_classifier("se_resnet20_cifar")
    gray = np.full((28, 28), 128, np.uint8)
    for image in (gray, gray[:, :, None]):
        torch.testing.assert_close(classifier.transform()(image), classifier.transform()(np.repeat(gray[:, :, None], 3, 2)))
    assert classifier.predict(classifier.transform()(gray)[None]).shape == (1, 10)
    with pytest.raises(ConfigError, match=r"shape \(28, 28, 4\), not \(H, W, 3\) RGB"):
        classifier.transform()(np.zeros((28, 28, 4), np.uint8))


def test_image_folder_refuses_classes_it_cannot_learn(tmp_path):
    one = write_image_folder(tmp_path / "one", classes=("cat",), per_class=2)
    with pytest.raises(ConfigError, match=r"one class folder \(cat\); a classifier needs two or more"):
        ImageFolder(one)
    root = write_image_folder(tmp_path / "three", classes=("cat", "dog"), per_class=2)
    (root / "fox").mkdir()
    with pytest.raises(ConfigError, match=r"class folders \['fox'\] hold no image files"):
        ImageFolder(root)
    assert len(ImageFolder(root, classes=["cat", "dog", "fox"])) == 4  # given classes: an empty folder is fine


def test_image_folder_datamodule_refuses_classes_it_cannot_learn(tmp_path):
    """The promise holds through `visattn fit`: no silent empty class, and one class is named before a model is built."""
    one = write_image_folder(tmp_path / "one", classes=("cat",), per_class=2)
    with pytest.raises(ConfigError, match=r"one class folder \(cat\); a classifier needs two or more"):
        ImageFolderDataModule(str(one), num_workers=0)
    root = write_image_folder(tmp_path / "three", classes=("cat", "dog"), per_class=4)
    (root / "fox").mkdir()
    data = ImageFolderDataModule(str(root), img_size=16, num_workers=0, val_fraction=0.25)
    with pytest.raises(ConfigError, match=r"class folders \['fox'\] hold no image files"):
        data.setup("fit")


def test_evaluation_leaves_broken_files_out_and_scores_each_image_once(tmp_path):
    """A substitute image would be scored twice; validation, test and `evaluate` leave broken files out."""
    import lightning.pytorch as pl

    from visattn.inference.classifier import load_classifier
    from visattn.inference.classifier_scoring import evaluate_classifier
    from visattn.tasks.classification import ImageClassifier

    root = write_image_folder(tmp_path / "photos", per_class=3, broken=("cat", "dog"))  # 6 good files of 8
    data = ImageFolderDataModule(str(root), test_root=str(root), img_size=28, batch_size=1, num_workers=0,
                                 augment=False)
    with pytest.warns(SkippedImageWarning):
        batches = list(data.test_dataloader())
    assert sum(batch is None for batch in batches) == 2  # each broken file is a batch of its own
    assert sorted(int(labels) for _, labels in filter(None, batches)) == [0, 0, 0, 1, 1, 1]
    train_labels = [int(label) for _, labels in data.train_dataloader() for label in labels]
    assert len(train_labels) == len(data.datasets["train"])  # training still replaces them: batches keep their size

    trainer = pl.Trainer(accelerator="cpu", logger=False, enable_progress_bar=False, enable_model_summary=False)
    task = ImageClassifier("cbam_resnet20_cifar", num_classes=2, model_kwargs={"layers": (1, 1, 1), "widths": (8, 8, 8)})
    trainer.test(task, datamodule=data)  # the all-broken (None) batches reach test_step, which passes them over

    classifier = load_classifier("se_resnet20_cifar")
    folder = ImageFolder(root, classifier.transform())
    scored = evaluate_classifier(classifier, folder, batch_size=4)
    assert (scored["n"], scored["skipped"]) == (6, 2)  # those left out are counted (they were in no field)
    scored = evaluate_classifier(classifier, ImageFolder(root, classifier.transform()), batch_size=4, num_workers=2)
    assert (scored["n"], scored["skipped"]) == (6, 2)  # also when workers decode


def _gray_data_module(tmp_path: Path, per_class: int) -> ImageFolderDataModule:
    """Half of ``cat`` and ``dog`` carved for validation; the file at folder position ``p`` is gray ``10 * p``,
    so :func:`_position_read` tells which file a sample came from."""
    from PIL import Image

    root = tmp_path / "photos"
    for k, name in enumerate(("cat", "dog")):
        (root / name).mkdir(parents=True)
        for i in range(per_class):
            Image.new("RGB", (8, 8), (10 * (k * per_class + i),) * 3).save(root / name / f"{i}.png")
    data = ImageFolderDataModule(str(root), img_size=8, recipe="small", mean=(0.0,) * 3, std=(1.0,) * 3,
                                 augment=False, val_fraction=0.5, batch_size=2, num_workers=0)
    data.setup("fit")
    return data


def _position_read(sample: tuple[torch.Tensor, int]) -> int:
    return round(float(sample[0].mean()) * 255 / 10)


def test_a_broken_training_image_is_replaced_from_the_training_split_only(tmp_path):
    """The next file of the whole folder was the substitute: training read validation images."""
    data = _gray_data_module(tmp_path, per_class=6)
    train, val = data.datasets["train"], data.datasets["val"]
    broken = next(j for j in train.indices if j + 1 in val.indices)  # the folder's next file is a validation image
    train.dataset.paths[broken].write_bytes(b"not an image")
    with pytest.warns(SkippedImageWarning):
        read = {_position_read(train[k]) for k in range(len(train))}
    assert read <= set(train.indices) - {broken}


def test_a_broken_file_is_warned_about_once_over_the_carved_splits(tmp_path, recwarn):
    """Each split had its own marks: a training substitute search and validation both read a broken validation file."""
    data = _gray_data_module(tmp_path, per_class=6)
    train, val = data.datasets["train"], data.datasets["val"]
    j = next(j for j in train.indices if j + 1 in val.indices)
    for position in (j, j + 1):
        train.dataset.paths[position].write_bytes(b"not an image")
    for loader in (data.train_dataloader(), data.val_dataloader(), data.train_dataloader()):
        list(loader)
    assert len([w for w in recwarn if issubclass(w.category, SkippedImageWarning)]) == 2 == data.num_skipped


def test_a_carved_validation_split_is_stratified_so_training_sees_every_class(tmp_path):
    """19 'cat' and 1 'rare' image, default val_fraction 0.1, seed 0: the only 'rare' image went to validation."""
    root = write_image_folder(tmp_path / "photos", classes=("cat",), per_class=19)
    write_image_folder(root, classes=("rare",), per_class=1)
    data = ImageFolderDataModule(str(root), img_size=8, num_workers=0)
    data.setup("fit")
    targets = data.datasets["train"].dataset.targets

    def count(split: str) -> list[int]:
        return np.bincount([targets[i] for i in data.datasets[split].indices], minlength=2).tolist()

    assert count("train") == [17, 1] and count("val") == [2, 0]


def test_split_indices_stratifies_by_label_and_keeps_the_unlabelled_split():
    labels = np.array([0] * 6 + [1] * 2 + [2])
    train, val = split_indices(9, 0.5, 3, labels=labels)
    assert np.bincount(labels[val], minlength=3).tolist() == [3, 1, 0]  # a class of one stays in training
    assert sorted([*train, *val]) == list(range(9))
    assert all(np.array_equal(a, b) for a, b in zip((train, val), split_indices(9, 0.5, 3, labels=labels)))
    train, _ = split_indices(4, 0.9, 0, labels=[0, 0, 1, 1])
    assert sorted(np.array([0, 0, 1, 1])[train].tolist()) == [0, 1]  # each class keeps one training image
    _, val = split_indices(8, 0.1, 0, labels=[0] * 4 + [1] * 4)
    assert len(val) == 1  # as many as unstratified: 0.4 of each class must not round to no validation at all
    order = np.random.default_rng(0).permutation(10)  # without labels (Fashion-MNIST): the shipped split
    assert [part.tolist() for part in split_indices(10, 0.2, 0)] == [order[2:].tolist(), order[:2].tolist()]


def test_a_class_whose_training_files_all_fail_to_decode_is_one_line(tmp_path, recwarn):
    """It trained on as an empty class, with only a warning per file."""
    root = write_image_folder(tmp_path / "photos", per_class=2)
    (root / "owl").mkdir()
    for name in ("a.jpg", "b.jpg"):
        (root / "owl" / name).write_bytes(b"not an image")
    data = ImageFolderDataModule(str(root), img_size=8, batch_size=2, num_workers=0, val_fraction=0.0)
    with pytest.raises(ConfigError, match=r"owl: none of its 2 training image files can be decoded") as info:
        list(data.train_dataloader())
    assert "\n" not in str(info.value)


def test_a_limited_evaluation_draws_across_a_dataset_sorted_by_class():
    from visattn.data.image_folder import seeded_subset

    labels = [0] * 50 + [1] * 50  # an image folder's files, sorted by class
    picked = seeded_subset(labels, 10)
    assert sorted(set(picked[i] for i in range(len(picked)))) == [0, 1]  # the first 10 were all class 0
    assert list(picked.indices) == sorted(picked.indices) and picked.indices == seeded_subset(labels, 10).indices
    assert seeded_subset(labels, None) is labels and seeded_subset(labels, 100) is labels


def test_split_indices_carves_one_validation_sample_when_the_share_rounds_to_none():
    """round(4 * 0.1) == 0: validation was empty, so a checkpoint monitoring val/top1 never saved."""
    labels = np.array([0, 0, 1, 1])
    train, val = split_indices(4, 0.1, 0, labels=labels)
    assert len(val) == 1 and sorted([*train, *val]) == [0, 1, 2, 3]
    assert sorted(set(labels[train].tolist())) == [0, 1]  # training still sees every class
    assert len(split_indices(4, 0.1, 0)[1]) == 1  # unlabelled too
    assert len(split_indices(4, 0.0, 0, labels=labels)[1]) == 0  # val_fraction 0 asks for none
    assert len(split_indices(2, 0.1, 0, labels=[0, 1])[1]) == 0  # one per class: nothing to spare


def test_a_small_image_folder_gets_a_validation_split(tmp_path):
    root = write_image_folder(tmp_path / "photos", per_class=4)  # 8 images: round(0.8) == 1
    small = write_image_folder(tmp_path / "small", per_class=2)  # 4 images: round(0.4) == 0
    for folder, n in ((root, 8), (small, 4)):
        data = ImageFolderDataModule(str(folder), img_size=8, num_workers=0)
        data.setup("fit")
        assert len(data.datasets["val"]) == 1 and len(data.datasets["train"]) == n - 1
        assert data.val_dataloader() != []  # validation runs


def test_a_folder_that_cannot_spare_a_validation_image_is_one_line_at_setup(tmp_path):
    root = write_image_folder(tmp_path / "photos", per_class=1)
    data = ImageFolderDataModule(str(root), img_size=8, num_workers=0)
    with pytest.raises(ConfigError) as info:
        data.setup("fit")
    assert str(info.value) == (f"{root}: 2 images, one per class, leave none for validation (val_fraction=0.1; each "
                               "class keeps one for training); add images, give a validation folder as "
                               "data.init_args.val_root, or set data.init_args.val_fraction 0 (and monitor no val/ "
                               "metric) to train without validation")
    data = ImageFolderDataModule(str(root), img_size=8, num_workers=0, val_fraction=0.0)
    data.setup("fit")  # no validation asked for: trains on both
    assert len(data.datasets["train"]) == 2 and len(data.datasets["val"]) == 0


def test_a_validation_split_of_only_broken_files_is_one_line_at_setup(tmp_path, recwarn):
    """8 files, the one validation image broken: validation ran on nothing, val/top1 was never logged and
    Lightning's ModelCheckpoint raised a MisconfigurationException traceback after the first epoch."""
    from PIL import Image

    root = write_image_folder(tmp_path / "photos", per_class=4)
    data = ImageFolderDataModule(str(root), img_size=8, num_workers=0)
    data.setup("fit")
    (val_file,) = [data.datasets["val"].dataset.paths[i] for i in data.datasets["val"].indices]
    val_file.write_bytes(b"not an image")
    data = ImageFolderDataModule(str(root), img_size=8, num_workers=0)
    with pytest.raises(ConfigError, match=r"none of its 1 validation image files can be decoded") as info:
        data.setup("fit")
    assert "\n" not in str(info.value) and str(root) in str(info.value)
    Image.new("RGB", (8, 8)).save(val_file, "PNG")  # fixed: a later setup reads the folder again
    data.setup("fit")
    assert len(data.datasets["val"]) == 1


def test_an_image_folder_records_and_evaluates_with_timms_crop_and_filter(tmp_path):
    """Fine-tuning timm weights needs their pretrained_cfg's crop_pct and interpolation at evaluation (and in
    the checkpoint, for inference); the data module had no way to say them."""
    from PIL import Image
    from timm.data import create_transform

    root = write_image_folder(tmp_path / "train", per_class=2)
    data = ImageFolderDataModule(str(root), img_size=32, num_workers=0, mean=(0.5,) * 3, std=(0.5,) * 3,
                                 crop_pct=0.9, interpolation="bicubic")
    assert data.preprocessing == {"input_size": [3, 32, 32], "mean": [0.5] * 3, "std": [0.5] * 3, "recipe": "photo",
                                  "crop_pct": 0.9, "interpolation": "bicubic"}
    image = np.random.default_rng(0).integers(0, 256, (75, 100, 3), dtype=np.uint8)
    by_timm = create_transform(32, interpolation="bicubic", crop_pct=0.9, mean=(0.5,) * 3, std=(0.5,) * 3)
    torch.testing.assert_close(data.eval_transform()(image), by_timm(Image.fromarray(image)), rtol=0, atol=1e-5)
    with pytest.raises(ConfigError, match=r"^data.init_args.interpolation='nearest': give one of bilinear, bicubic$"):
        ImageFolderDataModule(str(root), interpolation="nearest")
    with pytest.raises(ConfigError, match=r"^data.init_args.crop_pct=1.5: give the fraction of the resized image kept"):
        ImageFolderDataModule(str(root), crop_pct=1.5)


# --- one-channel (gray) classifiers ---------------------------------------------------------


@needs_fashion_mnist
def test_a_one_channel_data_module_gives_gray_batches_and_records_them():
    """A model built with in_chans 1 could not be trained: every data module gave 3-channel images."""
    gray = FashionMNISTDataModule(channels=1, batch_size=4, num_workers=0, limit=8)
    rgb = FashionMNISTDataModule(batch_size=4, num_workers=0, limit=8)
    assert gray.preprocessing == {"input_size": [1, 28, 28], "mean": [0.286], "std": [0.353], "recipe": "small"}
    assert rgb.preprocessing == {"input_size": [3, 28, 28], "mean": [0.286] * 3, "std": [0.353] * 3, "recipe": "small"}
    for loader in ("train_dataloader", "val_dataloader", "test_dataloader"):
        images, labels = next(iter(getattr(gray, loader)()))
        assert images.shape == (4, 1, 28, 28) and labels.shape == (4,), loader
        assert next(iter(getattr(rgb, loader)()))[0].shape == (4, 3, 28, 28), loader
    # the gray values themselves, normalised as one channel of the RGB images is
    torch.testing.assert_close(next(iter(gray.test_dataloader()))[0], next(iter(rgb.test_dataloader()))[0][:, :1],
                               rtol=0, atol=1.01 / 255 / 0.353)


def test_a_one_channel_image_folder_records_the_first_mean_and_std(tmp_path):
    root = write_image_folder(tmp_path / "train", per_class=4)
    data = ImageFolderDataModule(str(root), channels=1, img_size=16, batch_size=2, num_workers=0, val_fraction=0.25)
    assert data.preprocessing["input_size"] == [1, 16, 16]
    # the first mean and std: what albumentations normalises a gray image with
    assert (data.preprocessing["mean"], data.preprocessing["std"]) == ([0.485], [0.229])
    assert next(iter(data.train_dataloader()))[0].shape == (2, 1, 16, 16)
    assert next(iter(data.val_dataloader()))[0].shape == (2, 1, 16, 16)


@pytest.mark.parametrize("channels", [2, 0, 4])
def test_a_channel_count_other_than_1_or_3_is_one_line(channels):
    with pytest.raises(ConfigError, match=rf"^data.init_args.channels={channels}: give 3 \(RGB\) or 1 \(gray, for a "
                                          r"model with in_chans 1\)$"):
        FashionMNISTDataModule(channels=channels)


@needs_fashion_mnist
def test_a_one_channel_classifier_trains_from_its_config_and_evaluates_on_gray_images(tmp_path, monkeypatch, capsys):
    """The shipped gray config trains, its checkpoint records the one-channel preprocessing, and `visattn evaluate
    --checkpoint` reads it; data channels that differ from the model's in_chans are one line before training."""
    import json

    from visattn.cli import main
    from visattn.inference.classifier import load_classifier

    monkeypatch.chdir(tmp_path)
    config = Path(__file__).resolve().parents[1] / "configs" / "classification" / "se_resnet20_fmnist_gray.yaml"
    quick = ["--config", str(config), "--data.init_args.num_workers", "0", "--data.init_args.batch_size", "8",
             "--data.init_args.limit", "32", "--trainer.enable_progress_bar", "false", "--trainer.accelerator", "cpu",
             "--trainer.max_steps", "2"]
    assert main(["fit", *quick, "--data.init_args.channels", "3"]) == 2
    error = capsys.readouterr().err.strip().splitlines()[-1]
    assert error == ("visattn: error: data.init_args.channels=3 but the model takes 1-channel images; set "
                     "model.init_args.model_kwargs.in_chans: 3, or data.init_args.channels: 1")

    assert main(["fit", *quick]) == 0
    checkpoint = tmp_path / "outputs" / config.stem / "checkpoints" / "last.ckpt"
    classifier = load_classifier(checkpoint=str(checkpoint))
    assert classifier.preprocessing["input_size"] == [1, 28, 28] and classifier.preprocessing["mean"] == [0.286]
    assert classifier.transform()(np.zeros((28, 28, 3), np.uint8)).shape == (1, 28, 28)
    capsys.readouterr()
    assert main(["evaluate", "--checkpoint", str(checkpoint), "--dataset", "fashion-mnist", "--limit", "16",
                 "--json"]) == 0
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1])["n"] == 16


def test_class_folders_match_the_classes_in_either_unicode_form(tmp_path):
    """A folder named "café" as macOS writes it (decomposed, NFD) was refused as not among the classes, in a
    message naming two names that look identical."""
    import unicodedata

    from PIL import Image

    from visattn.data.image_folder import ImageFolder

    trained = [unicodedata.normalize("NFC", "café crème"), "zebra"]
    for name in (unicodedata.normalize("NFD", "café crème"), "zebra"):
        (tmp_path / name).mkdir()
        Image.new("RGB", (8, 8)).save(tmp_path / name / "0.png")
    folder = ImageFolder(tmp_path, classes=trained)
    assert [(path.parent.name, label) for path, label in folder.samples] == [
        (unicodedata.normalize("NFD", "café crème"), 0), ("zebra", 1)]


def _same(a, b) -> bool:
    if isinstance(a, torch.Tensor):
        return isinstance(b, torch.Tensor) and a.dtype == b.dtype and torch.equal(a, b)
    if isinstance(a, dict):
        return isinstance(b, dict) and a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)):
        return type(a) is type(b) and len(a) == len(b) and all(map(_same, a, b))
    return a == b


@needs_fashion_mnist
@pytest.mark.filterwarnings("ignore::visattn.data.SkippedImageWarning")
def test_every_data_modules_loaders_pickle_for_spawned_workers(tmp_path):
    """macOS and Windows start DataLoader workers by spawning, which pickles each loader's dataset, collate and
    worker_init functions (fork shares them, so Linux runs never showed a lambda or a lock there)."""
    import pickle

    from fixtures_captions import write_karpathy
    from test_detection_data import write_coco_instances
    from visattn.data import (CocoDetectionDataModule, FashionScenesCaptionDataModule,
                              FashionScenesDetectionDataModule, KarpathyCaptionDataModule)

    karpathy, karpathy_images = write_karpathy(tmp_path / "karpathy")
    coco, coco_images = write_coco_instances(tmp_path / "coco")
    scenes = {"num_train": 4, "num_val": 2, "num_test": 2, "canvas_size": 32}
    kept = {"persistent_workers": True}  # training workers too: their dataset is wrapped to reseed them
    modules = [FashionMNISTDataModule(limit=8, img_size=28, **kept), ImageFolderDataModule(str(write_image_folder(
                   tmp_path / "folder")), img_size=16, auto_augment="rand-m9-mstd0.5-inc1", random_erasing=0.25, **kept),
               KarpathyCaptionDataModule(str(karpathy), str(karpathy_images), img_size=8, min_count=1, **kept),
               CocoDetectionDataModule(str(coco), str(coco_images), val_annotations=str(coco), **kept),
               FashionScenesCaptionDataModule(img_size=32, **scenes, **kept),
               FashionScenesDetectionDataModule(**scenes, **kept)]
    for module in modules:
        module.setup("fit")
        for split, loader in (("train", module.train_dataloader()), ("val", module.val_dataloader())):
            assert loader.persistent_workers, (module, split)
            dataset, collate, init = pickle.loads(pickle.dumps((loader.dataset, loader.collate_fn,
                                                                 loader.worker_init_fn)))
            assert type(dataset) is type(loader.dataset) and len(dataset) == len(loader.dataset), module
            if split == "val":  # evaluation samples are deterministic
                assert _same(dataset[0], loader.dataset[0]), module


@needs_fashion_mnist
def test_spawned_workers_share_the_fashion_mnist_images_instead_of_copying_them():
    """Each spawned worker (macOS, Windows) received a copy of the split's arrays: 47 MB of training images."""
    from multiprocessing.reduction import ForkingPickler

    from torch.multiprocessing.reductions import init_reductions

    from visattn.data.scenes import FashionScenes

    init_reductions()  # the tensor reductions DataLoader workers are sent with (torch.multiprocessing does this)
    assert len(ForkingPickler.dumps(FashionMNIST("train"))) < 10_000
    assert len(ForkingPickler.dumps(FashionScenes("val", num_scenes=2))) < 200_000  # the item pools' indices



_KEEPS_A_LOADER = """
import sys
from visattn.data import FashionMNISTDataModule
data = FashionMNISTDataModule(batch_size=64, limit=512, num_workers=2)
data.setup("fit")
loader = data.val_dataloader()  # kept, as scripts and notebooks keep it: its workers persist until the exit
for index, batch in enumerate(loader):
    if index == 1:
        break
print("done", flush=True)
"""


@needs_fashion_mnist
def test_a_script_that_keeps_a_loader_with_workers_exits():
    """A review found a version whose workers let the first SIGTERM pass, to leave a stop of the whole process group
    to the command: Python's exit sends its workers one SIGTERM and waits, so such a script never ended."""
    import subprocess
    import sys

    ended = subprocess.run([sys.executable, "-c", _KEEPS_A_LOADER], capture_output=True, text=True, timeout=120)
    assert (ended.returncode, ended.stdout) == (0, "done\n"), ended.stderr[-2000:]


def test_listing_an_image_folder_resolves_links_not_every_file(tmp_path, monkeypatch):
    import os

    import visattn.data.image_io

    root = write_image_folder(tmp_path / "photos", per_class=4)
    (root / "cat" / "also_0.png").symlink_to(root / "cat" / "0.png")  # one file named twice: listed once
    (root / "dog" / "nested").mkdir()
    (root / "dog" / "nested" / "9.png").write_bytes((root / "dog" / "1.png").read_bytes())
    (root / "dog" / "nested" / "back").symlink_to(root / "dog", target_is_directory=True)  # a loop, walked once
    resolved = []
    realpath = os.path.realpath
    monkeypatch.setattr(visattn.data.image_io.os.path, "realpath",
                        lambda path, **kwargs: resolved.append(path) or realpath(path, **kwargs))
    folder = ImageFolder(root)
    monkeypatch.undo()
    names = [(path.relative_to(root).as_posix(), label) for path, label in folder.samples]
    assert names == [("cat/0.png", 0), ("cat/1.png", 0), ("cat/2.png", 0), ("cat/3.png", 0),
                     ("dog/0.png", 1), ("dog/1.png", 1), ("dog/2.png", 1), ("dog/3.png", 1), ("dog/nested/9.png", 1)]
    # of the files, only the link is resolved: realpath of each file stat-ed every folder above it
    assert [Path(path).name for path in resolved if Path(path).suffix == ".png"] == ["also_0.png"]
