"""DetectionTask and detection inference: mAP on hand-made predictions, `visattn fit` on a tiny COCO
fixture (FCOS and DETR), then `visattn evaluate`, `visattn detect` and `visattn save-weights`."""
import json
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from PIL import Image
from torch import nn

from test_detection_data import CLASS_NAMES, write_coco_instances
from test_data import needs_fashion_mnist
from visattn import create_model
from visattn.cli import main
from visattn.errors import ArgumentError, ConfigError, VisattnWarning
from visattn.pretrained import load_index
from visattn.inference.detector import Detector, detection_records, load_detector
from visattn.inference.detection_scoring import evaluate_detector
from visattn.tasks.detection import DetectionTask

REPO = Path(__file__).resolve().parents[1]

BACKBONE = {"layers": [1, 1, 1], "widths": [8, 16, 32]}
TINY = {
    "fcos": {"backbone_kwargs": BACKBONE, "out_channels": 32, "min_size": 48, "max_size": 64},
    "detr": {"backbone_kwargs": BACKBONE, "hidden_dim": 32, "num_heads": 2, "num_encoder_layers": 1,
             "num_decoder_layers": 1, "num_queries": 8, "min_size": 48, "max_size": 64},
}


class _Oracle(nn.Module):
    """Returns, for each image, the detections stored under its first pixel value."""

    def __init__(self, detections: dict[int, dict[str, torch.Tensor]]) -> None:
        super().__init__()
        self.detections = detections

    def forward(self, images: list[torch.Tensor]) -> list[dict[str, torch.Tensor]]:
        return [self.detections[int(image[0, 0, 0])] for image in images]


def _map_of(predictions: dict[int, dict[str, torch.Tensor]], targets: dict[int, dict[str, torch.Tensor]]) -> dict:
    detector = Detector(_Oracle(predictions), ["a", "b"], {}, "oracle", "oracle", {})
    batch = ([torch.full((3, 32, 32), float(k)) for k in targets], list(targets.values()))
    return evaluate_detector(detector, [batch])


def test_a_detection_on_a_crowd_region_is_no_false_positive():
    """COCO's rule, which pycocotools applies: matches to an iscrowd region are ignored."""
    obj, crowd = [2.0, 2.0, 12.0, 12.0], [16.0, 4.0, 30.0, 20.0]
    found = {"boxes": torch.tensor([crowd, obj]), "scores": torch.tensor([0.9, 0.8]), "labels": torch.tensor([0, 0])}
    target = {"boxes": torch.tensor([obj, crowd]), "labels": torch.tensor([0, 0])}
    assert _map_of({0: found}, {0: {**target, "iscrowd": torch.tensor([0, 1])}})["map"] == pytest.approx(1.0)
    dropped = {"boxes": torch.tensor([obj]), "labels": torch.tensor([0])}  # the crowd left out, as for training
    assert _map_of({0: found}, {0: dropped})["map"] == pytest.approx(0.5)  # then the crowd detection is a false positive


def test_map_of_perfect_shifted_and_mislabelled_predictions():
    targets = {0: {"boxes": torch.tensor([[2.0, 2.0, 12.0, 12.0], [16.0, 4.0, 30.0, 20.0]]),
                   "labels": torch.tensor([0, 1])},
               1: {"boxes": torch.tensor([[5.0, 5.0, 25.0, 25.0]]), "labels": torch.tensor([1])}}
    perfect = {k: {**t, "scores": torch.full((len(t["labels"]),), 0.9)} for k, t in targets.items()}
    assert _map_of(perfect, targets) == {"map": 1.0, "map50": 1.0, "n": 2}
    # every box shifted by 1 px: IoU 0.68-0.82, so all match at 0.5 but none at 0.85 and above
    shifted = {k: {**p, "boxes": p["boxes"] + 1.0} for k, p in perfect.items()}
    scores = _map_of(shifted, targets)
    assert scores["map50"] == 1.0 and 0.2 < scores["map"] < 0.8
    swapped = {k: {**p, "labels": 1 - p["labels"]} for k, p in perfect.items()}
    assert _map_of(swapped, targets)["map50"] == 0.0


def test_detection_records_name_category_ids_where_the_run_recorded_them():
    found = {"boxes": torch.tensor([[1.0, 2.0, 3.0, 4.0], [0.0, 0.0, 5.0, 5.0]]), "scores": torch.tensor([0.9, 0.4]),
             "labels": torch.tensor([1, 0])}
    assert detection_records(found, ["cat", "dog"], [17, 4]) == [
        {"label": "dog", "index": 1, "category_id": 4, "score": pytest.approx(0.9), "box": [1.0, 2.0, 3.0, 4.0]},
        {"label": "cat", "index": 0, "category_id": 17, "score": pytest.approx(0.4), "box": [0.0, 0.0, 5.0, 5.0]}]
    # no ids recorded (a checkpoint from before they were), or none for a class: no category_id, not a guess
    assert all("category_id" not in d for d in detection_records(found, ["cat", "dog"]))
    assert ["category_id" in d for d in detection_records(found, ["cat", "dog"], [None, 4])] == [True, False]


def test_task_refuses_a_model_that_is_no_detector():
    with pytest.raises(ConfigError, match="not a detector"):
        DetectionTask(model_name="cbam_resnet20_cifar")
    with pytest.raises(ConfigError, match="not a detector"):
        load_detector(model="cbam_resnet20_cifar")
    with pytest.raises(ConfigError, match="2 class_names for num_classes=3"):
        DetectionTask(model_name="fcos_resnet20_cifar", num_classes=3, class_names=["a", "b"],
                      model_kwargs=TINY["fcos"])


def _fit(head: str, tmp_path, annotations, images_dir) -> str:
    out = tmp_path / f"run_{head}"
    code = main([
        "fit", "--config", f"configs/detection/{head}_scenes.yaml", "--trainer.max_steps", "3",
        "--trainer.check_val_every_n_epoch", "1",
        "--trainer.enable_progress_bar", "false", "--trainer.default_root_dir", str(out), "--trainer.logger", "false",
        "--trainer.callbacks", json.dumps([{"class_path": "lightning.pytorch.callbacks.ModelCheckpoint",
                                            "init_args": {"dirpath": str(out / "ckpt"), "monitor": "val/map50",
                                                          "mode": "max", "save_last": True}}]),
        "--model.model_kwargs", json.dumps(TINY[head]),
        "--data", "visattn.data.detection.CocoDetectionDataModule", "--data.train_annotations", str(annotations),
        "--data.images_dir", str(images_dir), "--data.val_annotations", str(annotations),
        "--data.batch_size", "2", "--data.num_workers", "0",
    ])
    assert code == 0
    checkpoint = out / "ckpt" / "last.ckpt"
    hparams = torch.load(checkpoint, map_location="cpu", weights_only=True)["hyper_parameters"]
    assert hparams["num_classes"] == 3 and hparams["class_names"] == CLASS_NAMES
    assert hparams["preprocessing"] == {"recipe": "detection"}
    return str(checkpoint)


@needs_fashion_mnist
def test_a_trainer_of_ones_own_given_a_data_module_refuses_a_task_built_without_its_class_names(tmp_path):
    """Outside `visattn fit`, which links them: the run trained, and its checkpoint detected classes '0', '1', ..."""
    import re

    import lightning.pytorch as pl
    from visattn.data.detection import FashionScenesDetectionDataModule

    data = FashionScenesDetectionDataModule(batch_size=2, num_workers=0, num_train=2, num_val=2, num_test=2)
    task = DetectionTask("fcos_resnet20_cifar", num_classes=data.num_classes, model_kwargs=TINY["fcos"])
    trainer = pl.Trainer(max_steps=1, logger=False, enable_progress_bar=False, enable_model_summary=False,
                         accelerator="cpu", default_root_dir=tmp_path)
    with pytest.raises(ConfigError, match=re.escape(
            "DetectionTask's class_names and category_ids and preprocessing are not FashionScenesDetectionDataModule's "
            "(class_names and category_ids and preprocessing not given); build it with DetectionTask(..., "
            "num_classes=data.num_classes, class_names=data.class_names, category_ids=data.category_ids, "
            "preprocessing=data.preprocessing) where data is the data module")):
        trainer.fit(task, datamodule=data)
    assert not list(tmp_path.rglob("*.ckpt"))


