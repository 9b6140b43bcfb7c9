"""visattn's ViT against timm's, same weights and threads: inference and AdamW training steps, FLOPs and MFU.

    python benchmarks/vit_vs_timm.py [--models vit_tiny_patch16_224 ...] [--rounds 5] [--grad-checkpointing] [--smoke]
    python benchmarks/vit_vs_timm.py --device cuda --precision bf16 --models vit_base_patch16_224 \
        --infer-batch 256 --train-batch 64

FLOPs per image are counted by ``torch.utils.flop_counter.FlopCounterMode`` (a multiply-add is
two FLOPs; a training step counts forward and backward), with attention on SDPA's math path: the
counter has no formula for the fused CPU kernel and would count its QK^T and attention @ V as zero
(ViT-Ti 2.15 instead of 2.51 GFLOPs). MFU is the achieved FLOP/s over the
matmul peak in the run's precision measured here, in this process, on the same device and threads:
the best of samples taken before each model, as load from other processes only ever lowers it.
``--grad-checkpointing`` applies to the training steps only (timm's models checkpoint without gradients
too, visattn's do not). The script exits with an error before timing anything, printing no figure, when the
two models' logits on the same weights differ by more than ``side_by_side.LOGIT_TOLERANCE``.
"""
from __future__ import annotations

import statistics
from collections.abc import Callable

import timm
import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.flop_counter import FlopCounterMode

import side_by_side
import visattn

MODELS = ("vit_tiny_patch16_224", "vit_small_patch16_224", "vit_base_patch16_224")


def twin_models(name: str, **kwargs) -> tuple[nn.Module, nn.Module]:
    """visattn's model and timm's, holding the same weights (timm's state-dict layout loads strictly)."""
    ours = visattn.create_model(name, **kwargs)
    theirs = timm.create_model(name, pretrained=False, **kwargs)
    theirs.load_state_dict(ours.state_dict(), strict=True)
    return ours, theirs


def flops_per_image(model: nn.Module, image_size: int, *, train: bool) -> float:
    """The model's FLOPs: with gradient checkpointing on, its recomputation is left out (MFU counts
    the model's work, not the hardware's)."""
    x = torch.randn(1, 3, image_size, image_size, device=next(model.parameters()).device)
    checkpointing = model.grad_checkpointing
    model.set_grad_checkpointing(False)
    with FlopCounterMode(display=False) as counter, sdpa_kernel(SDPBackend.MATH):
        if train:
            model(x).sum().backward()
        else:
            with torch.no_grad():
                model(x)
    model.set_grad_checkpointing(checkpointing)
    model.zero_grad(set_to_none=True)
    return float(counter.get_total_flops())


def saved_mib_per_image(model: nn.Module, images: torch.Tensor, precision: str) -> float:
    """MiB per image that a training forward keeps for the backward pass (tensors saved by autograd,
    parameters left out): what gradient checkpointing reduces."""
    parameters, saved = {p.data_ptr() for p in model.parameters()}, {}

    def keep(t: torch.Tensor) -> torch.Tensor:
        if t.data_ptr() not in parameters:
            saved[t.data_ptr()] = t.numel() * t.element_size()
        return t

    with torch.autograd.graph.saved_tensors_hooks(keep, lambda t: t), side_by_side.autocast(images.device.type, precision):
        model(images)
    return sum(saved.values()) / len(images) / 2**20


def inference_round(model: nn.Module, images: torch.Tensor, precision: str) -> Callable[[], None]:
    def run() -> None:
        with torch.inference_mode(), side_by_side.autocast(images.device.type, precision):
            model(images)
    return run


def training_round(model: nn.Module, images: torch.Tensor, targets: torch.Tensor, precision: str) -> Callable[[], None]:
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)

    def run() -> None:
        optimizer.zero_grad(set_to_none=True)
        with side_by_side.autocast(images.device.type, precision):
            loss = F.cross_entropy(model(images), targets)
        loss.backward()
        optimizer.step()
    return run


