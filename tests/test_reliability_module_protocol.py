"""Every registered model as an ordinary ``nn.Module`` (a module-protocol audit): copies, pickles and saved models give
the same outputs, dtype and memory-format moves work, ``functional_call`` and state dicts round-trip (also into a model
built on the meta device), modes and ``requires_grad_`` reach every submodule, and ``torch.export`` matches eager.
Models are built tiny (one block a stage, narrow widths, two ViT blocks) so that the sweep over all of them is fast."""
import copy
import io
import pickle
from typing import Any

import pytest
import torch
from torch import Tensor, nn

from visattn import create_model, list_models
from visattn.registry import model_family

MODELS = list_models()
CAPTIONERS = [name for name in MODELS if model_family(name) == "show_attend_tell"]
# The CNNs (and the detectors and captioners on one) whose convolutions channels_last lays out otherwise.
CNNS = [name for name in MODELS if model_family(name) != "vit" and "_vit_" not in name]
RESNET, CIFAR_RESNET = dict(layers=(1, 1, 1, 1), widths=(16, 16, 16, 32)), dict(layers=(1, 1, 1), widths=(16, 16, 32))
VIT = dict(depth=2, embed_dim=32, num_heads=2)
DETECTOR = dict(num_classes=3, min_size=64, max_size=64)


def _backbone_kwargs(name: str) -> dict[str, Any]:
    if "_vit_" in name:
        return dict(VIT, depth=1, img_size=64)
    return CIFAR_RESNET if "cifar" in name else RESNET


def _tiny_kwargs(name: str) -> dict[str, Any]:
    family = model_family(name)
    if family == "resnet":
        return dict(CIFAR_RESNET if "cifar" in name else RESNET)
    if family == "vit":
        return dict(VIT, img_size=_image_side(name))
    if name.startswith("fcos_"):  # 64 channels: the head's GroupNorm(32) needs two a group on a 1x1 P7 map
        return dict(DETECTOR, out_channels=64, backbone_kwargs=_backbone_kwargs(name))
    if name.startswith("detr_"):
        return dict(DETECTOR, hidden_dim=32, num_heads=2, num_encoder_layers=1, num_decoder_layers=1, num_queries=4,
                    backbone_kwargs=_backbone_kwargs(name))
    encoder = dict(VIT, depth=1) if "_vit_" in name else dict(layers=(1, 1), widths=(8, 16)) if "scenes" in name else (
        dict(layers=(1, 1, 1, 1), widths=(8, 8, 8, 16)))
    return dict(vocab_size=12, encoder_kwargs=encoder, img_size=32, grid_size=2, embed_dim=16, hidden_dim=24,
                attn_dim=16, dropout=0.0)


def _image_side(name: str) -> int:
    return 28 if "_patch14" in name else 32


def _build(name: str, **kwargs: Any) -> nn.Module:
    torch.manual_seed(0)
    return create_model(name, **{**_tiny_kwargs(name), **kwargs}).eval()


def _inputs(name: str, dtype: torch.dtype = torch.float32) -> tuple[Any, ...]:
    generator = torch.Generator().manual_seed(1)
    family = model_family(name)
    if family == "detection":  # two sizes: one is padded in the batch
        return ([torch.rand(3, 64, 64, generator=generator).to(dtype),
                 torch.rand(3, 48, 64, generator=generator).to(dtype)],)
    side = 32 if family == "show_attend_tell" else _image_side(name)
    images = torch.randn(2, 3, side, side, generator=generator).to(dtype)  # the same values in every dtype
    if family == "show_attend_tell":
        return images, torch.tensor([[1, 5, 6, 2], [1, 7, 2, 0]])  # START ... END PAD
    return (images,)


def _tensors(out: Any) -> list[Tensor]:
    """Every tensor of a model's output: logits, (logits, alphas), or a detector's list of dicts."""
    if isinstance(out, Tensor):
        return [out]
    if isinstance(out, dict):
        return [t for key in sorted(out) for t in _tensors(out[key])]
    return [t for item in out for t in _tensors(item)]


