"""The progress line of the commands that work through image files (``classify``, ``caption``, ``detect``,
``explain``): ``visattn classify: 544 of 3000 files (18%), 02:34 left`` on standard error, in place.

tqdm draws it (the redraw in place, the time left, the cut to the terminal's width): huggingface_hub depends on it
already, and it writes to the one stream it is given (Rich's console would route standard output through itself).
It is drawn only where nothing else can garble it or be garbled by it: standard error is a terminal (not a log, a
pipe or a test's capture, whose text stays byte for byte what it was), ``TERM`` is not ``dumb``, and standard output
is no pipe (what reads it, ``tee``, ``less`` or ``grep``, may write to the same terminal at any moment), for more
than one batch. Each result line and each warning is printed on a cleared line, and the line is cleared when the
work ends, stops or fails.
"""
import os
import stat
import sys
import warnings
from typing import Any, Callable, Iterable, Iterator, Optional, TypeVar

from tqdm import tqdm

LINE_FORMAT = "{desc}: {n_fmt} of {total_fmt} files ({percentage:.0f}%), {remaining} left"

T = TypeVar("T")


class FileProgress:
    """The progress line of one command, for ``with``: its exit clears the line, also at Ctrl-C or an error.

    Args:
        command: what the line starts with, e.g. ``visattn classify``.
        enabled: False draws nothing (``--no-progress``).
    """

    def __init__(self, command: str, *, enabled: bool = True) -> None:
        self.command, self.enabled = command, enabled
        self.bar: Optional[tqdm] = None  # while the line is drawn on standard error
        self.shown = False
        self._warning_hook: Optional[Callable[..., None]] = None  # ours while drawn, over the command's
        self._previous_showwarning: Callable[..., None] = warnings.showwarning

    def __enter__(self) -> "FileProgress":
        return self

    def __exit__(self, *exc_info: Any) -> None:
        if self.bar is not None:
            self.bar.close()  # leave=False: erases the line
            self.bar, self.shown = None, False
        if self._warning_hook is not None and warnings.showwarning is self._warning_hook:  # else theirs stays
            warnings.showwarning = self._previous_showwarning

    def track(self, pairs: Iterable[T], *, total: int, batch_size: int) -> Iterator[T]:
        """``pairs``, one per file (as ``run_in_batches`` yields them), each handed on with the line cleared for
        its result to be printed, and the line redrawn once it has been; drawn only for more than one batch."""
        if not (self.enabled and total > batch_size and _terminal_beside_the_results()):
            yield from pairs
            return
        # mininterval=0, miniters=1: the line is erased for each result, so each update draws it again.
        # smoothing=0: files come a batch at a time, so the rate is the average since the start, not the last gap's.
        self.bar = tqdm(total=total, desc=self.command, unit="file", file=sys.stderr, leave=False,
                        dynamic_ncols=True, mininterval=0, miniters=1, smoothing=0, bar_format=LINE_FORMAT)
        self.shown = True
        self._clear_for_warnings()
        for pair in pairs:
            self.clear()
            yield pair
            self.bar.update()
            self.shown = True

    def clear(self) -> None:
        if self.shown:
            self.bar.clear()
            self.shown = False

    def _clear_for_warnings(self) -> None:
        """Warnings print on a line of their own: the progress line is cleared first, and redrawn after."""
        previous = self._previous_showwarning = warnings.showwarning

        def show_warning(*args: Any, **kwargs: Any) -> None:
            was_shown = self.shown
            self.clear()
            previous(*args, **kwargs)
            if was_shown:  # while a result is printed the line stays cleared
                self.bar.refresh()
                self.shown = True

        warnings.showwarning = self._warning_hook = show_warning


def _terminal_beside_the_results() -> bool:
    """Standard error is a terminal that can erase a line, and standard output is no pipe."""
    stderr = sys.stderr
    if stderr is None or not stderr.isatty() or os.environ.get("TERM") == "dumb":
        return False
    try:
        mode = os.fstat(sys.stdout.fileno()).st_mode
    except (AttributeError, OSError, ValueError):  # no file behind it (a notebook, a test's capture): no pipe
        return True
    return not (stat.S_ISFIFO(mode) or stat.S_ISSOCK(mode))
