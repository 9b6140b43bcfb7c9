"""onnxruntime (CPU) against PyTorch eager for classifiers exported with ``visattn.export.export_onnx``.

    python benchmarks/onnx_speed.py [--models vit_small_patch16_224 cbam_resnet18] [--batch 16] [--smoke]

Both run the same weights with the same number of intra-op threads; the script exits with an error before
timing anything, printing no figure, when their logits differ by more than 1e-3.
The script also times one fp32 matrix product in each library (torch's own, MKL here; oneDNN's, which torch
also carries; onnxruntime's MLAS), since the models spend most of their time in such products.
"""
from __future__ import annotations

import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnx
import torch
from onnx import TensorProto, helper

import side_by_side
import visattn
from visattn.export import INPUT_NAME, export_onnx, onnx_max_difference, onnx_session
from visattn.inference.checkpoints import inference_model

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
    side_by_side.require_agreement(difference <= side_by_side.LOGIT_TOLERANCE["fp32"],
                                   f"{name}: onnxruntime's and PyTorch's logits differ by up to {difference:.1e}")
    seconds = side_by_side.interleave({"pytorch": torch_round(model, images), "onnxruntime": onnx_round(session, images)},
                                      rounds=args.rounds)
    torch_rate, ort_rate = (side_by_side.rate(seconds[k], args.batch) for k in ("pytorch", "onnxruntime"))
    return {"model": name, "batch": args.batch, "input_size": list(size), "pytorch_img_s": round(torch_rate, 2),
            "onnxruntime_img_s": round(ort_rate, 2), "ratio": round(ort_rate / torch_rate, 3),
            "ratio_spread": side_by_side.ratio_spread(seconds, "onnxruntime", "pytorch"),
            "max_logit_diff": difference}


def matmul_rates(size: int, threads: int, folder: Path, repeats: int = 10) -> dict[str, float]:
    """GFLOP/s of one fp32 ``(size, size)`` product, best of ``repeats``, in each library."""
    square = [helper.make_tensor_value_info(name, TensorProto.FLOAT, [size, size]) for name in "abc"]
    graph = helper.make_graph([helper.make_node("MatMul", ["a", "b"], ["c"])], "matmul", square[:2], square[2:])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), folder / "matmul.onnx")
    session = onnx_session(folder / "matmul.onnx", threads=threads)
    a, b = (torch.randn(size, size) for _ in range(2))
    packed = torch.ops.mkldnn._reorder_linear_weight(b.t().contiguous(), size)  # oneDNN's blocked layout, made once
    feed = {"a": a.numpy(), "b": b.numpy()}
    products = {"torch": lambda: a @ b,
                "onednn": lambda: torch.ops.mkldnn._linear_pointwise(a, packed, None, "none", [], ""),
                "onnxruntime": lambda: session.run(None, feed)}
    np.testing.assert_allclose(session.run(None, feed)[0], (a @ b).numpy(), rtol=1e-3, atol=1e-3 * size ** 0.5)
    torch.testing.assert_close(products["onednn"](), a @ b, rtol=1e-3, atol=1e-3 * size ** 0.5)
    return {name: round(2 * size**3 / best_seconds(run, repeats) / 1e9, 1) for name, run in products.items()}


def best_seconds(run: Callable[[], object], repeats: int) -> float:
    run()  # warm-up: thread pools, first-call setup
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        run()
        times.append(time.perf_counter() - start)
    return min(times)


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
        rates = matmul_rates(256 if args.smoke else 2048, args.threads, Path(folder))
    side_by_side.print_table(
        ["model", "batch", "pytorch (eager) img/s", "onnxruntime img/s", "onnxruntime/pytorch", "per round", "max |diff|"],
        [[r["model"], r["batch"], r["pytorch_img_s"], r["onnxruntime_img_s"], r["ratio"],
          "{:.3f}-{:.3f}".format(*r["ratio_spread"]), f"{r['max_logit_diff']:.1e}"] for r in results],
    )
    print("fp32 matmul GFLOP/s, best of 10: " + ", ".join(f"{name} {rate}" for name, rate in rates.items()))
    side_by_side.finish("onnx_speed", {"results": results, "matmul_gflops": rates})


if __name__ == "__main__":
    main()
