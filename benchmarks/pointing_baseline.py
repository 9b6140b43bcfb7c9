"""The pointing game for a shipped classifier against the same architecture untrained.

    python benchmarks/pointing_baseline.py --model vit_tiny_patch4_28.fmnist --img-size 28
    python benchmarks/pointing_baseline.py --model vit_tiny_patch4_28.fmnist --img-size 64 --method gradrollout
    python benchmarks/pointing_baseline.py --model se_resnet20_cifar.fmnist_stage4 --dataset fashion-mnist-pairs --img-size 64
    python benchmarks/pointing_baseline.py --model sat_cbam_resnet_scenes.scenes
    python benchmarks/pointing_baseline.py --model detr_se_resnet20_cifar.scenes
    python benchmarks/pointing_baseline.py --model fcos_se_resnet20_cifar.scenes

A map can find the item without the model having learnt anything: on a black canvas holding one
bright item, a map that follows the pixels' brightness does. This scores the shipped weights, then
``--seeds`` randomly initialised copies (same builder arguments, same preprocessing and map method)
on the same test scenes of ``--dataset`` (as `visattn evaluate --dataset` builds them), and the
share of the canvas the target's boxes cover (what a map peaking at random scores). The shipped
score means something only above the untrained ones.

For a captioner (FashionScenes test scenes, beam 5), each named item's word map is scored against
two maps that know nothing of the word: the mean of the caption's word maps (where the model looks
overall) and the image's brightness. For a detector, each detection scoring 0.5 or more is scored
the same way against its own box, with its own map (a DETR query's cross-attention, or gradient × input of
an FCOS detection's score), the mean of the image's detection maps and the brightness.
"""
from __future__ import annotations

import argparse
import dataclasses
import functools
import json
import statistics
from typing import Optional

import numpy as np
import torch

from visattn.cli import pointing_scenes
from visattn.data.scenes import FashionScenes
from visattn.explain import evaluate_class_pointing, evaluate_pointing
from visattn.registry import create_model, model_family
from visattn.inference.captioner import attention_centres, is_captioner, load_captioner
from visattn.inference.caption_scoring import evaluation_loader, pointing_hits
from visattn.explain import CellCentres, pointing_hit
from visattn.inference.checkpoints import inference_model
from visattn.inference.classifier import Classifier, load_classifier
from visattn.inference.detector import is_detector, load_detector
from visattn.inference.detection_scoring import detector_scenes


def untrained_copy(classifier: Classifier, seed: int, img_size: Optional[int]) -> Classifier:
    """The classifier's architecture and builder arguments with freshly initialised weights."""
    torch.manual_seed(seed)
    size = {"img_size": img_size} if img_size and model_family(classifier.arch) == "vit" else {}
    model = create_model(classifier.arch, num_classes=len(classifier.class_names), **classifier.model_kwargs, **size)
    return dataclasses.replace(classifier, model=inference_model(model), name=f"{classifier.arch} untrained (seed {seed})")


def canvas_share(scenes: FashionScenes) -> float:
    """Mean share of the canvas inside the target's boxes (each class present in a scene is a target):
    the pointing score of a uniformly random peak."""
    shares = []
    for scene in scenes:
        height, width = scene.image.shape[:2]
        for label in np.unique(scene.labels):
            boxes = scene.boxes[scene.labels == label]
            shares.append(float(((boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])).sum()) / (height * width))
    return statistics.fmean(shares)


@torch.inference_mode()
def captioner_pointing(name: str, limit: int) -> dict[str, float]:
    """Pointing of each item word's own map, of the caption's mean map and of the image's brightness."""
    captioner = load_captioner(name)
    hits: dict[str, list[bool]] = {"word_map": [], "caption_mean_map": [], "brightness": []}
    for batch in evaluation_loader(captioner, "fashion-scenes", "test", limit=limit):
        decoded = captioner.caption(batch["images"], beam_size=5)
        size = tuple(batch["images"].shape[-2:])
        centres, pixels = attention_centres(captioner.model, size), CellCentres.blocks(size, size)
        for ids, maps, image, boxes, labels in zip(decoded.tokens, decoded.attention, batch["images"],
                                                   batch["boxes"], batch["labels"]):
            words, boxes, labels = captioner.vocab.words(ids.tolist()), np.asarray(boxes), np.asarray(labels)
            agnostic = {"word_map": (maps, centres),
                        "caption_mean_map": (maps.mean(0, keepdim=True).expand_as(maps), centres),
                        "brightness": (image.mean(0)[None].expand(len(maps), -1, -1), pixels)}
            for key, (heat, places) in agnostic.items():
                hits[key] += pointing_hits(words, heat, boxes, labels, places)
    return {key: round(float(np.mean(values)), 4) for key, values in hits.items()} | {"n": len(hits["word_map"])}


