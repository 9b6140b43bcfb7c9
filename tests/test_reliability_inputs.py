"""The shared image corpus through every entry point: `classify`, `caption`, `detect`, `explain`, the
datasets and their DataLoader workers. Good files are predicted; broken files get one line naming them,
no traceback and no worker crash."""
import json
import re
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data import DataLoader

from fixtures_images import BAD_IMAGES, EXPECTED_SHAPES, write_image_corpus
from test_explain import _fake_checkpoint as write_classifier_checkpoint
from visattn import create_model
from visattn.cli import main
from visattn.data.coco import CaptionImages
from visattn.data.image_folder import ImageFolder, SkippedImageWarning
from visattn.data.transforms import check_unit_images, eval_transforms
from visattn.errors import ConfigError
from visattn.tasks.captioning import CaptioningTask
from visattn.inference.classifier import load_classifier

PREPROCESSING = {"input_size": [3, 32, 32], "mean": [0.5] * 3, "std": [0.5] * 3, "recipe": "small"}
TINY_SAT = dict(encoder_kwargs=dict(layers=[1, 1], widths=[8, 16], small_input=False), img_size=32, grid_size=4,
                embed_dim=16, hidden_dim=16, attn_dim=16)
VOCAB = ["<pad>", "<start>", "<end>", "<unk>", "a", "red", "top"]


def write_captioner_checkpoint(path: Path, **task_kwargs: Any) -> Path:
    """A checkpoint as `visattn fit` writes it for a tiny captioner (``task_kwargs``: CaptioningTask's)."""
    torch.manual_seed(0)
    task = CaptioningTask(model_kwargs=TINY_SAT, vocab=VOCAB, preprocessing=PREPROCESSING, **task_kwargs)
    torch.save({"hyper_parameters": dict(task.hparams), "state_dict": task.state_dict()}, path)
    return path


def write_detector_checkpoint(path: Path) -> Path:
    """A checkpoint as `visattn fit` writes it for a small FCOS detector."""
    torch.manual_seed(0)
    model = create_model("fcos_resnet20_cifar", num_classes=3, pretrained_backbone=False)
    hparams = {"model_name": "fcos_resnet20_cifar", "num_classes": 3, "model_kwargs": {},
               "class_names": ["top", "bag", "boot"], "preprocessing": {**PREPROCESSING, "input_size": [3, 64, 64]}}
    torch.save({"hyper_parameters": hparams, "state_dict": {f"model.{k}": v for k, v in model.state_dict().items()}},
               path)
    return path


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> dict[str, Path]:
    return write_image_corpus(tmp_path_factory.mktemp("corpus"))


WRITERS = {"classify": write_classifier_checkpoint, "caption": write_captioner_checkpoint,
           "detect": write_detector_checkpoint}
OPTIONS = {"classify": ["--topk", "2"], "caption": ["--beam-size", "1", "--max-len", "3"], "detect": []}
RESULT_KEY = {"classify": "predictions", "caption": "caption", "detect": "detections"}


@pytest.mark.parametrize("command", ["caption", "classify", "detect"])
def test_corpus_through_cli_json_one_record_per_file(command, corpus, tmp_path, capsys):
    checkpoint = WRITERS[command](tmp_path / f"{command}.ckpt")
    folder = next(iter(corpus.values())).parent
    code = main([command, str(folder), "--checkpoint", str(checkpoint), "--json", *OPTIONS[command]])
    out, err = capsys.readouterr()
    records = {Path(r["file"]).name: r for r in map(json.loads, out.splitlines())}  # every line is JSON
    assert set(records) == {path.name for path in corpus.values()}
    for name, path in corpus.items():
        record = records[path.name]
        if name in BAD_IMAGES:
            assert path.name in record["error"] and "\n" not in record["error"], record
        else:
            assert "error" not in record and RESULT_KEY[command] in record, record
    assert code == 1 and f"{len(BAD_IMAGES)} of {len(corpus)} files" in err and "Traceback" not in err


@pytest.mark.parametrize("command", ["caption", "classify", "detect"])
def test_batches_keep_file_order_and_give_one_at_a_times_results(command, corpus, tmp_path, capsys):
    checkpoint = WRITERS[command](tmp_path / f"{command}.ckpt")
    folder = next(iter(corpus.values())).parent
    runs = []
    for batch_size in ("1", "4"):
        code = main([command, str(folder), "--checkpoint", str(checkpoint), "--json", "--batch-size", batch_size,
                     *OPTIONS[command]])
        assert code == 1  # the corpus holds broken files: each is reported, the rest give results
        runs.append([json.loads(line) for line in capsys.readouterr().out.splitlines()])
    one_at_a_time, batched = runs
    assert [r["file"] for r in batched] == [r["file"] for r in one_at_a_time] == sorted(r["file"] for r in batched)
    for single, together in zip(one_at_a_time, batched):
        assert single.keys() == together.keys()
        if command == "caption" and "caption" in single:
            assert together["caption"] == single["caption"]
        if command == "classify" and "predictions" in single:
            assert [p["label"] for p in together["predictions"]] == [p["label"] for p in single["predictions"]]
            assert [p["prob"] for p in together["predictions"]] == pytest.approx(
                [p["prob"] for p in single["predictions"]], abs=1e-3)
    # detect pads a batch to its largest image, so its detections are compared only for keys: FCOS's
    # GroupNorm takes its statistics over the padding too (README, "pads a batch")
    assert command == "detect" or any(r.get("caption") or r.get("predictions") for r in batched)