def test_the_coco_template_trains_on_a_users_instances_json(tmp_path, capsys):
    """There was no config for one's own COCO data: the scenes configs needed the data class swapped, and their 64 px
    architectures shrank every photo to at most 64 px."""
    config = REPO / "configs" / "detection" / "coco_template.yaml"
    settings = yaml.safe_load(config.read_text())
    assert settings["model"]["init_args"]["model_kwargs"]["min_size"] == 800  # photo size, as torchvision's
    annotations, images_dir = write_coco_instances(tmp_path)
    out = tmp_path / "run"
    assert main(["fit", "--config", str(config), "--trainer.max_steps", "2", "--trainer.enable_progress_bar", "false",
                 "--trainer.default_root_dir", str(out), "--trainer.logger", "false", "--trainer.callbacks",
                 json.dumps([{"class_path": "lightning.pytorch.callbacks.ModelCheckpoint",
                              "init_args": {"dirpath": str(out / "ckpt"), "monitor": "val/map", "mode": "max",
                                            "save_last": True}}]),
                 "--model.init_args.model_name", "fcos_resnet20_cifar", "--model.init_args.model_kwargs",
                 json.dumps(TINY["fcos"]), "--data.init_args.train_annotations", str(annotations),
                 "--data.init_args.images_dir", str(images_dir), "--data.init_args.val_annotations", str(annotations),
                 "--data.init_args.batch_size", "2", "--data.init_args.num_workers", "0",
                 # jsonargparse passed a key's null as the text 'None', which the detector refused naming None
                 "--model.init_args.model_kwargs.trainable_backbone_layers", "null"]) == 0
    hparams = torch.load(out / "ckpt" / "last.ckpt", map_location="cpu", weights_only=True)["hyper_parameters"]
    assert hparams["class_names"] == CLASS_NAMES and hparams["model_kwargs"]["trainable_backbone_layers"] is None
    # Each detection names its category's id in the user's file (3, 5, 7 here): the label index (0, 1, 2) was all
    # there was to give COCOeval, where it matched no category, or with ids 1..K the wrong ones.
    assert hparams["category_ids"] == [3, 5, 7]
    capsys.readouterr()
    assert main(["detect", str(images_dir / "a.png"), str(images_dir / "b.png"), "--checkpoint",
                 str(out / "ckpt" / "last.ckpt"), "--score-threshold", "0", "--json"]) == 0
    found = [d for line in capsys.readouterr().out.splitlines() for d in json.loads(line)["detections"]]
    assert found and {(d["label"], d["category_id"]) for d in found} <= {("cat", 3), ("bird", 5), ("dog", 7)}
    # validate without validation annotations printed no metric and exited 0
    capsys.readouterr()
    assert main(["validate", "--config", str(config), "--ckpt_path", str(out / "ckpt" / "last.ckpt"),
                 "--trainer.logger", "false", "--trainer.callbacks", "[]", "--model.init_args.model_name",
                 "fcos_resnet20_cifar", "--model.init_args.model_kwargs", json.dumps(TINY["fcos"]),
                 "--data.init_args.train_annotations", str(annotations), "--data.init_args.images_dir", str(images_dir),
                 "--data.init_args.num_workers", "0"]) == 2
    assert capsys.readouterr().err.endswith("visattn: error: validate: CocoDetectionDataModule holds no validation "
                                            "data; set data.init_args.val_annotations (and val_images_dir, if its "
                                            "images are in another folder)\n")


@pytest.mark.slow
def test_fit_tiny_coco_fcos_then_evaluate_detect_and_save(tmp_path, weights_tmp, capsys):
    annotations, images_dir = write_coco_instances(tmp_path)
    checkpoint = _fit("fcos", tmp_path, annotations, images_dir)
    capsys.readouterr()

    assert main(["evaluate", "--checkpoint", checkpoint, "--dataset", f"coco:{annotations}:{images_dir}"]) == 0
    metrics = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert set(metrics) == {"map", "map50", "n", "skipped"} and -1.0 <= metrics["map50"] <= 1.0
    assert (metrics["n"], metrics["skipped"]) == (3, 1)  # broken.png left out, and counted

    files = [str(images_dir / name) for name in ("a.png", "broken.png", "b.png")]
    out = tmp_path / "drawn"
    code = main(["detect", *files, "--checkpoint", checkpoint, "--score-threshold", "0", "--out", str(out), "--json"])
    assert code == 1  # broken.png failed, the others were still processed
    records = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [r["file"] for r in records] == files and "broken.png" in records[1]["error"]
    for record in (records[0], records[2]):
        assert record["detections"] and {"label", "index", "score", "box"} <= set(record["detections"][0])
        assert record["detections"][0]["label"] in CLASS_NAMES
    assert sorted(p.name for p in out.iterdir()) == ["a.png", "b.png"]

    assert main(["save-weights", "--checkpoint", checkpoint, "--tag", "tiny", "--out-dir", str(weights_tmp)]) == 0
    arch = torch.load(checkpoint, map_location="cpu", weights_only=True)["hyper_parameters"]["model_name"]
    entry = json.loads((weights_tmp / "index.json").read_text())[f"{arch}.tiny"]
    assert entry["task"] == "detection" and entry["labels"] == CLASS_NAMES and entry["num_classes"] == 3
    shipped, trained = load_detector(model=f"{arch}.tiny"), load_detector(checkpoint=checkpoint)
    assert entry["category_ids"] == shipped.category_ids == trained.category_ids == [3, 5, 7]  # the file's ids
    image = [torch.rand(3, 40, 48)]
    torch.testing.assert_close(shipped.detect(image)[0]["scores"], trained.detect(image)[0]["scores"])


@pytest.mark.slow
def test_fit_tiny_coco_detr_then_evaluate(tmp_path, capsys):
    annotations, images_dir = write_coco_instances(tmp_path)
    checkpoint = _fit("detr", tmp_path, annotations, images_dir)
    capsys.readouterr()
    code = main(["evaluate", "--checkpoint", checkpoint, "--dataset", f"coco:{annotations}:{images_dir}", "--json"])
    assert code == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 1 and json.loads(lines[0])["n"] == 3 and json.loads(lines[0])["skipped"] == 1
    assert main(["evaluate", "--checkpoint", checkpoint, "--dataset", "imagenet"]) == 2
    assert "detectors take fashion-scenes or coco:" in capsys.readouterr().err

    # where each detection looked: one PNG per image, a panel per detection
    code = main(["detect", str(images_dir), "--checkpoint", checkpoint, "--score-threshold", "0",
                 "--attention-out", str(tmp_path / "attention"), "--json"])
    records = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    readable = [r for r in records if "error" not in r]
    assert code == (0 if len(readable) == len(records) else 1)  # 1: the fixture's unreadable file, reported
    assert readable and all(r["detections"] for r in readable)
    assert sorted(Path(r["attention"]).name for r in readable) == sorted(p.name for p in (tmp_path / "attention").iterdir())


def test_a_detr_with_fewer_queries_than_a_training_image_has_objects_is_refused_before_training(tmp_path, capsys):
    """The check ran in the training forward only: a run stopped when the shuffle reached such an image, which on a
    large COCO file may be deep into an epoch (a data audit). It now runs before the run's folder is written."""
    annotations, images_dir = write_coco_instances(tmp_path)  # a.png: 2 objects (and a crowd region)
    out = tmp_path / "run"
    code = main(["fit", "--config", "configs/detection/detr_scenes.yaml", "--trainer.max_steps", "3",
                 "--trainer.default_root_dir", str(out), "--trainer.logger", "false",
                 "--trainer.callbacks", json.dumps([{"class_path": "lightning.pytorch.callbacks.ModelCheckpoint",
                                                     "init_args": {"dirpath": str(out / "ckpt")}}]),
                 "--model.model_kwargs", json.dumps({**TINY["detr"], "num_queries": 1}),
                 "--data", "visattn.data.detection.CocoDetectionDataModule", "--data.train_annotations",
                 str(annotations), "--data.images_dir", str(images_dir), "--data.num_workers", "0"])
    assert code == 2 and not out.exists()
    assert capsys.readouterr().err.splitlines()[-1] == (
        "visattn: error: the training data: an image holds 2 objects, more than num_queries=1 (one object per query; "
        "the rest would go unmatched); build the model with num_queries of at least 2 (in a config: model_kwargs: "
        "{num_queries: 2})")
    code = main(["fit", "--config", "configs/detection/detr_scenes.yaml", "--trainer.max_steps", "1",
                 "--trainer.default_root_dir", str(out), "--trainer.logger", "false", "--trainer.callbacks=[]",
                 "--model.model_kwargs", json.dumps({**TINY["detr"], "num_queries": 2}),
                 "--data.init_args.num_train", "8", "--data.init_args.max_items", "3"])
    assert code == 2 and "an image holds 3 objects, more than num_queries=2" in capsys.readouterr().err


