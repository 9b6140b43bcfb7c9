"""Training augmentation beyond the recipes' crops: timm's auto-augment policies, random erasing, and the
data modules' settings for them."""
from __future__ import annotations

import math
import random
import re

import numpy as np
import pytest
import torch
from fixtures_images import write_image_folder
from PIL import Image
from torch.utils.data import DataLoader, Dataset

from visattn.data import FashionMNISTDataModule, ImageFolderDataModule, train_transforms
from visattn.data.auto_augment import TimmAutoAugment
from visattn.errors import ConfigError

POLICIES = ["rand-m9-mstd0.5-inc1", "augmix-m5-w4-d2", "original"]


def _photo(shape: tuple[int, int] = (40, 48)) -> np.ndarray:
    return np.random.default_rng(0).integers(0, 256, (*shape, 3), dtype=np.uint8)


@pytest.mark.parametrize("interpolation", ["bilinear", "bicubic"])
@pytest.mark.parametrize("policy", POLICIES)
def test_a_policy_gives_what_timms_training_transform_gives_under_the_same_seed(policy, interpolation):
    """The policy timm's `create_transform(auto_augment=...)` builds (translations scaled to the input size,
    areas moved in filled with the mean, the recipe's filter), seeded as the pipeline seeds each image."""
    from timm.data import create_transform

    mean = (0.2, 0.5, 0.7)
    by_timm = next(step for step in create_transform(32, is_training=True, auto_augment=policy, mean=mean,
                                                     interpolation=interpolation).transforms
                   if type(step).__name__ in ("RandAugment", "AugMixAugment", "AutoAugment"))
    ours = TimmAutoAugment(policy, input_size=(32, 32), mean=mean, interpolation=interpolation)
    image = _photo((32, 32))
    changed = 0
    for seed in range(12):
        random.seed(seed)
        np.random.seed(seed)
        expected = np.asarray(by_timm(Image.fromarray(image)))
        got = ours.apply(image, seed=seed)
        np.testing.assert_array_equal(got, expected)
        changed += not np.array_equal(got, image)
    assert changed >= 6  # the policy does something


@pytest.mark.parametrize("policy", ["rand-m9-mstd0.5-inc1", "rand-m10-inc1", "v0"])
def test_policies_that_posterize_to_no_bit_give_black_images_instead_of_failing(policy):
    """Pillow 11 refuses to keep 0 bits, which timm's increasing posterize asks for at magnitude 10 (DeiT's policy
    reaches it through its magnitude noise): about 1 image in 500 raised ValueError, and the epoch died."""
    from visattn.data.auto_augment import posterize

    transform = TimmAutoAugment(policy, input_size=(32, 32))
    image = _photo((32, 32))
    for seed in range(400):
        assert transform.apply(image, seed=seed).shape == (32, 32, 3)
    black = np.asarray(posterize(Image.fromarray(image), 0))
    assert black.shape == image.shape and not black.any()
    np.testing.assert_array_equal(np.asarray(posterize(Image.fromarray(image), 8)), image)


def test_auto_augment_draws_from_the_pipelines_seed_and_leaves_the_global_random_states_alone():
    """timm's operations draw from Python's and NumPy's global states: unseeded, they would repeat in every
    worker, a resumed epoch would draw otherwise, and the pipeline would move the user's states."""
    image = _photo()
    runs = []
    for global_seed in (1, 2):
        random.seed(global_seed)
        np.random.seed(global_seed)
        python_state, numpy_state = random.getstate(), np.random.get_state()[1].copy()
        torch.manual_seed(123)
        transform = train_transforms(32, auto_augment="rand-m9-mstd0.5-inc1")
        runs.append(torch.stack([transform(image) for _ in range(6)]))
        assert random.getstate() == python_state and np.array_equal(np.random.get_state()[1], numpy_state)
    torch.testing.assert_close(runs[0], runs[1], rtol=0, atol=0)
    assert len({tuple(view.flatten().tolist()) for view in runs[0]}) == 6  # still random from call to call


