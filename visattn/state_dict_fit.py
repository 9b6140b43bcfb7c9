"""Whether a state dict fits a model: missing, unexpected and misshapen keys, and a model's classifier heads, which
fit apart. A misfit is one line naming the keys and, where the keys show it, the architecture or the builder
arguments the weights need (another depth, block, stem, final norm)."""
import re
import warnings
from pathlib import Path
from typing import Any, Iterable, Optional

from torch import nn

from .errors import VisattnWarning, WeightsError, first_few, outside_visattn
from .layers.create_attn import ATTN_LAYERS
from .registry import Strictness
from .weights_files import StateDict, _under


def classifier_names(model: nn.Module) -> tuple[str, ...]:
    """The module names of a model's classifier heads (a distilled DeiT has two; none: no head): visattn models
    give theirs as ``classifier``; timm's in their ``pretrained_cfg`` (where ``classifier`` may be the head
    module itself: EfficientNet, MobileNet)."""
    head = getattr(model, "classifier", None)
    if isinstance(head, str):
        return (head,)
    cfg = getattr(model, "pretrained_cfg", None)
    named = cfg.get("classifier") if isinstance(cfg, dict) else None
    names = (named,) if isinstance(named, str) else tuple(named) if isinstance(named, (tuple, list)) else ()
    return names if all(isinstance(name, str) for name in names) else ()


def check_state_dict(
    model: nn.Module, state: StateDict, *, strict: Strictness, source: Any, fix: Optional[str] = None
) -> None:
    """Raise :class:`WeightsError` naming ``source`` and the keys when ``state`` does not fit ``model``.

    Missing and unexpected keys count only when ``strict`` is True, those outside the model's attention
    modules when it is ``"attention"``; shapes always, and so does a state that shares no key with the
    model. ``fix`` replaces the hint.
    """
    own = model.state_dict()
    if not own.keys() & state.keys():
        prefix = _fitting_prefix(state, own)
        if prefix and not all(key.startswith(prefix) for key in state):  # a detector's or captioner's weights
            path = repr(str(source)) if isinstance(source, (str, Path)) and Path(source).is_file() else "FILE"
            fix = fix or (f"load that part alone: pretrained={{k.removeprefix({prefix!r}): v for k, v in "
                          f"state.items() if k.startswith({prefix!r})}}, state being "
                          f"visattn.pretrained.read_state_dict({path})")
            raise WeightsError(f"{source}: weights do not fit {type(model).__name__} (no key in common; those under "
                               f"{prefix!r} do, a part such as a detector's backbone or a captioner's encoder); {fix}")
        wrapped = (f"; the weights' keys all start with {prefix!r}: strip that prefix"  # a user's LightningModule
                   if prefix and len(state) > 1 else "")
        raise WeightsError(f"{source}: weights do not fit {type(model).__name__} (no key in common{wrapped}); "
                           f"{fix or 'load weights saved from this architecture'}")
    heads = tuple(f"{name}." for name in classifier_names(model))
    # Checkpoints from before PyTorch 0.4.1, and frozen-BatchNorm ones (torchvision's detectors), have no
    # BatchNorm step counters; they only matter with momentum=None.
    missing = [k for k in own if k not in state and not (heads and k.startswith(heads))
               and not k.endswith(".num_batches_tracked")]
    unexpected = [k for k in state if k not in own]
    shape = [f"{k} {tuple(state[k].shape)} vs {tuple(own[k].shape)}" for k in state if k in own and own[k].shape != state[k].shape]
    if shape or (strict is True and (missing or unexpected)):
        parts = [f"{label}: {_key_list(keys)}" for label, keys in
                 (("missing", missing), ("unexpected", unexpected), ("wrong shape", shape)) if keys]
        hint = fix or ("check the architecture and its kwargs (depth, widths, ...); pass strict='attention' when "
                       "the missing keys are attention modules added to the weights' architecture (a plain ResNet's "
                       "weights in cbam_resnet50)" if not shape else "check the architecture and its kwargs")
        hint = (_depth_hint(state, own, model, fix) or _block_hint(state, own) or _stem_hint(state, own)
                or _final_norm_hint(missing, unexpected) or hint)
        raise WeightsError(f"{source}: weights do not fit {type(model).__name__} ({'; '.join(parts)}); {hint}")
    attention = _attention_prefixes(model) if strict == "attention" else ()
    outside = {label: [k for k in keys if not k.startswith(attention)]
               for label, keys in (("missing", missing), ("unexpected", unexpected))} if strict == "attention" else {}
    if any(outside.values()):
        # another depth's weights (resnet18's in a resnet34, resnet101's in a resnet50) would leave whole blocks at
        # their init, or be dropped, with only a warning
        parts = "; ".join(f"{label} outside its attention modules: {_key_list(keys)}" for label, keys in outside.items() if keys)
        hint = _depth_hint(state, own, model, fix) or fix or "give weights of this architecture or of its plain version"
        raise WeightsError(f"{source}: weights do not fit {type(model).__name__} ({parts}); {hint}")
    if missing or unexpected:
        warnings.warn(
            f"{source}: loaded non-strictly; kept init for missing {_key_list(missing)}; "
            f"ignored unexpected {_key_list(unexpected)}",
            VisattnWarning,
            stacklevel=outside_visattn(),
        )