@pytest.mark.parametrize("precision", ["bf16-true", "64-true"])
def test_a_detector_fit_at_a_precision_that_casts_its_batches_is_one_line_before_training(precision, tmp_path,
                                                                                          monkeypatch, capsys):
    """Lightning casts every float of a batch to the weights' dtype: the boxes, box losses and matching went
    bf16 or float64 mid-run (a dtype traceback, or a target check blaming the data). Refused before the run's
    folder (config.yaml, the checkpoint folder's claim) is written."""
    monkeypatch.chdir(tmp_path)
    code = main(["fit", "--config", str(REPO / "configs/detection/detr_scenes.yaml"), "--trainer.max_steps", "1",
                 "--trainer.accelerator", "cpu", "--trainer.precision", precision, "--trainer.enable_progress_bar",
                 "false", "--model.model_kwargs", json.dumps(TINY["detr"]), "--data.init_args.num_train", "8",
                 "--data.init_args.num_workers", "0"])
    assert code == 2 and not list(tmp_path.iterdir())
    assert capsys.readouterr().err.splitlines()[-1] == (
        f"visattn: error: trainer.precision {precision}: a detector's boxes, box losses and matching need float32; "
        "use trainer.precision bf16-mixed (16-bit arithmetic, float32 weights) or 32-true")


def test_detr_attention_maps_are_the_queries_own_and_leave_the_model_as_it_was():
    torch.manual_seed(0)
    model = create_model("detr_resnet20_cifar", num_classes=3, pretrained_backbone=False, **TINY["detr"]).eval()
    detector = Detector(model, CLASS_NAMES, {}, "tiny", "detr_resnet20_cifar", {})
    images = [torch.rand(3, 48, 64), torch.rand(3, 40, 40)]
    plain, explained = detector.detect(images), detector.detect(images, attention=True)
    attention = model.transformer.decoder[-1].cross_attn
    assert not attention.keep_attention and attention.last_attention is None
    attention.keep_attention = True  # a caller recording the attention itself keeps doing so
    detector.detect(images, attention=True)
    assert attention.keep_attention and attention.last_attention is not None
    for found, with_maps, image in zip(plain, explained, images):
        torch.testing.assert_close(with_maps["boxes"], found["boxes"], atol=1e-4, rtol=1e-4)
        assert with_maps["attention"].shape == (len(found["boxes"]), *image.shape[-2:])
        assert with_maps["attention"].min() >= 0 and torch.equal(with_maps["queries"].unique(), torch.arange(8))


def test_fcos_maps_are_each_detections_gradient_times_input_and_leave_the_model_as_it_was():
    torch.manual_seed(0)
    model = create_model("fcos_resnet20_cifar", num_classes=3, pretrained_backbone=False, **TINY["fcos"]).train()
    model.backbone.body.layer1.eval()  # a module with its own mode must keep it
    modes = [m.training for m in model.modules()]
    detector = Detector(model, CLASS_NAMES, {}, "tiny", "fcos_resnet20_cifar", {})
    images = [torch.rand(3, 48, 64), torch.rand(3, 40, 40)]
    explained = detector.detect(images, score_threshold=0.05, attention=True)
    assert [m.training for m in model.modules()] == modes and all(p.grad is None for p in model.parameters())
    model.eval()
    for image, found in zip(images, explained):
        assert found["attention"].shape == (len(found["boxes"]), *image.shape[-2:])
        # the reference: one detection's score, recomputed on its own, differentiated by hand
        pixels = image.clone().requires_grad_(True)
        again = model([pixels])[0]
        k = int((again["scores"] - found["scores"][0]).abs().argmin())
        (gradient,) = torch.autograd.grad(again["scores"][k], pixels)
        torch.testing.assert_close(found["attention"][0], (gradient * image).sum(0).abs(), atol=1e-5, rtol=1e-4)


@needs_fashion_mnist
@pytest.mark.parametrize("name", ["detr_se_resnet20_cifar.scenes", "fcos_se_resnet20_cifar.scenes"])
def test_shipped_detectors_look_at_what_they_found(name):
    from visattn.data.scenes import FashionScenes
    from visattn.inference.detector import load_detector

    detector = load_detector(name)
    scenes = FashionScenes("test", num_scenes=6)
    images = [torch.from_numpy(scene.image).permute(2, 0, 1).float() / 255 for scene in scenes]
    hits = []
    for found in detector.detect(images, score_threshold=0.5, attention=True):
        for heat, (x0, y0, x1, y1) in zip(found["attention"], found["boxes"].tolist()):
            row, col = divmod(int(heat.argmax()), heat.shape[1])
            hits.append(x0 <= col <= x1 and y0 <= row <= y1)
    assert len(hits) >= 6 and sum(hits) / len(hits) >= 0.9  # the peak of a detection's map lies in its box


@pytest.mark.parametrize("max_side", [0, -5, 2.5, True])
def test_an_attention_max_side_that_is_no_count_of_pixels_is_one_line(max_side):
    """0 and -5 had drawn 1x1 maps."""
    from visattn.explain.detections import detection_maps
    from visattn.inference.detector import load_detector

    detector, image = load_detector("detr_se_resnet20_cifar.scenes"), torch.rand(3, 64, 64)
    with pytest.raises(ArgumentError, match=rf"^attention_max_side={max_side!r}: give a whole number of pixels >= 1"):
        detector.detect([image], attention=True, attention_max_side=max_side)
    with pytest.raises(ArgumentError, match=rf"^max_side={max_side!r}: give a whole number of pixels >= 1"):
        detection_maps(detector.model, [image], max_side=max_side)
    assert detector.detect([image], attention=True, attention_max_side=16)[0]["attention"].shape[1:] == (16, 16)


@pytest.mark.parametrize("head", ["fcos", "detr"])
def test_scenes_configs_start_from_the_fmnist_backbone_they_were_trained_from(head, tmp_path, monkeypatch):
    import yaml

    from visattn.pretrained import read_state_dict

    repo = Path(__file__).resolve().parents[1]
    monkeypatch.chdir(tmp_path)  # the backbone is named ARCH.TAG, so any working directory will do
    init_args = yaml.safe_load((repo / "configs" / "detection" / f"{head}_scenes.yaml").read_text())["model"]["init_args"]
    with warnings.catch_warnings():
        warnings.simplefilter("error", VisattnWarning)  # the configs give the normalisation the weights trained with
        task = DetectionTask(model_name=init_args["model_name"], model_kwargs=init_args["model_kwargs"])
    assert task.model.transform.image_mean == [0.485, 0.456, 0.406]
    # the shipped detectors' recipe: stage 1 (0.9418), not the architecture's default weights (stage 4)
    expected = read_state_dict(repo / "weights" / "se_resnet20_cifar.fmnist.safetensors")
    backbone = {k: v for k, v in task.model.state_dict().items() if k.endswith("layer1.0.conv1.weight")}
    assert len(backbone) == 1
    torch.testing.assert_close(next(iter(backbone.values())), expected["layer1.0.conv1.weight"])


@pytest.mark.parametrize("head", ["fcos", "detr"])
def test_a_backbone_started_from_weights_of_other_normalisation_warns_unless_the_detectors_is_given(head):
    """Fashion-MNIST backbone weights (mean 0.286, std 0.353) had taken ImageNet's normalisation without a word
    (their own top-1 fell from 0.9455 to 0.352 on it); classifiers warned."""
    head_kwargs = {k: v for k, v in TINY[head].items() if k != "backbone_kwargs"}  # the weights' widths
    kwargs = {"backbone": "se_resnet20_cifar", "pretrained_backbone": "se_resnet20_cifar.fmnist", **head_kwargs}
    with pytest.warns(VisattnWarning, match=r"^the detector normalises with mean \[0.485, 0.456, 0.406\], std .* but its "
                                            r"backbone's starting weights were trained with mean \[0.286, 0.286, 0.286\]"
                                            r".*; set model.init_args.model_kwargs.image_mean and image_std"):
        DetectionTask(f"{head}_resnet20_cifar", num_classes=3, model_kwargs=kwargs)
    with warnings.catch_warnings():
        warnings.simplefilter("error", VisattnWarning)
        DetectionTask(f"{head}_resnet20_cifar", num_classes=3,
                      model_kwargs={**kwargs, "image_mean": [0.286] * 3, "image_std": [0.353] * 3})
        DetectionTask(f"{head}_resnet20_cifar", num_classes=3, model_kwargs={**kwargs, "pretrained_backbone": False})


def _tiny_detector(head: str) -> Detector:
    arch = f"{head}_resnet20_cifar"
    model = create_model(arch, num_classes=3, pretrained_backbone=False, **TINY[head]).eval()
    return Detector(model, CLASS_NAMES, {}, "tiny", arch, {})


@pytest.mark.parametrize("images, message", [
    ([torch.randint(0, 256, (3, 40, 48), dtype=torch.int32)],
     "image 0: torch.int32 pixels, not floats in 0..1 or uint8"),
    ([torch.rand(3, 40, 48), torch.rand(3, 40, 48) * 255],
     r"image 1: pixels span .*, not 0..1; pixels in 0..255\? divide by 255"),
    ([torch.rand(1, 40, 48)], r"image 0: shape \(1, 40, 48\), not \(3, H, W\)"),
    ("scene.png", "images: a str, not a list of"),
    (torch.rand(3, 40, 48), r"images: one tensor of shape \(3, 40, 48\), not a list of images; pass \[image\]"),
])
def test_detect_refuses_what_is_no_list_of_0_to_1_images_in_one_line(images, message):
    with pytest.raises(ConfigError, match=message):
        _tiny_detector("fcos").detect(images)


