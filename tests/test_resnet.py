"""ResNets: torchvision / timm weight parity, non-strict loading, parameter counts, attention placement.

Forward/backward on every registered model lives in ``tests/test_models.py``.
"""
import pytest
import timm
import torch
import torchvision
from torch import nn

from fixtures_memory import checkpointed_share
from visattn import create_model, list_models
from visattn.errors import ConfigError, VisattnWarning, WeightsError
from visattn.layers.bam import Bam
from visattn.layers.cbam import Cbam
from visattn.layers.global_context import GlobalContextBlock
from visattn.layers.non_local import NonLocalBlock
from visattn.models.resnet import ResNet

PREFIXES = ["", "se_", "eca_", "cbam_", "bam_", "coord_", "nl_", "gc_"]
DEPTHS = ["resnet18", "resnet34", "resnet50", "resnet101", "resnet20_cifar"]


def n_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def build_on_meta(arch: str) -> nn.Module:
    """Structure and parameter shapes without allocating or initialising weights (fast)."""
    with torch.device("meta"):
        return create_model(arch)


def randomize_bn_stats(model: nn.Module) -> nn.Module:
    """Non-trivial running statistics and affine weights, so a buffer that fails to load changes the eval logits
    and no residual branch is silenced by timm's zero-initialised last BN (``zero_init_last``)."""
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.normal_(0, 0.1)
                m.running_var.uniform_(0.5, 1.5)
                m.weight.normal_(1, 0.1)
                m.bias.normal_(0, 0.1)
    return model.eval()


def assert_same_logits(model: nn.Module, reference: nn.Module) -> None:
    model.eval()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(model(x), reference(x), atol=1e-5, rtol=0)


@pytest.fixture(scope="module")
def torchvision_weights(tmp_path_factory):
    """``{arch: (path, eval-mode torchvision model)}`` saved with ``torch.save(state_dict)``."""
    torch.manual_seed(0)
    out = {}
    for arch in ("resnet18", "resnet50"):
        reference = randomize_bn_stats(getattr(torchvision.models, arch)())
        path = tmp_path_factory.mktemp("tv") / f"{arch}.pth"
        torch.save(reference.state_dict(), path)
        out[arch] = (path, reference)
    return out


def test_every_prefix_and_depth_is_registered():
    expected = {prefix + depth for prefix in PREFIXES for depth in DEPTHS}
    assert expected <= set(list_models("*resnet*"))


@pytest.mark.parametrize("arch", ["resnet18", "resnet50"])
def test_torchvision_weights_give_identical_logits(arch, torchvision_weights):
    path, reference = torchvision_weights[arch]
    model = create_model(arch, pretrained=str(path))
    assert_same_logits(model, reference)


def test_timm_weights_give_identical_logits(tmp_path):
    torch.manual_seed(0)
    reference = randomize_bn_stats(timm.create_model("resnet50"))
    path = tmp_path / "timm_resnet50.pth"
    torch.save(reference.state_dict(), path)
    model = create_model("resnet50", pretrained=str(path))
    assert_same_logits(model, reference)


@pytest.mark.parametrize("strict", [False, "attention"])
def test_plain_weights_load_non_strictly_into_cbam(torchvision_weights, strict):
    path, reference = torchvision_weights["resnet50"]
    with pytest.warns(UserWarning, match=r"layer1\.0\.attn\.channel"):
        model = create_model("cbam_resnet50", pretrained=path, strict=strict)
    torch.testing.assert_close(model.layer3[2].conv2.weight, reference.layer3[2].conv2.weight)
    torch.testing.assert_close(model.fc.weight, reference.fc.weight)
    with pytest.raises(WeightsError, match=r"layer1\.0\.attn"):
        create_model("cbam_resnet50", pretrained=path, strict=True)


@pytest.mark.parametrize("arch", ["nl_resnet18", "gc_resnet18"])
def test_identity_initialised_attention_keeps_pretrained_logits(arch, torchvision_weights):
    path, reference = torchvision_weights["resnet18"]
    with pytest.warns(UserWarning, match="missing"):
        model = create_model(arch, pretrained=path, strict="attention")
    assert_same_logits(model, reference)


@pytest.mark.parametrize("arch", ["nl_resnet20_cifar", "gc_resnet20_cifar"])
def test_a_built_resnets_non_local_and_gc_attention_starts_spread_out_not_one_hot(arch):
    """The ResNet's fan-out conv init had saturated these softmaxes (mean row maxima 0.65-0.99, no gradient to the
    logits); the authors' inits (N(0, 0.01) embeddings, fan-in logits) leave them spread out."""
    torch.manual_seed(0)
    model = create_model(arch, attn_kwargs={"keep_gate": True})
    model(torch.randn(2, 3, 32, 32))
    blocks = [m for m in model.modules() if isinstance(m, (NonLocalBlock, GlobalContextBlock))]
    gates = [next(iter(block.last_gate.values())) for block in blocks]
    row_maxima = [gate.flatten(2).amax(-1).mean().item() for gate in gates]
    assert len(row_maxima) >= 4 and max(row_maxima) < 0.3, row_maxima


def _other_depths_weights_are_refused(build, path):
    with pytest.raises(WeightsError, match=r"^\S*resnet18\.pth: weights do not fit ResNet \(missing outside its "
                       r"attention modules: layer1\.2\.conv1\.weight, .*\); another depth: the weights hold 2, 2, 2, "
                       r"2 blocks in layer1–layer4, ResNet 3, 4, 6, 3; build the architecture of their depth, or give "
                       r"weights of this one$"):
        build(path)


@pytest.mark.parametrize("arch", ["resnet34", "cbam_resnet34", "bam_resnet34", "nl_resnet34"])
def test_strict_attention_lets_only_attention_modules_be_missing(arch, torchvision_weights):
    path, _ = torchvision_weights["resnet18"]
    _other_depths_weights_are_refused(lambda p: create_model(arch, pretrained=p, strict="attention"), path)
    with pytest.warns(UserWarning, match="loaded non-strictly; kept init for missing"):  # False: any init
        create_model(arch, pretrained=path, strict=False)
    with pytest.raises(ConfigError, match=r"strict='attentions': give True .*, 'attention' .* or False"):
        create_model(arch, strict="attentions")


