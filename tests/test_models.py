"""Registry-wide model checks, parametrized over every registered architecture (as timm's tests are)."""
import pytest
import torch

from visattn import create_model, list_models
from visattn.registry import model_family

# Small inputs keep the whole sweep fast; families whose input size is fixed at build time get it here.
BUILD_KWARGS = {"vit": {"img_size": 32}}
INPUT = (2, 3, 32, 32)
# Captioners take (images, captions) and have no classifier head; tests/test_show_attend_tell.py sweeps them.
# Detectors take lists of images and targets; test_detector_losses_and_detections sweeps them below.
CLASSIFIERS = [name for name in list_models() if model_family(name) not in ("show_attend_tell", "detection")]
DETECTORS = list_models("fcos_*") + list_models("detr_*")


def _build(name: str, **kwargs):
    torch.manual_seed(0)
    return create_model(name, num_classes=7, **BUILD_KWARGS.get(model_family(name), {}), **kwargs)


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


@pytest.mark.parametrize("name", CLASSIFIERS)
def test_classifier_interface(name):
    model = _build(name).eval()
    x = torch.randn(INPUT)
    with torch.no_grad():
        logits = model(x)
        features = model.forward_features(x)
        pooled = model.forward_head(features, pre_logits=True)
        assert torch.allclose(model.forward_head(features), logits, atol=1e-5)
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
                                             ("se_resnet50", "seresnet50")])
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