@pytest.mark.parametrize("head", ["fcos", "detr"])
def test_uint8_images_give_what_their_floats_give_and_detect_files_passes_them_as_bytes(head, tmp_path, monkeypatch):
    """``detect`` held each photo of a batch as float32, four bytes a pixel, though the model shrinks it: eight
    48-megapixel photos took 6.4 GB. uint8 images stay bytes until the model's transform takes each in turn."""
    from visattn.data.transforms import to_byte_tensor, to_tensor
    from visattn.inference.detector import detect_files

    detector = _tiny_detector(head)
    rng = np.random.default_rng(0)
    photos = [rng.integers(0, 256, (h, w, 3), dtype=np.uint8) for h, w in ((40, 48), (56, 30), (40, 48))]
    normalised, normalize = [], detector.model.transform.normalize
    monkeypatch.setattr(detector.model.transform, "normalize",
                        lambda image: normalised.append(image.dtype) or normalize(image))
    for attention, dtype in ((False, torch.float32), (True, torch.float32), (False, torch.bfloat16)):
        detector.model.to(dtype)
        floats = detector.detect([to_tensor(p) for p in photos], score_threshold=0.0, attention=attention)
        normalised.clear()
        as_bytes = detector.detect([to_byte_tensor(p) for p in photos], score_threshold=0.0, attention=attention)
        assert set(normalised) == {torch.uint8 if dtype == torch.float32 and not attention else dtype}
        for mine, theirs in zip(as_bytes, floats, strict=True):
            assert mine.keys() == theirs.keys() and all(torch.equal(mine[k], theirs[k]) for k in mine)
    detector.model.float()
    class NoParameters(nn.Module):  # an oracle or a wrapper: nothing to take a device or dtype from
        def forward(self, images: list) -> list:
            given.extend(image.dtype for image in images)
            return [{"boxes": torch.zeros(0, 4), "scores": torch.zeros(0), "labels": torch.zeros(0, dtype=torch.long)}
                    for _ in images]

    given = []
    Detector(NoParameters(), CLASS_NAMES, {}, "oracle", "oracle", {}).detect([to_byte_tensor(photos[0])])
    assert given == [torch.float32]  # it had raised StopIteration
    given.clear()
    monkeypatch.setattr(Detector, "detect", lambda self, images, **kwargs: given.extend(images) or [{}] * len(images))
    monkeypatch.setattr("visattn.inference.detector.detection_records", lambda *args: [])
    Image.fromarray(photos[0]).save(tmp_path / "photo.png")
    detect_files(detector, [str(tmp_path / "photo.png")])
    assert [image.dtype for image in given] == [torch.uint8]


@pytest.mark.parametrize("head", ["fcos", "detr"])
@pytest.mark.parametrize("shape", [(3, 0, 64), (3, 40, 0)])
def test_detect_refuses_an_image_without_pixels_in_one_line(head, shape):
    """It ended in a ZeroDivisionError deep in the detector's resize."""
    with pytest.raises(ConfigError, match=rf"image 1: shape \({shape[0]}, {shape[1]}, {shape[2]}\) has no pixels; leave it out"):
        _tiny_detector(head).detect([torch.rand(3, 40, 48), torch.zeros(shape)])


@pytest.mark.parametrize("head", ["fcos", "detr"])
def test_detect_with_a_model_left_training_gives_its_eval_detections_and_keeps_its_mode(head):
    torch.manual_seed(0)
    detector = _tiny_detector(head)
    images = [torch.rand(3, 48, 64), torch.rand(3, 40, 40)]
    expected = [*detector.detect(images), *detector.detect(images, attention=True)]
    detector.model.train()
    got = [*detector.detect(images), *detector.detect(images, attention=True)]
    assert all(m.training for m in detector.model.modules())
    for want, found in zip(expected, got):
        assert want.keys() == found.keys()
        for key in want:
            torch.testing.assert_close(found[key], want[key], atol=1e-4, rtol=1e-4)


def test_evaluate_on_annotations_without_an_object_box_is_one_line_not_map_minus_one(tmp_path, capsys):
    from test_reliability_inputs import write_detector_checkpoint

    annotations, images_dir = write_coco_instances(tmp_path)
    data = json.loads(annotations.read_text())
    data["categories"] = [{**c, "name": name} for c, name in zip(data["categories"], ["top", "bag", "boot"])]
    data["annotations"] = []
    annotations.write_text(json.dumps(data))
    checkpoint = write_detector_checkpoint(tmp_path / "fcos.ckpt")
    assert main(["evaluate", "--checkpoint", str(checkpoint), "--dataset", f"coco:{annotations}:{images_dir}"]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"visattn: error: {annotations}: no object box to score detections against") and err.count("\n") == 1


def test_an_arch_tag_detector_fine_tunes_the_shipped_weights_unless_pretrained_is_false():
    """The task's default used to be pretrained=False, which create_model now takes as "no weights" for arch.tag."""
    import inspect

    name = "fcos_se_resnet20_cifar.scenes"
    assert inspect.signature(DetectionTask).parameters["pretrained"].default is None
    shipped = create_model(name).state_dict()
    task = DetectionTask(model_name=name)
    assert all(torch.equal(v, shipped[k]) for k, v in task.model.state_dict().items())
    random = DetectionTask(model_name=name, pretrained=False).model.state_dict()
    assert {k: v.shape for k, v in random.items()} == {k: v.shape for k, v in shipped.items()}
    changed = [k for k, v in random.items() if v.is_floating_point() and v.numel() > 1 and not torch.equal(v, shipped[k])]
    assert len(changed) > len(random) // 2  # random init, the backbone's too (the entry says pretrained_backbone: false)


DETR_VIT = {"backbone_kwargs": {"depth": 1}, "hidden_dim": 32, "num_heads": 2, "num_encoder_layers": 1,
            "num_decoder_layers": 1, "num_queries": 8, "min_size": 48, "max_size": 64}


@pytest.mark.parametrize("name, kwargs, first_cell_at", [
    ("detr_resnet20_cifar", TINY["detr"], lambda stride: 0.5),  # a ResNet cell at its receptive field's centre
    ("detr_vit_small_patch16_224", DETR_VIT, lambda stride: stride / 2),  # a patch at its own centre
])
def test_each_detr_detections_map_is_its_own_querys_last_layer_cross_attention(name, kwargs, first_cell_at):
    """Recomputed by hand from the last decoder layer's cross-attention inputs (Q/K projections, softmax
    over the unpadded feature grid, mean over heads), its cells where the backbone's look in the padded
    batch, sampled at the image's pixels: every detection's map is its own query's, not another's."""
    import torch.nn.functional as F

    from visattn.explain.detections import detection_maps

    torch.manual_seed(0)
    model = create_model(name, num_classes=3, pretrained_backbone=False, **kwargs).eval()
    images = [torch.rand(3, 48, 64), torch.rand(3, 40, 40)]
    attention = model.transformer.decoder[-1].cross_attn

    def every_querys_map(image):  # (Q, H, W) from a plain forward of the image, as the detector runs each size alone
        seen = {}

        def inputs(module, args, kwargs, out):
            seen["query"], seen["key"] = args[0], args[1]
            seen["mask"] = kwargs.get("key_padding_mask", args[3] if len(args) > 3 else None)

        hooks = [attention.register_forward_hook(inputs, with_kwargs=True),
                 model.transform.register_forward_hook(lambda module, args, out: seen.update(batch=out[0])),
                 model.input_proj.register_forward_hook(lambda module, args, out: seen.update(grid=out.shape[-2:]))]
        try:
            with torch.no_grad():
                model([image])  # a plain forward, without the explainer's bookkeeping
        finally:
            for hook in hooks:
                hook.remove()
        heads, head_dim = attention.num_heads, attention.head_dim
        with torch.no_grad():
            q = attention.q(seen["query"]).unflatten(-1, (heads, head_dim)).transpose(1, 2)  # (1, h, Q, d)
            k = attention.k(seen["key"]).unflatten(-1, (heads, head_dim)).transpose(1, 2)  # (1, h, N, d)
            logits = q @ k.transpose(-1, -2) / head_dim**0.5
            if seen["mask"] is not None:
                logits = logits.masked_fill(seen["mask"][:, None, None, :], float("-inf"))
            per_query = logits.softmax(dim=-1).mean(dim=1)[0]  # (Q, N)
        rows, cols = seen["grid"]
        padded = tuple(seen["batch"].tensors.shape[-2:])
        height, width = seen["batch"].image_sizes[0]
        # Cell k sits at pixel s k + first_cell_at(s) of the padded batch, which holds the image resized to
        # (height, width); sample each pixel centre of the image there, between cells.
        size = image.shape[-2:]
        axes = []
        for pixels, resized, cells, padded_pixels in zip(size, (height, width), (rows, cols), padded):
            stride = padded_pixels // cells
            at = ((torch.arange(pixels) + 0.5) * resized / pixels - first_cell_at(stride)) / stride  # in cells
            axes.append(2 * at / (cells - 1) - 1)
        ys, xs = torch.meshgrid(*axes, indexing="ij")
        where = torch.stack([xs, ys], dim=-1)[None].expand(len(per_query), -1, -1, -1).float()
        return F.grid_sample(per_query.view(-1, 1, rows, cols), where, mode="bilinear", padding_mode="border",
                             align_corners=True)[:, 0]

    detections, maps = detection_maps(model, images)
    for found, got, image in zip(detections, maps, images):
        expected = every_querys_map(image)
        queries = found["queries"]
        assert len(queries) == 8 and got.shape == (8, *image.shape[-2:])
        assert not torch.equal(queries, torch.arange(8)), "the queries are in score order, not their own"
        for d, query in enumerate(queries.tolist()):
            torch.testing.assert_close(got[d], expected[query], atol=1e-5, rtol=1e-4)
            other = (query + 1) % 8
            assert (got[d] - expected[other]).abs().max() > 1e-4, f"detection {d}'s map is also query {other}'s"