@pytest.mark.parametrize("name", sorted(EXPECTED_SHAPES) + sorted(BAD_IMAGES))
def test_corpus_through_explain(name, corpus, tmp_path, capsys):
    checkpoint = write_classifier_checkpoint(tmp_path / "tiny.ckpt")
    out = tmp_path / "map.png"
    code = main(["explain", str(corpus[name]), "--checkpoint", str(checkpoint), "--method", "rollout",
                 "--out", str(out)])
    stdout, stderr = capsys.readouterr()
    if name in BAD_IMAGES:  # its own line, as among many files (--out-dir), exit 1
        assert code == 1 and not out.exists()
        assert stdout.startswith(f"{corpus[name]}: error: ") and stdout.count("\n") == 1
        assert stderr == "visattn: 1 of 1 files could not be explained\n"
    else:
        assert code == 0 and f"map written to {out}" in stdout
        with Image.open(out) as png:
            assert png.format == "PNG"


def _image_folder_dataset(corpus: dict[str, Path], root: Path):
    (root / "things").mkdir(parents=True)
    for path in corpus.values():
        (root / "things" / path.name).write_bytes(path.read_bytes())
    return ImageFolder(root, eval_transforms(16), classes=["things"])  # one class: given, as for a test folder


def _caption_images_dataset(corpus: dict[str, Path], root: Path):
    return CaptionImages([(path, ["a caption"]) for path in corpus.values()], transform=eval_transforms(16))


@pytest.mark.parametrize("make_dataset", [_image_folder_dataset, _caption_images_dataset],
                         ids=["image_folder", "caption_images"])
def test_corpus_through_dataloader_workers(make_dataset, corpus, tmp_path):
    dataset = make_dataset(corpus, tmp_path / "data")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", SkippedImageWarning)  # each worker warns on its own stderr
        batches = list(DataLoader(dataset, batch_size=4, num_workers=2))
    # broken files are replaced by the next good one: every batch is whole, no worker died
    assert sum(len(images) for images, _ in batches) == len(corpus)
    assert all(images.shape[1:] == (3, 16, 16) and torch.isfinite(images).all() for images, _ in batches)
    assert sorted(p.name for p in dataset.skipped) == sorted(corpus[name].name for name in BAD_IMAGES)


RESCALE = r"rescale them to 0..255 and give image.astype\(np.uint8\), or read files with visattn.data.image_io.decode_image"


@pytest.mark.parametrize("dtype, fix", [
    ("float64", r"for values in 0..1 give \(image \* 255\).round\(\).astype\(np.uint8\)"),
    ("float32", r"for values in 0..1 give \(image \* 255\).round\(\).astype\(np.uint8\)"),
    ("bool", r"give image.astype\(np.uint8\) \* 255"),
    ("uint16", RESCALE),
    ("int64", RESCALE),
])
def test_an_array_of_other_pixels_than_uint8_is_one_line(dtype, fix):
    """They reached PIL, whose TypeError ("Cannot handle this data type") was the message; none is rescaled."""
    transform = eval_transforms(28, recipe="small")
    image = np.random.default_rng(0).random((28, 28, 3)).astype(dtype)
    with pytest.raises(ConfigError, match=rf"^image: {dtype} pixels, not uint8 0..255; {fix}$"):
        transform(image)
    with pytest.raises(ConfigError, match=rf"^image: {dtype} pixels"):
        transform(image[..., 0])  # gray too


@pytest.mark.parametrize("shape", [(0, 0, 3), (0, 7, 3), (7, 0), (0, 0, 1)])
def test_an_array_without_pixels_is_one_line(shape):
    """A 0x0 image came out as a constant tensor, which a classifier then classified."""
    with pytest.raises(ConfigError, match=rf"^image: shape {re.escape(str(shape))} has no pixels; check how it was "
                                          r"decoded or cropped$"):
        eval_transforms(28, recipe="small")(np.zeros(shape, np.uint8))


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
def test_non_finite_pixels_are_one_line_for_classifiers_and_detectors(bad):
    """A detector found nothing in an image with a NaN pixel, and a classifier gave NaN probabilities."""
    fix = r"check how they were computed \(a division by zero\?\), or replace them with torch.nan_to_num$"
    normalised = torch.randn(2, 3, 28, 28)
    normalised[1, 0, 3, 3] = bad
    with pytest.raises(ConfigError, match=rf"^images: some pixels are NaN or infinite; {fix}"):
        load_classifier("se_resnet20_cifar.fmnist").predict(normalised)
    unit = [torch.rand(3, 64, 64), torch.rand(3, 64, 64)]
    unit[1][0, 5, 5] = bad
    with pytest.raises(ConfigError, match=rf"^image 1: some pixels are NaN or infinite; {fix}"):
        check_unit_images(unit)
