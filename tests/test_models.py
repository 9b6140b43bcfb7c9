"""Registry-wide model checks, parametrized over every registered architecture (as timm's tests are)."""
import re

import pytest
import torch

from visattn import create_model, list_models
from visattn.cli import _listed_parameter_counts
from visattn.explain.randomization import forward_stages, randomized_models
from visattn.registry import model_family

# Small inputs keep the whole sweep fast; families whose input size is fixed at build time get it here.
BUILD_KWARGS = {"vit": {"img_size": 32, "depth": 2}}  # two blocks: ViT-L and SigLIP-so400m would take 20 s a test
INPUT = (2, 3, 32, 32)
# Captioners take (images, captions) and have no classifier head; tests/test_show_attend_tell.py sweeps them.
# Detectors take lists of images and targets; test_detector_losses_and_detections sweeps them below.
CLASSIFIERS = [name for name in list_models() if model_family(name) not in ("show_attend_tell", "detection")]
DETECTORS = list_models("fcos_*") + list_models("detr_*")


def _build(name: str, **kwargs):
    torch.manual_seed(0)
    sizes = BUILD_KWARGS.get(model_family(name), {})
    if "_patch14" in name:  # 14 px patches do not tile the 32 px input; the sweep checks the other layers
        sizes = {**sizes, "patch_size": 16}
    return create_model(name, num_classes=7, **sizes, **kwargs)


@pytest.mark.parametrize("name", CLASSIFIERS)
def test_forward_backward(name):
    model = _build(name).train()
    out = model(torch.randn(INPUT))
    assert out.shape == (INPUT[0], 7)
    assert torch.isfinite(out).all()
    out.square().mean().backward()
    no_grad = [n for n, p in model.named_parameters() if p.requires_grad and p.grad is None]
    assert not no_grad, f"parameters without gradient: {no_grad[:5]}"
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)


@pytest.mark.parametrize("name", [name for name in CLASSIFIERS if model_family(name) == "resnet"])
def test_a_resnet_built_on_the_meta_device_draws_no_values_and_has_the_cpu_builds_parameters(name, monkeypatch):
    """Drawing values meta tensors cannot hold (torch's kaiming_normal_ does not skip them) had taken half of
    `visattn models`' time, which counts parameters on the meta device; on the CPU the ResNet init still runs."""
    drawn, kaiming_normal = [], torch.nn.init.kaiming_normal_

    def recording_kaiming_normal(tensor, *args, **kwargs):
        drawn.append(tensor.device.type)
        return kaiming_normal(tensor, *args, **kwargs)

    monkeypatch.setattr(torch.nn.init, "kaiming_normal_", recording_kaiming_normal)
    with torch.device("meta"):
        meta = _build(name)
    assert drawn == []
    cpu = _build(name)
    assert set(drawn) == {"cpu"}
    assert {k: v.shape for k, v in meta.state_dict().items()} == {k: v.shape for k, v in cpu.state_dict().items()}


# ResNets over 30M parameters are built of the modules of smaller ones of their attention (4 s a test, not 0.5)
SMALLER_CLASSIFIERS = [name for name in CLASSIFIERS
                       if model_family(name) != "resnet" or _listed_parameter_counts()[name] <= 30_000_000]


@pytest.mark.parametrize("name", SMALLER_CLASSIFIERS)
def test_the_randomization_cascade_redraws_each_parameter_once_at_its_stage(name):
    """Every parameter belongs to one stage of the randomization test, and the cascade re-draws exactly the stages it
    has reached: a parameter left out would keep its trained values in the "randomized" model."""
    model = _build(name).eval()
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.fill_(0.125)  # as trained: no initialiser draws it
    stages = forward_stages(model, torch.randn(INPUT))
    names = {id(parameter): key for key, parameter in model.named_parameters()}
    by_stage = [{names[id(p)] for p in [*module.parameters(), *own]} for _, module, own in stages]
    assert sorted(key for keys in by_stage for key in keys) == sorted(names.values())  # each once
    for depth, (_, randomized) in enumerate(randomized_models(model, stages), start=1):
        ends = {key: parameter.view(-1)[[0, -1]] for key, parameter in randomized.named_parameters()}  # enough to tell
        expected = set().union(*by_stage[-depth:])
        assert {key for key, values in ends.items() if (values != 0.125).all()} == expected
        assert {key for key, values in ends.items() if (values == 0.125).all()} == set(names.values()) - expected
    assert all((parameter == 0.125).all() for parameter in model.parameters())