# A block's key: its stage (ResNet's layer1, ViT's blocks, also under a detector's backbone) and its index there.
_BLOCK_KEY = re.compile(r"^((?:.*\.)?(?:layer\d+|blocks))\.(\d+)\.")


def _final_norm_hint(missing: list[str], unexpected: list[str]) -> str:
    """How to load a ViT's weights whose final norm sits on the other side of pooling (timm's token-pooled weights
    in a ``global_pool='avg'`` model, which builds ``fc_norm``), else empty (without it, the hint is the generic
    strict='attention', which does not apply)."""
    before, after = {"norm.weight", "norm.bias"}, {"fc_norm.weight", "fc_norm.bias"}
    if set(missing) == after and set(unexpected) == before:
        return ("the weights normalise the tokens before pooling (norm), this model after it (fc_norm, which "
                "pooling the patch tokens builds): pass fc_norm=False to keep their norm, or strict=False to start "
                "fc_norm afresh")
    if set(missing) == before and set(unexpected) == after:
        # Not fc_norm=True alone: it would load them strictly into a token-pooled model, which computes
        # other logits than the average-pooled model (MAE, BEiT, timm's *_gap_*) such weights usually come from.
        return ("the weights normalise after pooling (fc_norm), this model the tokens before it (norm): pass "
                "global_pool='avg' if they pool the patch tokens (MAE, BEiT, timm's *_gap_* weights), or "
                "fc_norm=True if they pool the class token")
    return ""


def _block_hint(state: StateDict, own: StateDict) -> str:
    """How to build a ResNet for weights of the other block (resnet34's in a resnet50: the same 3, 4, 6, 3 blocks) or
    of other 3x3 convolutions (ResNeXt's groups, Wide ResNet's width), else empty (without it, a 776-character key list
    says only "check the architecture")."""
    first, third, grouped = "layer1.0.conv1.weight", "layer1.0.conv3.weight", "layer1.0.conv2.weight"
    if first not in state or first not in own:
        return ""
    if (third in state) != (third in own):
        bottleneck = "Bottleneck blocks (three convolutions: ResNet-50 and deeper)"
        basic = "BasicBlocks (two: ResNet-18, -34)"
        theirs, ours = (bottleneck, basic) if third in state else (basic, bottleneck)
        return f"the weights have {theirs}, this model {ours}: build the ResNet of their blocks"
    if third not in state or grouped not in own or state[grouped].shape == own[grouped].shape:
        return ""
    width, groups = state[grouped].shape[0], state[first].shape[0] // state[grouped].shape[1]
    return (f"the weights' first 3x3 convolution is {width} wide with groups={groups}, this model's "
            f"{own[grouped].shape[0]} with groups={own[first].shape[0] // own[grouped].shape[1]}: pass "
            f"cardinality={groups}, base_width={width // groups} (resnext50_32x4d: 32 and 4; wide_resnet50_2: 1 and "
            "128)")


