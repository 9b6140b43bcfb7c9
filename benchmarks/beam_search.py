"""Batched beam search against the same model decoding one image at a time.

    python benchmarks/beam_search.py [--batch 64] [--beam-size 5] [--model sat_cbam_resnet_scenes.scenes] [--smoke]
    python benchmarks/beam_search.py --device cuda

Both decode the same FashionScenes test images with the shipped captioner; the captions must be
identical (the script exits with an error before timing anything otherwise), and the figure is captions
per second and its ratio. The ratio has a ceiling: one-image
decoding's time over the time batched decoding would take running its FLOPs (FlopCounterMode) at
the faster of the two product rates measured here: torch's matmul and oneDNN's inner product, which
the LSTM's products go through. Once batched decoding nears that peak, only one-image decoding's
overhead per step raises the ratio further.
"""
from __future__ import annotations

from collections.abc import Callable

import torch
from torch.utils.flop_counter import FlopCounterMode

import side_by_side
from visattn.data.scenes import FashionScenes
from visattn.inference.captioner import load_captioner


def scene_batch(captioner, count: int) -> torch.Tensor:
    transform = captioner.transform()
    scenes = FashionScenes("test", num_scenes=count, canvas_size=captioner.preprocessing["input_size"][-1])
    return torch.stack([transform(scenes[i].image) for i in range(count)])


@torch.inference_mode()
def batched(model, images: torch.Tensor, beam_size: int, max_len: int) -> list[list[int]]:
    return [t.tolist() for t in model.beam_search(images, beam_size=beam_size, max_len=max_len).tokens]


@torch.inference_mode()
def one_by_one(model, images: torch.Tensor, beam_size: int, max_len: int) -> list[list[int]]:
    return [model.beam_search(image[None], beam_size=beam_size, max_len=max_len).tokens[0].tolist()
            for image in images]


def batched_flops(model, images: torch.Tensor, beam_size: int, max_len: int) -> float:
    # FlopCounterMode has no formula for oneDNN's inner product (visattn.layers.onednn_linear): count
    # the same products as F.linear's, with the same convolutions.
    with FlopCounterMode(display=False) as counter, torch.backends.mkldnn.flags(enabled=False):
        batched(model, images, beam_size, max_len)
    return float(counter.get_total_flops())


def timed(decode: Callable[..., list[list[int]]], *args) -> side_by_side.Candidate:
    def run() -> None:  # None: side_by_side times the whole call
        decode(*args)
    return run


def main() -> None:
    parser = side_by_side.parser(__doc__.splitlines()[0], rounds=5)
    parser.add_argument("--model", default="sat_cbam_resnet_scenes.scenes")
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--beam-size", type=int, default=5)
    parser.add_argument("--max-len", type=int, default=20)
    side_by_side.add_device_arguments(parser)
    args = parser.parse_args()
    if args.smoke:
        args.batch, args.rounds = 4, 1
    torch.set_num_threads(args.threads)
    captioner = load_captioner(model=args.model)
    images = scene_batch(captioner, args.batch).to(args.device)
    decode_args = (captioner.model.to(args.device), images, args.beam_size, args.max_len)
    with side_by_side.autocast(args.device, args.precision):
        identical = batched(*decode_args) == one_by_one(*decode_args)
        side_by_side.require_agreement(identical, "batched and one-image beam search gave different captions")
        flops = batched_flops(*decode_args)
        candidates = {"batched": timed(batched, *decode_args), "per_image": timed(one_by_one, *decode_args)}
        seconds = side_by_side.interleave(candidates, rounds=args.rounds)
    size = 256 if args.smoke else None
    peaks = side_by_side.product_peaks(size, device=args.device, precision=args.precision)
    peak = max(peaks.values())  # the LSTM's products go through oneDNN where it computes them (CPU, fp32)
    rates = {name: side_by_side.rate(s, args.batch) for name, s in seconds.items()}
    ratio = rates["batched"] / rates["per_image"]
    ceiling = args.batch / rates["per_image"] / (flops / peak)
    side_by_side.print_table(["decoder", "captions/s"], [[name, rate] for name, rate in rates.items()])
    spread = side_by_side.ratio_spread(seconds, "batched", "per_image")
    print(f"batched / per-image: {ratio:.2f}x (per round {spread[0]:.2f}-{spread[1]:.2f}), identical captions: {identical}")
    print(f"batched: {flops / args.batch / 1e6:.1f} MFLOPs per caption, {flops * rates['batched'] / args.batch / 1e9:.1f}"
          f" GFLOP/s of a {peak / 1e9:.1f} GFLOP/s peak (torch matmul {peaks['matmul'] / 1e9:.1f}, oneDNN inner product"
          f" {peaks.get('onednn', float('nan')) / 1e9:.1f}); ratio ceiling at that peak: {ceiling:.1f}x")
    side_by_side.finish("beam_search", {"model": args.model, "device": args.device, "precision": args.precision,
                                        "batch": args.batch, "beam_size": args.beam_size,
                                        "batched_captions_s": round(rates["batched"], 2),
                                        "per_image_captions_s": round(rates["per_image"], 2),
                                        "ratio": round(ratio, 2), "ratio_spread": spread,
                                        "identical_captions": identical,
                                        "batched_mflops_per_caption": round(flops / args.batch / 1e6, 2),
                                        "peak_matmul_gflops": round(peaks["matmul"] / 1e9, 1),
                                        "peak_onednn_gflops": round(peaks.get("onednn", 0.0) / 1e9, 1),
                                        "ratio_ceiling": round(ceiling, 2)})


if __name__ == "__main__":
    main()
