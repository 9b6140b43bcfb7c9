"""The shared image corpus through every entry point: `classify`, `caption`, `detect`, `explain`, the
datasets and their DataLoader workers. Good files are predicted; broken files get one line naming them,
no traceback and no worker crash."""
import json
import warnings
from pathlib import Path
from typing import Any

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
from visattn.data.transforms import eval_transforms
from visattn.tasks.captioning import CaptioningTask

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
    if name in BAD_IMAGES:
        assert code == 2 and not out.exists()
        assert stderr.count("\n") == 1 and corpus[name].name in stderr and "Traceback" not in stderr
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
