"""The ``visattn`` command.

Every error a user can cause (:class:`~visattn.errors.VisattnError`) is printed as one line
naming the thing and the fix, with exit code 2 and no traceback.
"""
import argparse
import sys
from typing import Callable, Optional, Sequence

import torch

from .errors import VisattnError
from .registry import create_model, list_models, list_pretrained, model_family, split_model_name


def count_parameters(name: str) -> int:
    """Parameter count of a registered architecture, built on the meta device (no memory, no init cost)."""
    with torch.device("meta"):
        model = create_model(name)
    return sum(p.numel() for p in model.parameters())


def _format_count(n: int) -> str:
    return f"{n / 1e6:.2f}M" if n >= 1e5 else f"{n / 1e3:.1f}K"


def cmd_models(args: argparse.Namespace) -> int:
    names = list_models(args.pattern, pretrained=args.pretrained)
    if not names:
        print(f"no models match {args.pattern!r}; try `visattn models` for the full list", file=sys.stderr)
        return 1
    tags: dict[str, list[str]] = {}
    for full in list_pretrained():
        arch, tag = split_model_name(full)
        tags.setdefault(arch, []).append(tag)
    rows = [(n, model_family(n), _format_count(count_parameters(n)), ",".join(tags.get(n, [])) or "-") for n in names]
    header = ("model", "family", "params", "pretrained")
    widths = [max(len(r[i]) for r in rows + [header]) for i in range(len(header))]
    for row in [header, *rows]:
        print("  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip())
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="visattn", description="Vision attention model zoo.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    models = sub.add_parser("models", help="list registered models with parameter counts and pretrained tags")
    models.add_argument("pattern", nargs="?", default="*", help="fnmatch pattern, e.g. 'cbam_*'")
    models.add_argument("--pretrained", action="store_true", help="only models with shipped weights")
    models.set_defaults(func=cmd_models)
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    func: Callable[[argparse.Namespace], int] = args.func
    try:
        return func(args)
    except VisattnError as err:
        print(f"visattn: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("visattn: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
