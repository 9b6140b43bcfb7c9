"""Detection data: bbox-aware pipelines keep boxes valid and labels on their boxes; COCO instances
reading (label mapping, crowd boxes, broken images); the detection data modules."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

from test_data import needs_fashion_mnist
from visattn.data import SkippedImageWarning
from visattn.data.detection import (
    MIN_BOX_SIDE,
    CocoDetection,
    CocoDetectionDataModule,
    FashionScenesDetectionDataModule,
    collate_detection,
    eval_detection_transforms,
    train_detection_transforms,
)
from visattn.errors import ConfigError

# COCO fixture: non-contiguous category ids, listed out of order; labels follow the sorted ids
CATEGORIES = [{"id": 7, "name": "dog"}, {"id": 3, "name": "cat"}, {"id": 5, "name": "bird"}]
CLASS_NAMES = ["cat", "bird", "dog"]
# file name -> (width, height, [(category id, [x, y, w, h], iscrowd)]); broken.png is truncated
COCO_IMAGES = {
    "a.png": (48, 40, [(3, [2, 4, 20, 16], 0), (7, [26, 10, 18, 24], 0), (5, [0, 0, 48, 40], 1)]),
    "b.png": (40, 48, [(5, [10, 12, 16, 20], 0)]),
    "broken.png": (48, 48, [(7, [1, 1, 10, 10], 0)]),
    "empty.png": (32, 32, []),
}


def write_coco_instances(root: Path) -> tuple[Path, Path]:
    """Write ``root/images/*.png`` (a grey rectangle per box on black) and ``root/instances.json``."""
    images_dir = Path(root) / "images"
    images_dir.mkdir(parents=True, exist_ok=True)
    images, annotations = [], []
    for image_id, (name, (width, height, boxes)) in enumerate(COCO_IMAGES.items(), start=1):
        pixels = np.zeros((height, width, 3), np.uint8)
        for category, (x, y, w, h), crowd in boxes:
            if not crowd:
                pixels[y : y + h, x : x + w] = 40 * (1 + [c["id"] for c in CATEGORIES].index(category))
            annotations.append({"id": len(annotations) + 1, "image_id": image_id, "category_id": category,
                                "bbox": [x, y, w, h], "area": w * h, "iscrowd": crowd})
        Image.fromarray(pixels).save(images_dir / name)
        images.append({"id": image_id, "file_name": name, "width": width, "height": height})
    (images_dir / "broken.png").write_bytes((images_dir / "broken.png").read_bytes()[:60])
    path = Path(root) / "instances.json"
    path.write_text(json.dumps({"images": images, "annotations": annotations, "categories": CATEGORIES}))
    return path, images_dir


# --- the property test: boxes stay valid and labels stay on their boxes --------------------


KINDS = ("inside", "on_border", "straddling", "zero_width", "zero_height", "outside", "inverted", "anywhere")


@st.composite
def _box(draw: st.DrawFn, width: int, height: int) -> tuple[float, float, float, float]:
    """One box of a random kind: valid ones and every way a box can be degenerate or misplaced."""
    def span(side: int) -> tuple[float, float]:  # a valid interval inside 0..side
        low = draw(st.floats(0, side - 1))
        return low, draw(st.floats(low + 1, side))

    (x1, x2), (y1, y2) = span(width), span(height)
    kind = draw(st.sampled_from(KINDS))
    if kind == "on_border":  # touches the image's edges
        x1, y2 = 0.0, float(height)
    elif kind == "straddling":  # partly outside
        x1, y2 = x1 - width, y2 + height
    elif kind == "zero_width":
        x2 = x1
    elif kind == "zero_height":
        y2 = y1
    elif kind == "outside":
        x1, x2 = x1 + width, x2 + width
    elif kind == "inverted":
        x1, x2 = x2, x1
    elif kind == "anywhere":
        x1, y1, x2, y2 = (draw(st.floats(-side, 2 * side)) for side in (width, height, width, height))
    return x1, y1, x2, y2


@st.composite
def _scene(draw: st.DrawFn) -> tuple[np.ndarray, np.ndarray, int]:
    """An image, 0-12 boxes of any kind and a random seed."""
    height, width = draw(st.integers(8, 48)), draw(st.integers(8, 48))
    boxes = draw(st.lists(_box(width, height), max_size=12))
    image = np.full((height, width, 3), 128, np.uint8)
    return image, np.array(boxes, np.float32).reshape(-1, 4), draw(st.integers(0, 2**31 - 1))


def _assert_valid(boxes: torch.Tensor, labels: torch.Tensor, image: torch.Tensor, n_in: int) -> None:
    height, width = image.shape[-2:]
    assert boxes.dtype == torch.float32 and labels.dtype == torch.int64
    assert boxes.shape == (len(labels), 4)
    x1, y1, x2, y2 = boxes.unbind(-1)
    assert bool((x1 >= 0).all() and (y1 >= 0).all() and (x2 <= width).all() and (y2 <= height).all())
    assert bool((x2 - x1 >= MIN_BOX_SIDE - 1e-4).all() and (y2 - y1 >= MIN_BOX_SIDE - 1e-4).all())
    assert len(set(labels.tolist())) == len(labels) and all(0 <= k < n_in for k in labels.tolist())


@pytest.mark.parametrize("make_pipeline", [train_detection_transforms, eval_detection_transforms])
@settings(max_examples=60, deadline=None)
@given(scene=_scene())
def test_pipelines_keep_boxes_valid_and_labels_on_their_boxes(make_pipeline, scene):
    image, boxes, seed = scene
    labels = np.arange(len(boxes))  # label = the box's identity
    transform = make_pipeline()
    transform(image, boxes[:0], labels[:0])  # seeds it for this process; every call below is seeded explicitly
    transform.pipeline.set_random_seed(seed)
    out_image, target = transform(image, boxes, labels)
    assert out_image.dtype == torch.float32 and out_image.shape[0] == 3 and float(out_image.max()) <= 1.0
    _assert_valid(target["boxes"], target["labels"], out_image, len(boxes))
    # Replay the same random transform on each box alone: a box comes out (or is dropped) exactly
    # as it does among the others, so the label next to it is its own.
    survivors = dict(zip(target["labels"].tolist(), target["boxes"]))
    for k in range(len(boxes)):
        transform.pipeline.set_random_seed(seed)
        _, alone = transform(image, boxes[k : k + 1], labels[k : k + 1])
        assert (k in survivors) == (len(alone["boxes"]) == 1)
        if k in survivors:
            torch.testing.assert_close(survivors[k], alone["boxes"][0], atol=1e-3, rtol=0)


def test_eval_pipeline_clips_and_drops_exactly():
    image = np.zeros((20, 30, 3), np.uint8)
    boxes = np.array([[-5, -5, 10, 10],  # clipped to 0,0,10,10
                      [25, 5, 40, 15],  # clipped to 25,5,30,15
                      [30, 0, 40, 20],  # entirely right of the image: dropped
                      [5, 5, 5, 15],  # zero width: dropped
                      [12, 8, 4, 2],  # inverted: dropped
                      [29.5, 0, 31, 20],  # 0.5 px wide once clipped: dropped
                      [0, 0, 30, 20]], np.float32)  # the whole image: kept
    out, target = eval_detection_transforms()(image, boxes, np.array([10, 11, 12, 13, 14, 15, 16]))
    assert out.shape == (3, 20, 30) and out.dtype == torch.float32
    assert target["labels"].tolist() == [10, 11, 16]
    assert target["boxes"].tolist() == [[0, 0, 10, 10], [25, 5, 30, 15], [0, 0, 30, 20]]


def test_train_pipeline_and_collate_accept_images_without_boxes():
    image = np.zeros((16, 24, 3), np.uint8)
    samples = [train_detection_transforms()(image, np.zeros((0, 4)), np.zeros(0)) for _ in range(2)]
    images, targets = collate_detection(samples)
    assert len(images) == 2 and images[0].shape == (3, 16, 24)
    assert targets[0]["boxes"].shape == (0, 4) and targets[0]["labels"].shape == (0,)
    assert targets[0]["labels"].dtype == torch.int64


# --- COCO instances ------------------------------------------------------------------------


def test_coco_detection_maps_labels_skips_crowds_and_broken_images(tmp_path):
    path, images_dir = write_coco_instances(tmp_path)
    dataset = CocoDetection(path, images_dir)
    assert dataset.class_names == CLASS_NAMES and len(dataset) == 4
    image, target = dataset[0]  # a.png: cat and dog; its crowd bird is left out
    assert image.shape == (3, 40, 48) and 0.0 <= float(image.min()) and float(image.max()) <= 1.0
    assert target["labels"].tolist() == [0, 2]
    assert target["boxes"].tolist() == [[2, 4, 22, 20], [26, 10, 44, 34]]
    assert dataset[1][1]["labels"].tolist() == [1]  # b.png: bird (category 5)
    with pytest.warns(SkippedImageWarning, match="broken.png"):
        image, target = dataset[2]  # broken.png: replaced by the next image, with that image's boxes
    assert image.shape == (3, 32, 32) and target["boxes"].shape == (0, 4)
    assert dataset.num_skipped == 1 and dataset.skipped == [images_dir / "broken.png"]
    # the val/test reading: categories mapped by name onto the training classes' order
    names = ["dog", "cat", "bird", "fish"]
    assert CocoDetection(path, images_dir, class_names=names)[0][1]["labels"].tolist() == [1, 0]


def test_evaluation_keeps_crowd_regions_flagged_and_leaves_broken_images_out(tmp_path):
    from visattn.data import for_evaluation

    path, images_dir = write_coco_instances(tmp_path)
    dataset = for_evaluation(CocoDetection(path, images_dir))
    _, target = dataset[0]  # a.png: cat, dog and a crowd of birds over the whole image
    assert target["labels"].tolist() == [0, 2, 1] and target["iscrowd"].tolist() == [0, 0, 1]
    assert target["boxes"][2].tolist() == [0, 0, 48, 40]
    with pytest.warns(SkippedImageWarning, match="broken.png"):
        assert dataset[2] is None


def test_coco_detection_one_line_errors(tmp_path):
    path, images_dir = write_coco_instances(tmp_path)
    with pytest.raises(ConfigError, match="no such file"):
        CocoDetection(tmp_path / "missing.json", images_dir)
    with pytest.raises(ConfigError, match="no such folder"):
        CocoDetection(path, tmp_path / "nowhere")
    with pytest.raises(ConfigError, match=r"categories \['bird'\] are not among the classes"):
        CocoDetection(path, images_dir, class_names=["cat", "dog"])
    data = json.loads(path.read_text())
    data["annotations"][0]["category_id"] = 99
    (tmp_path / "bad_category.json").write_text(json.dumps(data))
    with pytest.raises(ConfigError, match=r"category ids \[99\]"):
        CocoDetection(tmp_path / "bad_category.json", images_dir)
    for categories, message in ([], "lists no categories"), (
            [{"id": 1, "name": "cat"}, {"id": 2, "name": "cat"}], r"category names \['cat'\] are given to several ids"):
        (tmp_path / "odd_categories.json").write_text(json.dumps({**data, "annotations": [], "categories": categories}))
        with pytest.raises(ConfigError, match=message):
            CocoDetection(tmp_path / "odd_categories.json", images_dir)
    del data["categories"]
    (tmp_path / "no_categories.json").write_text(json.dumps(data))
    with pytest.raises(ConfigError, match="not COCO instances JSON"):
        CocoDetection(tmp_path / "no_categories.json", images_dir)


# --- data modules --------------------------------------------------------------------------


def test_coco_data_module_classes_loaders_and_missing_splits(tmp_path):
    path, images_dir = write_coco_instances(tmp_path)
    dm = CocoDetectionDataModule(str(path), str(images_dir), batch_size=2, num_workers=0)
    assert dm.num_classes == 3 and dm.class_names == CLASS_NAMES and dm.preprocessing == {"recipe": "detection"}
    images, targets = next(iter(dm.train_dataloader()))
    assert len(images) == len(targets) == 2 and all(t["boxes"].shape[1] == 4 for t in targets)
    assert dm.val_dataloader() == []  # no val_annotations: no validation
    with pytest.raises(ConfigError, match="set data.test_annotations"):
        dm.test_dataloader()
    with pytest.raises(ConfigError, match="batch_size=0"):
        CocoDetectionDataModule(str(path), str(images_dir), batch_size=0)


@pytest.mark.parametrize("keep", ["none", "crowds"])
def test_training_annotations_without_an_object_box_are_one_line(tmp_path, keep):
    """A detector trained on them would learn that nothing is ever there, and say nothing."""
    path, images_dir = write_coco_instances(tmp_path)
    data = json.loads(path.read_text())
    data["annotations"] = [a for a in data["annotations"] if a["iscrowd"]] if keep == "crowds" else []
    (tmp_path / "empty.json").write_text(json.dumps(data))
    with pytest.raises(ConfigError, match="empty.json: no object box to learn from"):
        CocoDetectionDataModule(str(tmp_path / "empty.json"), str(images_dir), num_workers=0)


@needs_fashion_mnist
def test_scenes_data_module_batches():
    dm = FashionScenesDetectionDataModule(batch_size=3, num_workers=0, num_train=6, num_val=2, num_test=2,
                                          canvas_size=48, min_items=2, max_items=3)
    assert dm.num_classes == 10 and dm.class_names[7] == "sneaker"
    assert dm.preprocessing == {"recipe": "detection", "input_size": [3, 48, 48]}
    images, targets = next(iter(dm.val_dataloader()))
    assert [tuple(i.shape) for i in images] == [(3, 48, 48)] * 2
    assert all(2 <= len(t["labels"]) <= 3 and int(t["labels"].max()) < 10 for t in targets)
    images, targets = next(iter(dm.train_dataloader()))
    assert len(images) == 3
    with pytest.raises(ConfigError, match="min_items=4"):
        FashionScenesDetectionDataModule(min_items=4, max_items=3)
