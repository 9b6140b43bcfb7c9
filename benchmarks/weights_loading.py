"""Building a model from a weights file: visattn's ``create_model(NAME, pretrained=FILE)`` against timm's.

    python benchmarks/weights_loading.py [--models vit_base_patch16_224 resnet50] [--formats none safetensors pth]
        [--rounds 7] [--threads 2] [--smoke]

Each round builds the model and loads one file on both sides, the same file: visattn's
``create_model(NAME, pretrained=FILE)`` and timm's ``create_model(NAME, pretrained=True,
pretrained_cfg_overlay={"file": FILE})``. timm initialises the model before loading; visattn builds it on the meta
device and, as the file's tensors fill it, puts them in it uninitialised. visattn also checks what it loads (the
layout, the head, NaN or Inf, integer values) and reads what the file records. The file holds random weights in
timm's layout, saved once (``pth``: ``torch.save``'s zip format). The two models' logits on one image are compared
before anything is timed; the ratio is timm's seconds per load over visattn's (above 1: visattn loads faster).
Format ``none`` times the build alone, with random weights: the part of timm's load that is initialisation.
"""
from __future__ import annotations

import argparse
import statistics
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any, Optional

import timm
import torch
from safetensors.torch import save_file

import side_by_side
import visattn

MODELS = ("vit_base_patch16_224", "resnet50")
FORMATS = ("none", "safetensors", "pth")  # none: the model built with random weights, which timm does before loading
SMOKE_MODELS = {"vit_tiny_patch16_224": {"img_size": 32, "depth": 2}, "resnet18": {}}


def save_weights_file(name: str, kwargs: dict, path: Path) -> None:
    """Random weights of timm's ``name``, as safetensors or torch.save's zip pickle by ``path``'s suffix."""
    torch.manual_seed(0)
    state = {k: v.contiguous() for k, v in timm.create_model(name, **kwargs).state_dict().items()}
    if path.suffix == ".safetensors":
        save_file(state, path)
    else:
        torch.save(state, path)


def visattn_load(name: str, kwargs: dict, path: Optional[Path]) -> torch.nn.Module:
    return visattn.create_model(name, pretrained=str(path) if path else False, **kwargs)


def timm_load(name: str, kwargs: dict, path: Optional[Path]) -> torch.nn.Module:
    overlay = {"pretrained_cfg_overlay": {"file": str(path)}} if path else {}
    return timm.create_model(name, pretrained=path is not None, **overlay, **kwargs)


def load_round(load: Callable[..., torch.nn.Module], *arguments: Any) -> side_by_side.Candidate:
    """``load(*arguments)``, timed by the caller (it returns no seconds of its own)."""
    def run() -> None:
        load(*arguments)
    return run


def parsed_models(parser: argparse.ArgumentParser) -> tuple[argparse.Namespace, dict[str, dict]]:
    """``parser``'s arguments, with ``--models``, and the models to load with their builder arguments (``--smoke``:
    tiny ones, one round); torch's thread count set."""
    parser.add_argument("--models", nargs="+", default=list(MODELS))
    args = parser.parse_args()
    models = {name: {} for name in args.models}
    if args.smoke:
        models, args.rounds = SMOKE_MODELS, 1
    torch.set_num_threads(args.threads)
    return args, models


def compare(name: str, kwargs: dict, path: Optional[Path], rounds: int) -> dict:
    """Seconds per build and load of ``name`` from ``path`` on each side; no ``path``: the build alone, random
    weights (no logits compared)."""
    difference = None
    if path is not None:
        size = kwargs.get("img_size", 224)
        image = torch.randn(1, 3, size, size)
        with torch.no_grad():
            ours, theirs = (load(name, kwargs, path).eval()(image) for load in (visattn_load, timm_load))
        difference = (ours - theirs).abs().max().item()
        side_by_side.require_agreement(difference <= side_by_side.LOGIT_TOLERANCE["fp32"],
                                       f"{name} from {path.name}: visattn's and timm's logits differ by up to "
                                       f"{difference:.1e}")
    seconds = side_by_side.interleave({"visattn": load_round(visattn_load, name, kwargs, path),
                                       "timm": load_round(timm_load, name, kwargs, path)}, rounds=rounds)
    visattn_s, timm_s = (statistics.median(seconds[k]) for k in ("visattn", "timm"))
    return {"model": name, "format": path.suffix[1:] if path else "none",
            "mib": round(path.stat().st_size / 2**20, 1) if path else 0.0,
            "visattn_s": round(visattn_s, 5), "timm_s": round(timm_s, 5), "ratio": round(timm_s / visattn_s, 3),
            "ratio_spread": side_by_side.ratio_spread(seconds, "visattn", "timm"), "max_logit_diff": difference}


def main() -> None:
    parser = side_by_side.parser(__doc__.splitlines()[0], rounds=7)
    parser.add_argument("--formats", nargs="+", choices=FORMATS, default=list(FORMATS))
    args, models = parsed_models(parser)
    results = []
    with tempfile.TemporaryDirectory() as folder:
        for name, kwargs in models.items():
            for suffix in args.formats:
                path = Path(folder) / f"{name}.{suffix}" if suffix != "none" else None
                if path is not None:
                    save_weights_file(name, kwargs, path)
                results.append(compare(name, kwargs, path, args.rounds))
                if path is not None:
                    path.unlink()  # ViT-L's are 1.2 GB each
    side_by_side.print_table(
        ["model", "format", "MiB", "visattn s/load", "timm s/load", "timm/visattn", "per round", "max |diff|"],
        [[r["model"], r["format"], r["mib"], r["visattn_s"], r["timm_s"], r["ratio"],
          "{:.3f}-{:.3f}".format(*r["ratio_spread"]),
          "-" if r["max_logit_diff"] is None else f"{r['max_logit_diff']:.1e}"] for r in results],
    )
    side_by_side.finish("weights_loading", {"results": results})


if __name__ == "__main__":
    main()
