"""The inference commands' whole run on one image against the imports no command can start without.

    python benchmarks/command_startup.py [--commands classify explain caption detect] [--rounds 7] [--threads 2]
        [--smoke]

Each round runs ``visattn COMMAND --model ARCH.TAG IMAGE --device cpu`` in a fresh process (the shipped weights of
its task, a 64x64 PNG) and, beside it, a fresh process that only imports torch, torchvision, timm, albumentations
and PIL and exits: what every command needs before it reads its first image. The ratio is the floor's seconds over
the command's: 1.00 would be a command that costs nothing beyond those imports. Both take ``--threads`` as
``OMP_NUM_THREADS``; each command must exit 0 once before anything is timed.
"""
from __future__ import annotations

import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

import torch
from PIL import Image

import side_by_side

REPO = Path(__file__).resolve().parents[1]
FLOOR = "import torch, torchvision, timm, albumentations, PIL.Image"
COMMANDS = {
    "classify": ["--model", "se_resnet20_cifar.fmnist"],
    "explain": ["--model", "se_resnet20_cifar.fmnist", "--out", "map.png"],
    "caption": ["--model", "sat_cbam_resnet_scenes.scenes"],
    "detect": ["--model", "fcos_se_resnet20_cifar.scenes"],
}


def process(argv: list[str], folder: Path, threads: int) -> subprocess.CompletedProcess:
    """``python ARGV`` in ``folder`` with this checkout first on its path."""
    env = {**os.environ, "OMP_NUM_THREADS": str(threads),
           "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}
    return subprocess.run([sys.executable, *argv], cwd=folder, env=env, capture_output=True, text=True)


def run_command(command: str, folder: Path, threads: int) -> str:
    """``visattn COMMAND`` on the image, in a fresh process; its line for the image, or exit in one line when it
    failed (a round that failed early would have timed less than the command)."""
    ran = process(["-m", "visattn", command, *COMMANDS[command], "image.png", "--device", "cpu"], folder, threads)
    line = next((line for line in ran.stdout.splitlines() if line.startswith("image.png: ")), None)
    if ran.returncode != 0 or line is None:
        raise SystemExit(f"error: visattn {command} exited {ran.returncode} without its line for the image "
                         f"({ran.stderr.strip()[-300:]}); no figure is printed")
    return line


def compare(command: str, folder: Path, rounds: int, threads: int) -> dict:
    line = run_command(command, folder, threads)  # also warms the page cache: every round is a fresh process

    def command_round() -> None:  # None: interleave times the whole call
        run_command(command, folder, threads)

    def floor_round() -> None:
        process(["-c", FLOOR], folder, threads)

    seconds = side_by_side.interleave({"command": command_round, "floor": floor_round}, rounds=rounds, warmup=0)
    command_s, floor_s = (statistics.median(seconds[name]) for name in ("command", "floor"))
    return {"command": command, "line": line, "command_s": round(command_s, 3), "floor_s": round(floor_s, 3),
            "ratio": round(floor_s / command_s, 3),
            "ratio_spread": side_by_side.ratio_spread(seconds, "command", "floor")}


def main() -> None:
    parser = side_by_side.parser(__doc__.splitlines()[0], rounds=7)
    parser.add_argument("--commands", nargs="+", choices=list(COMMANDS), default=list(COMMANDS))
    args = parser.parse_args()
    if args.smoke:
        args.commands, args.rounds = ["classify"], 1
    torch.set_num_threads(args.threads)  # what the figures' machine record reports
    results = []
    with tempfile.TemporaryDirectory() as folder:
        Image.new("RGB", (64, 64), (200, 120, 40)).save(Path(folder) / "image.png")
        for command in args.commands:
            results.append(compare(command, Path(folder), args.rounds, args.threads))
    side_by_side.print_table(
        ["command", "command s", "imports alone s", "floor/command", "per round"],
        [[r["command"], r["command_s"], r["floor_s"], r["ratio"], "{:.3f}-{:.3f}".format(*r["ratio_spread"])]
         for r in results],
    )
    side_by_side.finish("command_startup", {"floor": FLOOR, "results": results})


if __name__ == "__main__":
    main()