def test_fcos_saliency_holds_one_pixel_gradient_at_a_time(monkeypatch):
    """Every detection's (3, H, W) gradient over the photo was kept until the last: 93 detections of a 12 MP photo
    took 13 GB, and `detect --attention-out` died for want of memory."""
    import weakref

    from visattn.explain.detections import detection_saliency

    torch.manual_seed(0)
    model = create_model("fcos_resnet20_cifar", num_classes=3, pretrained_backbone=False, **TINY["fcos"]).eval()
    gradients, alive = [], []
    grad = torch.autograd.grad

    def recorded(*args, **kwargs):
        alive.append(sum(ref() is not None for ref in gradients))  # earlier gradients still held
        found = grad(*args, **kwargs)
        gradients.append(weakref.ref(found[0]))
        return found

    monkeypatch.setattr(torch.autograd, "grad", recorded)
    detections, maps = detection_saliency(model, [torch.rand(3, 48, 64)])
    assert len(gradients) == len(detections[0]["scores"]) >= 2 and maps[0].shape[0] == len(gradients)
    assert max(alive) == 0


@pytest.mark.parametrize("name, tolerance", [("fcos_resnet20_cifar", 1e-6), ("detr_resnet20_cifar", 0.05)])
def test_detection_maps_shrunk_to_a_longest_side_are_the_full_maps_over_blocks(name, tolerance):
    """`detect --attention-out` asks for maps at most 512 px on a side: at a 12 MP photo's full pixels they took
    48 MB a detection (a 16-query DETR: 3.6 GB, and 8000x6000 ran out of memory). Gradient x input is averaged over
    blocks; DETR's cells are sampled at the smaller image's pixels (within a few percent of the block average,
    where a block straddles cells or the border)."""
    import torch.nn.functional as F

    from visattn.explain.detections import detection_maps

    torch.manual_seed(0)
    model = create_model(name, num_classes=3, pretrained_backbone=False, **TINY[name[:4]]).eval()
    image = torch.rand(3, 96, 128)
    found, full = detection_maps(model, [image])
    shrunk_found, shrunk = detection_maps(model, [image], max_side=32)
    assert full[0].shape[1:] == (96, 128) and shrunk[0].shape == (len(full[0]), 24, 32) and len(full[0]) >= 2
    torch.testing.assert_close(shrunk_found[0]["boxes"], found[0]["boxes"], rtol=0, atol=0)
    averaged = F.interpolate(full[0][:, None], size=(24, 32), mode="area")[:, 0]
    assert (shrunk[0] - averaged).abs().max() <= tolerance * full[0].abs().max()
    torch.testing.assert_close(detection_maps(model, [image], max_side=128)[1][0], full[0], rtol=0, atol=0)


@needs_fashion_mnist
def test_attention_panels_of_a_large_photo_are_drawn_from_maps_at_most_512_px(tmp_path, monkeypatch, capsys):
    from PIL import Image

    from visattn.data.scenes import FashionScenes
    from visattn.explain import overlay

    Image.fromarray(FashionScenes("test", num_scenes=1)[0].image).resize((1200, 900)).save(tmp_path / "big.png")
    drawn = []
    panels = overlay.word_panels_figure

    def recorded(image, titles, maps, **kwargs):
        drawn.append((image.shape[:2], {m.shape for m in maps}))
        return panels(image, titles, maps, **kwargs)

    monkeypatch.setattr(overlay, "word_panels_figure", recorded)
    assert main(["detect", str(tmp_path / "big.png"), "--model", "detr_se_resnet20_cifar.scenes", "--score-threshold",
                 "0", "--attention-out", str(tmp_path / "panels"), "--json"]) == 0
    record = json.loads(capsys.readouterr().out)
    assert len(record["detections"]) == 16 and Path(record["attention"]).is_file()
    assert drawn == [((384, 512), {(384, 512)})]


def test_evaluate_on_annotations_whose_boxes_are_all_invalid_is_one_line_not_map_minus_one(tmp_path, capsys):
    """`require_boxes` counted the boxes before the pipelines dropped them, and `evaluate` printed map -1.0.
    Evaluation scores boxes as annotated (outside the image, zero-area, as COCOeval does): only inverted ones go."""
    from test_reliability_inputs import write_detector_checkpoint

    annotations, images_dir = write_coco_instances(tmp_path)
    data = json.loads(annotations.read_text())
    data["categories"] = [{**c, "name": name} for c, name in zip(data["categories"], ["top", "bag", "boot"])]
    invalid = [[5, 5, -3, 4], [5, 5, 4, -2], [500, 500, -1, 10], [2, 2, 5, -1], [-50, 0, 10, -4]]
    for annotation, bbox in zip(data["annotations"], invalid):
        annotation["bbox"] = bbox
    annotations.write_text(json.dumps(data))
    checkpoint = write_detector_checkpoint(tmp_path / "fcos.ckpt")
    assert main(["evaluate", "--checkpoint", str(checkpoint), "--dataset", f"coco:{annotations}:{images_dir}"]) == 2
    assert capsys.readouterr().err.splitlines() == [
        f"warning: {annotations}: dropped 5 of 5 boxes (5 with a negative width or height; e.g. annotation 1's "
        "bbox [5, 5, -3, 4]); fix or remove those annotations",
        f"visattn: error: {annotations}: no object box to score detections against in the 4 images read (no "
        "annotations, or only crowd regions or dropped boxes); give the instances JSON with the boxes"]


def _random_detections(seed: int, num_images: int = 8, num_classes: int = 3):
    """Ground truth (some crowd, some images empty) and noisy detections with false positives, in pixels."""
    gen = torch.Generator().manual_seed(seed)
    targets, predictions = [], []
    for _ in range(num_images):
        n = int(torch.randint(0, 6, (1,), generator=gen))
        xy, wh = torch.rand(n, 2, generator=gen) * 60, 4 + torch.rand(n, 2, generator=gen) * 30
        boxes = torch.cat([xy, xy + wh], 1)
        labels = torch.randint(0, num_classes, (n,), generator=gen)
        crowd = (torch.rand(n, generator=gen) < 0.15).long()
        kept = torch.rand(n, generator=gen) < 0.8
        noisy = boxes[kept] + torch.randn(int(kept.sum()), 4, generator=gen) * 2
        false = torch.rand(3, 2, generator=gen) * 60
        pred_boxes = torch.cat([noisy, torch.cat([false, false + 10], 1)])
        predictions.append({"boxes": pred_boxes, "scores": torch.rand(len(pred_boxes), generator=gen),
                            "labels": torch.cat([labels[kept], torch.randint(0, num_classes, (3,), generator=gen)])})
        targets.append({"boxes": boxes, "labels": labels, "iscrowd": crowd})
    return predictions, targets


def _cocoeval(predictions, targets) -> tuple[float, float]:
    import contextlib
    import io

    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    def xywh(b):
        return [b[0], b[1], b[2] - b[0], b[3] - b[1]]

    images = [{"id": i + 1, "height": 100, "width": 100} for i in range(len(targets))]
    annotations = [{"id": len(images) * 100 + i * 10 + j, "image_id": i + 1, "category_id": int(label) + 1,
                    "bbox": xywh(box.tolist()), "area": float((box[2] - box[0]) * (box[3] - box[1])), "iscrowd": int(crowd)}
                   for i, t in enumerate(targets) for j, (box, label, crowd) in enumerate(zip(t["boxes"], t["labels"], t["iscrowd"]))]
    results = [{"image_id": i + 1, "category_id": int(label) + 1, "bbox": xywh(box.tolist()), "score": float(score)}
               for i, p in enumerate(predictions) for box, label, score in zip(p["boxes"], p["labels"], p["scores"])]
    with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints progress
        truth = COCO()
        truth.dataset = {"images": images, "annotations": annotations,
                         "categories": [{"id": c + 1, "name": str(c)} for c in range(3)]}
        truth.createIndex()
        evaluation = COCOeval(truth, truth.loadRes(results), "bbox")
        evaluation.evaluate(), evaluation.accumulate(), evaluation.summarize()
    return float(evaluation.stats[0]), float(evaluation.stats[1])


