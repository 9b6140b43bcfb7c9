"""FashionScenes: determinism, item sources, exact boxes, captions and the COCO export."""
from __future__ import annotations

import contextlib
import io
import json
import re

import cv2
import numpy as np
import pytest
from test_data import needs_fashion_mnist

from visattn.data import (
    COLORS,
    ITEM_WORDS,
    CocoCaptions,
    FashionScenes,
    decode_image,
    describe_scene,
    export_coco,
    load_fashion_mnist,
    tokenize,
)
from visattn.data.scenes import recorded_scenes
from visattn.data.scenes import ITEM_PLURALS
from visattn.errors import ConfigError

RED_SNEAKER, BLUE_BAG, GREEN_SHIRT = (7, "red"), (8, "blue"), (6, "green")


def _describe(items, boxes):
    labels = np.array([label for label, _ in items])
    return describe_scene(labels, [color for _, color in items], np.array(boxes, np.float32), canvas_size=64)


# --- captions from hand-built scenes (no Fashion-MNIST needed) ----------------------------


def test_horizontal_relation_both_ways():
    captions = _describe([RED_SNEAKER, BLUE_BAG], [[2, 20, 22, 40], [40, 22, 60, 42]])
    assert "a red sneaker to the left of a blue bag" in captions
    assert "a blue bag to the right of a red sneaker" in captions
    assert "a red sneaker on the left and a blue bag on the right" in captions


def test_vertical_relation_and_places():
    # the bag sits low: its centre is 40 px below the sneaker's and only 4 px to the right
    captions = _describe([BLUE_BAG, RED_SNEAKER], [[24, 44, 44, 62], [20, 2, 40, 24]])
    assert "a red sneaker above a blue bag" in captions and "a blue bag below a red sneaker" in captions
    assert "a red sneaker in the upper half and a blue bag in the lower half" in captions


def test_counts_and_relations_of_groups_only_when_every_item_agrees():
    shirts_left = [[2, 2, 20, 20], [2, 40, 20, 60]]
    captions = _describe([GREEN_SHIRT, GREEN_SHIRT, BLUE_BAG], [*shirts_left, [40, 20, 60, 40]])
    assert "two green shirts to the left of a blue bag" in captions
    assert any(c.endswith("three items: two green shirts and a blue bag") for c in captions)
    # one shirt above the bag, one below it: no relation between the groups is stated
    captions = _describe([GREEN_SHIRT, GREEN_SHIRT, BLUE_BAG], [[40, 0, 60, 18], [40, 44, 60, 62], [40, 22, 60, 40]])
    assert not any(word in c for c in captions for word in ("above", "below", "left of", "right of"))
    assert "two green shirts in different places" in " ".join(captions)


def test_single_item_captions_and_articles():
    captions = _describe([(8, "orange")], [[40, 20, 60, 44]])
    assert len(captions) >= 5 and len(set(captions)) == len(captions)
    assert "an orange bag" in captions and "there is an orange bag on the right" in captions
    assert "a pair of white trousers" in _describe([(1, "white")], [[20, 20, 40, 44]])


# --- generated scenes ----------------------------------------------------------------------


@pytest.fixture(scope="module")
def train_scenes():
    return FashionScenes("train", num_scenes=60, seed=3)


@needs_fashion_mnist
def test_scenes_are_deterministic_from_seed_split_and_index(train_scenes):
    again = FashionScenes("train", num_scenes=60, seed=3)
    for i in (0, 17):
        a, b = train_scenes[i], again[i]
        assert np.array_equal(a.image, b.image) and np.array_equal(a.boxes, b.boxes)
        assert a.captions == b.captions and a.colors == b.colors and np.array_equal(a.labels, b.labels)
    assert not np.array_equal(train_scenes[0].image, train_scenes[1].image)
    assert not np.array_equal(train_scenes[0].image, FashionScenes("train", num_scenes=1, seed=4)[0].image)
    assert not np.array_equal(train_scenes[0].image, FashionScenes("val", num_scenes=1, seed=3)[0].image)
    with pytest.raises(IndexError):
        train_scenes[60]


