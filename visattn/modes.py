"""Module modes for inference: whatever mode the caller left a model in, inference runs it in eval mode."""
from contextlib import contextmanager
from typing import Iterator

from torch import nn


@contextmanager
def eval_mode(model: nn.Module) -> Iterator[nn.Module]:
    """Run ``model`` in eval mode (no dropout, fixed batch-norm statistics), then restore each
    module's own mode (fine-tuning recipes keep some, e.g. frozen BatchNorms, in eval mode)."""
    modes = [(module, module.training) for module in model.modules()]
    model.eval()
    try:
        yield model
    finally:
        for module, training in modes:
            module.training = training