@pytest.mark.parametrize("seed", range(4))
def test_map_equals_pycocotools_cocoeval_on_the_same_detections(seed):
    """torchmetrics' default IoU and recall grids are float32 (its 0.2 is 0.2000000030, above a recall of
    exactly 1/5), which moved mAP by up to 6e-4 from COCOeval's; one of these seeds shows it."""
    from visattn.inference.detection_scoring import detection_map, map_scores

    predictions, targets = _random_detections(seed)
    metric = detection_map()
    metric.update(predictions, targets)
    ours = map_scores(metric)
    reference = _cocoeval(predictions, targets)
    assert (ours["map"], ours["map50"]) == pytest.approx(reference, abs=2e-6)  # map_scores rounds to 6 decimals


def _class_scores(model: nn.Module, image: torch.Tensor, names: list[str]) -> dict[str, torch.Tensor]:
    """Each class name's scores over every location (FCOS) or query (DETR) for one image."""
    batch, _ = model.transform([image])
    with torch.no_grad():
        if hasattr(model, "query_embed"):
            scores = model._predict(batch.tensors, batch.image_sizes)[0][-1, 0].softmax(-1)  # (Q, K + 1)
        else:
            scores = model.head(list(model.backbone(batch.tensors).values()))["cls_logits"][0].sigmoid()  # (HW, K)
    return {name: scores[:, k] for k, name in enumerate(names)}


@pytest.mark.parametrize("name", ["fcos_se_resnet20_cifar.scenes", "detr_se_resnet20_cifar.scenes"])
def test_a_shipped_detector_fine_tuned_on_classes_in_another_order_keeps_each_names_scores(name, recwarn):
    """COCO files number categories as they like: with alphabetical ids the shipped head's rows were read as
    other classes (test mAP 0.47 where `evaluate`, which maps by name, scored 0.96)."""
    shipped = create_model(name).eval()
    labels = load_index()[name]["labels"]
    alphabetical = sorted(labels)
    task = DetectionTask(model_name=name, num_classes=10, class_names=alphabetical)
    image = torch.rand(3, 64, 64, generator=torch.Generator().manual_seed(0))
    ours, theirs = _class_scores(task.model.eval(), image, alphabetical), _class_scores(shipped, image, labels)
    for label in labels:
        torch.testing.assert_close(ours[label], theirs[label])
    assert not [w for w in recwarn if "randomly initialised" in str(w.message)]
    other = [*labels[:-1], "hat"]  # as many classes, another set: the shipped head knows no hat
    with pytest.warns(UserWarning, match=r"class names .* are not among the starting weights' labels .*randomly initialised"):
        fresh = DetectionTask(model_name=name, num_classes=10, class_names=other)
    assert not torch.equal(_class_scores(fresh.model.eval(), image, other)["top"], theirs["top"])


class _PixelOracle(nn.Module):
    """Returns, for each image, the detections stored under its top-left pixel's 0..255 value."""

    def __init__(self, detections: dict[int, dict[str, torch.Tensor]]) -> None:
        super().__init__()
        self.detections = detections

    def forward(self, images: list[torch.Tensor]) -> list[dict[str, torch.Tensor]]:
        return [self.detections[round(float(image[0, 0, 0]) * 255)] for image in images]


def test_evaluate_scores_boxes_as_annotated_as_pycocotools_cocoeval_does(tmp_path):
    """Evaluation clipped a box crossing the border and dropped one under 1 px before scoring: 0.94 where
    COCOeval gave 0.88 on the same file and detections."""
    boxes = {10: [(1, [20, 4, 20, 10]), (2, [5, 5, 0.6, 8]), (1, [2, 16, 10, 10])],  # past the right edge; 0.6 px wide
             20: [(2, [4, 24, 8, 12]), (1, [14, 2, 10, 10])]}  # past the bottom edge
    found = {10: [(1, [20, 4, 32, 14], 0.9), (2, [5, 5, 5.6, 13], 0.8), (1, [2, 16, 12, 26], 0.7), (2, [0, 0, 4, 4], 0.6)],
             20: [(2, [4, 24, 12, 32], 0.9), (1, [15, 3, 25, 13], 0.5)]}
    ours, theirs = _visattn_and_cocoeval(tmp_path, boxes, found, image_ids=[1, 2])
    assert (ours["map"], ours["map50"]) == pytest.approx(theirs, abs=2e-6)


def test_equal_scores_across_images_rank_as_cocoeval_ranks_them_by_image_id(tmp_path):
    """COCOeval walks images in id order, which breaks ties between equal scores; visattn took the file's
    order: 0.500 where COCOeval gave 0.442 for a file listing ids 9, 2, 5."""
    boxes = {key: [(1, [10, 10, 20, 20])] for key in (10, 20, 30)}
    hit, miss = [10, 10, 30, 30], [40, 40, 50, 50]
    found = {10: [(1, hit, 0.5), (1, miss, 0.5)], 20: [(1, miss, 0.5)], 30: [(1, hit, 0.5)]}
    ours, theirs = _visattn_and_cocoeval(tmp_path, boxes, found, image_ids=[9, 2, 5])
    assert theirs == pytest.approx((0.442244, 0.442244), abs=1e-6)
    assert (ours["map"], ours["map50"]) == pytest.approx(theirs, abs=2e-6)


def _visattn_and_cocoeval(tmp_path: Path, boxes: dict, found: dict, image_ids: list[int]) -> tuple[dict, tuple]:
    """``evaluate_detector``'s scores for a detector that finds ``found[key]`` (``(category, xyxy, score)``)
    in the image whose first pixel is ``key``, and COCOeval's ``(map, map50)`` for the same detections, on
    a COCO file of ``boxes[key]`` (``(category, xywh)``) listing the images in ``boxes``' order with ``image_ids``."""
    import contextlib
    import io

    import numpy as np
    from PIL import Image
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    from visattn.inference.detection_scoring import evaluation_loader

    (tmp_path / "images").mkdir()
    images, annotations = [], []
    for image_id, key in zip(image_ids, boxes):
        pixels = np.zeros((32, 32, 3), np.uint8)
        pixels[0, 0] = key
        Image.fromarray(pixels).save(tmp_path / "images" / f"{key}.png")
        images.append({"id": image_id, "file_name": f"{key}.png", "width": 32, "height": 32})
        annotations += [{"id": image_id * 10 + j, "image_id": image_id, "category_id": c, "bbox": b,
                         "area": b[2] * b[3], "iscrowd": 0} for j, (c, b) in enumerate(boxes[key])]
    path = tmp_path / "instances.json"
    path.write_text(json.dumps({"images": images, "annotations": annotations,
                                "categories": [{"id": 1, "name": "a"}, {"id": 2, "name": "b"}]}))
    detections = {key: {"boxes": torch.tensor([b for _, b, _ in f], dtype=torch.float32),
                        "scores": torch.tensor([s for _, _, s in f]), "labels": torch.tensor([c - 1 for c, _, _ in f])}
                  for key, f in found.items()}
    detector = Detector(_PixelOracle(detections), ["a", "b"], {}, "oracle", "oracle", {})
    ours = evaluate_detector(detector, evaluation_loader(detector, f"coco:{path}:{tmp_path / 'images'}"))
    results = [{"image_id": image_id, "category_id": c, "bbox": [b[0], b[1], b[2] - b[0], b[3] - b[1]], "score": s}
               for image_id, key in zip(image_ids, found) for c, b, s in found[key]]
    with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints progress
        truth = COCO(str(path))
        evaluation = COCOeval(truth, truth.loadRes(results), "bbox")
        evaluation.evaluate(), evaluation.accumulate(), evaluation.summarize()
    return ours, (evaluation.stats[0], evaluation.stats[1])


@needs_fashion_mnist
def test_fcos_detect_below_its_score_thresh_finds_the_lower_scoring_detections_too():
    """FCOS dropped candidates under its score_thresh (0.05) before NMS, so a lower threshold found nothing more."""
    from visattn.data.scenes import FashionScenes

    detector = load_detector("fcos_se_resnet20_cifar.scenes")
    scene = FashionScenes("test", num_scenes=1)[0]
    image = torch.from_numpy(scene.image).permute(2, 0, 1).float() / 255
    high, low = detector.detect([image], score_threshold=0.05)[0], detector.detect([image], score_threshold=0.01)[0]
    assert ((low["scores"] >= 0.01) & (low["scores"] < 0.05)).any()
    assert detector.model.score_thresh == 0.05  # put back after the call
    found = {(tuple(b), s, c) for b, s, c in zip(low["boxes"].tolist(), low["scores"].tolist(), low["labels"].tolist())}
    assert all((tuple(b), s, c) in found
               for b, s, c in zip(high["boxes"].tolist(), high["scores"].tolist(), high["labels"].tolist()))
    assert len(high["scores"]) > 0
    default = detector.detect([image])[0]  # no threshold asked for: the model's own, as evaluate and validation score
    assert len(default["scores"]) and (default["scores"] > 0.05).all() and detector.model.score_thresh == 0.05


