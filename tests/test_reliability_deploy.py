"""Deploying detectors and captioners: ``torch.export`` programs give the eager detections (FCOS's data-dependent
candidate counts included) and a captioner's first decoding step at any batch; what does not export is one line."""
import pytest
import torch
from torch import Tensor, nn
from torchvision.ops import batched_nms

from visattn import create_model
from visattn.errors import ConfigError
from visattn.export import export_onnx
from visattn.models.detection import class_wise_nms

CIFAR = dict(layers=(1, 1, 1), widths=(16, 16, 32))
DETECTORS = {  # the tiniest of each kind: FCOS on one FPN stage (and P6, P7), DETR of one layer each side
    "fcos_resnet20_cifar": dict(out_channels=64, fpn_stages=(3,)),
    "detr_resnet20_cifar": dict(hidden_dim=32, num_heads=2, num_encoder_layers=1, num_decoder_layers=1, num_queries=4),
}
SIZES = {1: [(64, 64)], 2: [(64, 64), (48, 64)]}  # batch 2: two sizes, each its own group (detect_by_size)


def _images(sizes: list[tuple[int, int]], seed: int) -> list[Tensor]:
    generator = torch.Generator().manual_seed(seed)
    return [torch.rand(3, *size, generator=generator) for size in sizes]


def _assert_same_detections(got: list[dict[str, Tensor]], expected: list[dict[str, Tensor]]) -> None:
    assert len(got) == len(expected)
    for mine, theirs in zip(got, expected):
        assert mine.keys() == theirs.keys()
        for key in theirs:
            torch.testing.assert_close(mine[key], theirs[key], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("batch", SIZES)
@pytest.mark.parametrize("name", DETECTORS)
def test_an_exported_detector_gives_the_eager_detections_of_other_images(name, batch):
    """FCOS did not export: torchvision's batched_nms branches in Python on the candidate count, which is
    data-dependent in an exported graph (GuardOnDataDependentSymNode)."""
    torch.manual_seed(0)
    model = create_model(name, num_classes=3, min_size=64, max_size=64, backbone_kwargs=CIFAR, **DETECTORS[name])
    model.eval()
    program = torch.export.export(model, (_images(SIZES[batch], seed=1),))
    images = _images(SIZES[batch], seed=2)  # other pixels: other candidates pass FCOS's score threshold
    with torch.no_grad():
        expected = model(images)
    assert all(len(found["boxes"]) for found in expected)
    _assert_same_detections(program.module()(images), expected)


class _Masked(nn.Module):
    """class_wise_nms on the boxes a mask keeps: a box count the exported graph learns only when it runs."""

    def forward(self, boxes: Tensor, scores: Tensor, labels: Tensor, kept: Tensor) -> Tensor:
        return class_wise_nms(boxes[kept], scores[kept], labels[kept], 0.5)


def test_exported_class_wise_nms_is_torchvisions_for_any_box_count():
    """torchvision's fake nms promises export at least 2 boxes kept: an exported NMS of fewer stopped at "Runtime
    assertion failed for expression u1 >= 2"."""
    generator = torch.Generator().manual_seed(0)
    corners = torch.rand(40, 2, generator=generator) * 40
    boxes = torch.cat([corners, corners + 4 + torch.rand(40, 2, generator=generator) * 20], dim=1)  # (40, 4)
    scores, labels = torch.rand(40, generator=generator), torch.randint(0, 3, (40,), generator=generator)
    kept = torch.rand(40, generator=generator) < 0.7
    program = torch.export.export(_Masked(), (boxes, scores, labels, kept)).module()
    expected = batched_nms(boxes[kept], scores[kept], labels[kept], 0.5)
    assert 0 < len(expected) < kept.sum()  # boxes of one label overlap: some are suppressed
    assert torch.equal(program(boxes, scores, labels, kept), expected)
    for count in (0, 1):
        few = torch.arange(40) < count
        assert torch.equal(program(boxes, scores, labels, few), torch.arange(count))


def test_an_exported_fcos_finds_nothing_where_it_finds_nothing():
    """No candidate above score_thresh (none can reach 1) stopped the exported program, as fewer than 2 detections
    did (torchvision's fake nms)."""
    torch.manual_seed(0)
    model = create_model("fcos_resnet20_cifar", num_classes=3, min_size=64, max_size=64, backbone_kwargs=CIFAR,
                         score_thresh=1.0, **DETECTORS["fcos_resnet20_cifar"]).eval()
    images = _images(SIZES[1], seed=1)
    found = torch.export.export(model, (images,)).module()(images)
    assert [{key: value.shape for key, value in d.items()} for d in found] == [
        {"boxes": (0, 4), "scores": (0,), "labels": (0,)}]
    with torch.no_grad():
        _assert_same_detections(found, model(images))


class _FirstStep(nn.Module):
    """A captioner's encoder and first decoding step: what a deployed greedy loop calls before its next steps."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, images: Tensor, words: Tensor) -> tuple[Tensor, ...]:
        features = self.model.encode(images)  # (B, P, C)
        projected = self.model.attention.project_features(features)
        logits, (h, c), alpha = self.model.step(features, projected, words, self.model.init_state(features))
        return logits, h, c, alpha


def test_a_captioners_first_step_exports_with_a_dynamic_batch():
    """The scenes captioner's products chose oneDNN by size, so a dynamic batch stopped at "Constraints violated
    (batch)": the graph held only for 2 to 4 images."""
    torch.manual_seed(0)
    step = _FirstStep(create_model("sat_cbam_resnet_scenes", vocab_size=2000).eval())
    batch = torch.export.Dim("batch", min=1, max=64)
    generator = torch.Generator().manual_seed(1)
    example = (torch.randn(2, 3, 64, 64, generator=generator), torch.ones(2, dtype=torch.long))
    program = torch.export.export(step, example, dynamic_shapes=({0: batch}, {0: batch})).module()
    for size in (1, 2, 9):
        inputs = (torch.randn(size, 3, 64, 64, generator=generator), torch.ones(size, dtype=torch.long))
        with torch.no_grad():
            expected = step(*inputs)
        for mine, theirs in zip(program(*inputs), expected):
            torch.testing.assert_close(mine, theirs, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("name, kind", [("detr_resnet20_cifar", "detector"), ("sat_cbam_resnet_scenes", "captioner")])
def test_onnx_export_of_a_detector_or_captioner_is_one_line(name, kind, tmp_path):
    kwargs = DETECTORS[name] | dict(backbone_kwargs=CIFAR) if kind == "detector" else dict(vocab_size=12)
    with pytest.raises(ConfigError, match=rf"^{name} is a {kind}, not a classifier; use `visattn "):
        export_onnx(create_model(name, **kwargs), tmp_path / "model.onnx")
    assert not any(tmp_path.iterdir())