class _AutoAugmentedImage(Dataset):
    """One image, auto-augmented only: samples differ by the policy's draws alone."""

    def __init__(self) -> None:
        self.image = _photo((32, 32))
        self.transform = train_transforms(32, recipe="small", padding=0, hflip=False, auto_augment="original")

    def __len__(self) -> int:
        return 8

    def __getitem__(self, index: int) -> torch.Tensor:
        return self.transform(self.image)


def test_dataloader_workers_draw_different_policies():
    batches = list(DataLoader(_AutoAugmentedImage(), batch_size=4, num_workers=2))  # one batch per worker
    assert not torch.equal(batches[0], batches[1])


def test_auto_augment_changes_images_the_recipe_alone_leaves_as_they_are():
    image = _photo((32, 32))
    torch.manual_seed(0)
    plain = train_transforms(32, recipe="small", padding=0, hflip=False)
    augmented = train_transforms(32, recipe="small", padding=0, hflip=False, auto_augment="rand-m9-mstd0.5-inc1")
    assert all(torch.equal(plain(image), plain(image)) for _ in range(3))
    assert sum(not torch.equal(augmented(image), plain(image)) for _ in range(8)) >= 4


@pytest.mark.parametrize("shape", [(32, 32), (24, 48)])
def test_random_erasing_fills_one_rectangle_of_2_to_33_percent_with_random_pixels(shape):
    """Zhong et al.'s erasing, timm's `re_prob`: with probability 1 every image loses one rectangle, its area
    within the scale range, its pixels replaced by noise (a constant gray image shows exactly where)."""
    gray = np.full((*shape, 3), 128, dtype=np.uint8)
    plain = train_transforms(shape, recipe="small", padding=0, hflip=False)(gray)
    erasing = train_transforms(shape, recipe="small", padding=0, hflip=False, random_erasing=1.0)
    areas = []
    for _ in range(20):
        changed = (erasing(gray) != plain).any(dim=0)  # (H, W)
        rows, cols = changed.any(dim=1).nonzero().flatten(), changed.any(dim=0).nonzero().flatten()
        box = changed[rows.min():rows.max() + 1, cols.min():cols.max() + 1]
        assert box.all()  # one filled rectangle
        areas.append(changed.sum().item() / changed.numel())
    assert 0.02 - 0.01 <= min(areas) and max(areas) <= 1 / 3 + 0.03  # rounding to whole pixels
    assert max(areas) - min(areas) > 0.05  # rectangles of many sizes


def test_random_erasing_at_a_probability_erases_that_share_of_images():
    gray = np.full((32, 32, 3), 128, dtype=np.uint8)
    plain = train_transforms(32, recipe="small", padding=0, hflip=False)(gray)
    torch.manual_seed(0)
    erasing = train_transforms(32, recipe="small", padding=0, hflip=False, random_erasing=0.25)
    erased = sum(not torch.equal(erasing(gray), plain) for _ in range(400))
    assert 70 <= erased <= 130  # 100 expected; binomial sd 8.7
    never = train_transforms(32, recipe="small", padding=0, hflip=False, random_erasing=0.0)
    assert all(torch.equal(never(gray), plain) for _ in range(20))


def test_an_image_too_narrow_for_any_rectangle_passes_random_erasing_unchanged():
    """Albumentations 2.0's Erasing failed with a TypeError when no rectangle fit (a 1x40 image)."""
    strip = np.full((1, 40, 3), 128, dtype=np.uint8)
    plain = train_transforms((1, 40), recipe="small", padding=0, hflip=False)(strip)
    erasing = train_transforms((1, 40), recipe="small", padding=0, hflip=False, random_erasing=1.0)
    assert torch.equal(erasing(strip), plain)


def test_a_one_channel_model_gets_auto_augmented_and_erased_gray_images():
    data = FashionMNISTDataModule(num_workers=0, channels=1, auto_augment="rand-m9-mstd0.5-inc1", random_erasing=0.5)
    steps = [type(step).__name__ for step in data.train_transform().pipeline.transforms]
    assert steps.index("TimmAutoAugment") < steps.index("ToGray") < steps.index("RandomErasing") < steps.index("Normalize")
    assert data.train_transform()(_photo((28, 28))).shape == (1, 28, 28)


