"""Where inference runs: device names (``device=`` in Python, ``--device`` on the command line) checked against
this machine; how many loader workers it takes."""
import itertools
import os
from typing import TYPE_CHECKING, Union

from .errors import ArgumentError

if TYPE_CHECKING:  # imported where used: the command's parser reads this module's names before torch is imported
    import torch
    from torch import nn

DEVICE_CHOICES = "cpu, cuda, cuda:N, mps, or auto (CUDA when there is one, else an Apple GPU (MPS), else the CPU)"


def inference_device(name: Union[str, "torch.device"] = "cpu") -> "torch.device":
    """The device ``name`` names, checked against this machine: one it lacks is an :class:`ArgumentError`
    naming ``device`` (a command names its ``--device``) before any weights are read. ``auto`` is the first
    CUDA device, else MPS, else the CPU: the order Lightning's ``accelerator="auto"`` trains on."""
    import torch

    if isinstance(name, torch.device):
        name = str(name)
    if not isinstance(name, str):
        raise ArgumentError("device", name, "give a device name, e.g. 'cpu', 'cuda' or 'auto'")
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        return torch.device("mps" if torch.backends.mps.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        device = None
    if device is None or device.type not in ("cpu", "cuda", "mps"):
        raise ArgumentError("device", name, f"not a device; use {DEVICE_CHOICES}")
    cuda_count = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if device.type == "cuda" and (device.index or 0) >= cuda_count:
        raise ArgumentError("device", name, f"this machine has {cuda_count} CUDA devices; use cpu or auto")
    if device.type == "mps" and not torch.backends.mps.is_available():
        raise ArgumentError("device", name, "this machine has no MPS (Apple GPU) device; use cpu or auto")
    return device


def model_device(model: "nn.Module") -> "torch.device":
    """Where ``model``'s weights are; the CPU for a model without any."""
    import torch

    weight = next(itertools.chain(model.parameters(), model.buffers()), None)
    return torch.device("cpu") if weight is None else weight.device


MAX_WORKERS_PER_CPU = 4  # more DataLoader workers only compete for the CPUs, each with its own copy of the data


def max_workers() -> int:
    """The most DataLoader workers a command or config may ask for on this machine."""
    return MAX_WORKERS_PER_CPU * (os.cpu_count() or 1)