@pytest.mark.parametrize("name", CLASSIFIERS)
def test_classifier_interface(name):
    model = _build(name).eval()
    x = torch.randn(INPUT)
    with torch.no_grad():
        logits = model(x)
        features = model.forward_features(x)
        pooled = model.forward_head(features, pre_logits=True)
        assert torch.allclose(model.forward_head(features), logits, atol=1e-5)
        assert model(x[:0]).shape == (0, 7)  # a batch of 0 (a non-local block's reshape had failed on it)
    assert pooled.shape == (INPUT[0], model.num_features)
    assert getattr(model, model.classifier).out_features == model.num_classes == 7
    model.reset_classifier(3)
    with torch.no_grad():
        assert model(x).shape == (INPUT[0], 3)


def test_every_detector_is_in_the_detection_family():
    assert DETECTORS and [n for n in list_models() if model_family(n) == "detection"] == sorted(DETECTORS)


@pytest.mark.parametrize("name", DETECTORS)
def test_detector_losses_and_detections(name):
    torch.manual_seed(0)
    model = create_model(name, num_classes=3, min_size=64, max_size=64).train()
    images = [torch.rand(3, 64, 64), torch.rand(3, 48, 64)]
    targets = [
        {"boxes": torch.tensor([[4.0, 4.0, 30.0, 36.0], [36.0, 20.0, 60.0, 60.0]]), "labels": torch.tensor([0, 2])},
        {"boxes": torch.tensor([[8.0, 10.0, 40.0, 44.0]]), "labels": torch.tensor([1])},
    ]
    losses = model(images, targets)
    assert losses and all(v.ndim == 0 and torch.isfinite(v) for v in losses.values())
    sum(losses.values()).backward()
    no_grad = [n for n, p in model.named_parameters() if p.requires_grad and p.grad is None]
    assert not no_grad, f"parameters without gradient: {no_grad[:5]}"
    with torch.no_grad():
        detections = model.eval()(images)
    assert len(detections) == len(images)
    for det, image in zip(detections, images):
        height, width = image.shape[-2:]
        assert det["boxes"].shape == (len(det["scores"]), 4) and det["labels"].dtype == torch.int64
        assert ((det["labels"] >= 0) & (det["labels"] < 3)).all()
        boxes = det["boxes"]
        assert (boxes >= 0).all() and (boxes[:, 2] <= width).all() and (boxes[:, 3] <= height).all()


# Non-local blocks compute their affinity in float32 inside an autocast-off context, which torch.fx
# cannot record (it would trace an unguarded matmul), so they are left out.
TRACEABLE = list_models(["*resnet20_cifar", "vit_tiny_patch4_28"], exclude_filters=["nl_*", "fcos_*", "detr_*"])


@pytest.mark.parametrize("name", TRACEABLE)
def test_torch_fx_traces_the_classifier_with_the_same_logits(name):
    # What torchvision's create_feature_extractor and FX quantization build on. A ViT's
    # return_attention switch is given as a constant, as fx needs for Python control flow.
    model = _build(name).eval()
    concrete = {"return_attention": False} if model_family(name) == "vit" else None
    traced = torch.fx.symbolic_trace(model, concrete_args=concrete)
    x = torch.randn(INPUT)
    torch.testing.assert_close(traced(x), model(x))


EXPORTABLE = list_models(["*resnet20_cifar", "vit_tiny_patch4_28"], exclude_filters=["fcos_*", "detr_*"])


@pytest.mark.parametrize("name", EXPORTABLE)
def test_torch_export_gives_the_same_logits_at_any_batch_size(name):
    # torch.export is PyTorch's successor to TorchScript (which the input checks' Python defeats):
    # the graph AOTInductor and ExecuTorch take. The batch is exported as a dynamic dimension.
    model = _build(name).eval()
    batch = torch.export.Dim("batch", min=1, max=1024)
    exported = torch.export.export(model, (torch.randn(2, *INPUT[1:]),), dynamic_shapes=({0: batch},))
    x = torch.randn(3, *INPUT[1:])
    torch.testing.assert_close(exported.module()(x), model(x))