def test_strict_attention_refuses_keys_the_model_lacks_outside_its_attention_modules(tmp_path, torchvision_weights):
    """A resnet34's weights loaded into a resnet18, and an SE-ResNet's into a plain one, with only a warning:
    whole blocks, or the SE gates the weights were trained with, were dropped."""
    torch.manual_seed(0)
    deeper = tmp_path / "resnet34.pth"
    torch.save(torchvision.models.resnet34().state_dict(), deeper)
    with pytest.raises(WeightsError, match=r"\(unexpected outside its attention modules: layer1\.2\.conv1\.weight, "):
        create_model("cbam_resnet18", pretrained=deeper, strict="attention")
    se = tmp_path / "se_resnet18.pth"
    torch.save(create_model("se_resnet18").state_dict(), se)
    with pytest.raises(WeightsError, match=r"\(unexpected outside its attention modules: layer1\.0\.attn\.fc1\.weight"):
        create_model("resnet18", pretrained=se, strict="attention")
    with pytest.warns(UserWarning, match=r"ignored unexpected layer1\.0\.attn\.fc1\.weight"):  # SE's gates swapped out
        create_model("eca_resnet18", pretrained=se, strict="attention")


def test_encoders_and_backbones_take_a_plain_resnets_weights_but_not_another_depths(torchvision_weights):
    # Their builders chose to load non-strictly: resnet18 weights in a resnet34 encoder or backbone had
    # left 80 of its weights at their init with a warning.
    from visattn.models.detection import create_backbone
    from visattn.models.show_attend_tell import ShowAttendTell

    path, reference = torchvision_weights["resnet18"]
    with pytest.warns(UserWarning, match=r"kept init for missing layer1\.0\.attn"):
        body = create_backbone("cbam_resnet18", pretrained=str(path))
    torch.testing.assert_close(body.layer4[1].conv2.weight, reference.layer4[1].conv2.weight)
    _other_depths_weights_are_refused(lambda p: create_backbone("cbam_resnet34", pretrained=p), path)
    _other_depths_weights_are_refused(
        lambda p: ShowAttendTell(vocab_size=20, encoder_name="resnet34", encoder_pretrained=p), path)


@pytest.mark.parametrize("arch, layers, expected", [
    ("nl_resnet20_cifar", (5, 5, 5), ["layer2.0", "layer2.2", "layer3.0", "layer3.2", "layer3.4"]),  # layer3.4 was left out
    ("nl_resnet20_cifar", (2, 2, 2), ["layer2.0", "layer3.0"]),  # refused, blaming non_local_blocks
    ("nl_resnet50", (1, 1, 1, 1), ["layer2.0", "layer3.0"]),  # refused as "multiple values for 'layers'"
])
def test_non_local_blocks_go_where_the_paper_puts_them_for_the_layers_given(arch, layers, expected):
    widths = {} if arch.endswith("50") else {"widths": (8,) * len(layers)}
    model = create_model(arch, layers=layers, **widths)
    assert [name.removesuffix(".non_local") for name, m in model.named_modules() if isinstance(m, NonLocalBlock)] == expected


def test_gc_attention_goes_in_all_but_the_first_of_the_stages_given():
    model = create_model("gc_resnet20_cifar", layers=(2, 2), widths=(16, 32))  # was refused, blaming attn_stages
    assert [n for n, m in model.named_modules() if isinstance(m, GlobalContextBlock)] == ["layer2.0.attn", "layer2.1.attn"]
    with pytest.raises(ConfigError, match=r"^layers=\[2\]: gc attention needs at least 2 stages$"):
        create_model("gc_resnet20_cifar", layers=(2,), widths=(16,))


@pytest.mark.parametrize("kwargs, message", [
    ({"widths": (8, 16)}, r"layers=\[2, 2, 2, 2\] and widths=\[8, 16\]: give one width per stage \(4 stages, 2 widths\)"),
    ({"widths": (8, 16, 32, 64, 128)}, r"layers=\[2, 2, 2, 2\] and widths=\[8, 16, 32, 64, 128\]: give one width per"),
    ({"layers": (-1, 1, 1, 1)}, r"layers=\(-1, 1, 1, 1\): give a list of whole numbers >= 1, one per stage"),
    ({"layers": ()}, r"layers=\(\): give a list of whole numbers"),
    ({"block": "x"}, r"block='x': give a block class, BasicBlock or Bottleneck"),
])
def test_a_stage_layout_that_would_fail_in_its_first_forward_is_one_line_at_build(kwargs, message):
    # fewer widths built fewer stages, then an AttributeError for layer3 in the forward; more, a shape error
    with pytest.raises(ConfigError, match=f"^{message}"):
        create_model("resnet18", **kwargs)


def test_resnet50_parameter_counts_match_the_papers():
    base = n_params(build_on_meta("resnet50"))
    assert base == 25_557_032
    assert n_params(build_on_meta("resnet18")) == 11_689_512
    assert abs(n_params(build_on_meta("se_resnet50")) - 28.09e6) < 0.01e6
    assert abs(n_params(build_on_meta("cbam_resnet50")) - 28.09e6) < 0.01e6
    assert 0 < n_params(build_on_meta("eca_resnet50")) - base < 100


@pytest.mark.parametrize("arch", [prefix + "resnet20_cifar" for prefix in PREFIXES])
def test_small_variants_are_under_1m_and_take_28px(arch):
    model = create_model(arch, in_chans=1)
    assert n_params(model) < 1_000_000
    assert model.input_size == (1, 32, 32)
    assert model(torch.randn(2, 1, 28, 28)).shape == (2, 10)
    assert model.forward_features(torch.randn(2, 1, 28, 28)).shape == (2, 112, 7, 7)


