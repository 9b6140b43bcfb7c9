"""``visattn`` and ``python -m visattn``: the command, with Ctrl-C one line from the first moment.

Ctrl-C while :mod:`visattn.cli` is imported is answered here; after that, by the command's own handling (its
commands import torch, a second or two, only when they run).
"""
import sys


def main() -> int:
    try:
        from .cli import main as run
    except KeyboardInterrupt:
        print("visattn: interrupted", file=sys.stderr)
        return 130
    return run()


if __name__ == "__main__":
    sys.exit(main())