@pytest.mark.parametrize("name, stages", [("cbam_resnet20_cifar", ("layer2", "layer3")),
                                         ("bam_resnet20_cifar", ("bam2", "layer3"))])  # BAM checks its batch size
def test_torchvision_feature_extractor_returns_resnet_stages(name, stages):
    from torchvision.models.feature_extraction import create_feature_extractor
    model = _build(name).eval()
    x = torch.randn(INPUT)
    features = create_feature_extractor(model, dict(zip(stages, ("c3", "c4"))))(x)
    _, c3, c4 = model.forward_stages(x)
    torch.testing.assert_close(features["c3"], c3)
    torch.testing.assert_close(features["c4"], c4)


@pytest.mark.parametrize("name, timm_name", [("vit_tiny_patch16_224", "vit_tiny_patch16_224"), ("resnet50", "resnet50"),
                                             ("se_resnet50", "seresnet50"),
                                             ("vit_small_patch14_reg4_dinov2", "vit_small_patch14_reg4_dinov2"),
                                             ("vit_base_patch16_clip_224", "vit_base_patch16_clip_224")])
def test_layer_wise_lr_decay_groups_parameters_as_timm_does(name, timm_name):
    """timm's create_optimizer_v2(layer_decay=) asks the model's group_matcher; without one it grouped by another
    rule, and 96 of a ViT-Ti's 152 parameters (114 of a ResNet-50's 161) got other learning rates than on timm."""
    import timm
    from timm.optim import create_optimizer_v2

    def scales(model: torch.nn.Module) -> dict[str, tuple[float, float]]:
        names = {id(p): n for n, p in model.named_parameters()}
        groups = create_optimizer_v2(model, "adamw", lr=1.0, weight_decay=0.05, layer_decay=0.75).param_groups
        return {names[id(p)]: (group["lr_scale"], group["weight_decay"]) for group in groups for p in group["params"]}

    ours, theirs = scales(create_model(name)), scales(timm.create_model(timm_name))
    shared = ours.keys() & theirs.keys()  # SE's gates are named attn here, se in timm
    assert len(shared) >= 152 and {k: ours[k] for k in shared} == {k: theirs[k] for k in shared}


@pytest.mark.parametrize("name", [n for n in CLASSIFIERS if n in __import__("timm").list_models()])
def test_a_name_timm_has_builds_timms_defaults(name):
    """Built by name alone, as timm's: its head (none for DINOv2 and SigLIP, CLIP's 512-wide projection for the
    QuickGELU towers, which had got 1000 classes, so that timm's state dict did not load), a ViT's input size and
    the parameters, key for key."""
    import timm

    with torch.device("meta"):
        ours, theirs = create_model(name), timm.create_model(name)
    assert ours.num_classes == theirs.num_classes
    assert ours.pretrained_cfg["fixed_input_size"] == theirs.pretrained_cfg["fixed_input_size"]
    if ours.pretrained_cfg["fixed_input_size"]:  # a CNN's is its weights' choice (timm's ResNet-101-D trains at 256)
        assert ours.pretrained_cfg["input_size"][1:] == tuple(theirs.pretrained_cfg["input_size"][1:])
    shapes = [(key, value.shape) for key, value in ours.state_dict().items()]
    assert shapes == [(key, value.shape) for key, value in theirs.state_dict().items()]


def _timm_names() -> dict[str, str]:
    """Each classifier whose timm weights load, with timm's name for it: its own, or the one its docstring gives."""
    import timm

    from visattn.registry import _model_entrypoints

    named = {name: re.search(r"timm's ``(\w+)`` weights load", _model_entrypoints[name].__doc__ or "")
             for name in CLASSIFIERS}
    return {name: found.group(1) if found else name for name, found in named.items()
            if found or name in timm.list_models()}