def _stem_hint(state: StateDict, own: StateDict) -> str:
    """How to build a ResNet for weights of the other stem (a 7x7 conv, or ResNet-D's three 3x3 convs), else empty:
    their key lists alone (some 700 characters) do not say it."""
    avg_down = any(re.search(r"\.downsample\.2\.weight$", key) for key in state)
    if "conv1.weight" in state and "conv1.0.weight" in own:
        return (f"the weights have the 7x7 stem (conv1): build a ResNet without stem_type (resnet50, not resnet50d)"
                f"{', with avg_down=True' if avg_down else ', avg_down=False'}")
    if "conv1.0.weight" not in state or "conv1.3.weight" not in state:
        return ""
    width = state["conv1.3.weight"].shape[0]
    tiered = state["conv1.0.weight"].shape[0] != width
    settings = f"stem_type={'deep_tiered' if tiered else 'deep'!r}, stem_width={width}, avg_down={avg_down}"
    if "conv1.weight" in own:
        d_model = "build the ResNet-D (resnet50d), or " if (width, tiered, avg_down) == (32, False, True) else ""
        return f"the weights have a deep stem (conv1.0-conv1.6): {d_model}pass {settings}"
    stem = ("conv1.0.weight", "conv1.3.weight")
    if all(key in own for key in stem) and any(own[key].shape != state[key].shape for key in stem):
        return f"the weights' deep stem is another ({state['conv1.0.weight'].shape[0]}, {width} wide): pass {settings}"
    return ""


def _depth_hint(state: StateDict, own: StateDict, model: nn.Module, fix: Optional[str] = None) -> str:
    """``another depth: the weights hold 3, 4, 6, 3 blocks in layer1–layer4, ResNet 2, 2, 2, 2; build ...`` when the
    two have the same stages, each of blocks numbered from 0 without a gap, and count other blocks in one
    (resnet50's weights in a resnet18), else empty: the key lists alone hid it. Other stages (a CIFAR ResNet's three
    against four) are another architecture, and a gap a stray key, not a depth."""
    def blocks(keys: Iterable[str]) -> dict[str, Optional[int]]:
        indices: dict[str, set[int]] = {}
        for found in filter(None, map(_BLOCK_KEY.match, keys)):
            indices.setdefault(found[1], set()).add(int(found[2]))
        return {stage: len(found) if found == set(range(len(found))) else None for stage, found in indices.items()}

    theirs, ours = blocks(state), blocks(own)
    if not theirs or theirs.keys() != ours.keys() or None in theirs.values() or theirs == ours:
        return ""
    stages = sorted(theirs, key=lambda stage: [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", stage)])
    where = f" in {stages[0]}–{stages[-1]}" if len(stages) > 1 else ""
    def listed(counts: dict[str, int]) -> str:
        return ", ".join(str(counts.get(stage, 0)) for stage in stages)
    return (f"another depth: the weights hold {listed(theirs)} blocks{where}, {type(model).__name__} {listed(ours)}; "
            f"{fix or 'build the architecture of their depth, or give weights of this one'}")


def _attention_prefixes(model: nn.Module) -> tuple[str, ...]:
    """``("layer1.0.attn.", ...)``: where the model's attention modules (SE, CBAM, ..., non-local) keep their weights."""
    kinds = tuple(ATTN_LAYERS.values())
    return tuple(f"{name}." for name, module in model.named_modules() if isinstance(module, kinds))


def _fitting_prefix(state: StateDict, own: StateDict) -> str:
    """The key prefix (``'net.'``, ``'backbone.body.'``) under which the most of the weights' keys are the model's own:
    a user's LightningModule around the model, a detector's backbone, a captioner's encoder; empty when none is."""
    prefixes = {key[:end + 1] for key in state for end, char in enumerate(key) if char == "."}
    shared = {prefix: len(_under(state, prefix).keys() & own.keys()) for prefix in prefixes}
    best = max(sorted(shared, key=len), key=shared.get, default="")  # the shortest of those sharing the most
    return best if shared.get(best) else ""


def _key_list(keys: list[str], limit: int = 8) -> str:
    return first_few(keys, limit) if keys else "none"
