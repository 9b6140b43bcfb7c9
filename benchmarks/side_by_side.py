"""Interleaved side-by-side timing, shared by the benchmark scripts in this folder.

Rounds alternate between the candidates, in mirrored order (A, B, B, A, A, B, ...), so load from
other processes on a shared machine falls on both alike and neither always runs right after the
other's allocations: the medians and, above all, their ratio are the figures to read; absolute
numbers move with the load. Every script ends with one JSON line of its figures. On a GPU each round
is timed from a synchronised device to a synchronised device, so queued kernels count.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time
from collections.abc import Callable, Mapping
from typing import Any, Optional

import torch

NOISE_NOTE = ("rounds interleaved A,B,B,A,...; medians and their ratio are meaningful under load from "
              "other processes, absolute numbers less so")

# A candidate runs one round; it returns the seconds it measured itself, or None to be timed whole.
Candidate = Callable[[], Optional[float]]


def parser(description: str, *, rounds: int) -> argparse.ArgumentParser:
    """Arguments every benchmark takes: ``--rounds``, ``--threads`` and ``--smoke`` (tiny sizes, one round)."""
    args = argparse.ArgumentParser(description=description)
    args.add_argument("--rounds", type=int, default=rounds, help=f"timed rounds per candidate (default: {rounds})")
    args.add_argument("--threads", type=int, default=torch.get_num_threads(), help="torch (and onnxruntime) threads")
    args.add_argument("--smoke", action="store_true", help="tiny sizes and one round: checks the script runs")
    return args


def add_device_arguments(args: argparse.ArgumentParser) -> None:
    """``--device`` and ``--precision``, for the benchmarks that also run on a GPU."""
    args.add_argument("--device", default="cpu", help="where the models run: cpu, cuda or cuda:N (default: cpu)")
    args.add_argument("--precision", choices=("fp32", "bf16"), default="fp32",
                      help="bf16: both sides run under bf16 autocast (default: fp32)")


def autocast(device: str, precision: str) -> torch.autocast:
    """The autocast context both sides of a comparison run under; disabled for fp32."""
    return torch.autocast(torch.device(device).type, dtype=torch.bfloat16, enabled=precision == "bf16")


def interleave(candidates: Mapping[str, Candidate], *, rounds: int, warmup: int = 1) -> dict[str, list[float]]:
    """Seconds per round for each candidate, after ``warmup`` untimed rounds, in A, B, B, A order."""
    for _ in range(warmup):
        for run in candidates.values():
            run()
    seconds: dict[str, list[float]] = {name: [] for name in candidates}
    order = list(candidates.items())
    for round_index in range(rounds):
        for name, run in order if round_index % 2 == 0 else order[::-1]:
            measured, elapsed = _timed(run)
            seconds[name].append(measured if measured is not None else elapsed)
    return seconds


def matmul_peak(size: Optional[int] = None, repeats: int = 20, *, device: str = "cpu", precision: str = "fp32",
                product: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] = torch.matmul) -> float:
    """FLOP/s of a square ``product`` (torch's matmul) in ``precision`` on ``device``, best of ``repeats``:
    the rate that library (MKL on this CPU) reaches now, not the hardware's peak (other libraries'
    products run faster on some CPUs). Five samples had moved by a third between runs. The default size
    is 2048 on CPU and 8192 on a GPU, which a smaller product would not fill."""
    size = size or (8192 if torch.device(device).type == "cuda" else 2048)
    dtype = torch.bfloat16 if precision == "bf16" else torch.float32
    a, b = (torch.randn(size, size, device=device, dtype=dtype) for _ in range(2))
    product(a, b)  # warm-up: thread pool, allocator, GPU libraries
    best = min(_timed(lambda: product(a, b))[1] for _ in range(repeats))
    return 2 * size**3 / best


def product_peaks(size: Optional[int] = None, *, device: str = "cpu", precision: str = "fp32") -> dict[str, float]:
    """:func:`matmul_peak` of torch's matmul (MKL on a CPU) and, in fp32 on a CPU, of oneDNN's inner product,
    which torch also carries and which ran at more than twice MKL's rate on the AMD CPU: an MFU is taken
    against the faster, the rate the CPU is known to reach."""
    from visattn.layers.onednn_linear import linear as onednn_linear

    peaks = {"matmul": matmul_peak(size, device=device, precision=precision)}
    if torch.device(device).type == "cpu" and precision == "fp32":
        peaks["onednn"] = matmul_peak(size, device=device, precision=precision, product=onednn_linear)
    return peaks


def synchronize() -> None:
    """Wait for the GPU's queued work, once a GPU was used; nothing on CPU."""
    if torch.cuda.is_initialized():
        torch.cuda.synchronize()


def rate(seconds: list[float], items: int) -> float:
    """Items per second at the median round."""
    return items / statistics.median(seconds)


def ratio_spread(seconds: dict[str, list[float]], faster: str, slower: str) -> list[float]:
    """``[min, max]`` over rounds of ``faster``'s rate over ``slower``'s, each round's pair taken
    together: the noise a median ratio carries. Ratios inside it are parity, not a difference."""
    ratios = [b / a for a, b in zip(seconds[faster], seconds[slower])]
    return [round(min(ratios), 3), round(max(ratios), 3)]


def machine() -> dict[str, Any]:
    """The CPU (and GPU, once one was used), threads, versions and the 1-minute load average (above the
    core count: expect noise)."""
    found = {"cpu": _cpu_name(), "cores": os.cpu_count(), "threads": torch.get_num_threads(),
             "load_1min": round(os.getloadavg()[0], 2), "torch": torch.__version__, "python": platform.python_version()}
    if torch.cuda.is_initialized():
        found["gpu"] = torch.cuda.get_device_name()
    return found


def print_table(header: list[str], rows: list[list[Any]]) -> None:
    cells = [header, *[[_cell(value) for value in row] for row in rows]]
    widths = [max(len(row[i]) for row in cells) for i in range(len(header))]
    for row in cells:
        print("  ".join(cell.rjust(w) if i else cell.ljust(w) for i, (cell, w) in enumerate(zip(row, widths))))


def finish(benchmark: str, figures: dict[str, Any], *, note: str = NOISE_NOTE) -> None:
    """Print the note on noise, then the one JSON line with the figures and the machine."""
    print(f"note: {note}")
    print(json.dumps({"benchmark": benchmark, **figures, "machine": machine()}))


# Largest |logit difference| at which two runs of the same weights count as the same work
LOGIT_TOLERANCE = {"fp32": 1e-3, "bf16": 0.1, "fp16": 0.1}


def require_agreement(agree: bool, what: str) -> None:
    """Before anything is timed, exit non-zero in one line when the two sides' outputs differ: their speeds
    would compare different work, and no figure is printed."""
    if not agree:
        raise SystemExit(f"error: {what}, so timing them would compare different work; no figure is printed")


def _timed(run: Callable[[], Any]) -> tuple[Any, float]:
    """What ``run`` returns and the seconds it took, the GPU's queued work included."""
    synchronize()
    start = time.perf_counter()
    result = run()
    synchronize()
    return result, time.perf_counter() - start


def _cell(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.3f}" if abs(value) < 10 else f"{value:.1f}"
    return str(value)


def _cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            return next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        return platform.processor() or "unknown"