def _is_rendering_of(scenes: FashionScenes, scene, k: int, source: np.ndarray) -> bool:
    """Whether item ``k`` is exactly ``source`` scaled to some item side, tinted and cropped to
    its visible pixels (the recipe the module docstring states)."""
    x1, y1, x2, y2 = scene.boxes[k].astype(int)
    patch, rgb = scene.image[y1:y2, x1:x2], np.array(COLORS[scene.colors[k]], np.uint16)
    for side in range(scenes.side_range[0], scenes.side_range[1] + 1):
        interpolation = cv2.INTER_AREA if side < 28 else cv2.INTER_LINEAR
        gray = cv2.resize(source, (side, side), interpolation=interpolation)
        tinted = (gray[:, :, None] * rgb // 255).astype(np.uint8)
        visible = tinted.any(axis=2)
        rows, cols = np.flatnonzero(visible.any(axis=1)), np.flatnonzero(visible.any(axis=0))
        if np.array_equal(tinted[rows[0] : rows[-1] + 1, cols[0] : cols[-1] + 1], patch):
            return True
    return False


@needs_fashion_mnist
def test_items_come_from_the_matching_fashion_mnist_split(train_scenes):
    test_images, test_labels = load_fashion_mnist("test")
    test = FashionScenes("test", num_scenes=20)
    for scene in test:
        assert np.array_equal(test_labels[scene.source_indices], scene.labels)
        for k, source in enumerate(scene.source_indices):
            assert _is_rendering_of(test, scene, k, test_images[source])
            assert not _is_rendering_of(test, scene, k, test_images[source - 1])  # the check can fail
    train_sources = np.concatenate([s.source_indices for s in train_scenes])
    val_sources = np.concatenate([s.source_indices for s in FashionScenes("val", num_scenes=30)])
    assert train_sources.max() < 50000 <= val_sources.min()  # disjoint parts of the training images
    # the images each split's items are drawn from: every training image in exactly one of the two
    train_pool, val_pool = (np.sort(np.concatenate(scenes._pool_by_class))
                            for scenes in (train_scenes, FashionScenes("val", num_scenes=1)))
    assert train_pool.tolist() == list(range(50000)) and val_pool.tolist() == list(range(50000, 60000))


@needs_fashion_mnist
def test_boxes_are_tight_disjoint_and_items_tinted(train_scenes):
    for scene in train_scenes:
        visible = scene.image.any(axis=2)
        covered = np.zeros_like(visible)
        for (x1, y1, x2, y2), color in zip(scene.boxes.astype(int), scene.colors):
            inside = visible[y1:y2, x1:x2]
            assert inside[0].any() and inside[-1].any() and inside[:, 0].any() and inside[:, -1].any()
            assert not covered[y1:y2, x1:x2].any()  # no other item's box overlaps this one
            covered[y1:y2, x1:x2] = True
            pixels = scene.image[y1:y2, x1:x2].reshape(-1, 3).astype(int)
            brightest, rgb = pixels[pixels.sum(axis=1).argmax()], np.array(COLORS[color])
            assert any((g * rgb // 255).tolist() == brightest.tolist() for g in range(256))  # gray x colour
        assert not (visible & ~covered).any()  # every visible pixel belongs to an item box
        assert scene.image.shape == (64, 64, 3) and scene.boxes.dtype == np.float32
        assert scene.labels.dtype == np.int64 and 1 <= len(scene.labels) <= 3


@needs_fashion_mnist
def test_crowded_scenes_keep_every_item_apart():
    scenes = FashionScenes("train", num_scenes=200, min_items=4, max_items=4)  # as many as fit
    for scene in scenes:
        assert len(scene.labels) == 4 and len(scene.captions) >= 5
        (x1, y1, x2, y2), gap = scene.boxes.T[:, :, None], 2  # (N, 1) each
        apart = (x2 + gap <= x1.T) | (x1 >= x2.T + gap) | (y2 + gap <= y1.T) | (y1 >= y2.T + gap)  # (N, N)
        assert (apart | np.eye(4, dtype=bool)).all()


@needs_fashion_mnist
def test_captions_name_every_item_and_colour(train_scenes):
    counted = 0
    for scene in train_scenes:
        assert len(scene.captions) >= 5 and len(set(scene.captions)) == len(scene.captions)
        for caption in scene.captions:
            words = tokenize(caption)
            assert caption == caption.lower() and " ".join(words) == caption.replace(",", "").replace(":", "")
            for label, color in zip(scene.labels, scene.colors):
                item = ITEM_WORDS[label]
                assert item in words or ITEM_PLURALS[item] in words, (caption, item)
                assert color in words, (caption, color)
            # and no other item or colour: "top" is only ever the garment
            named = {word for word in words if word in ITEM_WORDS or word in ITEM_PLURALS.values()}
            assert named <= {w for k in scene.labels for w in (ITEM_WORDS[k], ITEM_PLURALS[ITEM_WORDS[k]])}
            assert {word for word in words if word in COLORS} == set(scene.colors)
        counted += any("two" in tokenize(c) for c in scene.captions)
    assert counted > 0  # repeated items are counted


@needs_fashion_mnist
def test_single_item_scenes_and_option_errors():
    scenes = FashionScenes("val", num_scenes=10, min_items=1, max_items=1, canvas_size=96)
    assert all(len(s.labels) == 1 and s.image.shape == (96, 96, 3) for s in scenes)
    with pytest.raises(ConfigError, match="split='dev'"):
        FashionScenes("dev")
    with pytest.raises(ConfigError, match="max_items=9: at most 4 items fit on a 64 px canvas"):
        FashionScenes(max_items=9)
    with pytest.raises(ConfigError, match="min_items=3, max_items=2"):
        FashionScenes(min_items=3, max_items=2)


@needs_fashion_mnist
def test_distinct_classes_never_repeat_a_class_in_a_scene():
    """The pointing game with distractors needs the second item to be another class; by default 30% repeat."""
    repeats = lambda scenes: sum(len(set(s.labels.tolist())) < len(s.labels) for s in scenes)  # noqa: E731
    assert repeats(FashionScenes("test", num_scenes=200, min_items=2, max_items=2)) > 30
    distinct = FashionScenes("test", num_scenes=200, min_items=2, max_items=3, distinct_classes=True)
    assert repeats(distinct) == 0 and {len(s.labels) for s in distinct} == {2, 3}


@needs_fashion_mnist
def test_colors_restrict_the_tints_and_white_keeps_items_gray():
    gray = FashionScenes("test", num_scenes=5, colors=("white",))
    for scene in gray:
        assert set(scene.colors) == {"white"}
        assert np.array_equal(scene.image[..., 0], scene.image[..., 1])
        assert np.array_equal(scene.image[..., 0], scene.image[..., 2])
    assert {c for s in FashionScenes("test", num_scenes=20, colors=("red", "blue")) for c in s.colors} == {"red", "blue"}
    default = FashionScenes("test", num_scenes=3)
    assert np.array_equal(default[2].image, FashionScenes("test", num_scenes=3, colors=list(COLORS))[2].image)
    with pytest.raises(ConfigError, match="colors=\\['grey'\\]: choose one or more of red"):
        FashionScenes(colors=["grey"])


@needs_fashion_mnist
def test_export_coco_round_trips_through_pycocotools(tmp_path):
    from pycocotools.coco import COCO

    scenes = FashionScenes("test", num_scenes=6, seed=1)
    paths = export_coco(scenes, tmp_path)
    with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints progress
        instances, captions = COCO(str(paths["instances"])), COCO(str(paths["captions"]))
    assert sorted(instances.getImgIds()) == list(range(1, 7))
    assert [c["name"] for c in instances.loadCats(instances.getCatIds())] == list(ITEM_WORDS)
    for index, scene in enumerate(scenes):
        anns = instances.loadAnns(instances.getAnnIds(imgIds=[index + 1]))
        boxes = np.array([[x, y, x + w, y + h] for x, y, w, h in (a["bbox"] for a in anns)], np.float32)
        assert np.array_equal(boxes, scene.boxes)
        assert [a["category_id"] - 1 for a in anns] == scene.labels.tolist()
        texts = [a["caption"] for a in captions.loadAnns(captions.getAnnIds(imgIds=[index + 1]))]
        assert texts == scene.captions
        file_name = instances.loadImgs([index + 1])[0]["file_name"]
        assert np.array_equal(decode_image(paths["images"] / file_name), scene.image)  # lossless PNG
    image, references = CocoCaptions(paths["captions"], paths["images"])[5]
    assert image.shape == (3, 64, 64) and references == scenes[5].captions


@needs_fashion_mnist
def test_export_coco_keeps_each_splits_files_and_never_replaces_a_users(tmp_path):
    """Every split was written to instances.json and captions.json: exporting val after train left the train images
    without their annotations, and a user's instances.json was replaced without a word (a file-writing audit)."""
    train = export_coco(FashionScenes("train", num_scenes=3), tmp_path)
    val = export_coco(FashionScenes("val", num_scenes=2), tmp_path)
    assert (train["instances"].name, val["captions"].name) == ("instances_train.json", "captions_val.json")
    assert [len(json.loads(paths[kind].read_text())["images"]) for paths in (train, val)
            for kind in ("instances", "captions")] == [3, 3, 2, 2]
    assert export_coco(FashionScenes("val", num_scenes=2), tmp_path) == val  # an earlier export is replaced
    mine = tmp_path / "instances_test.json"
    mine.write_text('{"info": {"description": "my labels"}}')
    with pytest.raises(ConfigError, match=rf"^out_dir would replace {mine}, which visattn did not write; move that "):
        export_coco(FashionScenes("test", num_scenes=2), tmp_path)
    assert mine.read_text() == '{"info": {"description": "my labels"}}'


@needs_fashion_mnist
def test_evaluation_draws_the_scenes_a_training_run_recorded():
    """evaluate rebuilt the scenes with the default seed, item counts and the model's input size as canvas."""
    from visattn.data.caption_datamodules import FashionScenesCaptionDataModule

    data = FashionScenesCaptionDataModule(canvas_size=48, img_size=32, max_items=1, seed=7, num_train=8, num_val=4,
                                          num_test=4, vocab_scenes=8)
    drawn = recorded_scenes(data.preprocessing, "test", 3, canvas_size=32)
    trained_on = FashionScenes("test", num_scenes=3, canvas_size=48, max_items=1, seed=7)
    for ours, theirs in zip(drawn, trained_on):
        assert np.array_equal(ours.image, theirs.image) and ours.captions == theirs.captions
    older = recorded_scenes({"input_size": [3, 64, 64]}, "test", 2, canvas_size=64)  # weights saved before the record
    assert np.array_equal(older[1].image, FashionScenes("test", num_scenes=2)[1].image)


@needs_fashion_mnist
def test_evaluate_scores_as_many_scenes_as_the_training_run_recorded(tmp_path, capsys):
    """evaluate scored 1000 val scenes where the run validated on num_val, so its val figure was not the run's."""
    import json

    import torch
    from test_reliability_inputs import TINY_SAT

    from visattn.cli import main
    from visattn.data.caption_datamodules import FashionScenesCaptionDataModule
    from visattn.tasks.captioning import CaptioningTask

    data = FashionScenesCaptionDataModule(canvas_size=32, max_items=1, num_train=4, num_val=3, num_test=2,
                                          vocab_scenes=4)
    task = CaptioningTask(model_kwargs=TINY_SAT, vocab=data.vocab, preprocessing=data.preprocessing)
    checkpoint = tmp_path / "run.ckpt"
    torch.save({"hyper_parameters": dict(task.hparams), "state_dict": task.state_dict()}, checkpoint)

    def scored(*options: str) -> int:
        assert main(["evaluate", "--checkpoint", str(checkpoint), "--dataset", "fashion-scenes", "--json",
                     "--beam-size", "1", "--max-len", "3", *options]) == 0
        return json.loads(capsys.readouterr().out.splitlines()[-1])["n"]

    assert [scored("--split", "val"), scored("--split", "test"), scored("--split", "val", "--limit", "2")] == [3, 2, 2]
    # the run's val scenes are the first num_val of any longer draw of the split
    assert np.array_equal(FashionScenes("val", num_scenes=3)[2].image, FashionScenes("val", num_scenes=1000)[2].image)
    assert len(recorded_scenes(data.preprocessing, "train", canvas_size=32)) == 1000  # train is sampled


def test_shipped_scenes_weights_are_scored_on_1000_test_scenes():
    """README's figures for them are on 1000 test scenes, the count evaluate keeps when none is recorded."""
    import json
    from pathlib import Path

    index = json.loads((Path(__file__).parents[1] / "weights" / "index.json").read_text())
    for name in ("sat_cbam_resnet_scenes.scenes", "fcos_se_resnet20_cifar.scenes", "detr_se_resnet20_cifar.scenes"):
        assert index[name]["metrics"]["test/n"] == 1000
        assert len(recorded_scenes(index[name]["preprocessing"], "test", canvas_size=64)) == 1000


@pytest.mark.parametrize("setting, message", [
    ({"seed": -1}, "seed=-1: give a whole number of 0 or more"),  # numpy's "expected non-negative integer"
    ({"canvas_size": 15}, "canvas_size=15: give a whole number of pixels, 16 or more"),
    ({"num_scenes": -1}, "num_scenes=-1: give a whole number of 0 or more"),
    # from Python, which checks no types: "10" and None were TypeErrors, 2.5 scenes failed at len(), True was 1
    ({"num_scenes": "10"}, "num_scenes='10': give a whole number of 0 or more"),
    ({"num_scenes": 2.5}, "num_scenes=2.5: give a whole number of 0 or more"),
    ({"num_scenes": None}, "num_scenes=None: give a whole number of 0 or more"),
    ({"canvas_size": "64"}, "canvas_size='64': give a whole number of pixels, 16 or more"),
    ({"min_items": "1"}, "min_items='1': give a whole number of items, 1 or more"),
    ({"max_items": 2.0}, "max_items=2.0: give a whole number of items, 1 or more"),
    ({"max_items": True}, "max_items=True: give a whole number of items, 1 or more"),
    ({"colors": "red"}, "colors='red': give a list of colour names, e.g. ['red']; choose from red, green, blue, "
                        "yellow, orange, purple, pink, white"),  # it was spelt colors=['r', 'e', 'd']
    ({"colors": 3}, "colors=3: give a list of colour names, e.g. ['red']; choose from red, green, blue, yellow, "
                    "orange, purple, pink, white"),
])
def test_a_scene_setting_is_refused_naming_it_alone(setting, message):
    with pytest.raises(ConfigError, match=f"^{re.escape(message)}$"):
        FashionScenes("val", **setting)


def test_a_scene_split_that_is_no_name_is_one_line():
    """A list was a TypeError (unhashable type)."""
    with pytest.raises(ConfigError, match=r"^split=\['val'\]: FashionScenes has splits 'train', 'val' and 'test'$"):
        FashionScenes(["val"])


@pytest.mark.parametrize("setting, message", [
    ({"seed": -1}, "data.init_args.seed=-1: give a whole number of 0 or more"),
    ({"canvas_size": 15}, "data.init_args.canvas_size=15: give a whole number of pixels, 16 or more"),
    ({"canvas_size": "64"}, "data.init_args.canvas_size='64': give a whole number of pixels, 16 or more"),
    ({"num_train": 0}, "data.init_args.num_train=0: the vocabulary comes from the training scenes' captions"),
    ({"vocab_scenes": 0}, "data.init_args.vocab_scenes=0: the vocabulary comes from the training scenes' captions"),
    ({"num_test": 2.5}, "data.init_args.num_test=2.5: give a whole number of 0 or more"),  # refused only at setup
])
def test_a_scenes_data_modules_setting_is_named_as_its_key(setting, message):
    """The seed was "could not be built (expected non-negative integer)", with no setting; num_train 0 blamed
    min_count ("lower it"), and FashionScenes' own name num_scenes is no data module's key."""
    from visattn.data.scenes import scenes_split
    from visattn.data.caption_datamodules import FashionScenesCaptionDataModule
    from visattn.data.detection import FashionScenesDetectionDataModule

    with pytest.raises(ConfigError, match=f"^{re.escape(message)}"):
        FashionScenesCaptionDataModule(**setting)
    if "vocab_scenes" not in setting and "num_train" not in setting:
        with pytest.raises(ConfigError, match=f"^{re.escape(message)}"):
            FashionScenesDetectionDataModule(**setting)
    settings = {"num_val": -1, "canvas_size": 64, "min_items": 1, "max_items": 3, "seed": 0, "root": None}
    with pytest.raises(ConfigError, match=r"^data.init_args.num_val=-1: give a whole number of 0 or more$"):
        scenes_split(settings, "val")


@pytest.mark.parametrize("count", [0, 2])
def test_describing_a_scene_without_items_or_with_uneven_parts_is_one_line(count):
    """An empty scene was an IndexError deep in the wording (a docstring audit)."""
    labels, colors, boxes = np.arange(count), ["red"] * count, np.zeros((1 if count else 0, 4))
    with pytest.raises(ConfigError, match=rf"^describe_scene: {count} labels, {count} colors and {len(boxes)} boxes; "
                                          "give one of each per item, one item or more$"):
        describe_scene(labels, colors, boxes, canvas_size=64)