def test_cbam_small_variant_is_a_capable_size():
    assert 500_000 < n_params(create_model("cbam_resnet20_cifar")) < 900_000


def attn_types(model: ResNet) -> dict[str, type]:
    return {name: type(m.attn) for name, m in model.named_modules() if getattr(m, "attn", None) is not None}


def test_cbam_sits_in_every_block():
    model = create_model("cbam_resnet18")
    blocks = [b for stage in (model.layer1, model.layer2, model.layer3, model.layer4) for b in stage]
    assert all(isinstance(b.attn, Cbam) for b in blocks) and len(blocks) == 8


@pytest.mark.parametrize("arch", ["se_resnet18", "cbam_resnet50"])
def test_attention_sits_after_the_last_bn_before_the_residual_add(arch):
    block = create_model(arch).layer2[0].eval()
    x = torch.randn(2, block.conv1.in_channels, 8, 8)
    with torch.no_grad():
        out = block.relu(block.bn1(block.conv1(x)))
        out = block.bn2(block.conv2(out))
        if hasattr(block, "conv3"):
            out = block.bn3(block.conv3(block.relu(out)))
        expected = torch.relu(block.attn(out) + block.downsample(x))
        torch.testing.assert_close(block(x), expected)


def test_gc_skips_the_first_stage():
    placed = attn_types(build_on_meta("gc_resnet50"))
    assert set(placed.values()) == {GlobalContextBlock}
    assert {name.split(".")[0] for name in placed} == {"layer2", "layer3", "layer4"}


def test_bam_sits_between_stages():
    model = build_on_meta("bam_resnet50")
    assert [model.bam1.channel.mlp[0].in_channels, model.bam2.channel.mlp[0].in_channels,
            model.bam3.channel.mlp[0].in_channels] == [256, 512, 1024]
    assert not hasattr(model, "bam4") and attn_types(model) == {}
    assert sum(isinstance(m, Bam) for m in model.modules()) == 3


def test_non_local_follows_the_paper_5_block_setting():
    model = build_on_meta("nl_resnet50")
    placed = [name for name, m in model.named_modules() if isinstance(m, NonLocalBlock)]
    assert placed == ["layer2.0.non_local", "layer2.2.non_local",
                      "layer3.0.non_local", "layer3.2.non_local", "layer3.4.non_local"]


def test_feature_and_head_api():
    model = create_model("se_resnet18", num_classes=7)
    assert ResNet.classifier == "fc" and model.num_classes == 7 and model.num_features == 512
    assert model.input_size == (3, 224, 224)
    features = model.forward_features(torch.randn(2, 3, 64, 64))
    assert features.shape == (2, 512, 2, 2)
    assert model.forward_head(features, pre_logits=True).shape == (2, 512)
    model.reset_classifier(3)
    assert model.num_classes == 3 and model(torch.randn(2, 3, 32, 32)).shape == (2, 3)


def test_init_like_torchvision():
    model = create_model("resnet18", zero_init_residual=True)
    assert all(b.bn2.weight.abs().sum().item() == 0 for b in (*model.layer1, *model.layer4))
    assert model.bn1.weight.min().item() == 1
    std = model.layer2[0].conv1.weight.std().item()  # kaiming fan_out: sqrt(2 / (128 * 3 * 3)) = 0.0417
    assert 0.037 < std < 0.046
    assert create_model("resnet18").layer1[0].bn2.weight.min() == 1


def test_in_chans_and_keep_gate_kwargs():
    model = create_model("cbam_resnet20_cifar", in_chans=1, attn_kwargs={"keep_gate": True})
    model(torch.randn(2, 1, 28, 28))
    assert model.layer3[2].attn.last_gate["spatial"].shape == (2, 1, 7, 7)


def test_bad_attention_placement_raises_config_error():
    with pytest.raises(ConfigError, match="attn_stages"):
        create_model("resnet18", attn_layer="se", attn_stages=(5,))
    with pytest.raises(ConfigError, match="non_local_blocks"):
        create_model("resnet18", non_local_blocks={2: (3,)})


@pytest.mark.parametrize("timm_name, arch", [("seresnet18", "se_resnet18"), ("seresnet50", "se_resnet50")])
def test_timm_se_resnet_weights_load_strictly_with_same_logits(timm_name, arch, tmp_path):
    torch.manual_seed(0)
    reference = randomize_bn_stats(timm.create_model(timm_name, num_classes=5))
    path = tmp_path / f"{timm_name}.pth"
    torch.save(reference.state_dict(), path)
    model = create_model(arch, num_classes=5, pretrained=str(path))  # strict: no missing / unexpected keys
    assert_same_logits(model, reference)


@pytest.mark.parametrize("timm_name, arch", [("seresnet18", "se_resnet18"), ("ecaresnet50d", "eca_resnet50d")])
def test_timm_se_and_eca_state_dicts_load_through_load_state_dict(timm_name, arch, tmp_path):
    """timm names the block attention `se`: a timm state dict given to `load_state_dict`, or to timm's
    `load_checkpoint`, was torch's multi-line list of missing keys (only create_model renamed them)."""
    torch.manual_seed(0)
    reference = randomize_bn_stats(timm.create_model(timm_name, num_classes=5)).eval()
    state = reference.state_dict()
    model = create_model(arch, num_classes=5).eval()
    model.load_state_dict(state)  # strict
    assert_same_logits(model, reference)
    assert any(".se." in key for key in state)  # the caller's dict is left as it was
    path = tmp_path / f"{timm_name}.pth"
    torch.save(state, path)
    model = create_model(arch, num_classes=5).eval()
    timm.models.load_checkpoint(model, str(path))
    assert_same_logits(model, reference)
    wrapped = nn.Sequential(create_model(arch, num_classes=5)).eval()  # under a prefix, as in a larger model
    wrapped.load_state_dict({f"0.{key}": value for key, value in state.items()})
    assert_same_logits(wrapped, reference)
    both = {**model.state_dict(), **{k: v for k, v in state.items() if ".se." in k}}  # a merged dict: not renamed
    with pytest.raises(RuntimeError, match=r"Unexpected key\(s\) in state_dict: .*layer1\.0\.se\."):
        model.load_state_dict(both)


