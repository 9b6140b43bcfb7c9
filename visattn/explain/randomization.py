"""The model parameter randomization test (Adebayo et al. 2018, "Sanity Checks for Saliency Maps", NeurIPS,
section 3.1): does a map change when the weights that made the prediction are destroyed?

A method whose maps survive the model's weights being re-drawn shows the image (its edges, its centre), not what the
model learned. The cascade re-draws the model's stages from the output down, one more at each step, and compares
each step's map of an image with the trained model's map: Spearman's rank correlation and SSIM of the two maps at
the input's size, each scaled to [0, 1] (a constant map has no order to share, and correlates 0). A map of another
image by the trained model is the reference: what any two of its maps share (a centred dataset's maps overlap).

Stages are the model's top-level modules in the order its forward runs them, with ``nn.Sequential`` and
``nn.ModuleList`` opened into their members (a ViT's blocks, a ResNet's stages' blocks); modules the forward never
runs, or without parameters, are not stages. Parameters held by the model itself (a ViT's class token and position
embedding) belong to the first stage, as the patch embedding they are added to. Re-drawing calls each module's
``reset_parameters`` (PyTorch's initialisers; batch norm's running statistics are reset with it), and draws any
parameter no such module owns (a layer scale, a token) from a normal of std 0.02 (timm's token initialiser), seeded by
the stage's place in the cascade, so each batch meets the same random models.

Adebayo et al.'s independent randomization re-draws one stage at a time, the others left trained: it asks which
stages a map depends on, where the cascade asks whether it depends on the model at all.
"""
from __future__ import annotations

import copy
from typing import Iterator, Literal

import torch
from torch import Tensor, nn

from ..errors import ArgumentError, ConfigError
from ..modes import eval_mode
from .attention import recorded_inputs

SSIM_SIGMA, SSIM_WINDOW = 1.5, 11  # Wang et al.'s Gaussian window, torchmetrics' default
TOKEN_STD = 0.02
Mode = Literal["cascading", "independent"]
MODES = ("cascading", "independent")

Stage = tuple[str, nn.Module, list[nn.Parameter]]  # (name, module, the parameters drawn from a normal)


def forward_stages(model: nn.Module, images: Tensor) -> list[Stage]:
    """``model``'s stages in the order one forward of ``images`` runs them: each module is re-drawn by its modules'
    ``reset_parameters``, and the parameters listed with it from a normal."""
    units = dict(_units(model))
    with eval_mode(model), torch.no_grad(), recorded_inputs(list(units.values())) as calls:
        model(images)
    names = {id(module): name for name, module in units.items()}
    ran = [name for name in dict.fromkeys(names[id(module)] for module, _ in calls)
           if any(True for _ in units[name].parameters())]
    if not ran:
        raise ConfigError(f"{type(model).__name__} ran no child module with parameters; the randomization test "
                          "re-draws a model's child modules")
    held = dict(model.named_parameters(recurse=False))
    return [(" + ".join([name, *held]) if i == 0 else name, units[name],
             _unowned_parameters(units[name]) + (list(held.values()) if i == 0 else []))
            for i, name in enumerate(ran)]


def _units(module: nn.Module, prefix: str = "") -> Iterator[tuple[str, nn.Module]]:
    for name, child in module.named_children():
        qualified = f"{prefix}{name}"
        if isinstance(child, (nn.Sequential, nn.ModuleList)):
            yield from _units(child, f"{qualified}.")
        else:
            yield qualified, child


def _unowned_parameters(module: nn.Module) -> list[nn.Parameter]:
    """The parameters in ``module`` that no module's ``reset_parameters`` re-draws."""
    return [parameter for sub in module.modules() if not hasattr(sub, "reset_parameters")
            for parameter in sub.parameters(recurse=False)]


def randomize_stage(module: nn.Module, parameters: list[nn.Parameter], seed: int) -> None:
    """Re-draw a stage in place: its modules' ``reset_parameters``, then ``parameters`` from a normal; the random
    state outside is left as it was."""
    devices = sorted({p.device.index or 0 for p in module.parameters() if p.device.type == "cuda"})
    with torch.random.fork_rng(devices=devices), torch.no_grad():
        torch.manual_seed(seed)
        for sub in module.modules():
            if hasattr(sub, "reset_parameters"):
                sub.reset_parameters()
        for parameter in parameters:
            parameter.normal_(0.0, TOKEN_STD)


def randomized_models(model: nn.Module, stages: list[Stage], *, mode: Mode = "cascading",
                      seed: int = 0) -> Iterator[tuple[str, nn.Module]]:
    """A copy of ``model`` with its ``stages`` (of :func:`forward_stages`) re-drawn from the last one down, yielded
    as ``(stage, the copy)`` at each step: ``cascading``, one more stage each time (the stage named and those after
    it); ``independent``, the stage named alone, the others trained. A stage's weights are drawn alike in both
    modes; ``model`` itself is not changed, and the copy changes at the next step."""
    check_mode(mode)
    memo: dict[int, object] = {}
    randomized = copy.deepcopy(model, memo)  # memo maps each original module and parameter to its copy
    for depth, (name, module, parameters) in enumerate(reversed(stages)):
        module, parameters = memo[id(module)], [memo[id(p)] for p in parameters]
        # independent: the stage's trained tensors, put back before the next stage's turn alone
        kept = [(tensor, tensor.detach().clone()) for tensor in (*module.parameters(), *module.buffers(), *parameters)
                if mode == "independent"]
        randomize_stage(module, parameters, seed + depth)
        yield name, randomized
        with torch.no_grad():
            for tensor, value in kept:
                tensor.copy_(value)


def check_mode(mode: str) -> None:
    if mode not in MODES:
        raise ArgumentError("mode", mode, f"use one of {', '.join(MODES)}")


def map_similarity(maps: Tensor, others: Tensor) -> tuple[Tensor, Tensor]:
    """Spearman's rank correlation and SSIM of each pair of ``(B, H, W)`` maps scaled to [0, 1]: two ``(B,)``."""
    # imported here: explain is imported by the inference commands, which load neither torchmetrics nor Lightning
    from torchmetrics.functional.image import structural_similarity_index_measure
    from torchmetrics.functional.regression import spearman_corrcoef

    spearman = spearman_corrcoef(maps.flatten(1).T.double(), others.flatten(1).T.double())
    # reflect padding needs the window's half under the map's side: a narrower window on maps under 6 px
    window = min(SSIM_WINDOW, 2 * min(maps.shape[-2:]) - 1)
    sigma = SSIM_SIGMA if window == SSIM_WINDOW else (window - 1) / 7  # torchmetrics' window: 2 int(3.5 sigma + .5) + 1
    ssim = structural_similarity_index_measure(others[:, None].float(), maps[:, None].float(), data_range=1.0,
                                               sigma=sigma, reduction="none")
    return spearman.reshape(len(maps)).float(), ssim