def test_fcos_detections_on_a_thin_image_have_width_and_height():
    """torchvision's FCOS kept boxes clipped to a 1 px high image's edge: zero height, e.g. [7.3, 1.0, 221.3, 1.0]."""
    detector = load_detector("fcos_se_resnet20_cifar.scenes")
    for image in (torch.rand(3, 1, 500, generator=torch.Generator().manual_seed(0)), torch.ones(3, 500, 1)):
        for found in detector.detect([image], score_threshold=0.0):
            boxes = found["boxes"]
            assert len(boxes) and ((boxes[:, 2] > boxes[:, 0]) & (boxes[:, 3] > boxes[:, 1])).all()


@needs_fashion_mnist
def test_a_rerun_that_finds_nothing_leaves_no_earlier_attention_panel_behind(tmp_path, capsys):
    """The earlier run's panel of detections the image no longer had stayed beside a record saying null."""
    from PIL import Image

    from visattn.data.scenes import FashionScenes

    Image.fromarray(FashionScenes("test", num_scenes=1)[0].image).save(tmp_path / "scene.png")
    out = tmp_path / "panels"
    detect = ["detect", str(tmp_path / "scene.png"), "--model", "fcos_se_resnet20_cifar.scenes", "--attention-out",
              str(out), "--json"]
    assert main([*detect, "--score-threshold", "0.05"]) == 0
    first = json.loads(capsys.readouterr().out)
    assert first["detections"] and Path(first["attention"]).is_file()
    assert main([*detect, "--score-threshold", "1.0"]) == 0
    again = json.loads(capsys.readouterr().out)
    assert again["detections"] == [] and again["attention"] is None and not any(out.iterdir())


@pytest.mark.parametrize("shape, size", [((32, 48), (384, 256)), ((20, 3000), (3000, 20)), ((10, 700), (3500, 50))])
def test_drawn_detections_enlarge_small_images_but_not_strips_past_4096_px(tmp_path, shape, size):
    """Small images are enlarged so that labels can be read; a 3000x20 panorama was drawn 39000 px wide."""
    from PIL import Image

    from visattn.inference.detector import draw_detections

    image = np.zeros((*shape, 3), np.uint8)
    detection = {"box": [2.0, 2.0, 8.0, 8.0], "label": "bag", "score": 0.9, "index": 0}
    draw_detections(image, [detection], tmp_path / "drawn.png")
    drawn = np.asarray(Image.open(tmp_path / "drawn.png"))
    assert (drawn.shape[1], drawn.shape[0]) == size
    scale = size[0] // shape[1]
    assert drawn[8 * scale - 1, 5 * scale].any() and not drawn[5 * scale, 5 * scale].any()  # its edge, not its inside


def test_a_label_font_that_does_not_open_draws_with_torchvisions(tmp_path, monkeypatch):
    """A review: a broken font file was a traceback in `detect --out` on photos of 600 px or more."""
    from matplotlib import font_manager

    import visattn.inference.detector as detector

    (tmp_path / "broken.ttf").write_bytes(b"not a font")
    monkeypatch.setattr(font_manager, "findfont", lambda name: str(tmp_path / "broken.ttf"))
    detector._label_font.cache_clear()
    try:
        detector.draw_detections(np.zeros((900, 1200, 3), np.uint8), [{"box": [100.0, 100.0, 500.0, 500.0],
                                  "label": "bag", "score": 0.9, "index": 0}], tmp_path / "drawn.png")
    finally:
        detector._label_font.cache_clear()
    assert (tmp_path / "drawn.png").is_file()


def test_fcos_maps_that_will_take_minutes_are_warned_of(monkeypatch):
    """An audit: FCOS's maps of 87 detections of a 48 MP photo took 143 s, one backward pass each, without a word."""
    import visattn.explain.detections as module
    from visattn.inference.detector import load_detector

    detector, scene = load_detector("fcos_se_resnet20_cifar.scenes"), torch.rand(3, 64, 64)
    with warnings.catch_warnings():
        warnings.simplefilter("error", VisattnWarning)
        found = detector.detect([scene], score_threshold=0.05, attention=True)[0]
    monkeypatch.setattr(module, "SLOW_SALIENCY_PIXELS", 64 * 64 * (len(found["scores"]) - 1) + 1)
    with pytest.warns(VisattnWarning, match=rf"^attention maps of {len(found['scores'])} detections take a backward pass "
                                            r"each, through images of up to 0.0041 MP: this may take minutes; raise the "
                                            r"score threshold"):
        detector.detect([scene], score_threshold=0.05, attention=True)


@pytest.mark.parametrize("height, width, line, labels", [(64, 64, 2, (8, 12)), (450, 600, 1, (8, 12)),
                                                         (1500, 2000, 5, (25, 40)), (4500, 6000, 15, (80, 120))])