@pytest.mark.parametrize("arch, timm_name", [("se_resnet18", "seresnet18"), ("eca_resnet50d", "ecaresnet50d"),
                                             ("resnet18d", "resnet18d"),
                                             ("vit_tiny_patch16_224", "vit_tiny_patch16_224")])
def test_weights_go_back_to_timm_by_timm_state_dict(arch, timm_name):
    """A timm user's SE- and ECA-ResNets fine-tuned here did not load into timm (their attention is `attn` here)."""
    torch.manual_seed(0)
    size = {"img_size": 32} if arch.startswith("vit") else {}
    model = randomize_bn_stats(create_model(arch, num_classes=5, **size)).eval()
    reference = timm.create_model(timm_name, num_classes=5, **size).eval()
    reference.load_state_dict(model.timm_state_dict())  # strict
    assert_same_logits(model, reference)


@pytest.mark.parametrize("arch, module", [("cbam_resnet18", "Cbam"), ("bam_resnet18", "Bam"),
                                          ("nl_resnet18", "NonLocalBlock")])
def test_attention_timm_lacks_has_no_timm_state_dict(arch, module):
    """Given under visattn's names, a non-strict load in timm dropped every attention weight without a word."""
    with pytest.raises(ConfigError, match=rf"^timm_state_dict: timm's ResNets have no {module} of the same "
                                          r"parameters \(where timm has that attention, its widths, norms or biases "
                                          r"differ\); save this model's weights with visattn.save_weights"):
        create_model(arch).timm_state_dict()


def test_timm_eca_resnet_with_the_plain_stem_loads_with_same_logits(tmp_path):
    torch.manual_seed(0)
    block_args = {"attn_layer": "eca"}
    reference = randomize_bn_stats(timm.models.resnet.ResNet(timm.models.resnet.BasicBlock, [2, 2, 2, 2],
                                                             num_classes=5, block_args=block_args))
    path = tmp_path / "timm_eca_resnet18.pth"
    torch.save(reference.state_dict(), path)
    assert_same_logits(create_model("eca_resnet18", num_classes=5, pretrained=str(path)), reference)


def test_timm_se_keys_are_not_renamed_into_other_attention(tmp_path):
    path = tmp_path / "seresnet18.pth"
    torch.save(timm.create_model("seresnet18", num_classes=5).state_dict(), path)
    with pytest.raises(WeightsError, match=r"unexpected: layer1\.0\.se\.fc1"):
        create_model("resnet18", num_classes=5, pretrained=str(path))


@pytest.mark.parametrize("shape, fix", [
    ((2, 28, 28, 3), r"channels-last: x\.permute\(0, 3, 1, 2\)"),
    ((3, 28, 28), r"x\.unsqueeze\(0\)"),
    ((2, 1, 28, 28), "in_chans=1"),
])
def test_wrong_input_layout_names_the_fix(shape, fix):
    model = create_model("resnet20_cifar").eval()
    with pytest.raises(ConfigError, match=fix):
        model(torch.randn(*shape))
    with pytest.raises(ConfigError, match=fix):
        model.forward_stages(torch.randn(*shape))


@pytest.mark.parametrize("in_chans", ["1", 0, -3, 1.5, True])
def test_bad_in_chans_is_a_config_error(in_chans):
    with pytest.raises(ConfigError, match=r"in_chans=.*whole number >= 1"):
        create_model("resnet20_cifar", in_chans=in_chans)


def test_get_classifier_is_fc():
    model = create_model("resnet20_cifar")
    assert model.get_classifier() is model.fc
    model.reset_classifier(3)
    assert model.get_classifier() is model.fc and model.fc.out_features == 3


def test_reset_classifier_takes_timms_global_pool_argument():
    model = create_model("resnet20_cifar", num_classes=3)
    model.reset_classifier(5, "avg")  # as code written for timm calls it
    assert model.get_classifier().out_features == 5 and model(torch.randn(1, 3, 32, 32)).shape == (1, 5)
    with pytest.raises(ConfigError, match=r"global_pool='median': use 'avg', 'max', 'avgmax', 'catavgmax', or ''"):
        model.reset_classifier(5, "median")


@pytest.mark.parametrize("name, attn_kwargs, message", [
    ("eca_resnet20_cifar", {"reduction": 4}, "the 'eca' attention layer has no argument 'reduction': it takes .*kernel_size"),
    ("eca_resnet20_cifar", {"kernel_sze": 5}, "the 'eca' attention layer has no argument 'kernel_sze': did you mean kernel_size"),
    # BAM and non-local modules were built without the check: a bare TypeError
    ("bam_resnet20_cifar", {"reductoin": 8}, "the 'bam' attention layer has no argument 'reductoin': did you mean reduction"),
    ("nl_resnet20_cifar", {"min_hidden": 4}, "the 'non_local' attention layer has no argument 'min_hidden': it takes "),
    # values that built and then failed in the first forward (a shape error) or at once (ZeroDivisionError)
    ("eca_resnet20_cifar", {"kernel_size": 4}, r"kernel_size=4: give an odd whole number \(3, 5, 7, ...\)"),
    ("cbam_resnet20_cifar", {"spatial_kernel_size": 6}, r"spatial_kernel_size=6: give an odd whole number"),
    ("se_resnet20_cifar", {"reduction": 0}, r"reduction=0: give a whole number >= 1"),
    ("nl_resnet20_cifar", {"reduction": 0}, r"reduction=0: give a whole number >= 1"),
])
def test_an_attention_argument_the_layer_does_not_take_is_one_line(name, attn_kwargs, message):
    with pytest.raises(ConfigError, match=message):
        create_model(name, attn_kwargs=attn_kwargs)


