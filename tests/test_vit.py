"""ViT parity with timm and torchvision, attention outputs, and position-embedding resampling."""
import re

import pytest
import timm
import torch
import torchvision
from safetensors.torch import save_file
from timm.layers import resample_abs_pos_embed as timm_resample

from fixtures_memory import checkpointed_share
from visattn import create_model, list_models
from visattn.errors import ConfigError, VisattnWarning
from visattn.layers.pos_embed import resample_abs_pos_embed
from visattn.models.vit import VisionTransformer

TIMM_NAMES = [n for n in list_models(["vit_*", "deit*"]) if n in timm.list_models()]


def _timm_file(tmp_path, name, **kwargs):
    torch.manual_seed(0)
    reference = timm.create_model(name, **kwargs).eval()
    with torch.no_grad():  # LayerScale's 1e-5 init and the prefix tokens' 1e-6 would hide a misplaced block or token
        for key, value in reference.named_parameters():
            if key.endswith(("gamma", "cls_token", "reg_token")):
                value.normal_()
    path = tmp_path / f"{name}.safetensors"
    save_file({k: v.contiguous() for k, v in reference.state_dict().items()}, path)
    return reference, path


def test_timm_names_cover_the_standard_models():
    assert {"vit_tiny_patch16_224", "vit_large_patch16_224", "vit_base_patch32_224", "deit_base_patch16_224",
            "deit3_small_patch16_224", "vit_small_patch14_dinov2", "vit_base_patch14_reg4_dinov2",
            "vit_base_patch16_reg4_gap_256"} <= set(TIMM_NAMES)


