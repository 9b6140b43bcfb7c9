"""visattn's ViT against timm's, same weights and threads: inference and AdamW training steps, FLOPs and MFU.

    python benchmarks/vit_vs_timm.py [--models vit_tiny_patch16_224 ...] [--rounds 5] [--smoke]

FLOPs per image are counted by ``torch.utils.flop_counter.FlopCounterMode`` (a multiply-add is
two FLOPs; a training step counts forward and backward). MFU is the achieved FLOP/s over the
fp32 matmul peak measured here, in this process, with the same threads: the best of samples taken
before each model, as load from other processes only ever lowers it.
"""
from __future__ import annotations

import statistics
import time
from collections.abc import Callable

import timm
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

import side_by_side
import visattn

MODELS = ("vit_tiny_patch16_224", "vit_small_patch16_224", "vit_base_patch16_224")


def matmul_peak(threads: int, size: int = 2048, repeats: int = 5) -> float:
    """fp32 FLOP/s of a square matmul, best of ``repeats`` (the peak this machine reaches now)."""
    torch.set_num_threads(threads)
    a, b = torch.randn(size, size), torch.randn(size, size)
    a @ b  # warm-up: thread pool and allocator
    best = min(_seconds(lambda: a @ b) for _ in range(repeats))
    return 2 * size**3 / best


def _seconds(run: Callable[[], object]) -> float:
    start = time.perf_counter()
    run()
    return time.perf_counter() - start


def twin_models(name: str, **kwargs) -> tuple[nn.Module, nn.Module]:
    """visattn's model and timm's, holding the same weights (timm's state-dict layout loads strictly)."""
    ours = visattn.create_model(name, **kwargs)
    theirs = timm.create_model(name, pretrained=False, **kwargs)
    theirs.load_state_dict(ours.state_dict(), strict=True)
    return ours, theirs


def flops_per_image(model: nn.Module, image_size: int, *, train: bool) -> float:
    x = torch.randn(1, 3, image_size, image_size)
    with FlopCounterMode(display=False) as counter:
        if train:
            model(x).sum().backward()
        else:
            with torch.no_grad():
                model(x)
    model.zero_grad(set_to_none=True)
    return float(counter.get_total_flops())


def inference_round(model: nn.Module, images: torch.Tensor) -> Callable[[], None]:
    def run() -> None:
        with torch.inference_mode():
            model(images)
    return run


def training_round(model: nn.Module, images: torch.Tensor, targets: torch.Tensor) -> Callable[[], None]:
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)

    def run() -> None:
        optimizer.zero_grad(set_to_none=True)
        F.cross_entropy(model(images), targets).backward()
        optimizer.step()
    return run


def compare(name: str, args) -> list[dict]:
    kwargs = {"img_size": args.img_size} if args.img_size != 224 else {}
    ours, theirs = twin_models(name, **kwargs)
    images = torch.randn(args.infer_batch, 3, args.img_size, args.img_size)
    ours.eval(), theirs.eval()
    with torch.inference_mode():
        max_diff = float((ours(images) - theirs(images)).abs().max())
    print(f"{name}: same weights, max |logit difference| {max_diff:.1e}")
    results = []
    for mode, batch in (("inference", args.infer_batch), ("train_step", args.train_batch)):
        train = mode == "train_step"
        ours.train(train), theirs.train(train)
        x = torch.randn(batch, 3, args.img_size, args.img_size)
        y = torch.randint(0, ours.num_classes, (batch,))
        make = (lambda m: training_round(m, x, y)) if train else (lambda m: inference_round(m, x))
        seconds = side_by_side.interleave({"visattn": make(ours), "timm": make(theirs)}, rounds=args.rounds)
        flops = flops_per_image(ours, args.img_size, train=train)
        ours_rate, timm_rate = side_by_side.rate(seconds["visattn"], batch), side_by_side.rate(seconds["timm"], batch)
        results.append({
            "model": name, "mode": mode, "batch": batch, "visattn_img_s": round(ours_rate, 2),
            "timm_img_s": round(timm_rate, 2), "ratio": round(ours_rate / timm_rate, 3),
            "gflops_per_img": round(flops / 1e9, 3), "max_logit_diff": max_diff,
        })
    return results


def add_mfu(row: dict, peak: float) -> dict:
    """Achieved FLOP/s over the matmul peak, for both implementations."""
    flops = row["gflops_per_img"] * 1e9
    return {**row, "mfu_visattn": round(flops * row["visattn_img_s"] / peak, 3),
            "mfu_timm": round(flops * row["timm_img_s"] / peak, 3)}


def main() -> None:
    parser = side_by_side.parser(__doc__.splitlines()[0], rounds=7)
    parser.add_argument("--models", nargs="+", default=list(MODELS))
    parser.add_argument("--infer-batch", type=int, default=16)
    parser.add_argument("--train-batch", type=int, default=8)
    parser.add_argument("--img-size", type=int, default=224)
    args = parser.parse_args()
    if args.smoke:
        args.models, args.infer_batch, args.train_batch, args.img_size, args.rounds = MODELS[:1], 2, 2, 32, 1
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    peaks, rows = [], []
    for name in args.models:
        peaks.append(matmul_peak(args.threads, size=256 if args.smoke else 2048))
        rows += compare(name, args)
    peak = max(peaks)
    print(f"fp32 matmul peak: {peak / 1e9:.1f} GFLOP/s with {args.threads} threads (best of {len(peaks)} samples)")
    results = [add_mfu(row, peak) for row in rows]
    side_by_side.print_table(
        ["model", "mode", "batch", "visattn img/s", "timm img/s", "visattn/timm", "GFLOPs/img", "MFU visattn", "MFU timm"],
        [[r["model"], r["mode"], r["batch"], r["visattn_img_s"], r["timm_img_s"], r["ratio"], r["gflops_per_img"],
          r["mfu_visattn"], r["mfu_timm"]] for r in results],
    )
    side_by_side.finish("vit_vs_timm", {"peak_matmul_gflops": round(peak / 1e9, 1), "results": results,
                                        "median_ratio": statistics.median(r["ratio"] for r in results)})


if __name__ == "__main__":
    main()