# --- timm's global_pool, zero-init of the last BN and set_grad_checkpointing ---------------------------------------

POOLS = ["avg", "max", "avgmax", "catavgmax", ""]


def timm_resnet18_pair(tmp_path, pool: str, num_classes: int) -> tuple[nn.Module, nn.Module]:
    """timm's resnet18 with ``global_pool=pool`` and visattn's built the same way from its weights, both eval."""
    torch.manual_seed(0)
    reference = randomize_bn_stats(timm.create_model("resnet18", global_pool=pool, num_classes=num_classes))
    path = tmp_path / "timm_resnet18.pth"
    torch.save(reference.state_dict(), path)
    ours = create_model("resnet18", global_pool=pool, num_classes=num_classes, pretrained=str(path))
    return ours.eval(), reference


@pytest.mark.parametrize("pool", POOLS)
def test_global_pool_gives_timms_logits_and_features(pool, tmp_path):
    ours, reference = timm_resnet18_pair(tmp_path, pool, num_classes=0 if pool == "" else 1000)
    x = torch.randn(2, 3, 96, 96)  # a 3x3 final map, where avg, max and avgmax differ (32 px leaves 1x1)
    with torch.no_grad():
        features = ours.forward_features(x)
        torch.testing.assert_close(ours(x), reference(x), atol=1e-5, rtol=0)
        torch.testing.assert_close(ours.forward_head(features, pre_logits=True),
                                   reference.forward_head(reference.forward_features(x), pre_logits=True),
                                   atol=1e-5, rtol=0)
    # catavgmax: the classifier takes both poolings' 512 channels side by side
    assert (ours.num_features, ours.head_hidden_size) == (reference.num_features, reference.head_hidden_size)
    if pool == "":  # no pooling: forward is forward_features, as timm's with num_classes=0
        assert torch.equal(ours(x), features) and features.shape == (2, 512, 3, 3)


def test_global_pool_types_pool_differently():
    features = torch.randn(2, 8, 3, 3)
    model = create_model("resnet20_cifar", num_classes=0)
    pooled = {}
    for pool in POOLS:
        model.reset_classifier(0, pool)
        pooled[pool] = model.forward_head(features)
    torch.testing.assert_close(pooled["avg"], features.mean((2, 3)))
    torch.testing.assert_close(pooled["max"], features.amax((2, 3)))
    torch.testing.assert_close(pooled["avgmax"], 0.5 * (pooled["avg"] + pooled["max"]))
    assert torch.equal(pooled["catavgmax"], torch.cat((pooled["avg"], pooled["max"]), dim=1))
    assert torch.equal(pooled[""], features)


def test_weights_of_another_pooling_width_name_the_global_pool_that_takes_them(tmp_path):
    """timm's catavgmax head takes twice the channels: its file in an average-pooled model dropped the head as one
    that "does not fit num_classes=1000", though the class count was the weights' own."""
    from visattn import load_weights

    torch.manual_seed(0)
    path = tmp_path / "catavgmax.pth"
    torch.save(timm.create_model("resnet18", global_pool="catavgmax", num_classes=7).state_dict(), path)
    with pytest.warns(VisattnWarning, match=r"^checkpoint classifier 'fc' takes 1024 features where this model's "
                                            r"pooling gives 512 \(build it with global_pool='catavgmax'"):
        create_model("resnet18", pretrained=str(path))
    with pytest.raises(WeightsError, match=r"classifier 'fc' takes 1024 features where this model's pooling gives 512"):
        load_weights(create_model("resnet18", num_classes=7), str(path), new_head=False)
    with pytest.warns(VisattnWarning, match="the new head is randomly initialised"):  # its bias fits: still dropped
        seven = create_model("resnet18", num_classes=7, pretrained=str(path))
    assert not torch.equal(seven.fc.bias, torch.load(path, weights_only=True)["fc.bias"])  # a head is kept whole or not
    torch.save(timm.create_model("resnet18", num_classes=7).state_dict(), path)
    with pytest.warns(VisattnWarning, match=r"takes 512 features where this model's pooling gives 1024 \(build it "
                                            r"with the global_pool they were trained with"):
        create_model("resnet18", global_pool="catavgmax", pretrained=str(path))
    assert create_model("resnet18", global_pool="catavgmax", num_classes=7).fc.in_features == 1024


@pytest.mark.parametrize("pool", POOLS)
def test_reset_classifier_switches_the_pool_as_timm_does(pool, tmp_path):
    ours, reference = timm_resnet18_pair(tmp_path, "avg", num_classes=1000)
    num_classes = 0 if pool == "" else 5
    ours.reset_classifier(num_classes, pool)
    reference.reset_classifier(num_classes, pool)
    ours.load_state_dict(reference.state_dict())  # timm's fresh fc; the pools have no parameters
    assert ours.global_pool.pool_type == reference.global_pool.pool_type == pool
    x = torch.randn(2, 3, 96, 96)
    with torch.no_grad():
        torch.testing.assert_close(ours(x), reference(x), atol=1e-5, rtol=0)
    ours.reset_classifier(num_classes)  # None keeps the pool, as in timm
    assert ours.global_pool.pool_type == pool and ours.num_classes == num_classes


def test_reset_classifier_pool_is_what_save_weights_records():
    model = create_model("resnet20_cifar", num_classes=3)
    model.reset_classifier(3, "max")
    assert model.visattn_kwargs["global_pool"] == "max"


UNPOOLED_WITH_CLASSES = r"^global_pool='' leaves the feature map unpooled and num_classes=\d+ needs pooled features"


