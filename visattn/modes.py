"""Module modes for inference: whatever mode the caller left a model in, inference runs it in eval mode; one
visattn call at a time runs on a model, so that calls from several threads do not see each other's changes."""
import threading
import weakref
from contextlib import contextmanager
from typing import Iterator

from torch import nn

_LOCKS: "weakref.WeakKeyDictionary[nn.Module, threading.RLock]" = weakref.WeakKeyDictionary()
_LOCKS_LOCK = threading.Lock()


@contextmanager
def model_lock(model: nn.Module) -> Iterator[nn.Module]:
    """Hold ``model``'s own re-entrant lock: what a visattn call changes on a model for its duration (its mode,
    Grad-CAM's hook, kept gates and attention, FCOS's score floor) is seen by no call from another thread, which
    waits (else two threads can get each other's maps, and leave a model changed). Kept beside the model, not on it, so
    that the model pickles and copies as before."""
    with _LOCKS_LOCK:
        lock = _LOCKS.get(model)
        if lock is None:
            lock = _LOCKS[model] = threading.RLock()
    with lock:
        yield model


@contextmanager
def eval_mode(model: nn.Module) -> Iterator[nn.Module]:
    """Run ``model`` in eval mode (no dropout, fixed batch-norm statistics), then restore each
    module's own mode (fine-tuning recipes keep some, e.g. frozen BatchNorms, in eval mode); under
    :func:`model_lock`."""
    with model_lock(model):
        modes = [(module, module.training) for module in model.modules()]
        model.eval()
        try:
            yield model
        finally:
            for module, training in modes:
                module.training = training