@pytest.mark.parametrize("name, timm_name", sorted(_timm_names().items()))
def test_a_model_is_evaluated_as_every_weights_timm_publishes_for_it(name, timm_name):
    """Built by name (so also with weights that record nothing, such as a CLIP file from the hub), a model's
    ``pretrained_cfg`` has each of mean, std, filter and crop that all of timm's weights of that name share
    (OpenAI CLIP's statistics, 0.5 for SigLIP's and Google's ViTs, bicubic for every ViT and ResNet-D), else
    visattn's default: CLIP's towers had ImageNet's statistics, every ViT bilinear, which timm's data helpers and
    visattn's inference then used."""
    import timm

    cfgs = [timm.models.get_pretrained_cfg(tag) for tag in timm.list_pretrained(f"{timm_name}.*")]
    defaults = {"mean": (0.485, 0.456, 0.406), "std": (0.229, 0.224, 0.225), "interpolation": "bilinear",
                "crop_pct": 0.875}
    expected = {}
    for field, default in defaults.items():
        published = {getattr(cfg, field) for cfg in cfgs}
        expected[field] = published.pop() if len(published) == 1 else default
    with torch.device("meta"):
        cfg = create_model(name).pretrained_cfg
    def rounded(value):  # timm's statistics and visattn's agree to float rounding
        return tuple(round(v, 6) for v in value) if isinstance(value, (tuple, list)) else value

    assert {field: rounded(cfg[field]) for field in defaults} == {k: rounded(v) for k, v in expected.items()}


def test_changing_one_models_published_settings_changes_no_other():
    """Every model of a name shared one dict of its published settings (and its lists with the module's constant):
    a crop or mean set on one model's became the next one's."""
    from visattn.data.preprocessing import default_preprocessing

    first = create_model("vit_base_patch32_clip_224", img_size=32, depth=1)
    first.published_preprocessing["mean"][0] = 9.0
    default_preprocessing(first)["std"][0] = 9.0
    first.pretrained_cfg["crop_pct"] = 0.1
    second = create_model("vit_base_patch32_clip_224", img_size=32, depth=1)
    assert second.published_preprocessing["mean"][0] == pytest.approx(0.48145466)
    assert default_preprocessing(second)["std"][0] == pytest.approx(0.26862954)
    assert second.pretrained_cfg["crop_pct"] == 0.875


def test_a_features_only_model_is_preprocessed_as_its_classifier():
    """The feature wrapper kept timm's pretrained_cfg (CLIP's statistics) but visattn's transforms read ImageNet's."""
    from timm.data import resolve_data_config

    from visattn.data.preprocessing import default_preprocessing, timm_data_config

    wrapped = create_model("vit_base_patch32_clip_224", features_only=True, img_size=32, depth=2)
    by_timm, ours = resolve_data_config(model=wrapped), timm_data_config(default_preprocessing(wrapped))
    del by_timm["input_size"], ours["input_size"]  # the wrapper has no input size of its own
    assert by_timm == ours
    assert default_preprocessing(wrapped)["mean"][0] == pytest.approx(0.48145466)


def _timm_pair(tmp_path, name, timm_name, **kwargs):
    """A timm model with random weights (BN statistics too) and the visattn model loaded from its file."""
    import timm
    from safetensors.torch import save_file

    torch.manual_seed(0)
    reference = timm.create_model(timm_name, **kwargs).eval()
    for module in reference.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            module.running_mean.normal_()
            module.running_var.uniform_(0.5, 2.0)
            module.weight.data.normal_(1, 0.1)  # timm zero-initialises each block's last BN, silencing the branch
            module.bias.data.normal_(0, 0.1)
    path = tmp_path / f"{timm_name}.safetensors"
    save_file({k: v.contiguous() for k, v in reference.state_dict().items()}, path)
    return reference, create_model(name, pretrained=str(path), **kwargs).eval(), path


