"""Spatial gate maps of attention CNN modules: what each module itself chose to emphasise.

Papers: CBAM (Woo et al. 2018, "CBAM: Convolutional Block Attention Module"), BAM (Park et al.
2018, "BAM: Bottleneck Attention Module"), coordinate attention (Hou et al. 2021, "Coordinate
Attention for Efficient Mobile Network Design"), non-local blocks (Wang et al. 2018, "Non-local
Neural Networks") and global context blocks (Cao et al. 2019, "GCNet").

Each module stores its gates in ``module.last_gate`` when ``module.keep_gate`` is on. They are
turned into one ``(B, h, w)`` map per module:

- CBAM: the spatial gate ``(B, 1, h, w)``.
- BAM: the channel mean of the gate it applies, ``x · (1 + σ(channel + spatial))`` (its spatial branch is
  never applied alone).
- Coordinate attention: the channel mean of the product of the height and width gates, i.e. the
  mean factor by which the module scales each position.
- Non-local: the affinity ``(B, hw, hw)`` averaged over the query positions, i.e. how much
  attention each position receives.
- Global context: the attention-pooling weights ``(B, 1, h, w)``.

SE and ECA have channel gates only and give no spatial map.
"""
from __future__ import annotations

from collections import OrderedDict

import torch
from torch import Tensor, nn

from ..errors import ConfigError
from ..layers.bam import Bam
from ..layers.cbam import Cbam
from ..layers.coord import CoordinateAttention
from ..layers.eca import EfficientChannelAttention
from ..layers.global_context import GlobalContextBlock
from ..layers.non_local import NonLocalBlock
from ..layers.se import SqueezeExcite
from ..modes import eval_mode
from ..wrapped_models import as_module
from .attention import model_batch

SPATIAL_GATE_TYPES = (Cbam, Bam, CoordinateAttention, NonLocalBlock, GlobalContextBlock)
CHANNEL_GATE_TYPES = {SqueezeExcite: "SE", EfficientChannelAttention: "ECA"}


def gate_modules(model: nn.Module) -> dict[str, nn.Module]:
    """The attention modules of ``model`` with a spatial gate, by name, in definition order."""
    return {name: m for name, m in model.named_modules() if isinstance(m, SPATIAL_GATE_TYPES)}


def missing_gates(model: nn.Module) -> str:
    """What a model without spatial gates lacks, and why its SE or ECA modules give no map: their gates weigh
    whole channels, the same at every place."""
    kinds = sorted({CHANNEL_GATE_TYPES[type(m)] for m in model.modules() if type(m) in CHANNEL_GATE_TYPES})
    only = f", only {' and '.join(kinds)} gates, which weigh whole channels alike at every place" if kinds else ""
    return f"no spatial attention gates (CBAM, BAM, coord, non-local, GC){only}"


def spatial_gate(gate: dict[str, Tensor], feature_size: tuple[int, int]) -> Tensor:
    """One module's ``last_gate`` -> ``(B, h, w)`` spatial map."""
    if "gate" in gate:  # BAM: the (B, C, h, w) gate it applies
        return gate["gate"].mean(dim=1)
    if "spatial" in gate:  # CBAM, global context: (B, 1, h, w)
        return gate["spatial"][:, 0]
    if "height" in gate and "width" in gate:  # coordinate attention: (B, C, h, 1) * (B, C, 1, w)
        return (gate["height"] * gate["width"]).mean(dim=1)
    if "affinity" in gate:  # non-local: (B, queries, keys) -> attention each key position receives
        return gate["affinity"].mean(dim=1).reshape(-1, *feature_size)
    raise ConfigError(f"gate with keys {sorted(gate)} has no spatial map; use method 'gradcam'")


def _record_input_size(sizes: dict[str, tuple[int, int]], name: str):
    def hook(module: nn.Module, args: tuple, output: Tensor) -> None:
        sizes[name] = tuple(args[0].shape[-2:])  # the feature map the gate was computed on

    return hook


@torch.no_grad()
def gate_maps(model: nn.Module, images: Tensor) -> tuple[Tensor, "OrderedDict[str, Tensor]"]:
    """Run ``model`` once with every gate kept and collect the spatial maps.

    Args:
        model: a model holding attention modules with ``keep_gate`` (see ``visattn/layers``), or a loaded
            ``Classifier`` of one.
        images: normalised images ``(B, 3, H, W)``; any device and floating dtype (they run on the model's).

    Returns:
        ``(logits, maps)``: the model output and ``{module name: (B, h, w) map}`` for every module
        with a spatial gate, in forward order. ``keep_gate`` is restored afterwards.

    Raises:
        ConfigError: the model has no module with a spatial gate (SE and ECA gate channels only).
    """
    model = as_module(model)
    modules = gate_modules(model)
    if not modules:
        raise ConfigError(f"{type(model).__name__} has {missing_gates(model)}; "
                          "use method 'gradcam' (or 'rollout'/'attention' for ViTs)")
    images = model_batch(model, images)
    with eval_mode(model):  # and the model's lock: the flags and hooks are this call's alone
        saved = {name: m.keep_gate for name, m in modules.items()}
        sizes: dict[str, tuple[int, int]] = {}
        hooks = [m.register_forward_hook(_record_input_size(sizes, name)) for name, m in modules.items()]
        try:
            for m in modules.values():
                m.keep_gate, m.last_gate = True, {}
            logits = model(images)
            maps = OrderedDict()
            for name in sizes:  # hooks fire in forward order
                maps[name] = spatial_gate(modules[name].last_gate, sizes[name]).float()
        finally:
            for hook in hooks:
                hook.remove()
            for name, m in modules.items():
                m.keep_gate = saved[name]
                if not m.keep_gate:
                    m.last_gate = {}  # do not hold on to a batch's gates the user did not ask for
    return logits, maps
