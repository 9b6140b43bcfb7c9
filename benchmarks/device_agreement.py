"""The shipped models scored by `visattn evaluate` on the CPU and on another device: the metrics must agree.

    python benchmarks/device_agreement.py --device cuda [--limit 500]

gpu.sh runs it. Another device sums in another order (and cuDNN may compute convolutions in TF32),
so a prediction near a tie can flip: each metric may differ by at most ``--tolerance``. The script
exits 1 when one differs by more, after printing every figure and the JSON line.
"""
from __future__ import annotations

import argparse
import contextlib
import io
import json
import time

import torch

import side_by_side
from visattn.cli import main as visattn
from visattn.pretrained import load_index

DATASETS = ("fashion-mnist", "fashion-scenes")  # what this machine can score without downloads
# Classifiers are also scored on single items on a canvas, which adds the pointing game: their
# Grad-CAM or attention rollout maps then run on the device too.
ALSO_SCORED_ON = {"fashion-mnist": ("fashion-mnist-canvas",)}
COUNTS = ("n", "beam_size")  # fields of the metrics line that are settings, not scores


def shipped_models() -> list[tuple[str, str]]:
    """``(arch.tag, dataset)`` of each architecture's default weights trained on a local dataset."""
    return sorted((name, dataset) for name, entry in load_index().items()
                  if entry.get("default") and entry.get("dataset") in DATASETS
                  for dataset in (entry["dataset"], *ALSO_SCORED_ON.get(entry["dataset"], ())))


def evaluate(model: str, dataset: str, device: str, limit: int) -> tuple[dict, float]:
    """The metrics line of `visattn evaluate` and its seconds, loading included."""
    printed = io.StringIO()
    start = time.perf_counter()
    with contextlib.redirect_stdout(printed):
        code = visattn(["evaluate", "--model", model, "--dataset", dataset, "--limit", str(limit),
                        "--json", "--device", device])
    seconds = time.perf_counter() - start
    if code != 0:
        raise SystemExit(f"visattn evaluate --model {model} --device {device} exited with {code}")
    return json.loads(printed.getvalue().strip().splitlines()[-1]), seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda", help="the device compared with the CPU (default: cuda)")
    parser.add_argument("--limit", type=int, default=500, help="samples scored per model (default: 500)")
    parser.add_argument("--tolerance", type=float, default=0.01, help="largest metric difference allowed")
    parser.add_argument("--smoke", action="store_true", help="8 samples per model: checks the script runs")
    args = parser.parse_args()
    limit = 8 if args.smoke else args.limit
    rows, results = [], []
    for model, dataset in shipped_models():
        (cpu, cpu_s), (other, other_s) = (evaluate(model, dataset, d, limit) for d in ("cpu", args.device))
        scores = [k for k, v in cpu.items() if isinstance(v, (int, float)) and k not in COUNTS]
        largest = max(abs(cpu[k] - other[k]) for k in scores)
        rows += [[model, dataset, k, cpu[k], other[k], abs(cpu[k] - other[k])] for k in scores]
        results.append({"model": model, "dataset": dataset, "n": cpu["n"], "cpu": cpu, "on_device": other,
                        "max_abs_diff": round(largest, 6), "agree": largest <= args.tolerance,
                        "cpu_s": round(cpu_s, 2), "device_s": round(other_s, 2)})
    side_by_side.print_table(["model", "dataset", "metric", "cpu", args.device, "|diff|"], rows)
    agree = all(r["agree"] for r in results)
    print(f"every metric within {args.tolerance} of the CPU's: {agree}")
    gpu = torch.cuda.get_device_name() if torch.cuda.is_initialized() else None
    print(json.dumps({"benchmark": "device_agreement", "device": args.device, "gpu": gpu, "limit": limit,
                      "tolerance": args.tolerance, "agree": agree, "results": results}))
    if not agree:
        raise SystemExit(1)


if __name__ == "__main__":
    main()
