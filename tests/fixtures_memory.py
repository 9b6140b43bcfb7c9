"""What a training step keeps for its backward pass, for the gradient-checkpointing tests of every family."""
import torch
from torch import nn


def checkpointed_share(model: nn.Module, images: torch.Tensor) -> float:
    """Bytes a training step keeps for backward with ``set_grad_checkpointing()`` over those it keeps
    without, once the two steps are checked to give the same gradients."""
    plain_bytes, plain_grads = saved_bytes_and_grads(model, images)
    model.set_grad_checkpointing()
    assert model.grad_checkpointing
    checkpointed_bytes, checkpointed_grads = saved_bytes_and_grads(model, images)
    assert plain_grads.keys() == checkpointed_grads.keys()
    for name, grad in plain_grads.items():
        torch.testing.assert_close(checkpointed_grads[name], grad, msg=name)
    return checkpointed_bytes / plain_bytes


def saved_bytes_and_grads(model: nn.Module, images: torch.Tensor) -> tuple[int, dict[str, torch.Tensor]]:
    """Bytes the autograd graph keeps for the backward pass (tensors saved while the forward runs,
    parameters excluded), and the gradients of a training step in the model's current mode."""
    parameters = {p.data_ptr() for p in model.parameters()}
    saved = {}

    def keep(t: torch.Tensor) -> torch.Tensor:
        if t.data_ptr() not in parameters:
            saved[t.data_ptr()] = t.numel() * t.element_size()
        return t

    model.zero_grad(set_to_none=True)
    torch.manual_seed(1)  # the same dropout and drop-path masks on both runs
    with torch.autograd.graph.saved_tensors_hooks(keep, lambda t: t):
        loss = model(images).logsumexp(dim=1).sum()
    loss.backward()
    return sum(saved.values()), {name: p.grad.clone() for name, p in model.named_parameters()}
