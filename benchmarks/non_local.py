"""A non-local block through SDPA's fused kernels against its explicit (H*W, H*W) affinity: speed and memory.

    python benchmarks/non_local.py [--sides 28 56 80] [--channels 512] [--batch 2] [--smoke]

Linux only (the memory figures read ``/proc``).

Both sides are the same ``NonLocalBlock`` and weights: the explicit side is the path ``keep_gate`` takes (and every
forward took before the fused one), which holds the whole affinity. The outputs and input gradients are checked to
agree before anything is timed. Times are a forward (no grad) and a forward plus backward, interleaved in this
process; memory is the growth of the peak resident set (Linux's ``VmHWM``) over one forward plus backward, each side
in a fresh process (a process's peak cannot be lowered again).
"""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import torch

import side_by_side
from visattn.layers.non_local import NonLocalBlock

SIDES = (28, 56, 80)  # ResNet-50's stage-2 map at 224, 448 and 640 px


def block_and_input(channels: int, batch: int, side: int, *, explicit: bool) -> tuple[NonLocalBlock, torch.Tensor]:
    torch.manual_seed(0)
    block = NonLocalBlock(channels, keep_gate=explicit)
    torch.nn.init.ones_(block.norm.weight)  # the zero-initialised output BN would pass the attention no gradient
    return block, torch.randn(batch, channels, side, side)


def output_and_gradient(block: NonLocalBlock, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    x = x.clone().requires_grad_()
    out = block(x)
    out.square().mean().backward()
    return out.detach(), x.grad


def peak_kib() -> int:
    """This process's peak resident set since it started (``VmHWM``; not ``ru_maxrss``, which a process started by
    a larger one inherits)."""
    status = Path("/proc/self/status").read_text()
    return int(next(line.split()[1] for line in status.splitlines() if line.startswith("VmHWM:")))


def peak_growth_mib(channels: int, batch: int, side: int, explicit: bool) -> float:
    """Peak resident-set growth over one forward plus backward, in a fresh process."""
    code = (f"import sys, torch; sys.path.insert(0, {str(Path(__file__).parent)!r}); from non_local import *; "
            f"torch.set_num_threads(1); block, x = block_and_input({channels}, {batch}, {side}, explicit={explicit}); "
            "base = peak_kib(); output_and_gradient(block, x); print((peak_kib() - base) / 1024)")
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return float(run.stdout)


def compare(side: int, args) -> dict:
    (fused, x), (explicit, _) = (block_and_input(args.channels, args.batch, side, explicit=e) for e in (False, True))
    (out_a, grad_a), (out_b, grad_b) = output_and_gradient(fused, x), output_and_gradient(explicit, x)
    difference = max((out_a - out_b).abs().max().item(), (grad_a - grad_b).abs().max().item())
    side_by_side.require_agreement(difference <= side_by_side.LOGIT_TOLERANCE["fp32"], f"side {side}: the two paths differ by up to {difference:.1e}")

    def forward(block: NonLocalBlock):
        def run() -> None:
            with torch.no_grad():
                block(x)
        return run

    def train(block: NonLocalBlock):
        def run() -> None:  # returns nothing: interleave takes a returned value as the run's own timing
            output_and_gradient(block, x)
        return run

    row: dict = {"side": side, "positions": side * side, "batch": args.batch, "channels": args.channels,
                 "max_diff": difference}
    for name, run_of in (("forward", forward), ("train", train)):
        seconds = side_by_side.interleave({"fused": run_of(fused), "explicit": run_of(explicit)}, rounds=args.rounds)
        fused_ms, explicit_ms = (1000 / side_by_side.rate(seconds[k], 1) for k in ("fused", "explicit"))
        row[name] = {"fused_ms": round(fused_ms, 3), "explicit_ms": round(explicit_ms, 3),
                     "ratio": round(explicit_ms / fused_ms, 3),  # the fused path's speed over the explicit one's
                     "ratio_spread": side_by_side.ratio_spread(seconds, "fused", "explicit")}
    row["peak_mib"] = {name: round(peak_growth_mib(args.channels, args.batch, side, name == "explicit"), 1)
                       for name in ("fused", "explicit")}
    return row


def main() -> None:
    parser = side_by_side.parser(__doc__.splitlines()[0], rounds=5)
    parser.add_argument("--sides", nargs="+", type=int, default=list(SIDES))
    parser.add_argument("--channels", type=int, default=512)
    parser.add_argument("--batch", type=int, default=2)
    args = parser.parse_args()
    if args.smoke:
        args.sides, args.channels, args.batch, args.rounds = [12], 16, 2, 1
    torch.set_num_threads(args.threads)
    results = [compare(side, args) for side in args.sides]
    side_by_side.print_table(
        ["positions", "pass", "fused ms", "explicit ms", "speed-up", "per round", "train peak MiB fused", "explicit"],
        [[f"{r['side']}x{r['side']}", name, r[name]["fused_ms"], r[name]["explicit_ms"], r[name]["ratio"],
          "{:.3f}-{:.3f}".format(*r[name]["ratio_spread"]), r["peak_mib"]["fused"], r["peak_mib"]["explicit"]]
         for r in results for name in ("forward", "train")],
    )
    side_by_side.finish("non_local", {"results": results})


if __name__ == "__main__":
    main()
