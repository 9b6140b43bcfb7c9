"""Pointing of a classifier's maps with its CNN cells placed at fractions of their step.

    python benchmarks/cell_placement.py --model se_resnet20_cifar.fmnist --dataset fashion-mnist-canvas --img-size 64

visattn places a ResNet's stride-s cell ``k`` at its receptive field's centre, pixel ``s k`` (continuous
``s k + 1/2``); Grad-CAM tools place it at its block's centre, ``s k + s/2``. This scores the same maps with
every cell at ``s k + f s`` for ``f`` from 0 to 7/8 (the pointing game's ``map_centres`` replaced for the
run), to see whether a pointing figure measures where cells are placed or where the learned features sit.
"""
from __future__ import annotations

import argparse
import functools
import json
from unittest import mock

import torch

import visattn.explain as explain_module
from visattn.cli import pointing_scenes
from visattn.explain import CellCentres, evaluate_class_pointing, evaluate_pointing
from visattn.inference.classifier import load_classifier


def shifted(fraction: float):
    """``map_centres`` with cell ``k`` at ``s k + fraction * s``, ``s`` the stride visattn infers."""
    def shift(axis: tuple[float, ...]) -> tuple[float, ...]:
        step = axis[1] - axis[0] if len(axis) > 1 else 0.0
        return tuple(centre - 0.5 + fraction * step for centre in axis)  # from s k + 1/2

    def map_centres(model, map_size, image_size) -> CellCentres:
        placed = CellCentres.strided(tuple(map_size), tuple(image_size))
        return CellCentres(shift(placed.rows), shift(placed.cols))
    return map_centres


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="se_resnet20_cifar.fmnist", help="shipped ARCH.TAG of a ResNet classifier")
    parser.add_argument("--dataset", choices=["fashion-mnist-canvas", "fashion-mnist-pairs"], default="fashion-mnist-canvas")
    parser.add_argument("--pointing-target", choices=["label", "prediction"], default="label",
                        help="one item: score the Grad-CAM map of the item's class or of the predicted class")
    parser.add_argument("--img-size", type=int, default=None)
    parser.add_argument("--limit", type=int, default=1000)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--smoke", action="store_true", help="8 scenes, two placements")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    classifier = load_classifier(args.model, img_size=args.img_size)
    scenes = pointing_scenes(args.dataset, "test", 8 if args.smoke else args.limit)
    evaluate = (functools.partial(evaluate_pointing, target=args.pointing_target) if scenes.max_items == 1
                else evaluate_class_pointing)
    results = [{"placement": "visattn (receptive field's centre)",
                "pointing": evaluate(classifier, scenes, batch_size=64)["pointing"]}]
    for fraction in [0.5] if args.smoke else [k / 8 for k in range(8)]:
        with mock.patch.object(explain_module, "map_centres", shifted(fraction)):
            pointing = evaluate(classifier, scenes, batch_size=64)["pointing"]
        results.append({"placement": f"s k + {fraction:.3f} s" + (" (block's centre)" if fraction == 0.5 else ""),
                        "pointing": pointing})
    for row in results:
        print(f"{row['placement']:40s} pointing {row['pointing']:.4f}")
    print(json.dumps({"benchmark": "cell_placement", "model": args.model, "dataset": args.dataset,
                      "img_size": args.img_size,
                      "pointing_target": args.pointing_target, "n_scenes": len(scenes), "results": results}))


if __name__ == "__main__":
    main()
