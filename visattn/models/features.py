"""timm's feature-extraction API on visattn's classifiers: the levels ``forward_intermediates`` takes, and the
``create_model(..., features_only=True)`` model, timm's own ``FeatureGetterNet`` around the classifier."""
from typing import Sequence, Union

from timm.models._features import FeatureGetterNet, feature_take_indices  # timm exports neither at the top
from torch import nn

from ..errors import ArgumentError, ConfigError

Indices = Union[int, Sequence[int], None]


def take_indices(count: int, indices: Indices, *, argument: str = "indices") -> tuple[list[int], int]:
    """timm's ``feature_take_indices`` over ``count`` levels (None: all; n: the last n; a sequence: those, negative
    counted from the end) and the largest taken, with a selection outside them one line naming ``argument``
    (timm asserts)."""
    if indices is not None and not isinstance(indices, int) and len(indices) == 0:
        raise ArgumentError(argument, indices, f"take at least one of the {count} feature levels")
    try:
        return feature_take_indices(count, indices)
    except (AssertionError, TypeError) as err:
        raise ArgumentError(argument, indices, f"{err}; give an int n (the last n levels) or a list of level "
                                               f"indices from 0 to {count - 1}") from None


def features_only(model: nn.Module, out_indices: Indices = None) -> nn.Module:
    """``model`` returning the list of its feature maps at ``out_indices`` (timm's defaults: every level of a
    ResNet, a ViT's last three blocks), its layers past the last one taken and its head dropped, as timm's
    ``create_model(..., features_only=True)`` gives; ``feature_info`` describes the maps."""
    if not hasattr(model, "forward_intermediates"):
        raise ConfigError(f"features_only=True: {type(model).__name__} has no feature levels (forward_intermediates); "
                          "build a ResNet or ViT classifier")
    if out_indices is None:
        out_indices = 3 if hasattr(model, "blocks") else len(model.feature_info)
    kept, _ = take_indices(len(model.feature_info), out_indices, argument="out_indices")
    wrapped = FeatureGetterNet(model, out_indices=kept)
    wrapped.pretrained_cfg = wrapped.default_cfg = getattr(model, "pretrained_cfg", None)
    return wrapped