@pytest.mark.parametrize("build, message", [
    (lambda: create_model("resnet20_cifar", global_pool="median"), r"^global_pool='median': use 'avg', 'max'"),
    (lambda: create_model("resnet20_cifar", global_pool=""), UNPOOLED_WITH_CLASSES),  # 10 classes by default
    (lambda: create_model("resnet20_cifar").reset_classifier(3, ""), UNPOOLED_WITH_CLASSES),
], ids=["unknown", "unpooled-with-classes", "reset-unpooled-with-classes"])
def test_bad_global_pool_is_a_config_error(build, message):
    with pytest.raises(ConfigError, match=message) as err:
        build()
    assert "\n" not in str(err.value)


def last_bns(model: ResNet) -> list[nn.BatchNorm2d]:
    blocks = [b for name in model.stage_names for b in getattr(model, name)]
    return [getattr(b, "bn3", b.bn2) for b in blocks]


@pytest.mark.parametrize("arch", ["resnet18", "resnet50", "cbam_resnet20_cifar", "se_resnet20_cifar"])
def test_zero_init_residual_starts_every_block_as_its_shortcut(arch):
    # timm calls it zero_init_last (and defaults it on); the off default keeps the README's runs reproducible.
    model = create_model(arch, zero_init_residual=True)
    assert all(bn.weight.abs().max() == 0 for bn in last_bns(model))
    assert all(bn.weight.min() == 1 for bn in (model.bn1, *(b.bn1 for b in model.layer1)))
    assert all(bn.weight.min() == 1 for bn in last_bns(create_model(arch)))
    for mode in (True, False):  # BN from batch statistics, then from running ones
        for block in (model.layer1[0], model.layer2[0]):  # identity and projection shortcuts
            block.train(mode)
            x = torch.randn(2, block.conv1.in_channels, 8, 8)
            shortcut = x if block.downsample is None else block.downsample(x)
            torch.testing.assert_close(block(x), torch.relu(shortcut))


def test_grad_checkpointing_keeps_gradients_and_saves_less():
    torch.manual_seed(0)
    model = create_model("se_resnet20_cifar", drop_rate=0.1, drop_path_rate=0.2).train()
    images = torch.randn(4, 3, 32, 32)
    # Each block keeps its input instead of its conv / BN / ReLU / SE intermediates.
    assert checkpointed_share(model, images) < 1 / 3


def test_grad_checkpointing_recomputes_only_in_training_with_gradients(monkeypatch):
    import visattn.models.resnet
    from torch.utils.checkpoint import checkpoint
    calls = []

    def counting_checkpoint(block, x, **kwargs):
        calls.append(kwargs["use_reentrant"])
        return checkpoint(block, x, **kwargs)

    monkeypatch.setattr(visattn.models.resnet, "checkpoint", counting_checkpoint)
    torch.manual_seed(0)
    model = randomize_bn_stats(create_model("resnet20_cifar"))
    images = torch.randn(2, 3, 32, 32)
    expected = model(images)
    model.set_grad_checkpointing()
    torch.testing.assert_close(model(images), expected, rtol=0, atol=0)  # eval, gradients on
    with torch.no_grad():
        model.train()(images)  # training without gradients: nothing to recompute
    assert calls == []
    model.set_grad_checkpointing()
    model(images).sum().backward()
    assert calls == [False] * 9  # non-reentrant, once per block
    model.set_grad_checkpointing(False)
    assert not model.grad_checkpointing


def test_grad_checkpointing_updates_bn_running_statistics_once_as_without_it():
    """The recomputation normalises with the batch's statistics but does not update the running ones
    again (timm's checkpoint_seq does: momentum 0.1 then moves them 0.19 of the way)."""
    torch.manual_seed(0)
    plain = create_model("se_resnet20_cifar").train()
    checkpointed = create_model("se_resnet20_cifar").train()
    checkpointed.load_state_dict(plain.state_dict())
    checkpointed.set_grad_checkpointing()
    images = torch.randn(4, 3, 32, 32)
    for _ in range(2):
        checkpointed(images).sum().backward()
        plain(images).sum().backward()
    torch.testing.assert_close(checkpointed.state_dict(), plain.state_dict(), rtol=0, atol=0)
    assert checkpointed.layer2[1].bn1.num_batches_tracked == 2
    assert all(p.grad is not None for p in checkpointed.parameters())
    assert all(m.momentum == 0.1 for m in checkpointed.modules() if isinstance(m, torch.nn.BatchNorm2d))


def test_grad_checkpointing_compiles_and_updates_bn_running_statistics_once():
    """Compiled with checkpointing on, every ResNet failed its first training step: dynamo takes only dispatch
    modes as checkpoint's context_fn (a timm-parity audit; timm's own ResNet compiled)."""
    torch.manual_seed(0)
    plain = create_model("cbam_resnet20_cifar", layers=(1, 1, 1)).train()
    checkpointed = create_model("cbam_resnet20_cifar", layers=(1, 1, 1)).train()
    checkpointed.load_state_dict(plain.state_dict())
    checkpointed.set_grad_checkpointing()
    images = torch.randn(4, 3, 32, 32)
    # dynamo and AOTAutograd trace it (where it failed) without inductor's code generation, tens of seconds on a CPU
    compiled, expected = torch.compile(checkpointed, backend="aot_eager")(images), plain(images)
    torch.testing.assert_close(compiled, expected, rtol=1e-4, atol=1e-4)
    compiled.sum().backward()
    expected.sum().backward()
    for (name, p), q in zip(checkpointed.named_parameters(), plain.parameters()):
        torch.testing.assert_close(p.grad, q.grad, rtol=1e-3, atol=1e-2, msg=name)  # inductor's sums: 1.5e-3 of 4.4
    torch.testing.assert_close(checkpointed.state_dict(), plain.state_dict(), rtol=1e-5, atol=1e-5)
    assert checkpointed.layer2[0].bn1.num_batches_tracked == 1


def test_classifier_task_switches_resnet_grad_checkpointing():
    from visattn.tasks.classification import ImageClassifier
    task = ImageClassifier(model_name="resnet20_cifar", num_classes=3, grad_checkpointing=True)
    assert task.model.grad_checkpointing
    assert not ImageClassifier(model_name="resnet20_cifar", num_classes=3).model.grad_checkpointing