def test_the_data_modules_settings_reach_the_training_transform_only(tmp_path):
    write_image_folder(tmp_path / "train", classes=("cat", "dog"), per_class=2)
    data = ImageFolderDataModule(str(tmp_path / "train"), img_size=32, hflip=False, scale=(0.08, 1.0),
                                 color_jitter=0.4, auto_augment="rand-m9-mstd0.5-inc1", random_erasing=0.25)
    steps = {type(step).__name__: step for step in data.train_transform().pipeline.transforms}
    assert "HorizontalFlip" not in steps and steps["PilRandomResizedCrop"].scale == (0.08, 1.0)
    assert steps["TimmAutoAugment"].config == "rand-m9-mstd0.5-inc1" and steps["RandomErasing"].p == 0.25
    assert "ColorJitter" in steps
    assert [type(step).__name__ for step in data.eval_transform().pipeline.transforms] == [
        "PilResize", "Normalize", "ToTensorV2"]
    default = ImageFolderDataModule(str(tmp_path / "train"), img_size=32)
    steps = [type(step).__name__ for step in default.train_transform().pipeline.transforms]
    assert steps == ["PilRandomResizedCrop", "HorizontalFlip", "Normalize", "ToTensorV2"]
    assert default.train_transform().pipeline.transforms[0].scale == (0.6, 1.0)


@pytest.mark.parametrize("policy", ["rand-m9-mstd0.5-inc1", "rand-m9-tweights", "rand-m15-mmax20", "rand-n3-m10-p0.8",
                                    "augmix-m5-w4-d2", "augmix-m3-w2-d1-a0.5-b1", "original", "v0", "3a",
                                    "original-mstd0.5"])
def test_policy_strings_timm_documents_are_taken(policy):
    """A check on policy strings must not refuse timm's own forms (`tweights` has no number, as timm means it)."""
    steps = [type(step).__name__ for step in FashionMNISTDataModule(num_workers=0, auto_augment=policy)
             .train_transform().pipeline.transforms]
    assert "TimmAutoAugment" in steps


@pytest.mark.parametrize(("settings", "message"), [
    ({"auto_augment": "rand-x9"}, "data.init_args.auto_augment='rand-x9': timm cannot read it"),
    ({"auto_augment": ""}, "data.init_args.auto_augment='': timm cannot read it"),
    # read by timm without a word (from a features audit): nothing applied, images darkened, a failing first image
    ({"auto_augment": "rand-m9-n0"}, "data.init_args.auto_augment='rand-m9-n0': n0 applies no operation"),
    ({"auto_augment": "rand-m9-mstd0.5-incl"}, "data.init_args.auto_augment='rand-m9-mstd0.5-incl': its section "
                                               "'incl' has no number, which timm skips"),
    ({"auto_augment": "randaugment"}, "data.init_args.auto_augment='randaugment': timm cannot read it; give e.g."),
    ({"auto_augment": "rand-m9-p0"}, "data.init_args.auto_augment='rand-m9-p0': p0 applies each operation with"),
    # from a recipe audit against timm: both were read without a word
    ({"auto_augment": "original-foo"}, "data.init_args.auto_augment='original-foo': its section 'foo' has no number"),
    ({"auto_augment": "original-tweights"}, "data.init_args.auto_augment='original-tweights': its section "
                                            "'tweights' has no number, which timm skips; give each setting with its "
                                            "value, e.g. mstd0.5"),
    ({"auto_augment": "rand-m9-p1.5"}, "data.init_args.auto_augment='rand-m9-p1.5': a probability above 1 acts as 1"),
    ({"auto_augment": "rand-m99"}, "data.init_args.auto_augment='rand-m99': magnitude 99 is above the largest timm "
                                   "applies (10, mmax), so it would act as 10"),
    ({"auto_augment": "augmix-m5-w0"}, "data.init_args.auto_augment='augmix-m5-w0': w0 mixes no augmented chain"),
    ({"auto_augment": "augmix-m5-w4-d2-a0"}, "data.init_args.auto_augment='augmix-m5-w4-d2-a0': a0 gives no mixing"),
    ({"random_erasing": 1.5}, "data.init_args.random_erasing=1.5: give the probability of erasing, 0 (off) to 1"),
    ({"random_erasing": math.nan}, "data.init_args.random_erasing=nan: give the probability"),
    ({"color_jitter": -0.1}, "data.init_args.color_jitter=-0.1: give a strength of 0 (off) or more"),
    ({"scale": (0.5, 0.2), "recipe": "photo"}, "data.init_args.scale=(0.5, 0.2): give the least and most"),
    ({"scale": (0.0, 1.0), "recipe": "photo"}, "data.init_args.scale=(0.0, 1.0): give the least and most"),
    ({"scale": (0.08, 1.0)}, "data.init_args.scale: the 'small' recipe pads and crops at full size, so a crop "
                             "scale changes nothing; set recipe photo, or leave scale out"),
    ({"augment": False, "auto_augment": "original"}, "data.init_args.auto_augment: augment is false, so training "
                                                     "images are not augmented; set augment true, or leave "
                                                     "auto_augment out"),
])
def test_augmentation_settings_that_cannot_be_used_or_change_nothing_are_one_line(settings, message):
    with pytest.raises(ConfigError, match="^" + message.replace("(", r"\(").replace(")", r"\)").replace(".", r"\.")):
        FashionMNISTDataModule(num_workers=0, **settings)


