"""What visattn's DataLoader worker processes do as they start: leave a stop of the whole process group to the
main process."""
from __future__ import annotations

import signal
from typing import Any, Callable, Optional

# SIGHUP is not on Windows, whose workers are spawned and take no signal from their group.
STOP_SIGNALS = tuple(s for s in (signal.SIGTERM, getattr(signal, "SIGHUP", None)) if s is not None)


def leave_stops_to_the_command(worker_id: int = 0) -> None:
    """The worker's first SIGTERM or SIGHUP is left to the main process, which ends its workers as it ends its run;
    a second one ends the worker by default.

    A stop of the whole process group (slurm's ``scancel`` and preemption, ``kill -- -PGID``, a closed terminal)
    reaches every worker too, and torch's workers died of it at once (torch's SIGTERM handler keeps the default for
    any sender but the main process): the command's next batch then failed with "DataLoader worker is killed by
    signal", a traceback and exit 1, instead of its one line and exit 143."""
    for signum in STOP_SIGNALS:
        signal.signal(signum, _default_from_now_on)


def _default_from_now_on(signum: int, frame: Any) -> None:
    signal.signal(signum, signal.SIG_DFL)


def start_worker(worker_id: int, *, init: Optional[Callable[[int], None]] = None) -> None:
    """A ``worker_init_fn``: :func:`leave_stops_to_the_command`, then the loader's own ``init`` (Lightning's
    seeding under ``seed_everything(workers=True)``)."""
    leave_stops_to_the_command(worker_id)
    if init is not None:
        init(worker_id)