def _small_size(name: str) -> int:
    """A side of a few whole patches of the ViT ``name`` (timm's names give the patch)."""
    patch = int(re.search(r"patch(\d+)", name).group(1))
    return patch * max(2, 32 // patch)


@pytest.mark.parametrize("name", TIMM_NAMES)
def test_timm_state_dict_loads_strictly_with_same_logits(tmp_path, name):
    # Two blocks keep ViT-L fast; names, shapes and maths per block are what is compared.
    size = _small_size(name)
    reference, path = _timm_file(tmp_path, name, img_size=size, depth=2, num_classes=5)
    ours = create_model(name, img_size=size, depth=2, num_classes=5, pretrained=str(path)).eval()
    # The logits come from the model exactly as visattn's loader left it.
    x = torch.randn(2, 3, size, size)
    with torch.no_grad():
        assert (ours(x) - reference(x)).abs().max() <= 1e-4
        assert (ours.forward_features(x) - reference.forward_features(x)).abs().max() <= 1e-4  # the prefix tokens too
    # Identical names and shapes: timm's state dict loads strictly into a fresh model.
    fresh = create_model(name, img_size=size, depth=2, num_classes=5)
    result = fresh.load_state_dict(reference.state_dict(), strict=True)
    assert not result.missing_keys and not result.unexpected_keys


@pytest.mark.parametrize("name", ["vit_tiny_patch16_224", "deit_small_patch16_224", "deit3_small_patch16_224",
                                  "vit_small_patch14_reg4_dinov2"])
def test_timm_parity_at_native_resolution(tmp_path, name):
    reference, path = _timm_file(tmp_path, name)
    ours = create_model(name, pretrained=str(path)).eval()
    x = torch.randn(1, 3, *reference.patch_embed.img_size)  # 518 px for DINOv2
    with torch.no_grad():
        assert (ours(x) - reference(x)).abs().max() <= 1e-4


# timm's layouts of the prefix tokens: the class token's position in pos_embed; registers (DINOv2's) and
# no_embed_class (DeiT III's) with positions for the patches only; registers without a class token
PREFIX_LAYOUTS = [{}, {"reg_tokens": 2, "no_embed_class": True},
                  {"class_token": False, "reg_tokens": 1, "no_embed_class": True, "global_pool": "avg"}]


@pytest.mark.parametrize("layout", PREFIX_LAYOUTS)
def test_pos_embed_resampled_like_timm_when_img_size_differs(tmp_path, layout):
    _, path = _timm_file(tmp_path, "vit_tiny_patch16_224", depth=2, **layout)
    timm_resized = timm.create_model("vit_tiny_patch16_224", img_size=64, depth=2, pretrained=True,
                                     pretrained_cfg_overlay={"file": str(path)}, **layout).eval()
    ours = create_model("vit_tiny_patch16_224", img_size=64, depth=2, pretrained=str(path), **layout).eval()
    assert ours.pos_embed.shape == (1, 16 + (0 if layout else 1), 192)
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        assert (ours(x) - timm_resized(x)).abs().max() <= 1e-4


@pytest.mark.parametrize("new_size,prefix", [((4, 4), 1), ((6, 10), 1), ((20, 20), 0)])
def test_resample_matches_timm(new_size, prefix):
    pos = torch.randn(1, prefix + 14 * 14, 32)
    ours = resample_abs_pos_embed(pos, new_size, num_prefix_tokens=prefix)
    assert ours.shape == (1, prefix + new_size[0] * new_size[1], 32)
    assert torch.allclose(ours, timm_resample(pos, list(new_size), num_prefix_tokens=prefix), atol=1e-6)
    assert torch.equal(ours[:, :prefix], pos[:, :prefix])


def test_torchvision_layout_is_converted(tmp_path):
    torch.manual_seed(0)
    tv = torchvision.models.VisionTransformer(image_size=32, patch_size=8, num_layers=2, num_heads=2,
                                              hidden_dim=64, mlp_dim=256, num_classes=10).eval()
    torch.nn.init.normal_(tv.heads.head.weight)  # torchvision starts it at zero: logits that ignore the image
    path = tmp_path / "tv.pth"
    torch.save(tv.state_dict(), path)
    ours = VisionTransformer(img_size=32, patch_size=8, depth=2, num_heads=2, embed_dim=64, num_classes=10)
    from visattn import load_weights

    load_weights(ours.eval(), path)
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert tv(x).std() > 0.1 and (ours(x) - tv(x)).abs().max() <= 1e-4


@pytest.mark.parametrize("suffix", [".pth", ".safetensors"])
def test_torchvision_vit_weights_are_taken_as_trained_with_imagenets_statistics(tmp_path, suffix):
    """timm's ViT-B/32 weights are all Google's (mean and std 0.5, bicubic, crop 0.9), torchvision's ImageNet's
    (bilinear for its V1 weights): a torchvision file by path was evaluated as Google's, 2.46 normalised units off,
    and fine-tuning on torchvision's own statistics warned to switch to 0.5."""
    from safetensors.torch import save_file
    from timm.data import resolve_data_config

    tv = torchvision.models.VisionTransformer(image_size=32, patch_size=32, num_layers=1, num_heads=12,
                                              hidden_dim=768, mlp_dim=3072, num_classes=10)
    path = tmp_path / f"vit_b_32{suffix}"
    torch.save(tv.state_dict(), path) if suffix == ".pth" else save_file(tv.state_dict(), path)
    model = create_model("vit_base_patch32_224", pretrained=str(path), img_size=32, depth=1)
    assert model.visattn_recorded_preprocessing == {"mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225]}
    assert resolve_data_config(model=model) == {"input_size": (3, 32, 32), "mean": (0.485, 0.456, 0.406),
                                                "std": (0.229, 0.224, 0.225), "interpolation": "bilinear",
                                                "crop_pct": 0.875, "crop_mode": "center"}
    timm_layout = create_model("vit_base_patch32_224", pretrained=model.state_dict(), img_size=32, depth=1)
    assert timm_layout.visattn_recorded_preprocessing["mean"] == [0.5] * 3  # as every timm weights of the name


def test_return_attention_gives_every_layer():
    model = create_model("vit_tiny_patch16_224", img_size=48, depth=3).eval()
    x = torch.randn(2, 3, 48, 48)
    with torch.no_grad():
        logits, attentions = model(x, return_attention=True)
        assert torch.allclose(logits, model(x), atol=1e-5)  # explicit path == fused SDPA path
    assert len(attentions) == 3
    for attn in attentions:
        assert attn.shape == (2, 3, 10, 10)  # (B, heads, 1 + 3*3, 1 + 3*3)
        assert torch.allclose(attn.sum(-1), torch.ones(2, 3, 10), atol=1e-5)


def test_avg_pool_without_class_token():
    model = create_model("vit_tiny_patch4_28", class_token=False, global_pool="avg", depth=2).eval()
    assert model.cls_token is None and model.pos_embed.shape[1] == 49
    logits, attentions = model(torch.randn(1, 3, 28, 28), return_attention=True)
    assert logits.shape == (1, 1000) and attentions[0].shape == (1, 3, 49, 49)


def test_wrong_input_size_names_the_fix():
    model = create_model("vit_tiny_patch4_28", depth=1)
    with pytest.raises(ConfigError, match="img_size"):
        model(torch.randn(1, 3, 32, 32))


def test_bad_patch_size_is_a_config_error():
    with pytest.raises(ConfigError, match="not divisible"):
        create_model("vit_tiny_patch16_224", img_size=30)


@pytest.mark.parametrize("shape, fix", [
    ((2, 28, 28, 3), r"channels-last: x\.permute\(0, 3, 1, 2\)"),
    ((3, 28, 28), r"x\.unsqueeze\(0\)"),
    ((2, 1, 28, 28), "in_chans=1"),
])
def test_wrong_input_layout_names_the_fix(shape, fix):
    model = create_model("vit_tiny_patch4_28", depth=1).eval()
    with pytest.raises(ConfigError, match=fix):
        model(torch.randn(*shape))


@pytest.mark.parametrize("kwargs, name", [
    ({"img_size": "28"}, "img_size"),
    ({"img_size": (28,)}, "img_size"),
    ({"img_size": 0}, "img_size"),
    ({"patch_size": 4.0}, "patch_size"),
    ({"in_chans": "1"}, "in_chans"),
    ({"in_chans": 0}, "in_chans"),
    ({"depth": -1}, "depth"),
    ({"depth": 0}, "depth"),
    ({"depth": 2.5}, "depth"),
])
def test_bad_builder_arguments_are_config_errors(kwargs, name):
    with pytest.raises(ConfigError, match=rf"^{name}=.*whole number >= 1"):
        create_model("vit_tiny_patch4_28", **kwargs)


@pytest.mark.parametrize("act_layer", ["gelu_tanh", "quick_gelu"])
def test_clip_settings_give_timms_logits_where_their_approximations_show(act_layer):
    """From a review: an activation left exact in the blocks or the attention pool, or the pre-norm's epsilon at
    1e-6, stayed within the 1e-4 of the parity tests; weights three times larger make them show."""
    from functools import partial

    from visattn import load_weights

    kwargs = dict(img_size=32, depth=2, pre_norm=True, class_token=False, global_pool="map", num_classes=5)
    torch.manual_seed(0)
    reference = timm.create_model("vit_tiny_patch16_224", act_layer=act_layer,
                                  norm_layer=partial(torch.nn.LayerNorm, eps=1e-5), **kwargs).eval()
    with torch.no_grad():
        for module in reference.modules():
            if isinstance(module, torch.nn.Linear):
                module.weight.mul_(3)
    ours = load_weights(create_model("vit_tiny_patch16_224", act_layer=act_layer, norm_eps=1e-5, **kwargs).eval(),
                        reference.state_dict())
    exact = load_weights(create_model("vit_tiny_patch16_224", norm_eps=1e-5, **kwargs).eval(), reference.state_dict())
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(ours(x), reference(x), rtol=0, atol=1e-5)
        assert (exact(x) - reference(x)).abs().max() > 1e-4  # the approximation shows at this scale, 10x the tolerance
    assert {m.eps for m in ours.modules() if isinstance(m, torch.nn.LayerNorm)} == {1e-5}
    assert {type(block.mlp.act) for block in [*ours.blocks, ours.attn_pool]} == {type(ours.blocks[0].mlp.act)}


@pytest.mark.parametrize("bad", [-1, True, 1.5, "4", None])
def test_a_register_count_that_is_no_count_is_one_line(bad):
    with pytest.raises(ConfigError, match=rf"^reg_tokens={bad!r}: give a whole number >= 0 \(0: no register tokens\)$"):
        create_model("vit_tiny_patch4_28", depth=1, reg_tokens=bad)


@pytest.mark.parametrize("bad", [0, -1e-6, "1e-5", float("inf")])
def test_a_norm_epsilon_that_is_not_positive_is_one_line(bad):
    with pytest.raises(ConfigError, match=rf"^norm_eps={bad!r}: give a small positive number, timm's 1e-6 or CLIP's"):
        VisionTransformer(img_size=28, patch_size=4, depth=1, embed_dim=32, num_heads=2, norm_eps=bad)


def test_register_tokens_take_numpys_counts_and_timms_init():
    import numpy as np

    assert create_model("vit_tiny_patch4_28", depth=1, reg_tokens=np.int64(0)).reg_token is None
    model = create_model("vit_tiny_patch4_28", depth=1, reg_tokens=np.int64(2))
    assert model.reg_token.shape == (1, 2, 192) and model.num_prefix_tokens == 3
    assert 0 < model.reg_token.abs().max() < 1e-4  # timm's normal init at std 1e-6


def test_a_vit_whose_attention_pool_was_dropped_refuses_to_pool():
    """A backbone's ViT drops its attention pool (no gradient would reach it); pooling had fallen to avgmax."""
    from visattn.models.vit import drop_pooled_head

    model = drop_pooled_head(create_model("vit_base_patch16_siglip_224", img_size=32, depth=1, num_classes=3))
    with pytest.raises(ConfigError, match="attention pool was dropped"):
        model(torch.zeros(1, 3, 32, 32))


def test_img_size_pairs_are_accepted():
    assert create_model("vit_tiny_patch4_28", img_size=[28, 32], depth=1).grid_size == (7, 8)


def test_reset_classifier_and_get_classifier_match_timm(tmp_path):
    reference, path = _timm_file(tmp_path, "vit_tiny_patch16_224", img_size=32, depth=2)
    ours = create_model("vit_tiny_patch16_224", img_size=32, depth=2, pretrained=str(path)).eval()
    reference.reset_classifier(5, "avg")
    ours.reset_classifier(5, "avg")
    assert ours.get_classifier() is ours.head and ours.num_classes == 5 and ours.global_pool == "avg"
    ours.head.load_state_dict(reference.get_classifier().state_dict())
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert (ours(x) - reference(x)).abs().max() <= 1e-4
    ours.reset_classifier(0)
    assert ours.global_pool == "avg" and ours(x).shape == (2, 192)


def test_reset_classifier_refuses_unsupported_pooling():
    model = create_model("vit_tiny_patch4_28", depth=1)
    with pytest.raises(ConfigError, match=r"^global_pool='prr': use 'token', 'avg', 'max', 'avgmax', 'map' or ''"):
        model.reset_classifier(5, "prr")
    with pytest.raises(ConfigError, match=r"^global_pool='map' needs the attention pool's weights, which this model "
                                          r"was built without; build it with global_pool='map'$"):
        model.reset_classifier(5, "map")
    with pytest.raises(ConfigError, match=r"^global_pool='' leaves the tokens unpooled and num_classes=5 needs"):
        model.reset_classifier(5, "")
    without_token = create_model("vit_tiny_patch4_28", depth=1, class_token=False, global_pool="avg")
    with pytest.raises(ConfigError, match="class_token=True"):
        without_token.reset_classifier(5, "token")
    assert model.global_pool == "token" and without_token.global_pool == "avg"


def test_a_vit_without_qkv_bias_builds_and_runs():
    model = create_model("vit_tiny_patch4_32", qkv_bias=False, depth=1)
    assert model.blocks[0].attn.qkv.bias is None and model(torch.randn(1, 3, 32, 32)).shape == (1, 1000)


def test_grad_checkpointing_keeps_gradients_and_drops_block_activations():
    torch.manual_seed(0)
    model = VisionTransformer(img_size=28, patch_size=4, embed_dim=64, depth=4, num_heads=2, num_classes=5,
                              drop_rate=0.1, proj_drop_rate=0.1, drop_path_rate=0.2).train()
    images = torch.randn(4, 3, 28, 28)
    # Each block keeps its (B, N, C) input instead of its norms, q/k/v, attention output and MLP hidden.
    assert checkpointed_share(model, images) < 1 / 4


def test_grad_checkpointing_leaves_inference_and_attention_maps_alone():
    torch.manual_seed(0)
    model = VisionTransformer(img_size=28, patch_size=4, embed_dim=64, depth=2, num_heads=2, num_classes=5).eval()
    images = torch.randn(2, 3, 28, 28)
    logits, attentions = model(images, return_attention=True)
    model.set_grad_checkpointing()
    with torch.no_grad():
        torch.testing.assert_close(model(images), logits.detach())
    checkpointed_logits, checkpointed_attentions = model(images, return_attention=True)
    torch.testing.assert_close(checkpointed_logits, logits)
    assert len(checkpointed_attentions) == len(attentions) == 2
    model.set_grad_checkpointing(False)
    assert not model.grad_checkpointing


def test_timm_optimizer_factory_trains_position_embeddings_and_class_token_without_decay():
    from timm.optim import create_optimizer_v2
    from visattn.tasks.optimization import weight_decay_groups
    model = create_model("vit_tiny_patch4_28", num_classes=3, depth=1)
    reference = timm.create_model("vit_tiny_patch16_224", num_classes=3, depth=1, img_size=28, patch_size=4)

    def undecayed(groups, named) -> set[str]:
        names = {id(p): n for n, p in named}
        return {names[id(p)] for g in groups if g["weight_decay"] == 0.0 for p in g["params"]}

    ours = undecayed(create_optimizer_v2(model, "adamw", weight_decay=0.05).param_groups, model.named_parameters())
    assert ours == undecayed(create_optimizer_v2(reference, "adamw", weight_decay=0.05).param_groups,
                             reference.named_parameters())
    assert {"pos_embed", "cls_token"} <= ours
    assert ours == undecayed(weight_decay_groups(model, 0.05), model.named_parameters())  # visattn's own groups agree


def test_weights_of_another_patch_size_load_as_timm_loads_them(tmp_path):
    """Patch-16 weights into a patch-8 model were refused (patch_embed.proj.weight (192, 3, 16, 16) vs (192, 3, 8, 8));
    timm resamples the projection (FlexiViT) and loads them."""
    torch.manual_seed(0)
    path = tmp_path / "p16.safetensors"
    save_file(timm.create_model("vit_tiny_patch16_224", num_classes=10).state_dict(), path)
    kwargs = dict(patch_size=8, img_size=112, num_classes=10)
    ref = timm.create_model("vit_tiny_patch16_224", pretrained=True, **kwargs,
                            pretrained_cfg_overlay=dict(file=str(path), num_classes=10)).eval()
    with pytest.warns(VisattnWarning, match=r"^the weights' 16x16 px patch projection is resampled to this model's "
                                            r"8x8 px patches \(FlexiViT's resize\): .* build it with their patch_size"):
        ours = create_model("vit_tiny_patch16_224", pretrained=str(path), **kwargs).eval()  # a wrong file said nothing
    x = torch.randn(2, 3, 112, 112)
    with torch.no_grad():
        torch.testing.assert_close(ours(x), ref(x), rtol=0, atol=0)


def test_token_pooled_weights_for_an_average_pooled_vit_name_the_settings_that_load_them(tmp_path):
    """The hint had been strict='attention', which does not apply, where fc_norm=False (their norm kept) or
    strict=False (fc_norm afresh, as timm) load them (a timm-parity audit)."""
    from visattn.errors import WeightsError

    reference, path = _timm_file(tmp_path, "vit_tiny_patch16_224", img_size=32, depth=2)
    small = dict(img_size=32, depth=2, num_classes=10, global_pool="avg")
    with pytest.raises(WeightsError, match=r"\(missing: fc_norm.weight, fc_norm.bias; unexpected: norm.bias, "
                                           r"norm.weight\); the weights normalise the tokens before pooling \(norm\), "
                                           r"this model after it \(fc_norm, which pooling the patch tokens builds\): "
                                           r"pass fc_norm=False to keep their norm, or strict=False to start fc_norm "
                                           r"afresh"):
        create_model("vit_tiny_patch16_224", pretrained=str(path), **small)
    kept = create_model("vit_tiny_patch16_224", pretrained=str(path), fc_norm=False, **small).eval()
    x = torch.randn(2, 3, 32, 32)
    torch.testing.assert_close(kept.forward_head(kept.forward_features(x), pre_logits=True),
                               reference.forward_features(x)[:, 1:].mean(dim=1), rtol=0, atol=1e-6)
    (tmp_path / "avg").mkdir()
    pooled, averaged = _timm_file(tmp_path / "avg", "vit_tiny_patch16_224", img_size=32, depth=2, global_pool="avg")
    with pytest.raises(WeightsError, match=r"the weights normalise after pooling \(fc_norm\), this model the tokens "
                                           r"before it \(norm\): pass global_pool='avg' if they pool the patch "
                                           r"tokens \(MAE, BEiT, timm's \*_gap_\* weights\), or fc_norm=True if "
                                           r"they pool the class token$"):
        create_model("vit_tiny_patch16_224", pretrained=str(averaged), img_size=32, depth=2)
    # The hint's first setting computes what the weights' own model did (fc_norm=True alone had given other logits).
    average = create_model("vit_tiny_patch16_224", pretrained=str(averaged), img_size=32, depth=2, global_pool="avg")
    torch.testing.assert_close(average.eval()(x), pooled.eval()(x), rtol=0, atol=1e-6)
    create_model("vit_tiny_patch16_224", pretrained=str(averaged), img_size=32, depth=2, fc_norm=True)


@pytest.mark.parametrize("layout", PREFIX_LAYOUTS)
def test_set_input_size_resizes_as_timms_does_and_is_what_saved_weights_rebuild(tmp_path, weights_tmp, layout):
    """timm's set_input_size was missing: a timm user's fine-tuning code at another resolution failed."""
    from visattn import save_weights

    reference, path = _timm_file(tmp_path, "vit_tiny_patch16_224", img_size=32, depth=2, **layout)
    model = create_model("vit_tiny_patch16_224", img_size=32, depth=2, pretrained=str(path), **layout).eval()
    for change in (dict(img_size=64), dict(img_size=(48, 64)), dict(patch_size=8), dict(img_size=96, patch_size=12)):
        reference.set_input_size(**change)
        model.set_input_size(**change)
        x = torch.randn(2, 3, *reference.patch_embed.img_size)
        with torch.no_grad():
            torch.testing.assert_close(model(x), reference(x), rtol=0, atol=0)
        assert model.input_size == model.pretrained_cfg["input_size"] == (3, *reference.patch_embed.img_size)
    with pytest.raises(ConfigError, match=r"^img_size=\(100, 100\) is not divisible by patch_size=\(12, 12\)"):
        model.set_input_size(img_size=100)
    assert model.input_size == (3, 96, 96)  # left as it was
    save_weights(model, weights_tmp / "vit_tiny_patch16_224.resized.safetensors", labels=[str(i) for i in range(1000)],
                 preprocessing=dict(input_size=[3, 96, 96], mean=[0.5] * 3, std=[0.5] * 3))
    rebuilt = create_model("vit_tiny_patch16_224.resized").eval()
    x = torch.randn(1, 3, 96, 96)
    with torch.no_grad():
        torch.testing.assert_close(rebuilt(x), model(x))


@pytest.mark.parametrize("layout", PREFIX_LAYOUTS)
def test_dynamic_img_size_gives_timms_logits_and_maps_at_any_size(tmp_path, layout):
    """timm's ``dynamic_img_size`` was refused as an unknown argument: a timm user's any-size inference failed."""
    reference, path = _timm_file(tmp_path, "vit_tiny_patch16_224", img_size=32, depth=2, dynamic_img_size=True,
                                 **layout)
    model = create_model("vit_tiny_patch16_224", img_size=32, depth=2, dynamic_img_size=True, pretrained=str(path),
                         **layout)
    model.eval()
    with torch.no_grad():
        for size in ((32, 32), (48, 80), (16, 112)):
            x = torch.randn(2, 3, *size)
            torch.testing.assert_close(model(x), reference(x), rtol=0, atol=0)
            ours, theirs = model.forward_intermediates(x, indices=1), reference.forward_intermediates(x, indices=1)
            torch.testing.assert_close(ours[1][0], theirs[1][0], rtol=0, atol=0)
            assert ours[1][0].shape[-2:] == (size[0] // 16, size[1] // 16)
    assert model.pos_embed.shape == (1, 4 + (0 if layout else 1), 192)  # stored on the grid it was built for


def test_dynamic_img_size_refuses_sides_that_are_not_multiples_of_the_patch_and_a_fixed_size_names_it():
    dynamic = create_model("vit_tiny_patch4_28", depth=1, dynamic_img_size=True)
    with pytest.raises(ConfigError, match=r"^input is \(30, 32\), whose sides are not multiples of the patch size "
                                          r"\(4, 4\); resize or crop the image to multiples of it$"):
        dynamic(torch.randn(1, 3, 30, 32))
    fixed = create_model("vit_tiny_patch4_28", depth=1)
    with pytest.raises(ConfigError, match=r"^input is \(30, 32\) but the model expects \(28, 28\); resize the image$"):
        fixed(torch.randn(1, 3, 30, 32))  # no img_size to suggest: 30 is not a multiple of 4
    with pytest.raises(ConfigError, match=r"build the model with img_size=\(32, 32\) or dynamic_img_size=True$"):
        fixed(torch.randn(1, 3, 32, 32))


@pytest.mark.parametrize("pool, num_classes", [("max", 5), ("avgmax", 5), ("", 0), ("map", 5), ("map", 0)])
def test_timms_other_poolings_give_its_logits_and_tokens(pool, num_classes, tmp_path):
    """timm's ViTs pool by max, avgmax, a learned query's attention (SigLIP's 'map') or not at all; visattn took
    only 'token' and 'avg'. Switching from 'map' drops the attention pool, as timm's reset_classifier does.
    visattn's attention pool projects its query once for the batch, timm's once per image: they round apart."""
    reference, path = _timm_file(tmp_path, "vit_tiny_patch16_224", img_size=32, depth=2, global_pool=pool,
                                 num_classes=num_classes)
    model = create_model("vit_tiny_patch16_224", img_size=32, depth=2, global_pool=pool, num_classes=num_classes,
                         pretrained=str(path)).eval()  # strict: fc_norm built where timm builds it
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        tolerance = dict(rtol=1e-5, atol=1e-6) if pool == "map" else dict(rtol=0, atol=0)
        torch.testing.assert_close(model(x), reference(x), **tolerance)
        reference.reset_classifier(0, "avg")
        model.reset_classifier(0, "avg")
        torch.testing.assert_close(model(x), reference(x), rtol=0, atol=0)
    with pytest.raises(ConfigError, match=r"^global_pool='' leaves the tokens unpooled and num_classes=3 needs"):
        create_model("vit_tiny_patch4_28", depth=1, global_pool="", num_classes=3)


def test_a_vit_of_any_size_traces_with_fx_for_every_size():
    """Its grid came from a branch on the input's size, which torchvision's create_feature_extractor (fx) refused."""
    from torchvision.models.feature_extraction import create_feature_extractor

    model = create_model("vit_tiny_patch16_224", img_size=32, depth=2, dynamic_img_size=True, num_classes=3).eval()
    extractor = create_feature_extractor(model, {"head": "logits"})
    with torch.no_grad():
        for size in ((32, 32), (48, 80)):
            x = torch.randn(2, 3, *size)
            torch.testing.assert_close(extractor(x)["logits"], model(x), rtol=0, atol=0)
        with pytest.raises(ConfigError, match=r"^input is \(40, 40\), whose sides are not multiples of the patch size"):
            extractor(torch.randn(1, 3, 40, 40))  # the graph had cropped it to 32x32 without a word


@pytest.mark.parametrize("layout", PREFIX_LAYOUTS)
def test_saved_weights_of_a_non_square_grid_resample_from_it_in_every_prefix_layout(weights_tmp, layout):
    """The grid recorded with visattn's weights was read only where the positions held one for the class token."""
    from visattn import save_weights

    torch.manual_seed(0)
    wide = create_model("vit_tiny_patch16_224", img_size=(32, 64), depth=1, num_classes=3, **layout)
    save_weights(wide, weights_tmp / "vit_tiny_patch16_224.wide.safetensors", labels=["a", "b", "c"],
                 preprocessing=dict(input_size=[3, 32, 64], mean=[0.5] * 3, std=[0.5] * 3))
    square = create_model("vit_tiny_patch16_224", img_size=64, depth=1, num_classes=3,
                          pretrained="vit_tiny_patch16_224.wide", **layout)
    expected = resample_abs_pos_embed(wide.pos_embed.detach(), (4, 4), old_size=(2, 4),
                                      num_prefix_tokens=wide.embedded_prefix_tokens)
    torch.testing.assert_close(square.pos_embed.detach(), expected, rtol=0, atol=0)


@pytest.mark.parametrize("training", [True, False])
def test_drop_path_drops_and_rescales_as_timms_under_the_same_seed(training):
    """Stochastic depth keeps a sample's branch scaled by 1 / keep_prob in training and is the identity in eval, as
    timm's drop_path; left unscaled, or dropping in eval, it had passed."""
    from timm.layers import drop_path as timm_drop_path

    from visattn.layers.drop_path import DropPath, drop_path

    x = torch.randn(64, 3, 5, generator=torch.Generator().manual_seed(0))
    torch.manual_seed(7)
    theirs = timm_drop_path(x, 0.25, training)
    torch.manual_seed(7)
    torch.testing.assert_close(drop_path(x, 0.25, training), theirs)
    torch.manual_seed(7)
    torch.testing.assert_close(DropPath(0.25).train(training)(x), theirs)
    kept = (theirs != 0).flatten(1).all(dim=1)
    assert 0 < kept.sum() < 64 if training else kept.all()


def _drop_path_rates(model):
    return [getattr(getattr(block, f"drop_path{i}"), "drop_prob", 0.0) for block in model.blocks for i in (1, 2)]


def test_a_vits_stochastic_depth_rises_linearly_over_its_blocks_as_timms():
    """timm's ViT drops block i with drop_path_rate * i / (depth - 1); the same rate in every block had passed."""
    kwargs = dict(img_size=32, depth=5, drop_path_rate=0.2)
    ours = create_model("vit_tiny_patch16_224", **kwargs)
    theirs = timm.create_model("vit_tiny_patch16_224", **kwargs)
    assert _drop_path_rates(ours) == pytest.approx(_drop_path_rates(theirs))
    assert _drop_path_rates(ours) == pytest.approx([0.0, 0.0, 0.05, 0.05, 0.1, 0.1, 0.15, 0.15, 0.2, 0.2])


def test_a_vit_with_stochastic_depth_gives_timms_logits_in_eval_every_time(tmp_path):
    """Stochastic depth is training's alone: in eval a ViT built with drop_path_rate gives timm's logits, the same
    at every call (dropping in eval had passed, the tests' models having no stochastic depth)."""
    reference, path = _timm_file(tmp_path, "vit_tiny_patch16_224", img_size=32, depth=2, num_classes=5,
                                 drop_path_rate=0.5)
    ours = create_model("vit_tiny_patch16_224", img_size=32, depth=2, num_classes=5, drop_path_rate=0.5,
                        pretrained=str(path)).eval()
    x = torch.randn(8, 3, 32, 32)
    with torch.no_grad():
        first, second = ours(x), ours(x)
        expected = reference(x)
    torch.testing.assert_close(first, second, rtol=0, atol=0)
    assert (first - expected).abs().max() <= 1e-4


def test_resampling_position_embeddings_of_a_grid_it_cannot_infer_names_old_size():
    """12 grid tokens were read as a 3x3 grid, and the reshape failed naming no argument (a docstring audit)."""
    pos_embed = torch.randn(1, 1 + 12, 8)
    with pytest.raises(ConfigError, match=r"^old_size=None: 12 grid tokens make no square grid; give the grid"):
        resample_abs_pos_embed(pos_embed, (4, 4))
    with pytest.raises(ConfigError, match=r"^old_size=\(2, 3\): holds 6 cells, and pos_embed 12 grid tokens"):
        resample_abs_pos_embed(pos_embed, (4, 4), old_size=(2, 3))
    assert resample_abs_pos_embed(pos_embed, (4, 4), old_size=(3, 4)).shape == (1, 17, 8)


@pytest.mark.parametrize("rate", [1.0, -0.1])
def test_a_stochastic_depth_rate_outside_zero_to_one_is_one_line(rate):
    """A rate of 1 drops the last block always and divides by its keep probability of 0 (NaN in the first training
    step); a negative one fails there as bernoulli's error. The tests refused 2.0 only."""
    with pytest.raises(ConfigError, match=rf"^drop_path_rate={rate}: give a drop probability from 0 up to \(not "
                                          r"including\) 1"):
        create_model("vit_tiny_patch4_28", depth=2, drop_path_rate=rate)


@pytest.mark.parametrize("drop_prob", [0.0, 0.3, 1.0])
def test_drop_path_drops_and_rescales_the_samples_timms_does(drop_prob):
    """Called directly with a rate of 1 (the builders refuse it), every branch was NaN, 0 / 0; timm's gives zeros."""
    from timm.layers import drop_path as timm_drop_path

    from visattn.layers.drop_path import drop_path

    x = torch.randn(64, 3, 4)  # (B, N, C)
    torch.manual_seed(0)
    ours = drop_path(x, drop_prob, training=True)
    torch.manual_seed(0)
    torch.testing.assert_close(ours, timm_drop_path(x, drop_prob, training=True))
    assert drop_path(x, drop_prob, training=False) is x


@pytest.mark.parametrize("init_values", [None, 0.1])
def test_layer_scale_starts_trains_and_scales_as_timms(init_values):
    """gamma starts at init_values (timm's 1e-5 by default), is a trained parameter, and scales each channel
    without writing into the branch it scales; the parity tests overwrite gamma, so these went unchecked."""
    from timm.layers import LayerScale as TimmLayerScale

    from visattn.layers.layer_scale import LayerScale

    kwargs = {} if init_values is None else {"init_values": init_values}
    ours, theirs = LayerScale(6, **kwargs), TimmLayerScale(6, **kwargs)
    assert [name for name, _ in ours.named_parameters()] == ["gamma"]
    torch.testing.assert_close(ours.gamma, theirs.gamma, rtol=0, atol=0)
    with torch.no_grad():
        theirs.gamma.normal_()
        ours.gamma.copy_(theirs.gamma)
    branch = torch.randn(2, 3, 6, requires_grad=True)  # (B, N, C)
    grads = []
    for module in (ours, theirs):
        tokens = branch * 1.0  # a block's branch output, not a leaf
        before = tokens.detach().clone()
        module(tokens).square().sum().backward()
        torch.testing.assert_close(tokens, before, rtol=0, atol=0)
        grads.append((module.gamma.grad, branch.grad.clone()))
        branch.grad = None
    for actual, expected in zip(*grads):
        torch.testing.assert_close(actual, expected)


def test_patch_embed_gives_timms_tokens_and_refuses_the_sizes_timms_refuses():
    """visattn's PatchEmbed with timm's weights: timm's tokens on a non-square grid and, by default (strict), no
    other input size; with strict_img_size=False any size of whole patches, and no other. A non-strict default and
    the layer's whole-patch check dropped had passed, the ViT checking sizes before its patch embedding."""
    from timm.layers import PatchEmbed as TimmPatchEmbed

    from visattn.layers.patch_embed import PatchEmbed

    torch.manual_seed(0)
    ours, theirs = PatchEmbed((8, 12), 4, embed_dim=5), TimmPatchEmbed((8, 12), 4, embed_dim=5)
    ours.load_state_dict(theirs.state_dict())
    x = torch.randn(2, 3, 8, 12)
    torch.testing.assert_close(ours(x), theirs(x))  # (2, 6, 5)
    assert ours.grid_size == theirs.grid_size == (2, 3)
    with pytest.raises(ConfigError, match=r"^input is \(12, 12\) but the model expects \(8, 12\); resize the image"):
        ours(torch.randn(1, 3, 12, 12))
    loose = PatchEmbed((8, 12), 4, embed_dim=5, strict_img_size=False)
    assert loose(torch.randn(1, 3, 12, 16)).shape == (1, 12, 5)
    with pytest.raises(ConfigError, match=r"^input is \(12, 14\), whose sides are not multiples of the patch size"):
        loose(torch.randn(1, 3, 12, 14))


def test_patch_embed_set_input_size_to_a_non_square_patch_is_timms_and_keeps_frozen_eval_weights():
    """The kernel resampled to an (8, 4) patch as timm resamples it (read as (4, 8) it had passed: the ViT tests
    resample square patches), still frozen and in eval mode as before."""
    from timm.layers import PatchEmbed as TimmPatchEmbed

    from visattn.layers.patch_embed import PatchEmbed

    torch.manual_seed(0)
    ours, theirs = PatchEmbed(16, 4, embed_dim=5), TimmPatchEmbed(16, 4, embed_dim=5)
    ours.load_state_dict(theirs.state_dict())
    for embed in (ours, theirs):
        embed.requires_grad_(False).eval()
        embed.set_input_size(patch_size=(8, 4))
    assert ours.grid_size == theirs.grid_size == (2, 4)
    x = torch.randn(2, 3, 16, 16)
    torch.testing.assert_close(ours(x), theirs(x))  # (2, 8, 5)
    assert not ours.training and not any(p.requires_grad for p in ours.parameters())


def test_patch_embed_set_input_size_keeps_trained_biases_of_frozen_weights_trained():
    """BitFit trains the biases alone: a new patch size froze the patch projection's bias too, the weight's flag set on
    both (timm keeps each its own)."""
    from timm.layers import PatchEmbed as TimmPatchEmbed

    from visattn.layers.patch_embed import PatchEmbed

    for embed in (PatchEmbed(16, 4, embed_dim=5), TimmPatchEmbed(16, 4, embed_dim=5)):
        embed.proj.weight.requires_grad_(False)
        embed.set_input_size(patch_size=8)
        assert (embed.proj.weight.requires_grad, embed.proj.bias.requires_grad) == (False, True), type(embed).__module__


def _vitdet_pyramid(pyramid, x):
    """Li et al.'s simple feature pyramid (ViTDet, Fig. 2(c); detectron2's SimpleFeaturePyramid) in functional form,
    reading ``pyramid``'s parameters in order: per scale the resampling (4x: 2x2 stride-2 deconv to C/2, channel
    LayerNorm, GELU, deconv to C/4; 2x: deconv to C/2; 1x: none; 0.5x: 2x2 max-pool), then a bias-free 1x1 conv,
    LayerNorm, a bias-free 3x3 conv, LayerNorm; detectron2's LayerNorm eps, 1e-6."""
    import torch.nn.functional as F

    def norm(t, params):  # over the channels of (B, C, H, W)
        weight, bias = next(params), next(params)
        return F.layer_norm(t.permute(0, 2, 3, 1), weight.shape, weight, bias, eps=1e-6).permute(0, 3, 1, 2)

    def up(t, params, channels):
        weight, bias = next(params), next(params)
        assert weight.shape == (t.shape[1], channels, 2, 2)
        return F.conv_transpose2d(t, weight, bias, stride=2)

    maps, channels = [], x.shape[1]
    for scale, stage in zip(pyramid.scales, pyramid.stages):
        params = iter(stage.parameters())
        if scale == 4.0:
            y = up(F.gelu(norm(up(x, params, channels // 2), params)), params, channels // 4)
        else:
            y = {2.0: lambda: up(x, params, channels // 2), 1.0: lambda: x, 0.5: lambda: F.max_pool2d(x, 2)}[scale]()
        y = norm(F.conv2d(y, next(params)), params)
        maps.append(norm(F.conv2d(y, next(params), padding=1), params))
        assert next(params, None) is None
    return maps


def test_simple_feature_pyramid_is_vitdets_at_every_scale():
    """Each level against the paper's layers on the module's own (random) weights, at the strides the scales say; the
    detectors use (2.0, 1.0, 0.5), so a 4x branch upsampling 2x, a 0.5x branch average-pooling, or a dropped GELU
    or LayerNorm had passed. The extra block's P6 comes from the input map, as torchvision's FPN feeds it the
    backbone's. A faint input (tokens of small spread) tells the LayerNorms' eps apart: torch's 1e-5 is not ViTDet's."""
    from torchvision.ops.feature_pyramid_network import LastLevelP6P7

    from visattn.layers.simple_feature_pyramid import SimpleFeaturePyramid

    torch.manual_seed(0)
    pyramid = SimpleFeaturePyramid(8, 6, scales=(4.0, 2.0, 1.0, 0.5), extra_blocks=LastLevelP6P7(8, 6))
    with torch.no_grad():
        for parameter in pyramid.parameters():
            parameter.normal_()
    for spread in (1.0, 1e-3):
        x = torch.randn(2, 8, 4, 6) * spread  # (B, embed_dim, rows, cols) of the patch grid
        with torch.no_grad():
            levels = pyramid(x)
            expected = _vitdet_pyramid(pyramid, x)
            p6 = pyramid.extra_blocks.p6(x)
        assert list(levels) == ["0", "1", "2", "3", "p6", "p7"]
        assert [tuple(level.shape[-2:]) for level in levels.values()] == [(16, 24), (8, 12), (4, 6), (2, 3), (2, 3),
                                                                          (1, 2)]
        for actual, reference in zip(levels.values(), [*expected, p6]):
            torch.testing.assert_close(actual, reference)
