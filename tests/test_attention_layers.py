"""Attention modules built through ``create_attn``: shapes, stored gates, gradients, error messages."""
import pytest
import torch
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves

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


def test_bam_training_on_one_image_is_one_line_and_evaluating_one_is_fine():
    """Its channel gate's BatchNorm had failed in torch's words, naming neither BAM nor the fix."""
    module = create_attn("bam", CHANNELS)
    with pytest.raises(ConfigError, match=r"^BAM's channel gate: a training batch of one image, .*or call model.eval"):
        module(torch.randn(1, CHANNELS, 6, 9))
    assert module.eval()(torch.randn(1, CHANNELS, 6, 9)).shape == (1, CHANNELS, 6, 9)


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


# --- Reference tests: each module against an independent implementation of its paper's equations ---
# The references below are written from the papers' formulas with plain tensor algebra (einsum for
# 1x1 convolutions, explicit eval-mode batch norm / layer norm / softmax / h-swish) and read only the
# module's parameters, so no training is needed. The input is non-square to catch H/W swaps.

REF_SHAPE = (2, CHANNELS, 10, 7)  # larger than the 9x9 span of BAM's 3x3 convs at dilation 4


def _randomized_eval(module: nn.Module, seed: int = 0) -> nn.Module:
    """Move the module off its init so every term of the equations matters, then switch to eval."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for mod in module.modules():
            if isinstance(mod, nn.Conv2d):
                mod.weight.normal_(0.0, 1.0 / mod.weight[0].numel() ** 0.5, generator=gen)
                if mod.bias is not None:
                    mod.bias.normal_(0.0, 0.3, generator=gen)
            elif isinstance(mod, (nn.BatchNorm2d, nn.LayerNorm)):
                mod.weight.uniform_(0.5, 1.5, generator=gen)
                mod.bias.normal_(0.0, 0.3, generator=gen)
                if isinstance(mod, nn.BatchNorm2d):
                    mod.running_mean.normal_(0.0, 0.3, generator=gen)
                    mod.running_var.uniform_(0.5, 2.0, generator=gen)
    return module.eval()


def _ref_input(seed: int = 1) -> torch.Tensor:
    return torch.randn(*REF_SHAPE, generator=torch.Generator().manual_seed(seed))


def _pointwise(conv: nn.Conv2d, z: torch.Tensor, bias: bool = True) -> torch.Tensor:
    """A 1x1 convolution as a matrix product over the channel axis (axis 1) of ``z``."""
    weight = conv.weight.reshape(conv.out_channels, conv.in_channels)
    out = torch.einsum("oc,bc...->bo...", weight, z)
    if bias and conv.bias is not None:
        out = out + conv.bias.reshape(-1, *([1] * (z.dim() - 2)))
    return out


def _bn_eval(bn: nn.BatchNorm2d, z: torch.Tensor) -> torch.Tensor:
    """``gamma * (z - mu) / sqrt(var + eps) + beta`` with the running statistics, over axis 1."""
    shape = (-1, *([1] * (z.dim() - 2)))
    mu, var = bn.running_mean.reshape(shape), bn.running_var.reshape(shape)
    return bn.weight.reshape(shape) * (z - mu) / torch.sqrt(var + bn.eps) + bn.bias.reshape(shape)


def _softmax(z: torch.Tensor, dim: int) -> torch.Tensor:
    e = torch.exp(z - z.amax(dim=dim, keepdim=True))
    return e / e.sum(dim=dim, keepdim=True)


def _h_swish(z: torch.Tensor) -> torch.Tensor:
    return z * torch.clamp(z + 3.0, 0.0, 6.0) / 6.0  # x * ReLU6(x + 3) / 6 (Howard et al. 2019)


def _assert_matches_reference(module: nn.Module, reference, x: torch.Tensor) -> None:
    with torch.no_grad():
        out, expected = module(x), reference(module, x)
    assert not torch.allclose(expected, x, atol=1e-3), "reference is (near) identity: the test would be vacuous"
    torch.testing.assert_close(out, expected)


def coord_reference(m, x):
    """Hou et al. 2021, Eqs. 4-9 with the paper's h-swish as the non-linearity delta."""
    _, _, height, width = x.shape
    z_h = x.sum(dim=3) / width  # z^h_c(h) = 1/W sum_i x_c(h, i)   -> (B, C, H)
    z_w = x.sum(dim=2) / height  # z^w_c(w) = 1/H sum_j x_c(j, w)  -> (B, C, W)
    f = _h_swish(_bn_eval(m.encode[1], _pointwise(m.encode[0], torch.cat([z_h, z_w], dim=2))))  # F_1, delta
    f_h, f_w = f[:, :, :height], f[:, :, height:]
    g_h = torch.sigmoid(_pointwise(m.conv_h, f_h))  # (B, C, H)
    g_w = torch.sigmoid(_pointwise(m.conv_w, f_w))  # (B, C, W)
    return x * g_h[:, :, :, None] * g_w[:, :, None, :]  # y_c(i, j) = x_c(i, j) g^h_c(i) g^w_c(j)


