"""timm's feature-extraction API on visattn's classifiers: the levels ``forward_intermediates`` takes, and the
``create_model(..., features_only=True)`` model, timm's own ``FeatureGetterNet`` around the classifier."""
import operator
from typing import Any, Optional, Sequence, Union

from timm.models._features import FeatureGetterNet, feature_take_indices  # timm exports neither at the top
from torch import nn

from ..errors import ArgumentError, ConfigError

Indices = Union[int, Sequence[int], None]


def take_indices(count: int, indices: Indices, *, argument: str = "indices") -> tuple[list[int], int]:
    """timm's ``feature_take_indices`` over ``count`` levels (None: all; n: the last n; a sequence: those, negative
    counted from the end) and the largest taken, with a selection that is none of these or outside the levels one
    line naming ``argument`` (timm asserts, or raises a TypeError)."""
    hint = f"give an int n (the last n levels) or a list of level indices from 0 to {count - 1}"
    selection = _whole_numbers(indices)
    if indices is not None and selection is None:
        raise ArgumentError(argument, indices, hint)
    if isinstance(selection, list) and not selection:
        raise ArgumentError(argument, indices, f"take at least one of the {count} feature levels")
    try:
        return feature_take_indices(count, selection)
    except AssertionError as err:
        raise ArgumentError(argument, indices, f"{err}; {hint}") from None


def _whole_numbers(indices: Any) -> Union[int, list[int], None]:
    """``indices`` as an int or a list of ints (NumPy's and 0-d tensors' too); None for anything else (floats,
    booleans, text)."""
    def whole(value: Any) -> Optional[int]:
        if isinstance(value, bool):
            return None
        try:
            return operator.index(value)
        except TypeError:
            return None

    single = whole(indices)
    if single is not None:
        return single
    if isinstance(indices, (str, bytes)) or not hasattr(indices, "__iter__"):
        return None
    values = [whole(value) for value in indices]
    return None if None in values else values


class FeatureLevels(FeatureGetterNet):
    """timm's ``FeatureGetterNet`` with the model's ``set_grad_checkpointing``, which timm's ``FeatureListNet`` (its
    features-only ResNets) has, so that backbone code may call it on the features-only model; ``load_state_dict``
    also takes a ``FeatureListNet``'s state dict, whose keys are the classifier's without the ``model.`` prefix."""

    def __init__(self, model: nn.Module, **kwargs: Any) -> None:
        super().__init__(model, **kwargs)
        self.register_load_state_dict_pre_hook(_under_model)

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        self.model.set_grad_checkpointing(enable)


def _under_model(module: nn.Module, state_dict: dict[str, Any], prefix: str, *args: Any) -> None:
    """``load_state_dict``'s pre-hook: the keys of a state dict laid out as timm's ``FeatureListNet``'s (no key of
    ``module`` under ``model.``) moved under ``model.``, in place."""
    own = [key for key in state_dict if key.startswith(prefix)]
    if own and not any(key.startswith(f"{prefix}model.") for key in own):
        for key in own:
            state_dict[f"{prefix}model.{key[len(prefix):]}"] = state_dict.pop(key)


def features_only(model: nn.Module, out_indices: Indices = None) -> nn.Module:
    """``model`` returning the list of its feature maps at ``out_indices`` (timm's defaults: every level of a
    ResNet, a ViT's last three blocks), its layers past the last one taken and its head dropped, as timm's
    ``create_model(..., features_only=True)`` gives; ``feature_info`` describes the maps."""
    if not hasattr(model, "forward_intermediates"):
        raise ConfigError(f"features_only=True: {type(model).__name__} has no feature levels (forward_intermediates); "
                          "build a ResNet or ViT classifier")
    levels = len(model.feature_info)
    if out_indices is None:
        out_indices = min(3, levels) if hasattr(model, "blocks") else levels
    kept, _ = take_indices(levels, out_indices, argument="out_indices")
    if kept != sorted(set(kept)):  # the maps come in depth order, once each: feature_info would describe others
        raise ArgumentError("out_indices", out_indices, "give each level once, shallowest first")
    wrapped = FeatureLevels(model, out_indices=kept)
    wrapped.pretrained_cfg = wrapped.default_cfg = getattr(model, "pretrained_cfg", None)
    if hasattr(model, "published_preprocessing"):  # as visattn's transforms read it, beside timm's pretrained_cfg
        wrapped.published_preprocessing = model.published_preprocessing
    return wrapped
