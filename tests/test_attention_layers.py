"""Attention modules built through ``create_attn``: shapes, stored gates, gradients, error messages."""
import pytest
import torch
from torch import nn

from visattn.errors import ConfigError
from visattn.layers.create_attn import ATTN_LAYERS, create_attn
from visattn.layers.eca import EfficientChannelAttention, eca_kernel_size

NAMES = ["se", "eca", "cbam", "bam", "coord", "non_local", "gc"]
CHANNELS = 32


def documented_gate_shapes(name: str, b: int, c: int, h: int, w: int) -> dict[str, tuple[int, ...]]:
    """The ``last_gate`` shapes each module's docstring promises for an input ``(b, c, h, w)``."""
    return {
        "se": {"channel": (b, c, 1, 1)},
        "eca": {"channel": (b, c, 1, 1)},
        "cbam": {"channel": (b, c, 1, 1), "spatial": (b, 1, h, w)},
        "bam": {"gate": (b, c, h, w), "channel": (b, c, 1, 1), "spatial": (b, 1, h, w)},
        "coord": {"height": (b, c, h, 1), "width": (b, c, 1, w)},
        "non_local": {"affinity": (b, h * w, h * w)},
        "gc": {"spatial": (b, 1, h, w)},
    }[name]


def test_names_cover_every_layer():
    assert sorted(ATTN_LAYERS) == sorted(NAMES)


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("size", [(16, 16), (7, 5), (1, 1)])
def test_output_shape_equals_input(name, size):
    torch.manual_seed(0)
    module = create_attn(name, CHANNELS)
    x = torch.randn(2, CHANNELS, *size)
    assert module(x).shape == x.shape
    module.eval()
    assert module(x).shape == x.shape


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("size", [(16, 16), (7, 5)])
def test_stored_gates_have_documented_shapes_and_range(name, size):
    torch.manual_seed(0)
    module = create_attn(name, CHANNELS, keep_gate=True)
    x = torch.randn(2, CHANNELS, *size)
    module(x)
    expected = documented_gate_shapes(name, 2, CHANNELS, *size)
    assert {k: tuple(v.shape) for k, v in module.last_gate.items()} == expected
    for gate in module.last_gate.values():
        assert gate.min() >= 0 and gate.max() <= 1
        assert not gate.requires_grad
    if name in ("non_local", "gc"):  # softmax weights over the positions sum to 1
        weights = next(iter(module.last_gate.values())).flatten(2)
        torch.testing.assert_close(weights.sum(-1), torch.ones(weights.shape[:2]))


@pytest.mark.parametrize("name", NAMES)
def test_gates_are_not_kept_by_default(name):
    module = create_attn(name, CHANNELS)
    assert module.keep_gate is False
    module(torch.randn(2, CHANNELS, 8, 8))
    assert module.last_gate == {}


@pytest.mark.parametrize("name", ["se", "eca", "cbam", "coord"])
def test_stored_gates_are_the_applied_gates(name):
    module = create_attn(name, CHANNELS, keep_gate=True)
    x = torch.randn(2, CHANNELS, 6, 9)
    out = module(x)
    expected = x
    for gate in module.last_gate.values():  # each gate multiplies the input in turn
        expected = expected * gate
    torch.testing.assert_close(out, expected)


def test_cbam_spatial_gate_sees_the_channel_refined_features():
    module = create_attn("cbam", CHANNELS, keep_gate=True)
    x = torch.randn(2, CHANNELS, 6, 9)
    module(x)
    refined = x * module.last_gate["channel"]
    torch.testing.assert_close(module.spatial(refined), module.last_gate["spatial"])


def test_bam_applies_its_gate_residually():
    module = create_attn("bam", CHANNELS, keep_gate=True)
    x = torch.randn(2, CHANNELS, 6, 9)
    torch.testing.assert_close(module(x), x * (1 + module.last_gate["gate"]))


@pytest.mark.parametrize("name", NAMES)
def test_gradients_reach_every_parameter(name):
    torch.manual_seed(0)
    module = create_attn(name, CHANNELS)
    with torch.no_grad():  # move zero-initialised outputs off zero so every upstream weight gets signal
        for p in module.parameters():
            p.add_(0.5 * torch.randn_like(p))
    x = torch.randn(2, CHANNELS, 7, 5, requires_grad=True)
    (module(x) * torch.randn(2, CHANNELS, 7, 5)).sum().backward()
    for pname, p in module.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, f"{name}.{pname} got no gradient"
    assert x.grad.abs().sum() > 0


@pytest.mark.parametrize("name", ["non_local", "gc"])
def test_residual_blocks_start_as_identity(name):
    module = create_attn(name, CHANNELS)
    x = torch.randn(2, CHANNELS, 7, 5)
    torch.testing.assert_close(module(x), x)


@pytest.mark.parametrize("channels, expected", [(64, 3), (256, 5), (512, 5), (1024, 5), (2048, 7)])
def test_eca_kernel_size_follows_formula(channels, expected):
    # k = |log2(C) / 2 + 1 / 2| made odd: 64 -> 3.5 -> 3, 256 -> 4.5 -> 4 -> 5, 512 -> 5, 2048 -> 6 -> 7
    assert eca_kernel_size(channels) == expected
    module = create_attn("eca", channels)
    assert isinstance(module, EfficientChannelAttention)
    assert module.conv.weight.shape == (1, 1, expected)


def test_eca_has_no_reduction_parameters():
    assert sum(p.numel() for p in create_attn("eca", 256).parameters()) == 5


@pytest.mark.parametrize("name", [None, ""])
def test_no_name_gives_no_module(name):
    assert create_attn(name, CHANNELS) is None


def test_unknown_name_raises_config_error_listing_valid_names():
    with pytest.raises(ConfigError, match="unknown attention layer 'sse'") as err:
        create_attn("sse", CHANNELS)
    for name in NAMES:
        assert name in str(err.value)


def test_kwargs_reach_the_module():
    module = create_attn("se", 64, reduction=4)
    assert isinstance(module.fc1, nn.Conv2d) and module.fc1.out_channels == 16