def compare(name: str, args) -> list[dict]:
    kwargs = {"img_size": args.img_size} if args.img_size != 224 else {}
    ours, theirs = (model.to(args.device) for model in twin_models(name, **kwargs))
    images = torch.randn(args.infer_batch, 3, args.img_size, args.img_size, device=args.device)
    ours.eval(), theirs.eval()
    with torch.inference_mode(), side_by_side.autocast(args.device, args.precision):
        max_diff = float((ours(images) - theirs(images)).abs().max())
    side_by_side.require_agreement(max_diff <= side_by_side.LOGIT_TOLERANCE[args.precision],
                                   f"{name}: visattn's and timm's logits differ by up to {max_diff:.1e} on the same weights")
    print(f"{name}: same weights, max |logit difference| {max_diff:.1e}")
    results = []
    for mode, batch in (("inference", args.infer_batch), ("train_step", args.train_batch)):
        train = mode == "train_step"
        ours.train(train), theirs.train(train)
        for model in (ours, theirs):  # timm's switch of the same name; timm checkpoints without gradients too
            model.set_grad_checkpointing(args.grad_checkpointing and train)
        x = torch.randn(batch, 3, args.img_size, args.img_size, device=args.device)
        y = torch.randint(0, ours.num_classes, (batch,), device=args.device)
        make = (lambda m: training_round(m, x, y, args.precision)) if train else (
            lambda m: inference_round(m, x, args.precision))
        seconds = side_by_side.interleave({"visattn": make(ours), "timm": make(theirs)}, rounds=args.rounds)
        flops = flops_per_image(ours, args.img_size, train=train)
        ours_rate, timm_rate = side_by_side.rate(seconds["visattn"], batch), side_by_side.rate(seconds["timm"], batch)
        results.append({
            "model": name, "mode": mode, "batch": batch, "visattn_img_s": round(ours_rate, 2),
            "timm_img_s": round(timm_rate, 2), "ratio": round(ours_rate / timm_rate, 3),
            "ratio_spread": side_by_side.ratio_spread(seconds, "visattn", "timm"),
            "gflops_per_img": round(flops / 1e9, 3), "max_logit_diff": max_diff,
        })
        if train:
            saved = {lib: round(saved_mib_per_image(m, x, args.precision), 2) for lib, m in (("visattn", ours), ("timm", theirs))}
            results[-1].update({"visattn_saved_mib_per_img": saved["visattn"], "timm_saved_mib_per_img": saved["timm"]})
            print(f"{name}: a training forward keeps {saved['visattn']} MiB per image for the backward pass "
                  f"(timm {saved['timm']})")
    return results


def add_mfu(row: dict, peak: float) -> dict:
    """Achieved FLOP/s over the matmul peak, for both implementations."""
    flops = row["gflops_per_img"] * 1e9
    return {**row, "mfu_visattn": round(flops * row["visattn_img_s"] / peak, 3),
            "mfu_timm": round(flops * row["timm_img_s"] / peak, 3)}


def main() -> None:
    parser = side_by_side.parser(__doc__.splitlines()[0], rounds=7)
    parser.add_argument("--models", nargs="+", default=None, help=f"default: {' '.join(MODELS)} (--smoke: the first)")
    parser.add_argument("--infer-batch", type=int, default=16)
    parser.add_argument("--train-batch", type=int, default=8)
    parser.add_argument("--img-size", type=int, default=224)
    parser.add_argument("--grad-checkpointing", action="store_true",
                        help="both models recompute block activations in the backward pass")
    side_by_side.add_device_arguments(parser)
    args = parser.parse_args()
    args.models = args.models or list(MODELS[:1] if args.smoke else MODELS)
    if args.smoke:
        args.infer_batch, args.train_batch, args.img_size, args.rounds = 2, 2, 32, 1
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    samples, rows = [], []
    for name in args.models:
        samples.append(side_by_side.product_peaks(256 if args.smoke else None, device=args.device,
                                                  precision=args.precision))
        rows += compare(name, args)
    peaks = {library: max(sample[library] for sample in samples) for library in samples[0]}
    peak = max(peaks.values())
    print(f"{args.precision} product peak on {args.device}, the faster of "
          + ", ".join(f"{library} {rate / 1e9:.1f}" for library, rate in peaks.items())
          + f" GFLOP/s with {args.threads} threads (best of {len(samples)} samples each): {peak / 1e9:.1f}")
    results = [add_mfu(row, peak) for row in rows]
    side_by_side.print_table(
        ["model", "mode", "batch", "visattn img/s", "timm img/s", "visattn/timm", "per round", "GFLOPs/img",
         "MFU visattn", "MFU timm"],
        [[r["model"], r["mode"], r["batch"], r["visattn_img_s"], r["timm_img_s"], r["ratio"],
          "{:.3f}-{:.3f}".format(*r["ratio_spread"]), r["gflops_per_img"], r["mfu_visattn"], r["mfu_timm"]]
         for r in results],
    )
    side_by_side.finish("vit_vs_timm", {"device": args.device, "precision": args.precision,
                                        "grad_checkpointing": args.grad_checkpointing,
                                        "peak_gflops": round(peak / 1e9, 1),
                                        **{f"peak_{library}_gflops": round(rate / 1e9, 1) for library, rate in peaks.items()},
                                        "results": results,
                                        **{f"median_ratio_{mode}": statistics.median(r["ratio"] for r in results
                                                                                     if r["mode"] == mode)
                                           for mode in ("inference", "train_step")}})


if __name__ == "__main__":
    main()