def test_timms_test_time_pooling_and_hub_export_take_a_visattn_classifier(tmp_path):
    """From a timm user's audit: ``apply_test_time_pool`` (timm's validate.py --test-pool) failed on a missing
    ``pool_size`` and ``save_for_hf`` (push_to_hf_hub) on a missing ``architecture``."""
    from timm.layers import apply_test_time_pool
    from timm.models import save_for_hf

    reference, model, _ = _timm_pair(tmp_path, "resnet18", "resnet18", num_classes=5)
    larger = {"input_size": (3, 256, 256)}  # above the 224 px the configs give: test-time pooling applies
    pooled_reference, used = apply_test_time_pool(reference, larger)
    pooled, used_too = apply_test_time_pool(model, larger)
    x = torch.randn(2, 3, 256, 256)
    with torch.no_grad():
        assert used and used_too
        torch.testing.assert_close(pooled(x), pooled_reference(x), rtol=0, atol=0)
    # the last map's size, rounded up as the stride-2 convolutions round (225 x 193 px: 8 x 7)
    from visattn.pretrained import timm_pretrained_cfg

    odd = timm_pretrained_cfg(model, {"input_size": [3, 225, 193]})
    with torch.no_grad():
        assert odd["pool_size"] == tuple(model.forward_features(torch.zeros(1, 3, 225, 193)).shape[-2:]) == (8, 7)
    # a ViT has none, also one taking any size: timm's pooling would wrap its tokens and fail
    assert "pool_size" not in create_model("vit_tiny_patch4_28", depth=1, dynamic_img_size=True).pretrained_cfg
    saved = create_model("resnet18", num_classes=5)
    save_for_hf(saved, tmp_path / "hub")
    reloaded = create_model("resnet18", pretrained=f"timm:local-dir:{tmp_path / 'hub'}")
    assert reloaded.num_classes == 5 and reloaded.pretrained_cfg["architecture"] == "resnet18"
    assert all(torch.equal(a, b) for a, b in zip(reloaded.state_dict().values(), saved.state_dict().values()))


TIMM_FEATURE_PAIRS = [("resnet18", "resnet18", {}, 64), ("se_resnet18", "seresnet18", {}, 64),
                      ("eca_resnet50t", "ecaresnet50t", {}, 64),
                      ("vit_tiny_patch16_224", "vit_tiny_patch16_224", dict(img_size=32, depth=3), 32),
                      ("vit_tiny_patch16_224", "vit_tiny_patch16_224",
                       dict(img_size=32, depth=3, dynamic_img_size=True), 48)]


@pytest.mark.parametrize("name, timm_name, kwargs, size", TIMM_FEATURE_PAIRS)
def test_forward_intermediates_and_features_only_equal_timms(tmp_path, name, timm_name, kwargs, size):
    """timm's feature API (forward_intermediates, feature_info, features_only=True) was missing: a timm user's
    backbone code failed on visattn's models."""
    import timm

    reference, model, path = _timm_pair(tmp_path, name, timm_name, **kwargs)
    describe = lambda info: [(level["num_chs"], level["reduction"]) for level in info]  # noqa: E731
    assert describe(model.feature_info) == describe(reference.feature_info)
    x = torch.randn(2, 3, size, size)
    options = [{}, dict(indices=2), dict(indices=[0, -1], stop_early=True)]
    if name.startswith("vit"):
        options += [dict(indices=[1], norm=True, output_fmt="NLC"), dict(indices=1, return_prefix_tokens=True)]
    with torch.no_grad():
        for option in options:
            ours, theirs = model.forward_intermediates(x, **option), reference.forward_intermediates(x, **option)
            torch.testing.assert_close(ours[0], theirs[0], rtol=0, atol=0)
            assert len(ours[1]) == len(theirs[1])
            for mine, timms in zip(ours[1], theirs[1]):
                torch.testing.assert_close(mine, timms, rtol=0, atol=0)
        backbone = create_model(name, pretrained=str(path), features_only=True, out_indices=(1, 2), **kwargs).eval()
        timm_backbone = timm.create_model(timm_name, features_only=True, out_indices=(1, 2), pretrained=True,
                                          pretrained_cfg_overlay=dict(file=str(path)), **kwargs).eval()
        for mine, timms in zip(backbone(x), timm_backbone(x), strict=True):
            torch.testing.assert_close(mine, timms, rtol=0, atol=0)
    assert backbone.feature_info.channels() == timm_backbone.feature_info.channels()
    assert backbone.feature_info.reduction() == timm_backbone.feature_info.reduction()
    count = lambda m: sum(p.numel() for p in m.parameters())  # noqa: E731
    assert count(backbone) == count(timm_backbone) < count(model)  # the layers past level 2 and the head dropped
    # timm's state dict through load_state_dict (a ResNet's FeatureListNet has no `model.` prefix: torch's key dump)
    loaded = create_model(name, features_only=True, out_indices=(1, 2), **kwargs).eval()
    loaded.load_state_dict(timm_backbone.state_dict())
    with torch.no_grad():
        for mine, timms in zip(loaded(x), timm_backbone(x), strict=True):
            torch.testing.assert_close(mine, timms, rtol=0, atol=0)