@pytest.mark.parametrize("timm_name, arch", [("resnet18d", "resnet18d"), ("resnet50d", "resnet50d"),
                                             ("ecaresnet50d", "eca_resnet50d"), ("ecaresnet50t", "eca_resnet50t")])
def test_timm_resnet_d_weights_load_strictly_with_same_logits(timm_name, arch, tmp_path):
    """timm's deep-stem, average-pooled-shortcut ResNets (ResNet-D) had no layout here: their weights were refused."""
    torch.manual_seed(0)
    reference = randomize_bn_stats(timm.create_model(timm_name, num_classes=5))
    path = tmp_path / f"{timm_name}.pth"
    torch.save(reference.state_dict(), path)
    model = create_model(arch, num_classes=5, pretrained=str(path)).eval()  # strict: no missing / unexpected keys
    assert n_params(model) == n_params(reference)
    x = torch.randn(2, 3, 45, 33)  # odd sides: the shortcut's average pool rounds up, as timm's
    with torch.no_grad():
        torch.testing.assert_close(model(x), reference(x), atol=1e-5, rtol=0)


def test_any_attention_resnet_takes_the_deep_stem_and_a_plain_resnet_d_s_weights(tmp_path):
    torch.manual_seed(0)
    reference = randomize_bn_stats(timm.create_model("resnet18d", num_classes=5))
    path = tmp_path / "resnet18d.pth"
    torch.save(reference.state_dict(), path)
    with pytest.warns(VisattnWarning, match=r"loaded non-strictly; kept init for missing layer2\.0\.attn\.attn_logits"):
        model = create_model("gc_resnet18", num_classes=5, stem_type="deep", stem_width=32, avg_down=True,
                             pretrained=str(path), strict="attention")
    assert_same_logits(model, reference)  # global context blocks start as the identity


@pytest.mark.parametrize("kwargs, message", [
    (dict(stem_type="tiered"), r"^stem_type='tiered': give '' \(the 7x7 conv\), 'deep' or 'deep_tiered'$"),
    (dict(stem_type="deep", small_input=True), r"^stem_type='deep' with small_input=True: the CIFAR stem"),
    (dict(stem_type="deep", stem_width=0), r"^stem_width=0: give a whole number >= 1$"),
    (dict(stem_type="deep_tiered", stem_width=3), r"^stem_width=3: a tiered stem's first conv takes 3/4 of it"),
])
def test_bad_stem_arguments_are_one_line(kwargs, message):
    with pytest.raises(ConfigError, match=message):
        create_model("resnet18", **kwargs)


@pytest.mark.parametrize("timm_name, arch, output_stride", [
    ("resnet18", "resnet18", 8), ("seresnet50", "se_resnet50", 16), ("resnet50d", "resnet50d", 8),
    ("resnet50d", "resnet50d", 16)])
