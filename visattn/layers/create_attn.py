"""Build an attention module by name, so any block can take ``attn_layer="cbam"``.

Every module here takes ``channels`` first, returns a tensor shaped like its input, and has the
explainability hook ``keep_gate`` / ``last_gate`` described in its docstring.
"""
from typing import Optional

from torch import nn

from ..errors import ConfigError, check_keyword_arguments
from .bam import Bam
from .cbam import Cbam
from .coord import CoordinateAttention
from .eca import EfficientChannelAttention
from .global_context import GlobalContextBlock
from .non_local import NonLocalBlock
from .se import SqueezeExcite

ATTN_LAYERS: dict[str, type[nn.Module]] = {
    "se": SqueezeExcite,
    "eca": EfficientChannelAttention,
    "cbam": Cbam,
    "bam": Bam,
    "coord": CoordinateAttention,
    "non_local": NonLocalBlock,
    "gc": GlobalContextBlock,
}


def get_attn(name: Optional[str]) -> Optional[type[nn.Module]]:
    """The attention class registered as ``name``; ``None`` or ``""`` give ``None``.

    Raises:
        ConfigError: ``name`` is not one of :data:`ATTN_LAYERS`.
    """
    if not name:
        return None
    try:
        return ATTN_LAYERS[name.lower()]
    except KeyError:
        raise ConfigError(
            f"unknown attention layer {name!r}: use one of {', '.join(ATTN_LAYERS)} (or None for none)"
        ) from None


def create_attn(name: Optional[str], channels: int, **kwargs) -> Optional[nn.Module]:
    """Instantiate the attention module ``name`` for ``channels`` channels, or ``None`` for no attention.

    Args:
        name: one of ``"se"``, ``"eca"``, ``"cbam"``, ``"bam"``, ``"coord"``, ``"non_local"``, ``"gc"``;
            ``None`` or ``""`` for none.
        channels: number of input (and output) channels.
        **kwargs: keyword arguments of the module's constructor (``reduction``, ``keep_gate``, ...).

    Raises:
        ConfigError: ``name`` is not a known attention layer, or does not take one of ``kwargs``.
    """
    attn_cls = get_attn(name)
    if attn_cls is None:
        return None
    check_keyword_arguments(f"the {name!r} attention layer", attn_cls.__init__, kwargs)
    return attn_cls(channels, **kwargs)