def test_drawn_boxes_and_labels_grow_with_the_photo(tmp_path, height, width, line, labels):
    """An audit: an 8000x6000 photo's box was a 1 px line and its label torchvision's 11 px bitmap font."""
    from PIL import Image

    from visattn.inference.detector import draw_detections

    box = [0.4 * width, 0.4 * height, 0.6 * width, 0.6 * height]
    draw_detections(np.zeros((height, width, 3), np.uint8), [{"box": box, "label": "bag", "score": 0.9, "index": 0}],
                    tmp_path / "drawn.png")
    drawn = np.asarray(Image.open(tmp_path / "drawn.png").convert("RGB"))
    scale = drawn.shape[1] // width  # small images are enlarged first
    x0, y0, x1, y1 = (round(v * scale) for v in box)
    left_edge = drawn[(y0 + y1) // 2, x0 - 1:x0 + line + 1].any(-1)
    assert left_edge[1:-1].all() and not left_edge[0]  # a line at least `line` pixels wide, from the box's edge
    inside = drawn[y0 + line + 1:y1 - line - 1, x0 + line + 1:x1 - line - 1]
    assert labels[0] <= len(np.nonzero(inside.any(-1).any(-1))[0]) <= labels[1]  # the label's rows, under the top edge


@needs_fashion_mnist
def test_a_folder_given_to_two_commands_keeps_each_ones_outputs(tmp_path, capsys):
    """`caption --attention-out D` then `detect --out D` replaced the caption's panel STEM.png without a word, exit 0
    (a journey audit): each command's rerun replaces its own outputs only."""
    from PIL import Image

    from visattn.data.scenes import FashionScenes
    from visattn.fileio import written_by_command

    Image.fromarray(FashionScenes("test", num_scenes=1)[0].image).save(tmp_path / "scene.png")
    shared, scene = tmp_path / "shared", str(tmp_path / "scene.png")
    caption = ["caption", scene, "--model", "sat_cbam_resnet_scenes.scenes", "--attention-out", str(shared)]
    assert main(caption) == 0
    panel = (shared / "scene.png").read_bytes()
    for command in (["detect", scene, "--model", "fcos_se_resnet20_cifar.scenes", "--out", str(shared)],
                    ["explain", scene, "--model", "se_resnet20_cifar.fmnist", "--out-dir", str(shared)]):
        assert main(command) == 2
        flag = command[-2]
        assert capsys.readouterr().err.splitlines()[-1] == (
            f"visattn: error: {flag} would replace {shared / 'scene.png'}, which `visattn caption --attention-out` "
            f"wrote; choose another {flag} folder, or move that file")
    # one map's --out too (it replaced the panel without a word, a file-writing audit)
    assert main(["explain", scene, "--model", "se_resnet20_cifar.fmnist", "--out", str(shared / "scene.png")]) == 2
    assert capsys.readouterr().err.splitlines()[-1] == (
        f"visattn: error: --out would replace {shared / 'scene.png'}, which `visattn caption --attention-out` wrote; "
        "choose another --out file, or move that file")
    assert (shared / "scene.png").read_bytes() == panel
    detect = ["detect", scene, "--model", "fcos_se_resnet20_cifar.scenes", "--score-threshold", "0.05"]
    assert main(caption) == 0 and main([*detect, "--attention-out", str(tmp_path / "drawn")]) == 0
    assert main([*detect, "--attention-out", str(tmp_path / "drawn")]) == 0  # a rerun replaces its own
    assert main([*detect, "--out", str(tmp_path / "drawn")]) == 2  # a panel of detect's other output
    assert capsys.readouterr().err.splitlines()[-1].endswith("which `visattn detect --attention-out` wrote; choose "
                                                             "another --out folder, or move that file")
    # the other way round: each command's outputs carry its mark
    for first, command in (([*detect, "--out"], "detect --out"),
                           (["explain", scene, "--model", "se_resnet20_cifar.fmnist", "--out-dir"], "explain")):
        folder = tmp_path / command.replace(" ", "")
        assert main([*first, str(folder)]) == 0 and written_by_command(folder / "scene.png") == command
        assert main([*caption[:-1], str(folder)]) == 2
        assert capsys.readouterr().err.splitlines()[-1].endswith(f"which `visattn {command}` wrote; choose another "
                                                                 "--attention-out folder, or move that file")
    both = [*detect, "--out", str(tmp_path / "both"), "--attention-out", str(tmp_path / "both")]
    assert main(both) == 0 and main(both) == 0  # one folder for both outputs, rerun
    assert written_by_command(tmp_path / "both" / "scene-attention.png") == "detect --attention-out"


def average_apart_from_the_trained_weights(task):
    """``task`` in eval mode, its weight average (``ema_decay`` 0.5) halfway between its weights and those moved."""
    task.ema.update_parameters(task.model)  # the first update copies the weights
    with torch.no_grad():
        for p in task.model.parameters():
            p.add_(torch.randn_like(p))
    task.optimizer_step(0, 0, torch.optim.SGD(task.model.parameters(), lr=0.0))  # averages in the moved weights
    return task.eval()


@pytest.mark.parametrize("head", ["fcos", "detr"])
def test_a_detectors_validation_and_testing_detect_with_its_weight_average(head):
    """Only the classifier task kept a weight average (`ema_decay` was refused as an unknown option here)."""
    torch.manual_seed(0)
    kwargs = {**TINY[head], **({"score_thresh": 0.0} if head == "fcos" else {})}
    task = average_apart_from_the_trained_weights(
        DetectionTask(f"{head}_resnet20_cifar", num_classes=3, model_kwargs=kwargs, ema_decay=0.5))
    images = [torch.rand(3, 64, 64, generator=torch.Generator().manual_seed(1))]
    found, averaged, trained = task(images)[0], task.ema.module(images)[0], task.model(images)[0]
    assert len(found["boxes"]) and all(torch.equal(found[k], averaged[k]) for k in found)
    assert not torch.equal(found["scores"], trained["scores"][:len(found["scores"])])


def test_a_detector_fit_with_ema_checkpoints_the_average_that_evaluate_reads(tmp_path, capsys):
    annotations, images_dir = write_coco_instances(tmp_path)
    out = tmp_path / "run"
    assert main(["fit", "--config", "configs/detection/fcos_scenes.yaml", "--trainer.max_steps", "3",
                 "--trainer.enable_progress_bar", "false", "--trainer.default_root_dir", str(out),
                 "--trainer.logger", "false", "--trainer.precision", "32-true", "--trainer.callbacks",
                 json.dumps([{"class_path": "lightning.pytorch.callbacks.ModelCheckpoint",
                              "init_args": {"dirpath": str(out / "ckpt"), "save_last": True}}]),
                 "--model.init_args.model_name", "fcos_resnet20_cifar", "--model.init_args.ema_decay", "0.5",
                 "--model.init_args.model_kwargs", json.dumps(TINY["fcos"]),
                 "--data", "visattn.data.detection.CocoDetectionDataModule", "--data.train_annotations",
                 str(annotations), "--data.images_dir", str(images_dir), "--data.val_annotations", str(annotations),
                 "--data.batch_size", "2", "--data.num_workers", "0"]) == 0
    state = torch.load(out / "ckpt" / "last.ckpt", map_location="cpu", weights_only=True)["state_dict"]
    assert int(state["ema.n_averaged"]) == 3
    read = load_detector(checkpoint=str(out / "ckpt" / "last.ckpt")).model.state_dict()
    assert all(torch.equal(read[k], state[f"ema.module.{k}"]) for k in read)
    assert any(not torch.equal(read[k], state[f"model.{k}"]) for k in read)


def test_detect_prints_boxes_to_a_tenth_of_a_pixel_and_json_keeps_every_digit(tmp_path, capsys):
    """Boxes printed at full precision (``2.0851621627807617``) made a five-detection line 500 characters long;
    --json keeps every digit of boxes and scores, so that COCOeval on them gives the mAP visattn reports."""
    from PIL import Image

    from visattn.data.scenes import FashionScenes

    Image.fromarray(FashionScenes("test", num_scenes=1)[0].image).save(tmp_path / "scene.png")
    detect = ["detect", str(tmp_path / "scene.png"), "--model", "fcos_se_resnet20_cifar.scenes"]
    assert main([*detect, "--json"]) == 0
    found = json.loads(capsys.readouterr().out)["detections"]
    assert found and any(v != round(v, 1) for d in found for v in d["box"])
    assert any(d["score"] != round(d["score"], 4) for d in found)  # scores too: COCOeval ranks detections by them
    assert main(detect) == 0
    expected = ", ".join(f"{d['label']} {d['score']:.2f} [{', '.join(f'{v:.1f}' for v in d['box'])}]" for d in found)
    assert capsys.readouterr().out == f"{tmp_path / 'scene.png'}: {expected}\n"


@needs_fashion_mnist
def test_scenes_detections_name_the_category_ids_export_coco_gives(tmp_path, capsys):
    """detect --json of the shipped scenes detectors gave no category_id, so COCO tools scoring them against
    export_coco's file had to know that the id is the index + 1 (a detection audit)."""
    from visattn.data.detection import FashionScenesDetectionDataModule
    from visattn.data.scenes import ITEM_WORDS, FashionScenes, export_coco

    paths = export_coco(FashionScenes("test", num_scenes=2), tmp_path)
    category_of = {c["name"]: c["id"] for c in json.loads(paths["instances"].read_text())["categories"]}
    assert FashionScenesDetectionDataModule(num_workers=0).category_ids == [category_of[w] for w in ITEM_WORDS]
    for model in ("fcos_se_resnet20_cifar.scenes", "detr_se_resnet20_cifar.scenes"):
        assert main(["detect", str(paths["images"]), "--model", model, "--json"]) == 0
        found = [d for line in capsys.readouterr().out.splitlines() for d in json.loads(line)["detections"]]
        assert found and all(d["category_id"] == category_of[d["label"]] for d in found)


def test_map_scores_report_a_tiny_map_to_six_significant_digits():
    """An untrained detector's mAP of 4e-07 was printed as 0.0."""
    from types import SimpleNamespace

    from visattn.inference.detection_scoring import map_scores

    metric = SimpleNamespace(compute=lambda: {"map": torch.tensor(4.1234567e-07), "map_50": torch.tensor(0.12345678)})
    assert map_scores(metric) == {"map": 4.12346e-07, "map50": 0.123457}


def test_a_fit_without_validation_data_says_nothing_of_lightnings_empty_loader_list(tmp_path, capsys, recwarn):
    """No val_annotations trains without validation, as documented, yet Lightning's "Total length of `list` across
    ranks is zero", naming its own source file, was printed (a fine-tune audit)."""
    annotations, images_dir = write_coco_instances(tmp_path)
    assert main(["fit", "--config", "configs/detection/fcos_scenes.yaml", "--trainer.max_steps", "1",
                 "--trainer.enable_progress_bar", "false", "--trainer.default_root_dir", str(tmp_path / "run"),
                 "--trainer.logger", "false", "--trainer.callbacks", "[]", "--trainer.enable_checkpointing", "false",
                 "--model.model_kwargs", json.dumps(TINY["fcos"]),
                 "--data", "visattn.data.detection.CocoDetectionDataModule",
                 "--data.train_annotations", str(annotations), "--data.images_dir", str(images_dir),
                 "--data.batch_size", "2", "--data.num_workers", "0"]) == 0
    said = capsys.readouterr().err + "".join(str(w.message) for w in recwarn)
    assert "across ranks is zero" not in said


@pytest.mark.parametrize("head", ["fcos", "detr"])
def test_the_training_loss_is_the_sum_of_the_detectors_losses_as_torchvision_trains(head):
    """Their mean had passed: a hidden learning-rate cut by the number of terms (18 for DETR's 6 decoder layers)."""
    torch.manual_seed(0)
    task = DetectionTask(f"{head}_resnet20_cifar", num_classes=3, model_kwargs=TINY[head])
    images = [torch.rand(3, 64, 64) for _ in range(2)]
    targets = [{"boxes": torch.tensor([[4.0, 6.0, 30.0, 40.0]]), "labels": torch.tensor([1])} for _ in range(2)]
    torch.manual_seed(1)
    loss = task.training_step((images, targets), 0)
    torch.manual_seed(1)
    losses = task.model(images, targets)
    assert len(losses) > 1
    assert loss.item() == pytest.approx(sum(losses.values()).item(), rel=1e-5)