def _outputs(model: nn.Module, args: tuple[Any, ...]) -> list[Tensor]:
    with torch.no_grad():
        return _tensors(model(*args))


def _assert_same(got: list[Tensor], expected: list[Tensor], atol: float = 0.0) -> None:
    assert len(got) == len(expected)
    for mine, theirs in zip(got, expected):
        torch.testing.assert_close(mine, theirs, rtol=atol, atol=atol, check_dtype=False)


def _perturbed(model: nn.Module) -> nn.Module:
    """A copy of ``model`` with other weights."""
    other = copy.deepcopy(model)
    generator = torch.Generator().manual_seed(7)
    with torch.no_grad():
        for parameter in other.parameters():
            parameter.add_(0.05 * torch.randn(parameter.shape, generator=generator))
    return other


@pytest.mark.parametrize("name", MODELS)
def test_copied_pickled_and_saved_models_give_the_same_outputs_and_stand_alone(name):
    model = _build(name)
    args = _inputs(name)
    expected = _outputs(model, args)
    saved = io.BytesIO()
    torch.save(model, saved)
    saved.seek(0)
    copies = [copy.deepcopy(model), pickle.loads(pickle.dumps(model)), torch.load(saved, weights_only=False)]
    with torch.no_grad():
        for parameter in model.parameters():  # the copies hold weights of their own
            parameter.add_(1.0)
    for duplicate in copies:
        _assert_same(_outputs(duplicate, args), expected)


@pytest.mark.parametrize("name", MODELS)
def test_a_float64_model_computes_float64_outputs_that_agree_with_float32(name):
    model = _build(name)
    expected = _outputs(model, _inputs(name))
    got = _outputs(model.double(), _inputs(name, torch.float64))
    assert {t.dtype for t in got if t.is_floating_point()} == {torch.float64}
    _assert_same(got, expected, atol=1e-5)