def test_output_stride_dilates_as_timms_resnets_do(timm_name, arch, output_stride, tmp_path):
    """timm's ``output_stride`` (DeepLab-style dilated stages) was refused as an unknown argument."""
    torch.manual_seed(0)
    reference = randomize_bn_stats(timm.create_model(timm_name, num_classes=5, output_stride=output_stride))
    path = tmp_path / f"{timm_name}.pth"
    torch.save(reference.state_dict(), path)
    model = create_model(arch, num_classes=5, output_stride=output_stride, pretrained=str(path)).eval()
    describe = lambda info: [(level["num_chs"], level["reduction"]) for level in info]  # noqa: E731
    assert describe(model.feature_info) == describe(reference.feature_info)
    x = torch.randn(2, 3, 45, 33)
    with torch.no_grad():
        (ours, our_maps), (theirs, their_maps) = model.forward_intermediates(x), reference.forward_intermediates(x)
        torch.testing.assert_close(model.forward_head(ours), reference.forward_head(theirs), atol=1e-5, rtol=0)
        for mine, timms in zip(our_maps, their_maps, strict=True):
            torch.testing.assert_close(mine, timms, atol=1e-5, rtol=0)
    assert our_maps[-1].shape[-2:] == (-(-45 // output_stride), -(-33 // output_stride))


@pytest.mark.parametrize("output_stride", [12, 0, "8", True])
def test_an_output_stride_that_is_not_a_power_of_two_is_one_line(output_stride):
    with pytest.raises(ConfigError, match=rf"^output_stride={output_stride!r}: give a power of two"):
        create_model("resnet18", output_stride=output_stride)


def test_an_output_stride_below_the_stems_is_one_line():
    """2 gave the stem's stride, 4, without a word."""
    with pytest.raises(ConfigError, match=r"^output_stride=2: the stem alone strides 4; give 4 or more"):
        create_model("resnet18", output_stride=2)
    assert [level["reduction"] for level in create_model("resnet18", output_stride=4).feature_info] == [2, 4, 4, 4, 4]
    assert create_model("resnet20_cifar", output_stride=2).feature_info[-1]["reduction"] == 2


@pytest.mark.parametrize("source, source_name, arch", [
    ("timm", "seresnext50_32x4d", "se_resnext50_32x4d"), ("timm", "resnext50_32x4d", "resnext50_32x4d"),
    ("torchvision", "resnext50_32x4d", "resnext50_32x4d"), ("torchvision", "wide_resnet50_2", "wide_resnet50_2"),
])
def test_resnext_and_wide_resnet_weights_load_strictly_with_same_logits(source, source_name, arch, tmp_path):
    """Grouped (ResNeXt) and widened Bottlenecks had no layout here: SE-ResNeXt, the SE paper's own model, and
    torchvision's ResNeXt and Wide ResNet weights were refused."""
    torch.manual_seed(0)
    build = timm.create_model if source == "timm" else getattr(torchvision.models, source_name)
    reference = randomize_bn_stats(build(source_name) if source == "timm" else build())
    path = tmp_path / f"{source_name}.pth"
    torch.save(reference.state_dict(), path)
    model = create_model(arch, pretrained=str(path))  # strict: no missing / unexpected keys
    assert n_params(model) == n_params(reference)
    assert_same_logits(model, reference)


def test_a_resnext_backbone_gives_its_stages_channels_to_the_pyramid():
    from visattn.models.detection import resnet_stage_channels

    with torch.device("meta"):
        body = create_model("resnext50_32x4d", num_classes=0)
    assert resnet_stage_channels(body) == [256, 512, 1024, 2048]  # not 4x the grouped conv's width (512, ...)


@pytest.mark.parametrize("kwargs", [dict(cardinality=32), dict(base_width=128)])
def test_a_grouped_or_widened_basic_block_resnet_is_one_line(kwargs):
    with pytest.raises(ConfigError, match=r"^cardinality=\d+, base_width=\d+: a BasicBlock ResNet \(ResNet-18/34, the "
                                          r"CIFAR layout\) has no grouped or widened 3x3 conv"):
        create_model("resnet18", **kwargs)


@pytest.mark.parametrize("arch, kwargs", [("resnet18", dict(stem_type="deep")),
                                          ("resnet50", dict(stem_type="deep_tiered", stem_width=48, avg_down=True))])
def test_a_deep_stem_of_any_width_is_timms(arch, kwargs, tmp_path):
    """The deep stem ended at ``widths[0]`` channels whatever its ``stem_width``, where timm's ends at twice it (and
    defaults to 64 wide): timm's weights of such stems did not load."""
    torch.manual_seed(0)
    reference = randomize_bn_stats(timm.create_model(arch, num_classes=5, **kwargs))
    path = tmp_path / f"{arch}.pth"
    torch.save(reference.state_dict(), path)
    model = create_model(arch, num_classes=5, pretrained=str(path), **kwargs)
    assert n_params(model) == n_params(reference)
    assert [level["num_chs"] for level in model.feature_info] == [level["num_chs"] for level in reference.feature_info]
    assert_same_logits(model, reference)


@pytest.mark.parametrize("timm_name, arch, kwargs, hint", [
    ("resnet18", "resnet18d", {}, r"the weights have the 7x7 stem \(conv1\): build a ResNet without stem_type "
                                  r"\(resnet50, not resnet50d\), avg_down=False$"),
    ("resnet18d", "resnet18", {}, r"the weights have a deep stem \(conv1\.0-conv1\.6\): build the ResNet-D "
                                  r"\(resnet50d\), or pass stem_type='deep', stem_width=32, avg_down=True$"),
    ("ecaresnet50t", "resnet50", dict(attn_layer="eca"),
     r"deep stem \(conv1\.0-conv1\.6\): pass stem_type='deep_tiered', stem_width=32, avg_down=True$"),
    ("resnet50d", "resnet50", dict(stem_type="deep", avg_down=True),  # timm's stem_width, 64 unless given
     r"the weights' deep stem is another \(32, 32 wide\): pass stem_type='deep', stem_width=32, avg_down=True$"),
])
def test_weights_of_the_other_stem_name_the_settings_that_load_them(timm_name, arch, kwargs, hint, tmp_path):
    """Plain weights in a ResNet-D (or the reverse) listed some 700 characters of keys and no way to load them."""
    path = tmp_path / f"{timm_name}.pth"
    with torch.device("meta"):
        torch.save({k: torch.empty(v.shape) for k, v in timm.create_model(timm_name).state_dict().items()}, path)
    with pytest.raises(WeightsError, match=hint):
        create_model(arch, pretrained=str(path), **kwargs)


def _block_drop_path_rates(model: nn.Module) -> list[float]:
    blocks = [block for stage in (model.layer1, model.layer2, model.layer3, model.layer4) for block in stage]
    return [getattr(block.drop_path, "drop_prob", 0.0) for block in blocks]


@pytest.mark.parametrize("arch", ["resnet18", "resnet50"])
def test_a_resnets_stochastic_depth_rises_linearly_over_all_its_blocks_as_timms(arch):
    """timm's ResNets drop block i of n with drop_path_rate * i / (n - 1), counted over every stage."""
    with torch.device("meta"):
        ours = create_model(arch, drop_path_rate=0.3)
        theirs = timm.create_model(arch, drop_path_rate=0.3)
    blocks = len(_block_drop_path_rates(theirs))
    assert _block_drop_path_rates(ours) == pytest.approx(_block_drop_path_rates(theirs))
    assert _block_drop_path_rates(ours) == pytest.approx([0.3 * i / (blocks - 1) for i in range(blocks)])


@pytest.mark.parametrize("training", [True, False])
def test_a_resnet_with_stochastic_depth_gives_timms_outputs_under_the_same_seed(training, tmp_path):
    """Training drops whole residual branches and rescales the kept ones by 1 / keep_prob, drawn as timm draws
    them; eval drops nothing, the same at every call. Unscaled, or dropping in eval, stochastic depth had passed."""
    torch.manual_seed(0)
    reference = randomize_bn_stats(timm.create_model("resnet18", num_classes=5, drop_path_rate=0.5))
    path = tmp_path / "resnet18.pth"
    torch.save(reference.state_dict(), path)
    model = create_model("resnet18", num_classes=5, drop_path_rate=0.5, pretrained=str(path))
    model.train(training)
    reference.train(training)
    x = torch.randn(8, 3, 32, 32)
    outputs = []
    with torch.no_grad():
        for net, seed in ((model, 3), (reference, 3), (model, 4)):  # in eval, another seed draws nothing else
            torch.manual_seed(seed)
            outputs.append(net(x))
    torch.testing.assert_close(outputs[0], outputs[1], atol=1e-5, rtol=0)
    if not training:
        torch.testing.assert_close(outputs[2], outputs[0], rtol=0, atol=0)