# ------------------------------------------------- what each step draws (from a mutation review of the transforms)


def _marked(size: int | tuple[int, int] = 28, at: tuple[int, int] = (5, 9)) -> np.ndarray:
    image = np.zeros((*np.broadcast_to(size, 2), 3), np.uint8)  # a side, or (height, width)
    image[at] = 255
    return image


def _marker_at(tensor: torch.Tensor) -> tuple[int, int]:
    plane = tensor[0]
    return tuple(int(i) for i in (plane == plane.max()).nonzero()[0])


def test_small_recipe_flips_about_half_the_images_and_shifts_by_up_to_its_padding():
    """Every image flipped, and half the padding, had passed: timm's and CIFAR's pad-4 random crop and flip."""
    torch.manual_seed(0)
    transform = train_transforms(28, (0.0,) * 3, (1.0,) * 3, recipe="small", padding=4, hflip=True)
    flips, rows = 0, set()
    for _ in range(400):
        r, c = _marker_at(transform(_marked()))
        rows.add(r - 5)
        shift_plain, shift_flipped = c - 9, c - (27 - 9)
        flips += abs(shift_flipped) <= 4 and abs(shift_plain) > 4
    assert 0.35 < flips / 400 < 0.65
    assert rows == set(range(-4, 5))  # every shift of the 4-pixel padding, and none further


@pytest.mark.parametrize(("size", "at"), [(31, (10, 10)), ((31, 47), (15, 20))])  # square; offsets y 2, x 10
def test_the_centre_crop_moves_boxes_by_torchvisions_offset(size, at):
    """Boxes land where torchvision's CenterCrop puts the pixels (a floor instead of its rounding had passed; so had
    x and y swapped, which a square image's equal offsets hide)."""
    import albumentations as A

    from visattn.data.transforms import PilResize

    image = _marked(size, at)
    step = A.Compose([PilResize(31, (28, 28), "bilinear")],
                     bbox_params=A.BboxParams(format="pascal_voc", label_fields=["labels"]))
    out = step(image=image, bboxes=np.array([[at[1], at[0], at[1] + 1, at[0] + 1]], np.float32), labels=[0])
    r, c = map(int, np.argwhere(out["image"][..., 0] == 255)[0])
    np.testing.assert_allclose(out["bboxes"], [[c, r, c + 1, r + 1]], atol=1e-4)


def test_colour_jitter_changes_every_image_as_timms_does():
    """albumentations' default p=0.5 would leave half the images unjittered; that had passed."""
    torch.manual_seed(0)
    image = np.full((16, 16, 3), (120, 90, 60), np.uint8)
    transform = train_transforms(16, (0.0,) * 3, (1.0,) * 3, recipe="small", padding=0, hflip=False, color_jitter=0.4)
    plain = torch.from_numpy(image.transpose(2, 0, 1).astype(np.float32) / 255)
    unchanged = sum(torch.allclose(transform(image), plain, atol=1 / 255) for _ in range(100))
    assert unchanged <= 5


