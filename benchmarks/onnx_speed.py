"""onnxruntime (CPU) against PyTorch eager for classifiers exported with ``visattn.export.export_onnx``.

    python benchmarks/onnx_speed.py [--models vit_small_patch16_224 cbam_resnet18] [--batch 16] [--smoke]

Both run the same weights with the same number of intra-op threads; the logits are checked to agree first.
"""
from __future__ import annotations

import tempfile
from collections.abc import Callable
from pathlib import Path

import torch

import side_by_side
import visattn
from visattn.export import INPUT_NAME, export_onnx, onnx_max_difference, onnx_session
from visattn.tasks.classification import inference_model

MODELS = ("vit_small_patch16_224", "cbam_resnet18")


def torch_round(model: torch.nn.Module, images: torch.Tensor) -> Callable[[], None]:
    def run() -> None:
        with torch.inference_mode():
            model(images)
    return run


def onnx_round(session, images: torch.Tensor) -> Callable[[], None]:
    feed = {INPUT_NAME: images.numpy()}

    def run() -> None:
        session.run(None, feed)
    return run


def compare(name: str, args, folder: Path) -> dict:
    # ViTs are built for the image size; ResNets pool globally and take any size. PyTorch runs the
    # model as visattn's loaders prepare it for inference (channels-last convolutions).
    model = inference_model(visattn.create_model(name, **({"img_size": args.img_size} if name.startswith("vit") else {})))
    size = (3, args.img_size, args.img_size)
    path = export_onnx(model, folder / f"{name}.onnx", input_size=size)
    session = onnx_session(path, threads=args.threads)
    images = torch.randn(args.batch, *size)
    difference = onnx_max_difference(model, session, images)
    seconds = side_by_side.interleave({"pytorch": torch_round(model, images), "onnxruntime": onnx_round(session, images)},
                                      rounds=args.rounds)
    torch_rate, ort_rate = (side_by_side.rate(seconds[k], args.batch) for k in ("pytorch", "onnxruntime"))
    return {"model": name, "batch": args.batch, "input_size": list(size), "pytorch_img_s": round(torch_rate, 2),
            "onnxruntime_img_s": round(ort_rate, 2), "ratio": round(ort_rate / torch_rate, 3),
            "ratio_spread": side_by_side.ratio_spread(seconds, "onnxruntime", "pytorch"),
            "max_logit_diff": difference}


def main() -> None:
    parser = side_by_side.parser(__doc__.splitlines()[0], rounds=7)
    parser.add_argument("--models", nargs="+", default=list(MODELS))
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--img-size", type=int, default=224)
    args = parser.parse_args()
    if args.smoke:
        args.models, args.batch, args.img_size, args.rounds = ["vit_tiny_patch16_224", "cbam_resnet20_cifar"], 2, 32, 1
    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as folder:
        results = [compare(name, args, Path(folder)) for name in args.models]
    side_by_side.print_table(
        ["model", "batch", "pytorch (eager) img/s", "onnxruntime img/s", "onnxruntime/pytorch", "per round", "max |diff|"],
        [[r["model"], r["batch"], r["pytorch_img_s"], r["onnxruntime_img_s"], r["ratio"],
          "{:.3f}-{:.3f}".format(*r["ratio_spread"]), f"{r['max_logit_diff']:.1e}"] for r in results],
    )
    side_by_side.finish("onnx_speed", {"results": results})


if __name__ == "__main__":
    main()