@pytest.mark.parametrize("name, kwargs, side, wrt", [
    ("nl_resnet20_cifar", {}, 8, "images"),  # the non-local affinity
    ("vit_tiny_patch4_32", {}, 32, "images"),  # return_attention's attention probabilities
    ("vit_tiny_patch4_32", dict(dynamic_img_size=True), 24, "pos_embed"),  # resampled from the 8x8 grid to 6x6
])
def test_gradcheck_passes_on_a_float64_model(name, kwargs, side, wrt):
    """``torch.autograd.gradcheck``'s float64 finite differences (here to 1e-6) failed where a layer rounded a float64
    model's values to float32 on the way, as these three did (a widening meant for fp16 and bf16 autocast)."""
    model = _perturbed(_build(name, **kwargs)).double()  # perturbed: the non-local block starts as the identity
    images = torch.randn(1, 3, side, side, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    if wrt == "pos_embed":
        def outputs(pos_embed: Tensor) -> Tensor:
            return torch.func.functional_call(model, {"pos_embed": pos_embed}, (images,))

        variable = model.pos_embed.detach().clone()
    else:
        def outputs(x: Tensor) -> tuple[Tensor, ...]:
            return tuple(_tensors(model(x, return_attention=True) if model_family(name) == "vit" else model(x)))

        variable = images
    assert torch.autograd.gradcheck(outputs, (variable.requires_grad_(),), fast_mode=True, atol=1e-8, rtol=1e-6)


@pytest.mark.parametrize("name", MODELS)
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_a_half_precision_model_runs_on_half_precision_inputs(name, dtype):
    """``model.to(dtype)`` with inputs of that dtype (torch has every op on the CPU); a detector's boxes and scores are
    float32 (bf16 steps by 0.25 px at 32-64 px)."""
    model = _build(name)
    expected = _outputs(model, _inputs(name))
    got = _outputs(model.to(dtype), _inputs(name, dtype))
    floats = {t.dtype for t in got if t.is_floating_point()}
    assert floats == ({torch.float32} if model_family(name) == "detection" else {dtype})
    assert all(torch.isfinite(t).all() for t in got)
    if model_family(name) != "detection":  # a detector's thresholds and ranks may take other boxes
        _assert_same(got, expected, atol=0.1)


@pytest.mark.parametrize("name", MODELS)
def test_functional_call_runs_the_model_on_the_weights_given(name):
    model = _build(name)
    other = _perturbed(model)
    args = _inputs(name)
    expected, own = _outputs(other, args), _outputs(model, args)
    weights = {**dict(other.named_parameters()), **dict(other.named_buffers())}
    with torch.no_grad():
        got = _tensors(torch.func.functional_call(model, weights, args))
    _assert_same(got, expected)
    _assert_same(_outputs(model, args), own)  # its own weights back


@pytest.mark.parametrize("name", MODELS)
def test_a_state_dict_loads_strictly_into_a_fresh_model_and_by_assignment_into_one_built_on_meta(name):
    model = _perturbed(_build(name))
    args = _inputs(name)
    expected = _outputs(model, args)
    used = _build(name)
    _outputs(used, args)  # a model that has run: nothing it kept from its old weights may stay
    used.load_state_dict(model.state_dict(), strict=True)
    _assert_same(_outputs(used, args), expected)
    with torch.device("meta"):
        on_meta = _build(name)
    on_meta.load_state_dict(model.state_dict(), strict=True, assign=True)
    assert not [key for key, value in on_meta.state_dict(keep_vars=True).items() if value.is_meta]
    _assert_same(_outputs(on_meta, args), expected)


@pytest.mark.parametrize("name", MODELS)
def test_modes_and_freezing_reach_every_submodule_and_no_parameter_is_listed_twice(name):
    model = _build(name)
    assert all(module.training for module in model.train().modules())
    assert not any(module.training for module in model.eval().modules())
    assert not any(parameter.requires_grad for parameter in model.requires_grad_(False).parameters())
    listed = [key for key, _ in model.named_parameters(remove_duplicate=False)]
    assert listed == [key for key, _ in model.named_parameters()]  # no tied weights: each parameter once


@pytest.mark.parametrize("name", CAPTIONERS)
def test_every_captioner_parameter_gets_a_gradient(name):
    """DDP without find_unused_parameters stops on a parameter the loss does not reach (tests/test_models.py checks
    the classifiers' and detectors')."""
    model = _build(name).train()
    model.zero_grad()
    logits, alphas = model(*_inputs(name))
    (logits.square().mean() + alphas.square().mean()).backward()
    assert not [key for key, parameter in model.named_parameters() if parameter.grad is None]


@pytest.mark.parametrize("name", CNNS)
def test_a_channels_last_cnn_gives_the_same_outputs(name):
    model = _build(name)
    args = _inputs(name)
    expected = _outputs(model, args)
    model = model.to(memory_format=torch.channels_last)
    args = tuple(x.contiguous(memory_format=torch.channels_last) if isinstance(x, Tensor) and x.ndim == 4 else x
                 for x in args)
    _assert_same(_outputs(model, args), expected, atol=1e-5)


# One of each layout tests/test_models.py does not export (it exports every *resnet20_cifar and vit_tiny_patch4_28):
# the deep and tiered stems, ResNeXt groups, bottlenecks with BAM and non-local blocks, and the ViTs' attention pool,
# registers, LayerScale, CLIP's pre-norm and QuickGELU, and average pooling.
EXPORTED = ["resnet18d", "eca_resnet50t", "se_resnext50_32x4d", "bam_resnet50", "nl_resnet50",
            "vit_base_patch16_siglip_224", "vit_small_patch14_reg4_dinov2", "vit_base_patch16_clip_quickgelu_224",
            "vit_base_patch16_reg4_gap_256", "deit3_small_patch16_224"]


@pytest.mark.parametrize("name", EXPORTED)
def test_torch_export_gives_the_eager_logits(name):
    model = _build(name)
    args = _inputs(name)
    exported = torch.export.export(model, args)
    _assert_same(_tensors(exported.module()(*args)), _outputs(model, args), atol=1e-5)
