"""Batched beam search against the same model decoding one image at a time.

    python benchmarks/beam_search.py [--batch 64] [--beam-size 5] [--model sat_cbam_resnet_scenes.scenes] [--smoke]

Both decode the same FashionScenes test images with the shipped captioner; the captions must be
identical, and the figure is captions per second and its ratio.
"""
from __future__ import annotations

from collections.abc import Callable

import torch

import side_by_side
from visattn.data.scenes import FashionScenes
from visattn.tasks.captioning import load_captioner


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
    args = parser.parse_args()
    if args.smoke:
        args.batch, args.rounds = 4, 1
    torch.set_num_threads(args.threads)
    captioner = load_captioner(model=args.model)
    images = scene_batch(captioner, args.batch)
    decode_args = (captioner.model, images, args.beam_size, args.max_len)
    identical = batched(*decode_args) == one_by_one(*decode_args)
    candidates = {"batched": timed(batched, *decode_args), "per_image": timed(one_by_one, *decode_args)}
    seconds = side_by_side.interleave(candidates, rounds=args.rounds)
    rates = {name: side_by_side.rate(s, args.batch) for name, s in seconds.items()}
    ratio = rates["batched"] / rates["per_image"]
    side_by_side.print_table(["decoder", "captions/s"], [[name, rate] for name, rate in rates.items()])
    print(f"batched / per-image: {ratio:.2f}x, identical captions: {identical}")
    side_by_side.finish("beam_search", {"model": args.model, "batch": args.batch, "beam_size": args.beam_size,
                                        "batched_captions_s": round(rates["batched"], 2),
                                        "per_image_captions_s": round(rates["per_image"], 2),
                                        "ratio": round(ratio, 2), "identical_captions": identical})


if __name__ == "__main__":
    main()