def test_the_photo_recipes_crop_of_the_output_size_is_a_window_of_the_image_as_it_is():
    """A crop one pixel too large on each side had passed: the only test cropped the whole image, where the slice
    stops at the edge. A 32 px square crop at 32 px is not resized, so it is a 32 x 32 window of the image."""
    image = np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8)
    transform = train_transforms(32, (0.0,) * 3, (1.0,) * 3, scale=(0.25, 0.25), ratio=(1.0, 1.0), hflip=False)
    windows = {image[y:y + 32, x:x + 32].tobytes() for y in range(33) for x in range(33)}
    torch.manual_seed(0)
    for _ in range(4):
        crop = (transform(image) * 255).round().byte().permute(1, 2, 0).numpy()
        is_a_window = crop.shape == (32, 32, 3) and crop.tobytes() in windows
        assert is_a_window, "the training crop is no 32 x 32 window of the image"


@pytest.mark.parametrize("image, shape", [(np.zeros((4, 5), np.uint8), "shape (4, 5)"), ([[0]], "a list")])
def test_to_tensor_of_what_is_no_decoded_image_is_one_line(image, shape):
    """A gray (H, W) array was a transpose ValueError naming no image (a docstring audit)."""
    from visattn.data.transforms import to_tensor

    with pytest.raises(ConfigError, match=rf"^image: {re.escape(shape)}; give an \(H, W, 3\) uint8 array"):
        to_tensor(image)


def test_the_preprocessing_names_transforms_gave_still_import_from_there():
    """The checks of recorded preprocessing moved to visattn.data.preprocessing, and these names of the transforms
    module's __all__ then raised ImportError from visattn.data.transforms."""
    import visattn.data.preprocessing as preprocessing
    import visattn.data.transforms as transforms

    moved = ["IMAGENET_MEAN", "IMAGENET_STD", "CLASSIFIER_PREPROCESSING", "default_preprocessing",
             "preprocessing_problem", "timm_data_config"]
    assert set(moved) <= set(transforms.__all__)
    for name in moved:
        assert getattr(transforms, name) is getattr(preprocessing, name), name
    assert transforms.timm_data_config({"input_size": [1, 8, 8], "mean": [0.5], "std": [0.25]})["mean"] == (0.5,)


class _HalfBlackHalfWhite(Dataset):
    """One 28-px image, black on the left and white on the right, flipped and erased at random."""

    def __init__(self) -> None:
        self.image = np.zeros((28, 28, 3), np.uint8)
        self.image[:, 14:] = 255
        self.transform = train_transforms(28, mean=(0, 0, 0), std=(1, 1, 1), recipe="small", padding=0,
                                          random_erasing=0.5)

    def __len__(self) -> int:
        return 400

    def __getitem__(self, index: int) -> torch.Tensor:
        return self.transform(self.image)


def test_the_steps_of_a_pipeline_reseeded_for_each_batch_draw_independently():
    """albumentations seeds each step's own generator alike, so steps reseeded together drew the same numbers:
    reseeded for each batch, every image erased would have been flipped too."""
    from visattn.data.datamodules import BatchSeeded

    samples = BatchSeeded(_HalfBlackHalfWhite())
    images = torch.stack([samples.__getitems__([i])[0] for i in range(len(samples))])  # a batch of one each
    flipped = images[:, 0, :, :14].mean((1, 2)) > images[:, 0, :, 14:].mean((1, 2))
    erased = ((images > 0) & (images < 1)).flatten(1).any(1)  # random pixels among the black and white ones
    n, flips, erasures = len(images), int(flipped.sum()), int(erased.sum())
    assert 150 < flips < 250 and 150 < erasures < 250
    # independent draws: both on about a quarter of the images (binomial sd 8.7); the same draw would be half
    assert abs(int((flipped & erased).sum()) - flips * erasures / n) < 40