@pytest.mark.parametrize("name", CLASSIFIERS)
def test_feature_maps_are_what_feature_info_says_and_survive_pruning(name):
    from visattn.models.features import features_only

    model = _build(name).eval()
    x = torch.randn(INPUT)
    with torch.no_grad():
        final, maps = model.forward_intermediates(x)
        torch.testing.assert_close(final, model.forward_features(x))
        assert len(maps) == len(model.feature_info)
        for level, feature in zip(model.feature_info, maps):
            side = -(-INPUT[-1] // level["reduction"])
            assert feature.shape == (INPUT[0], level["num_chs"], side, side), level["module"]
        kept = features_only(model, out_indices=(0, 1))
        for mine, before in zip(kept(x), maps[:2], strict=True):
            torch.testing.assert_close(mine, before)


@pytest.mark.parametrize("name", ["resnet20_cifar", "vit_tiny_patch4_28"])
def test_a_features_only_model_checkpoints_its_blocks_when_told(name, monkeypatch):
    """timm's features-only ResNet (FeatureListNet) takes set_grad_checkpointing; visattn's had no such method."""
    import visattn.models.resnet as resnet
    import visattn.models.vit as vit

    calls = []

    def counted(function, *args, **kwargs):
        calls.append(function)
        return torch.utils.checkpoint.checkpoint(function, *args, **kwargs)

    for module in (resnet, vit):
        monkeypatch.setattr(module, "checkpoint", counted)
    torch.manual_seed(0)
    model = create_model(name, features_only=True, **({"depth": 2} if name.startswith("vit") else {}))
    x = torch.randn(2, 3, 28, 28)
    plain = torch.autograd.grad(sum(m.sum() for m in model(x)), list(model.parameters()))
    model.set_grad_checkpointing()
    checkpointed = torch.autograd.grad(sum(m.sum() for m in model(x)), list(model.parameters()))
    assert calls and model.model.grad_checkpointing
    torch.testing.assert_close(checkpointed, plain, rtol=0, atol=0)
    model.set_grad_checkpointing(False)
    assert not model.model.grad_checkpointing


@pytest.mark.parametrize("call, message", [
    (lambda: create_model("resnet20_cifar").forward_intermediates(torch.randn(1, 3, 32, 32), indices=[4]),
     r"^indices=\[4\]: feature index 4 is out of range \(0 to 3\); give an int n \(the last n levels\) or a list "
     r"of level indices from 0 to 3$"),
    (lambda: create_model("resnet20_cifar").forward_intermediates(torch.randn(1, 3, 32, 32), indices=[]),
     r"^indices=\[\]: take at least one of the 4 feature levels$"),
    (lambda: create_model("resnet20_cifar").forward_intermediates(torch.randn(1, 3, 32, 32), output_fmt="NLC"),
     r"^output_fmt='NLC': a ResNet's feature maps are NCHW; drop output_fmt$"),
    (lambda: create_model("vit_tiny_patch4_28", depth=2, features_only=True, out_indices=3),
     r"^out_indices=3: last-n \(3\) is out of range \(1 to 2\)"),
    (lambda: create_model("resnet20_cifar").forward_intermediates(torch.randn(1, 3, 32, 32), indices=2.0),
     r"^indices=2\.0: give an int n \(the last n levels\) or a list of level indices from 0 to 3$"),  # a TypeError
    (lambda: create_model("resnet20_cifar").forward_intermediates(torch.randn(1, 3, 32, 32), indices=[1.5]),
     r"^indices=\[1\.5\]: give an int n"),  # no maps at all, without a word
    (lambda: create_model("resnet20_cifar", features_only=True, out_indices=True), r"^out_indices=True: give an int n"),
    (lambda: create_model("resnet20_cifar", features_only=True, out_indices=(2, 0)),
     r"^out_indices=\(2, 0\): give each level once, shallowest first$"),  # feature_info described other maps
    (lambda: create_model("resnet20_cifar", features_only=True, out_indices=(1, 1)),
     r"^out_indices=\(1, 1\): give each level once, shallowest first$"),
    (lambda: create_model("resnet20_cifar", features_only="no"),
     r"^features_only='no': give True \(feature maps\) or False \(the classifier\)$"),
    (lambda: create_model("resnet20_cifar", out_indices=(1, 2)),
     r"^out_indices=\(1, 2\): selects the maps of features_only=True; add it, or drop out_indices$"),
    (lambda: create_model("fcos_resnet20_cifar", features_only=True),
     r"^features_only=True: fcos_resnet20_cifar is a detection model; build its backbone, a classifier, with "
     r"features_only=True$"),
])
def test_feature_api_mistakes_are_one_line(call, message):
    from visattn.errors import ConfigError

    with pytest.raises(ConfigError, match=message):
        call()


def test_whole_numbers_of_numpy_and_torch_select_levels_as_ints():
    import numpy as np

    model = create_model("resnet20_cifar", num_classes=2).eval()
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        expected = model.forward_intermediates(x, indices=[1, 3], intermediates_only=True)
        for indices in ([np.int64(1), torch.tensor(3)], np.array([1, 3]), torch.tensor([1, -1])):
            for mine, theirs in zip(model.forward_intermediates(x, indices=indices, intermediates_only=True), expected,
                                    strict=True):
                torch.testing.assert_close(mine, theirs)


def test_a_pruned_vit_counts_its_levels_from_the_blocks_it_kept_as_timm_does(tmp_path):
    """Levels were counted from feature_info, which pruning keeps whole: indices=1 on a depth-4 ViT pruned to
    two blocks returned no map, and a second prune named a block that was gone."""
    reference, model, _ = _timm_pair(tmp_path, "vit_tiny_patch16_224", "vit_tiny_patch16_224", img_size=32, depth=4)
    assert model.prune_intermediate_layers([1]) == reference.prune_intermediate_layers([1]) == [1]
    assert model.prune_intermediate_layers(1) == reference.prune_intermediate_layers(1) == [1]
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        for indices in (1, [-1], None):
            ours = model.forward_intermediates(x, indices=indices, intermediates_only=True)
            theirs = reference.forward_intermediates(x, indices=indices, intermediates_only=True)
            assert len(ours) == len(theirs) >= 1
            for mine, timms in zip(ours, theirs):
                torch.testing.assert_close(mine, timms, rtol=0, atol=0)
        # the head and its pooling pruned: the tokens (B, 1 + N, C), as timm gives (the pooled class token had been)
        torch.testing.assert_close(model(x), reference(x), rtol=0, atol=0)
        assert model(x).shape == (2, 5, 192)


def test_a_shallow_vits_default_levels_are_all_it_has():
    """A depth-2 ViT with features_only=True failed naming out_indices=3, which the caller never gave."""
    backbone = create_model("vit_tiny_patch4_28", depth=2, num_classes=2, features_only=True)
    assert len(backbone(torch.randn(1, 3, 28, 28))) == 2


def test_torchvision_feature_extractor_returns_vit_blocks():
    """torchvision traces every argument of forward: the ViT's `if return_attention` was a TraceError."""
    from torchvision.models.feature_extraction import create_feature_extractor

    model = _build("vit_tiny_patch4_32").eval()
    x = torch.randn(INPUT)
    features = create_feature_extractor(model, {"blocks.1": "block", "head": "logits"})(x)
    with torch.no_grad():
        (patches, prefix), = model.forward_intermediates(x, indices=[1], output_fmt="NLC", return_prefix_tokens=True,
                                                         intermediates_only=True)
        torch.testing.assert_close(features["block"], torch.cat([prefix, patches], dim=1))
        torch.testing.assert_close(features["logits"], model(x))
