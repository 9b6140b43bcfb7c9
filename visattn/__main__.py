"""``visattn`` and ``python -m visattn``: the command, with Ctrl-C one line from the first moment.

:mod:`visattn.cli` imports torch, which takes a second or two; Ctrl-C in that time had been a traceback
of wherever the import was.
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