def cbam_reference(m, x):
    """Woo et al. 2018, Eqs. 1-3; spatial pooled maps stacked [max; mean] as the module documents."""
    w0, w1 = m.channel.mlp[0], m.channel.mlp[2]

    def mlp(v):  # W_1(ReLU(W_0 v)), shared by both descriptors; v is (B, C)
        return _pointwise(w1, torch.relu(_pointwise(w0, v)))

    m_c = torch.sigmoid(mlp(x.mean(dim=(2, 3))) + mlp(x.flatten(2).max(dim=2).values))  # (B, C)
    f1 = x * m_c[:, :, None, None]  # F' = M_c(F) (x) F
    pooled = torch.stack([f1.max(dim=1).values, f1.mean(dim=1)], dim=1)  # (B, 2, H, W)
    k = m.spatial.conv.weight.shape[-1]
    m_s = torch.sigmoid(torch.nn.functional.conv2d(pooled, m.spatial.conv.weight, m.spatial.conv.bias, padding=k // 2))
    return f1 * m_s  # F'' = M_s(F') (x) F'


def bam_reference(m, x):
    """Park et al. 2018: F + F (x) sigmoid(M_c + M_s), BN placed as in the authors' code (module docstring)."""
    ch = m.channel.mlp  # 1x1 conv (no bias), BN, ReLU, 1x1 conv
    m_c = _pointwise(ch[3], torch.relu(_bn_eval(ch[1], _pointwise(ch[0], x.mean(dim=(2, 3))))))  # (B, C)
    sp = m.spatial.convs  # f_0 1x1, then two 3x3 dilated (d = 4), each + BN + ReLU, then f_3 1x1 -> 1 map
    f = torch.relu(_bn_eval(sp[1], _pointwise(sp[0], x)))
    for conv, bn in ((sp[3], sp[4]), (sp[6], sp[7])):
        f = torch.relu(_bn_eval(bn, torch.nn.functional.conv2d(f, conv.weight, conv.bias, padding=4, dilation=4)))
    m_s = _pointwise(sp[9], f)  # (B, 1, H, W)
    gate = torch.sigmoid(m_c[:, :, None, None] + m_s)  # M(F) = sigma(M_c(F) + M_s(F)), broadcast to (B, C, H, W)
    return x + x * gate


def gc_reference(m, x):
    """Cao et al. 2019, Eq. 4: z_i = x_i + W_v2 ReLU(LN(W_v1 sum_j softmax_j(W_k x_j) x_j)), fusion by add."""
    b, c, _, _ = x.shape
    flat = x.flatten(2)  # (B, C, N)
    alpha = _softmax(_pointwise(m.attn_logits, flat)[:, 0], dim=1)  # (B, N): softmax over all positions j
    context = torch.einsum("bn,bcn->bc", alpha, flat)  # (B, C)
    t = _pointwise(m.transform[0], context)  # W_v1, (B, hidden)
    ln = m.transform[1]
    mean = t.mean(dim=1, keepdim=True)
    var = ((t - mean) ** 2).mean(dim=1, keepdim=True)  # LN over the hidden channels (biased variance)
    t = (t - mean) / torch.sqrt(var + ln.eps) * ln.weight.reshape(1, -1) + ln.bias.reshape(1, -1)
    t = _pointwise(m.transform[3], torch.relu(t))  # W_v2, (B, C)
    return x + t.reshape(b, c, 1, 1)


def non_local_reference(m, x):
    """Wang et al. 2018, Eqs. 1-3 (embedded Gaussian) and 6: z = BN(W_z y) + x."""
    flat = x.flatten(2)  # (B, C, N)
    theta, phi, g = _pointwise(m.theta, flat), _pointwise(m.phi, flat), _pointwise(m.g, flat)  # (B, C', N)
    f = _softmax(torch.einsum("bci,bcj->bij", theta, phi), dim=2)  # f(x_i, x_j) / C(x): normalised over j
    y = torch.einsum("bij,bcj->bci", f, g)  # y_i = sum_j f_ij g(x_j)
    z = _bn_eval(m.norm, _pointwise(m.out_proj, y)) + flat
    return z.reshape(x.shape)


REFERENCES = {
    "coord": coord_reference,
    "cbam": cbam_reference,
    "bam": bam_reference,
    "gc": gc_reference,
    "non_local": non_local_reference,
}


@pytest.mark.parametrize("name", sorted(REFERENCES))
def test_module_matches_paper_reference(name):
    torch.manual_seed(0)
    module = _randomized_eval(create_attn(name, CHANNELS))
    _assert_matches_reference(module, REFERENCES[name], _ref_input())


@pytest.mark.parametrize("keep_gate", [False, True])
def test_non_local_matches_the_paper_with_and_without_its_map_kept(keep_gate):
    """Without ``keep_gate`` the block goes through SDPA's fused kernels; with it, through the explicit affinity."""
    module = _randomized_eval(create_attn("non_local", CHANNELS, keep_gate=keep_gate))
    _assert_matches_reference(module, non_local_reference, _ref_input())


class _LargestTensor(TorchDispatchMode):
    """The most elements any operator's output held while the mode was on."""

    def __init__(self) -> None:
        super().__init__()
        self.elements = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        sizes = [t.numel() for t in tree_leaves(out) if isinstance(t, torch.Tensor)]
        self.elements = max([self.elements, *sizes])
        return out


@pytest.mark.parametrize("keep_gate", [False, True])
def test_non_local_holds_the_whole_affinity_only_when_its_map_is_kept(keep_gate):
    """(HW)^2 floats an image: 400 MB at 100x100 positions. Training (forward and backward) keeps it out of memory
    unless an explanation asks for the map, and gives the explicit path's gradients."""
    torch.manual_seed(0)
    module = create_attn("non_local", 8, keep_gate=keep_gate)
    nn.init.ones_(module.norm.weight)  # else the zero-initialised BN passes the attention no gradient
    x = torch.randn(1, 8, 32, 32, requires_grad=True)
    with _LargestTensor() as largest:
        module(x).square().sum().backward()
    positions = 32 * 32
    assert (largest.elements >= positions ** 2) == keep_gate
    other_path = create_attn("non_local", 8, keep_gate=not keep_gate)
    other_path.load_state_dict(module.state_dict())
    x_again = x.detach().clone().requires_grad_()
    other_path(x_again).square().sum().backward()
    torch.testing.assert_close(x_again.grad, x.grad, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(other_path.theta.weight.grad, module.theta.weight.grad, rtol=1e-4, atol=1e-4)


def test_coord_attention_uses_h_swish_as_in_the_paper():
    module = _randomized_eval(create_attn("coord", CHANNELS))
    assert isinstance(module.encode[2], nn.Hardswish)
    z = torch.linspace(-5, 5, 41)
    torch.testing.assert_close(module.encode[2](z.clone()), _h_swish(z))


def test_coord_gates_are_the_paper_gates():
    module = _randomized_eval(create_attn("coord", CHANNELS, keep_gate=True))
    x = _ref_input()
    with torch.no_grad():
        module(x)
    height, width = x.shape[2:]
    gate_product = module.last_gate["height"] * module.last_gate["width"]  # (B, C, H, W)
    with torch.no_grad():
        torch.testing.assert_close(x * gate_product, coord_reference(module, x))
    assert module.last_gate["height"].shape[2] == height and module.last_gate["width"].shape[3] == width


def test_bam_uses_the_paper_hyperparameters():
    module = create_attn("bam", 256)
    dilated = [m for m in module.spatial.convs if isinstance(m, nn.Conv2d) and m.kernel_size == (3, 3)]
    assert len(dilated) == 2 and all(m.dilation == (4, 4) and m.padding == (4, 4) for m in dilated)
    assert module.channel.mlp[0].out_channels == 256 // 16  # reduction ratio r = 16


@pytest.mark.parametrize("keep_attention", [False, True])
def test_cross_attention_equals_torchs_multihead_attention_with_a_key_padding_mask(keep_attention):
    """Queries, keys and values from separate inputs, padded keys masked: torch's nn.MultiheadAttention with the
    same weights. The mask dropped, another scale or keys projected from the values had passed every layer test,
    caught only by tests of the shipped detectors (a mutation audit)."""
    from visattn.layers.cross_attention import CrossAttention

    torch.manual_seed(0)
    ours = CrossAttention(16, 2).eval()
    ours.keep_attention = keep_attention
    theirs = nn.MultiheadAttention(16, 2, batch_first=True).eval()
    with torch.no_grad():
        theirs.in_proj_weight.copy_(torch.cat([ours.q.weight, ours.k.weight, ours.v.weight]))
        theirs.in_proj_bias.copy_(torch.cat([ours.q.bias, ours.k.bias, ours.v.bias]))
        theirs.out_proj.weight.copy_(ours.proj.weight)
        theirs.out_proj.bias.copy_(ours.proj.bias)
    query, key, value = torch.randn(2, 3, 16), torch.randn(2, 5, 16), torch.randn(2, 5, 16)
    padding = torch.tensor([[False] * 5, [False] * 3 + [True] * 2])
    with torch.no_grad():
        got = ours(query, key, value, key_padding_mask=padding)
        expected, probs = theirs(query, key, value, key_padding_mask=padding, average_attn_weights=False)
    torch.testing.assert_close(got, expected)
    if keep_attention:
        torch.testing.assert_close(ours.last_attention, probs)
        assert (ours.last_attention[1, ..., 3:] == 0).all()


def test_onednn_linear_leaves_other_devices_and_a_disabled_onednn_to_f_linear():
    """oneDNN's inner product is the CPU's, and torch.backends.mkldnn.flags(enabled=False) turns it off: a large fp32
    product on another device (meta stands in for a GPU) or with oneDNN disabled goes to F.linear. Either check
    dropped had passed, the tests running on the CPU with oneDNN on."""
    if not torch.backends.mkldnn.is_available():
        pytest.skip("this torch is built without oneDNN")
    import torch.nn.functional as F

    from visattn.layers.onednn_linear import _onednn_computes, linear

    x, weight = torch.randn(320, 256), torch.randn(1024, 256)  # 320 x 256 x 1024 multiply-adds: oneDNN's size
    with torch.no_grad():
        assert _onednn_computes(x, weight)
        assert not _onednn_computes(x.to("meta"), weight.to("meta"))
        with torch.backends.mkldnn.flags(enabled=False):
            assert not _onednn_computes(x, weight)
            torch.testing.assert_close(linear(x, weight), F.linear(x, weight))