def detector_pointing(name: str, limit: int) -> dict[str, float]:
    """Pointing of each confident detection's own map, of the image's mean map and of the brightness,
    at the detection's box. Not under inference mode: FCOS's maps (gradient × input) need a model built outside it."""
    detector = load_detector(name)
    hits: dict[str, list[bool]] = {"detection_map": [], "image_mean_map": [], "brightness": []}
    for scene in detector_scenes(detector, "test", limit):  # as `visattn evaluate` draws them
        image = torch.from_numpy(scene.image).permute(2, 0, 1).float() / 255
        found = detector.detect([image], score_threshold=0.5, attention=True)[0]
        maps = found["attention"]
        blind = {"detection_map": maps, "image_mean_map": maps.mean(0, keepdim=True).expand_as(maps),
                 "brightness": image.mean(0)[None].expand_as(maps)}
        for key, heat in blind.items():
            hits[key] += [pointing_hit(m, box, image.shape[-2:]) for m, box in zip(heat, found["boxes"].numpy())]
    return {key: round(float(np.mean(values)), 4) for key, values in hits.items()} | {"n": len(hits["detection_map"])}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="vit_tiny_patch4_28.fmnist", help="shipped ARCH.TAG: a classifier, detector or captioner")
    parser.add_argument("--dataset", choices=["fashion-mnist-canvas", "fashion-mnist-pairs"], default="fashion-mnist-canvas")
    parser.add_argument("--pointing-target", choices=["label", "prediction"], default="label",
                        help="one item: score the Grad-CAM map of the item's class or of the predicted class")
    parser.add_argument("--method", choices=["gradcam", "gradcam++", "gradrollout"], default=None,
                        help="the classifiers' map (default: gradcam, and rollout for a ViT on one item; "
                             "gradrollout: ViTs only)")
    parser.add_argument("--img-size", type=int, default=None, help="run the classifiers at this input size")
    parser.add_argument("--limit", type=int, default=1000, help="canvas test scenes scored")
    parser.add_argument("--seeds", type=int, default=3, help="untrained copies scored")
    args = parser.parse_args()
    if is_captioner(args.model) or is_detector(args.model):
        scores = (captioner_pointing if is_captioner(args.model) else detector_pointing)(args.model, args.limit)
        print(", ".join(f"{key} {value}" for key, value in scores.items()))
        print(json.dumps({"benchmark": "pointing_baseline", "model": args.model, "dataset": "fashion-scenes", **scores}))
        return

    scenes = pointing_scenes(args.dataset, "test", args.limit)
    evaluate = (functools.partial(evaluate_pointing, method=args.method, target=args.pointing_target)
                if scenes.max_items == 1 else functools.partial(evaluate_class_pointing, method=args.method))
    shipped = load_classifier(args.model, img_size=args.img_size)
    results = [{"model": shipped.name, **evaluate(shipped, scenes, batch_size=64)}]
    for seed in range(args.seeds):
        untrained = untrained_copy(shipped, seed, args.img_size)
        results.append({"model": untrained.name, **evaluate(untrained, scenes, batch_size=64)})
    for row in results:
        top1 = f"top-1 {row['top1']:.3f}  " if "top1" in row else ""
        print(f"{row['model']:45s} {top1}pointing {row['pointing']:.3f} ({row['pointing_method']})")
    chance = canvas_share(scenes)
    print(f"{'a random peak (mean box share of the canvas)':45s} pointing {chance:.3f}")
    print(json.dumps({"benchmark": "pointing_baseline", "model": args.model, "dataset": args.dataset,
                      "img_size": args.img_size,
                      "pointing_target": args.pointing_target if scenes.max_items == 1 else "each class present",
                      "n": results[0]["n"], "pointing": results[0]["pointing"],
                      "untrained_pointing": [row["pointing"] for row in results[1:]], "random_peak": round(chance, 4), "results": results}))


if __name__ == "__main__":
    main()
