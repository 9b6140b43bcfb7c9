"""Detection models: FCOS and DETR-style heads on registered backbones, the Hungarian matcher, weights."""
import warnings

import pytest
import torch
from safetensors.torch import save_file
from torchvision.models.detection.transform import GeneralizedRCNNTransform

from visattn import create_model
from visattn.errors import ConfigError, VisattnWarning
from visattn.layers.sine_pos_embed import sine_position_encoding_2d
from visattn.models.detection import hungarian_match, vit_feature_map

HEADS = ["fcos_cbam_resnet20_cifar", "detr_cbam_resnet20_cifar"]
SIZES = [(64, 64), (48, 56)]  # two images of different sizes in one batch


def _build(name, **kwargs):
    torch.manual_seed(0)
    return create_model(name, num_classes=4, **kwargs)


def _images():
    torch.manual_seed(1)
    return [torch.rand(3, h, w) for h, w in SIZES]


def _targets():
    return [
        {"boxes": torch.tensor([[4.0, 6.0, 28.0, 30.0], [34.0, 30.0, 60.0, 58.0]]), "labels": torch.tensor([0, 3])},
        {"boxes": torch.tensor([[10.0, 8.0, 30.0, 40.0]]), "labels": torch.tensor([2])},
    ]


def _empty_targets():
    return [{"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.int64)} for _ in SIZES]


def _detect(model):
    with torch.no_grad():
        return model.eval()(_images())


def test_fcos_losses_train_backbone_and_head():
    model = _build("fcos_cbam_resnet20_cifar").train()
    losses = model(_images(), _targets())
    assert set(losses) == {"classification", "bbox_regression", "bbox_ctrness"}
    assert all(v.ndim == 0 and torch.isfinite(v) and v > 0 for v in losses.values())
    sum(losses.values()).backward()
    for param in (model.backbone.body.conv1.weight, model.backbone.body.layer3[0].attn.spatial.conv.weight,
                  model.backbone.fpn.inner_blocks[0][0].weight, model.head.classification_head.cls_logits.weight):
        assert param.grad is not None and param.grad.abs().sum() > 0


@pytest.mark.parametrize("name", HEADS)
def test_under_bf16_autocast_boxes_and_losses_are_float32(name):
    model = _build(name)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        losses = model.train()(_images(), _targets())
        detections = _detect(model)
    assert all(v.dtype == torch.float32 for v in losses.values())
    # bf16 boxes would be rounded to multiples of 0.125-0.25 px at these coordinates
    assert all(d["boxes"].dtype == torch.float32 and d["scores"].dtype == torch.float32 for d in detections)


def test_detr_losses_cover_every_decoder_layer():
    model = _build("detr_cbam_resnet20_cifar", num_decoder_layers=3).train()
    losses = model(_images(), _targets())
    expected = {f"loss_{k}{s}" for k in ("ce", "bbox", "giou") for s in ("", "_0", "_1")}
    assert set(losses) == expected
    assert all(v.ndim == 0 and torch.isfinite(v) and v > 0 for v in losses.values())
    sum(losses.values()).backward()
    for param in (model.backbone.conv1.weight, model.input_proj.weight, model.query_embed.weight,
                  model.transformer.encoder[0].attn.q.weight, model.class_embed.weight, model.bbox_embed[0].weight):
        assert param.grad is not None and param.grad.abs().sum() > 0
    without_aux = _build("detr_cbam_resnet20_cifar", aux_loss=False).train()(_images(), _targets())
    assert set(without_aux) == {"loss_ce", "loss_bbox", "loss_giou"}


def test_detr_trains_on_the_part_of_a_box_inside_the_image():
    """DETR predicts boxes inside the image (a sigmoid of its size): one past the edge had been matched and scored
    as it was, a centre and size it cannot give (a torchvision user's audit: its box loss 6.83 against 4.66)."""
    past, inside = _targets(), _targets()
    past[0]["boxes"][1] = torch.tensor([34.0, 30.0, 90.0, 70.0])  # the first image is 64 x 64
    inside[0]["boxes"][1] = torch.tensor([34.0, 30.0, 64.0, 64.0])
    past[1]["boxes"][0] = torch.tensor([10.0, 30.0, 30.0, 52.0])  # the second 48 high, 56 wide
    inside[1]["boxes"][0] = torch.tensor([10.0, 30.0, 30.0, 48.0])
    model = _build("detr_cbam_resnet20_cifar").train()
    torch.manual_seed(2)
    clipped = model(_images(), past)
    torch.manual_seed(2)
    torch.testing.assert_close(clipped, model(_images(), inside), rtol=0, atol=0)


@pytest.mark.parametrize("name", HEADS)
def test_eval_gives_boxes_inside_each_image(name):
    model = _build(name)
    detections = _detect(model)
    assert len(detections) == len(SIZES)
    for det, (height, width) in zip(detections, SIZES):
        assert set(det) == {"boxes", "scores", "labels"} | ({"queries"} if name.startswith("detr") else set())
        m = len(det["scores"])
        assert m > 0 and det["boxes"].shape == (m, 4) and det["labels"].shape == (m,)
        assert det["labels"].dtype == torch.int64 and 0 <= det["labels"].min() and det["labels"].max() < 4
        boxes = det["boxes"]
        assert (boxes >= 0).all() and (boxes[:, [0, 2]] <= width).all() and (boxes[:, [1, 3]] <= height).all()
        assert (boxes[:, 2:] >= boxes[:, :2]).all()
        assert torch.all(det["scores"][:-1] >= det["scores"][1:]) and (det["scores"] <= 1).all()


@pytest.mark.parametrize("name", HEADS)
def test_empty_targets_give_finite_losses(name):
    model = _build(name).train()
    losses = model(_images(), _empty_targets())
    assert all(torch.isfinite(v) for v in losses.values())
    sum(losses.values()).backward()
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)


def test_hungarian_match_finds_the_optimum_greedy_misses():
    # Same-size boxes on one row; target 0 sits at cx 0.30, target 1 at 0.40. Prediction 0 (cx 0.32)
    # is the closest to both: greedy gives it to target 0 and leaves target 1 to prediction 1
    # (total L1 0.02 + 0.14), the optimum pairs 0-1 and 1-0 (0.08 + 0.04). Prediction 2 is far off.
    def row(*centres):
        return torch.tensor([[cx, 0.5, 0.2, 0.2] for cx in centres])

    targets = [{"boxes": row(0.30, 0.40), "labels": torch.tensor([1, 1])}]
    logits = torch.zeros(1, 3, 5)  # every class equally likely: only the boxes decide
    (pred, tgt), = hungarian_match(logits, row(0.32, 0.26, 0.90)[None], targets)
    assert pred.tolist() == [0, 1] and tgt.tolist() == [1, 0]

    # A confident class outweighs a small box distance: prediction 1 is sure of target 0's class.
    logits[0, 1, 2] = 10.0
    targets = [{"boxes": row(0.30), "labels": torch.tensor([2])}]
    (pred, tgt), = hungarian_match(logits, row(0.30, 0.31, 0.90)[None], targets)
    assert pred.tolist() == [1] and tgt.tolist() == [0]


def test_hungarian_match_handles_images_without_targets():
    (pred, tgt), = hungarian_match(torch.zeros(1, 3, 5), torch.rand(1, 3, 4), _empty_targets()[:1])
    assert pred.numel() == tgt.numel() == 0


@pytest.mark.parametrize("name", HEADS)
def test_state_dict_round_trip_gives_identical_detections(name, tmp_path):
    model = _build(name)
    path = tmp_path / "detector.safetensors"
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, path)
    torch.manual_seed(123)  # a different init, so equality comes from the file
    loaded = create_model(name, num_classes=4, pretrained=str(path))
    for ours, theirs in zip(_detect(model), _detect(loaded)):
        for key in ("boxes", "scores", "labels"):
            assert torch.equal(ours[key], theirs[key])


@pytest.mark.parametrize("name", HEADS)
def test_other_num_classes_drops_only_the_classifier(name, tmp_path):
    model = _build(name)
    path = tmp_path / "detector.safetensors"
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, path)
    with pytest.warns(UserWarning, match=f"checkpoint classifier '{model.classifier}'"):
        loaded = create_model(name, num_classes=7, pretrained=str(path))
    assert loaded.num_classes == 7
    own, saved = loaded.state_dict(), model.state_dict()
    head = [k for k in own if k.startswith(model.classifier + ".")]
    assert head and all(own[k].shape != saved[k].shape for k in head if k.endswith("weight"))
    assert all(torch.equal(own[k], saved[k]) for k in own if k not in head)
    assert _detect(loaded)[0]["labels"].max() < 7


@pytest.mark.parametrize("name", HEADS)
def test_weights_of_another_class_count_build_their_head_when_no_num_classes_is_given(name, tmp_path):
    """A 4-class detector's file built into the default 80 classes dropped its trained head for a random one, with a
    warning; classifiers build the weights' head (a torchvision user's audit: its 91-class FCOS weights)."""
    import warnings

    model = _build(name)
    path = tmp_path / "detector.safetensors"
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, path)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        loaded = create_model(name, pretrained=str(path))
    assert loaded.num_classes == 4
    for ours, theirs in zip(_detect(model), _detect(loaded)):
        for key in ("boxes", "scores", "labels"):
            assert torch.equal(ours[key], theirs[key])
    loss = loaded.train()(_images(), _targets())  # the losses take the new class count (a label of 3 fits)
    assert all(torch.isfinite(value) for value in loss.values())


def test_torchvisions_91_class_fcos_weights_give_its_detections_built_by_name():
    from torchvision.models.detection import fcos_resnet50_fpn

    torch.manual_seed(0)
    reference = fcos_resnet50_fpn(weights=None, weights_backbone=None, num_classes=91, min_size=128, max_size=160,
                                  score_thresh=0.05).eval()
    model = create_model("fcos_resnet50", pretrained=reference.state_dict(), min_size=128, max_size=160).eval()
    assert model.num_classes == 91
    image = [torch.rand(3, 128, 160)]  # a multiple of 32 a side: no padding, which visattn masks
    with torch.no_grad():
        ours, theirs = model(image)[0], reference(image)[0]
    sized = ((theirs["boxes"][:, 2:] - theirs["boxes"][:, :2]) > 0).all(dim=1)  # visattn drops zero-size boxes
    assert sized.sum() > 50
    for key in ("boxes", "scores", "labels"):
        torch.testing.assert_close(ours[key], theirs[key][sized])


@pytest.mark.parametrize("name", ["fcos_vit_small_patch16_224", "detr_vit_small_patch16_224"])
def test_every_parameter_of_an_average_pooled_vit_backbone_gets_a_gradient(name):
    """The backbone kept the norm only its pooled output takes, whose weights got no gradient: DDP stopped at
    the second step of a detector on an average-pooled ViT (the shipped vit_tiny_patch4_28.fmnist's layout)."""
    model = _build(name, min_size=64, max_size=64,
                   backbone_kwargs={"depth": 1, "global_pool": "avg", "class_token": False}).train()
    sum(model(_images(), _targets()).values()).backward()
    assert [n for n, p in model.named_parameters() if p.requires_grad and p.grad is None] == []


def test_vit_backbone_takes_any_size_through_resampled_positions():
    model = _build("fcos_vit_small_patch16_224", min_size=64, max_size=96, backbone_kwargs={"depth": 1}).eval()
    assert model.backbone.body.grid_size == (6, 6)  # laid out for max_size
    images = torch.rand(2, 3, 64, 96)
    with torch.no_grad():
        levels = list(model.backbone(images).values())
    assert [tuple(x.shape[-2:]) for x in levels] == [(64 // s, 96 // s) for s in (8, 16, 32)] + [(1, 2), (1, 1)]
    detr = _build("detr_vit_small_patch16_224", min_size=64, max_size=96, backbone_kwargs={"depth": 1},
                  num_encoder_layers=1, num_decoder_layers=1)
    losses = detr.train()(list(images), _targets())
    assert all(torch.isfinite(v) for v in losses.values())


@pytest.mark.parametrize("layout", [
    {}, {"reg_tokens": 2, "no_embed_class": True},
    {"class_token": False, "reg_tokens": 1, "no_embed_class": True, "global_pool": "avg"}])
def test_a_vit_backbones_map_is_its_last_blocks_normed_patch_tokens_in_every_prefix_layout(layout):
    """The detector's ViT map is computed apart from the ViT's forward: register tokens (DINOv2's) and positions for
    the patches only (DeiT III's) must go in as the ViT puts them, at its own size and at any other."""
    torch.manual_seed(0)
    body = create_model("vit_small_patch16_224", img_size=(48, 64), depth=2, num_classes=0, dynamic_img_size=True,
                        **layout).eval()
    with torch.no_grad():
        for token in (body.cls_token, body.reg_token):
            if token is not None:
                token.normal_()  # initialised near zero, they would hide a misplaced token
        for size in ((48, 64), (32, 96)):
            x = torch.randn(2, 3, *size)
            expected = body.forward_intermediates(x, indices=1, norm=True, intermediates_only=True)[0]
            torch.testing.assert_close(vit_feature_map(body, x), expected)


def test_frozen_backbone_norms_give_the_losses_of_torchvisions_fcos_with_frozen_batch_norms():
    """torchvision builds its detectors on pretrained backbones with FrozenBatchNorm2d: its COCO FCOS weights
    fine-tuned in visattn re-estimated the statistics from each batch (a torchvision user's audit)."""
    from torchvision.models import resnet50
    from torchvision.models.detection import FCOS
    from torchvision.models.detection.backbone_utils import _resnet_fpn_extractor
    from torchvision.ops.feature_pyramid_network import LastLevelP6P7
    from torchvision.ops.misc import FrozenBatchNorm2d

    torch.manual_seed(0)
    body = _resnet_fpn_extractor(resnet50(norm_layer=FrozenBatchNorm2d), 5, returned_layers=[2, 3, 4],
                                 extra_blocks=LastLevelP6P7(256, 256))
    reference = FCOS(body, 91, min_size=128, max_size=160).train()
    with torch.no_grad():  # statistics a batch's would not give
        for name, buffer in reference.named_buffers():
            buffer.copy_(torch.rand_like(buffer) + 0.5 if "running_var" in name else torch.randn_like(buffer) / 10)
    images = [torch.rand(3, 128, 160)]
    targets = [{"boxes": torch.tensor([[10.0, 20.0, 90.0, 100.0]]), "labels": torch.tensor([3])}]
    expected = reference(images, targets)
    for freeze in (True, False):
        model = create_model("fcos_resnet50", pretrained=reference.state_dict(), min_size=128, max_size=160,
                             freeze_backbone_norms=freeze).eval().train()
        losses = model(images, targets)
        assert torch.allclose(torch.stack(list(losses.values())), torch.stack(list(expected.values())),
                              rtol=1e-5) == freeze


@pytest.mark.parametrize("name", HEADS)
def test_frozen_backbone_norms_keep_what_the_weights_brought_through_training(name):
    model = _build(name, freeze_backbone_norms=True)
    norms = [module for module in model.modules() if isinstance(module, torch.nn.BatchNorm2d)]
    before = [{k: v.clone() for k, v in module.state_dict().items()} for module in norms]
    convs = {k: v.clone() for k, v in model.named_parameters() if "backbone" in k and "conv" in k}
    assert len(norms) == 21  # the stem's, two in each of 9 blocks, two downsamplings'
    assert not any(p.requires_grad for module in norms for p in module.parameters())
    optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.1)
    for _ in range(2):
        model.eval().train()  # Lightning's switches after each validation
        sum(model(_images(), _targets()).values()).backward()
        optimizer.step()
        optimizer.zero_grad()
    for module, state in zip(norms, before):
        assert all(torch.equal(module.state_dict()[k], v) for k, v in state.items())
    assert len(convs) > 20 and all(not torch.equal(dict(model.named_parameters())[k], v) for k, v in convs.items())
    rebuilt = _build(name, freeze_backbone_norms=True, pretrained=model.state_dict())
    assert not any(m.training or m.weight.requires_grad
                   for m in rebuilt.modules() if isinstance(m, torch.nn.BatchNorm2d))


def test_trainable_backbone_layers_train_what_torchvisions_do():
    """torchvision's detector builders take trainable_backbone_layers (its FCOS trains 3 of 5 on pretrained
    backbones); visattn's detectors trained every layer."""
    from torchvision.models import resnet50
    from torchvision.models.detection.backbone_utils import _resnet_fpn_extractor

    for trainable in (0, 3, 5):
        reference = _resnet_fpn_extractor(resnet50(), trainable).body
        model = create_model("fcos_resnet50", trainable_backbone_layers=trainable).backbone.body
        assert ({k for k, p in model.named_parameters() if p.requires_grad}
                == {k for k, p in reference.named_parameters() if p.requires_grad})
    detr = _build("detr_cbam_resnet20_cifar", trainable_backbone_layers=1)  # 3 stages: the last one only
    assert {k.split(".")[1] for k, p in detr.named_parameters() if k.startswith("backbone.") and p.requires_grad} \
        == {"layer3"}
    bam = _build("fcos_cbam_resnet20_cifar", backbone="bam_resnet20_cifar", trainable_backbone_layers=2)
    assert {k.split(".")[2] for k, p in bam.named_parameters() if k.startswith("backbone.body") and p.requires_grad} \
        == {"layer2", "bam2", "layer3"}  # a BAM module with the stage it follows


@pytest.mark.parametrize("name", HEADS)
def test_layers_left_out_of_training_keep_their_batch_norm_statistics(name):
    """torchvision's frozen layers are always on FrozenBatchNorm2d; here their statistics had moved with each batch
    unless freeze_backbone_norms was set too (a fine-tuning audit: 63 of 63 in 2 steps)."""
    model = _build(name, trainable_backbone_layers=1)
    body = model.backbone.body if name.startswith("fcos") else model.backbone
    before = {k: v.clone() for k, v in body.state_dict().items() if "running" in k}
    model.eval().train()  # Lightning's switches after each validation
    model(_images(), _targets())
    moved = {k.split(".")[0] for k, v in body.state_dict().items() if "running" in k and not torch.equal(v, before[k])}
    assert moved == {"layer3"}  # the one stage left to train


@pytest.mark.parametrize("name, setting, message", [
    ("detr_cbam_resnet20_cifar", 5, r"^trainable_backbone_layers=5: give 0 to 4 \(the stem and 3 stages, counted from "
                                    r"the last\), or None for all$"),
    ("fcos_cbam_resnet20_cifar", -1, r"^trainable_backbone_layers=-1: give 0 to 4"),
    ("fcos_cbam_resnet20_cifar", True, r"^trainable_backbone_layers=True: give 0 to 4"),
])
def test_trainable_backbone_layers_out_of_range_are_one_line(name, setting, message):
    with pytest.raises(ConfigError, match=message):
        _build(name, trainable_backbone_layers=setting)
    with pytest.raises(ConfigError, match=r"^trainable_backbone_layers=2 counts a ResNet backbone's stem and stages"):
        create_model("detr_vit_small_patch16_224", backbone_kwargs={"depth": 1}, trainable_backbone_layers=2)


@pytest.mark.parametrize("backbone, attention_norms", [("nl_resnet20_cifar", 4), ("bam_resnet20_cifar", 8)])
def test_frozen_backbone_norms_leave_attention_modules_to_train(backbone, attention_norms):
    """A non-local block's output norm starts at zero: frozen with the rest, the block stayed off for good (a
    review: none of its 40 parameters got a gradient), and BAM's fresh norms never learned."""
    model = _build("fcos_cbam_resnet20_cifar", backbone=backbone, freeze_backbone_norms=True).train()
    norms = {name: m for name, m in model.backbone.body.named_modules() if isinstance(m, torch.nn.BatchNorm2d)}
    training = {name for name, m in norms.items() if m.training and m.weight.requires_grad}
    assert len(training) == attention_norms and all("non_local" in n or n.startswith("bam") for n in training)
    assert len(norms) - len(training) == 21  # the convolutions' norms, frozen
    sum(model(_images(), _targets()).values()).backward()  # the zero-initialised norms move off zero first
    assert all(norms[name].weight.grad.abs().sum() > 0 for name in training)


def test_frozen_backbone_norms_stay_frozen_as_sync_batch_norms():
    """Lightning's sync_batchnorm converts them for DDP; every later train() had to keep the converted ones too."""
    built = _build("detr_cbam_resnet20_cifar", freeze_backbone_norms=True)
    model = torch.nn.SyncBatchNorm.convert_sync_batchnorm(built)
    norms = [m for m in model.backbone.modules() if isinstance(m, torch.nn.SyncBatchNorm)]
    model.eval().train()
    assert len(norms) == 21 and not any(m.training or m.weight.requires_grad for m in norms)


def test_frozen_backbone_norms_of_a_vit_are_one_line():
    with pytest.raises(ConfigError, match=r"^freeze_backbone_norms=True: the backbone has no batch norm \(a ViT "
                                          r"normalises each token\); leave freeze_backbone_norms False$"):
        create_model("detr_vit_small_patch16_224", backbone_kwargs={"depth": 1}, freeze_backbone_norms=True)


def test_sine_encoding_ignores_padding():
    alone = sine_position_encoding_2d(torch.zeros(1, 4, 5, dtype=torch.bool), 16)
    padded_mask = torch.ones(1, 6, 8, dtype=torch.bool)
    padded_mask[:, :4, :5] = False
    padded = sine_position_encoding_2d(padded_mask, 16)
    assert alone.shape == (1, 16, 4, 5) and padded.shape == (1, 16, 6, 8)
    assert torch.allclose(padded[..., :4, :5], alone)
    assert not torch.allclose(alone[:, :, 0], alone[:, :, 1])  # rows differ in the first half


def test_bad_configurations_raise_config_errors():
    with pytest.raises(ConfigError, match="out_channels=100"):
        create_model("fcos_resnet20_cifar", out_channels=100)
    with pytest.raises(ConfigError, match="ResNet or ViT"):
        create_model("fcos_resnet20_cifar", backbone="sat_cbam_resnet_scenes")
    with pytest.raises(ConfigError, match="fpn_stages"):
        create_model("fcos_resnet20_cifar", fpn_stages=(3, 2))
    with pytest.raises(ConfigError, match="pyramid_scales"):
        create_model("fcos_vit_small_patch16_224", fpn_stages=(2, 3), backbone_kwargs={"depth": 1})


BAD_IMAGE_SETTINGS = [  # each had built, then given detections from a 1 px image, NaN boxes or none at all
    ({"min_size": 0}, r"min_size=0: give a whole number >= 1"),
    ({"max_size": 0}, r"max_size=0: give a whole number >= 1"),
    ({"min_size": 128, "max_size": 64}, r"min_size=128, max_size=64: the short side is resized to min_size unless"),
    ({"image_std": [0.0, 0.0, 0.0]}, r"image_std=\[0.0, 0.0, 0.0\]: give 3 finite numbers above 0, one per RGB"),
    ({"image_std": []}, r"image_std=\[\]: give 3 finite"),  # had been ImageNet's without a word
    ({"image_mean": [0.5]}, r"image_mean=\[0.5\]: give 3 finite numbers, one per RGB channel"),
]


@pytest.mark.parametrize("name", HEADS)
@pytest.mark.parametrize("setting, message", BAD_IMAGE_SETTINGS)
def test_resize_and_normalisation_settings_that_give_no_real_detection_are_one_line(name, setting, message):
    with pytest.raises(ConfigError, match=f"^{message}"):
        create_model(name, **setting)


@pytest.mark.parametrize("setting, message", [({"score_thresh": 2.0}, "score_thresh=2.0: give a number from 0 to 1"),
                                              ({"score_thresh": float("nan")}, "score_thresh=nan: give a number"),
                                              ({"nms_thresh": -0.1}, "nms_thresh=-0.1: give a number from 0 to 1"),
                                              ({"out_channels": 0}, "out_channels=0: give a whole number >= 1"),
                                              ({"detections_per_img": 0}, "detections_per_img=0: give a whole"),
                                              # no positive location: box and centerness losses 0, exit 0
                                              ({"center_sampling_radius": 0}, "center_sampling_radius=0: give how "
                                                                              "many strides around a box's centre"),
                                              ({"center_sampling_radius": -1}, "center_sampling_radius=-1: give")])
def test_fcos_thresholds_and_sizes_that_never_detect_are_one_line(setting, message):
    with pytest.raises(ConfigError, match=f"^{message}"):  # a threshold above 1 or NaN never kept a detection
        create_model("fcos_resnet20_cifar", **setting)


@pytest.mark.parametrize("setting, message", [
    ({"class_weight": 0, "bbox_weight": 0, "giou_weight": 0}, "class_weight, bbox_weight and giou_weight are all 0"),
    ({"giou_weight": float("nan")}, "giou_weight=nan: give a finite weight of 0 or more"),  # NaN loss at every step
    ({"bbox_weight": -5.0}, "bbox_weight=-5.0: give a finite weight of 0 or more"),
    ({"eos_coef": -1.0}, r"eos_coef=-1.0: give a weight in \(0, 1\]"),
    ({"eos_coef": 0}, r"eos_coef=0: give a weight in \(0, 1\]"),
    ({"mlp_ratio": 0}, "mlp_ratio=0: give the MLP's width over hidden_dim, above 0"),
])
def test_detr_loss_weights_and_widths_that_train_nothing_are_one_line(setting, message):
    """Each was built and trained, exit 0: all three loss weights 0 gave a loss of 0, a NaN one a NaN loss at every
    step, and MLPs of no width trained without a word."""
    with pytest.raises(ConfigError, match=f"^{message}"):
        create_model("detr_resnet20_cifar", **setting)
    create_model("detr_resnet20_cifar", eos_coef=1.0, class_weight=0, bbox_weight=0)  # the edges that train


@pytest.mark.parametrize("name", HEADS)
@pytest.mark.parametrize("images, message", [
    (lambda: [torch.rand(64, 64, 3)], r"^image 0: shape \(64, 64, 3\), float32, but a detector takes \(3, H, W\) floats "
                                      r"in 0..1 or uint8; it is channels-last: image.permute\(2, 0, 1\)$"),
    (lambda: torch.rand(3, 64, 64), r"^images: one tensor of shape \(3, 64, 64\), not a list of \(3, H, W\) tensors; "
                                    r"pass \[image\] for one image$"),
    (lambda: torch.rand(2, 3, 64, 64), r"^images: one tensor of shape \(2, 3, 64, 64\), not a list of \(3, H, W\) "
                                       r"tensors; pass list\(images\) for a batch$"),
    (lambda: [torch.zeros(3, 8, 8, dtype=torch.int32)],
     r"^image 0: shape \(3, 8, 8\), int32, .*; give float RGB pixels in 0..1 \(or uint8 ones\)$"),
    (lambda: [torch.rand(1, 8, 8)], r"^image 0: .*; for a gray image: image.expand\(3, -1, -1\)$"),
])
def test_a_detector_forward_given_images_it_cannot_take_is_one_line(name, images, message):
    # torchvision's transform had failed deep inside (a channels-last image, one tensor for the batch)
    for mode in (True, False):
        with pytest.raises(ConfigError, match=message):
            _build(name).train(mode)(images(), _targets()[:1] if mode else None)


def test_detector_transform_keeps_a_pixel_of_a_panorama_and_maps_boxes_back():
    from visattn.models.detection import DetectorTransform

    transform = DetectorTransform(64, 128, [0.5] * 3, [0.5] * 3).eval()
    image = torch.rand(3, 20, 3000)
    target = {"boxes": torch.tensor([[0.0, 0.0, 1500.0, 20.0]]), "labels": torch.tensor([1])}
    batch, (resized,) = transform([image], [target])
    assert batch.image_sizes == [(1, 128)]
    assert torch.allclose(resized["boxes"], torch.tensor([[0.0, 0.0, 64.0, 1.0]]))
    back = transform.postprocess([{"boxes": resized["boxes"]}], batch.image_sizes, [(20, 3000)])
    assert torch.allclose(back[0]["boxes"], target["boxes"])
    ordinary = torch.rand(3, 48, 80)  # everything else is torchvision's resize, unchanged
    reference = GeneralizedRCNNTransform(64, 128, [0.5] * 3, [0.5] * 3).eval()
    assert torch.equal(transform([ordinary])[0].tensors, reference([ordinary])[0].tensors)


BOX_RULE = "boxes are (N, 4) finite x1, y1, x2, y2 with x2 > x1 and y2 > y1, in pixels of their 56x48 image"
OUTSIDE = "the box lies wholly outside its 56x48 image; give boxes as x1, y1, x2, y2 in the pixels of their own image"
BAD_TARGETS = {  # second image's target -> the one-line error
    "label_is_no_object_class": ({"labels": torch.tensor([4])}, 'targets[1]["labels"]: 4 is outside 0..3 '
                                 "(num_classes=4); labels are 0-based class indices"),
    "label_past_no_object_class": ({"labels": torch.tensor([5])}, 'targets[1]["labels"]: 5 is outside 0..3 '
                                   "(num_classes=4); labels are 0-based class indices"),
    "negative_label": ({"labels": torch.tensor([-1])}, 'targets[1]["labels"]: -1 is outside 0..3 '
                       "(num_classes=4); labels are 0-based class indices"),
    "inverted_box": ({"boxes": torch.tensor([[30.0, 30.0, 10.0, 10.0]])},
                     f'targets[1]["boxes"][0] [30.0, 30.0, 10.0, 10.0]: {BOX_RULE}'),
    "zero_width_box": ({"boxes": torch.tensor([[10.0, 8.0, 10.0, 40.0]])},
                       f'targets[1]["boxes"][0] [10.0, 8.0, 10.0, 40.0]: {BOX_RULE}'),
    "nan_box": ({"boxes": torch.tensor([[10.0, 8.0, float("nan"), 40.0]])},
                f'targets[1]["boxes"][0] [10.0, 8.0, nan, 40.0]: {BOX_RULE}'),
    # wholly outside the 56x48 image: FCOS found no location for it, DETR coordinates past 1 (the message named
    # only the box rule, which such a box keeps: a detection audit)
    "box_right_of_the_image": ({"boxes": torch.tensor([[60.0, 8.0, 70.0, 40.0]])},
                               f'targets[1]["boxes"][0] [60.0, 8.0, 70.0, 40.0]: {OUTSIDE}'),
    "box_above_the_image": ({"boxes": torch.tensor([[10.0, -20.0, 30.0, -2.0]])},
                            f'targets[1]["boxes"][0] [10.0, -20.0, 30.0, -2.0]: {OUTSIDE}'),
    "inverted_box_outside": ({"boxes": torch.tensor([[80.0, 8.0, 70.0, 40.0]])},
                             f'targets[1]["boxes"][0] [80.0, 8.0, 70.0, 40.0]: {BOX_RULE}'),
    "thin_box_outside": ({"boxes": torch.tensor([[60.0, 8.0, 60.001, 40.0]])},  # shown rounded, judged exactly
                         f'targets[1]["boxes"][0] [60.0, 8.0, 60.0, 40.0]: {OUTSIDE}'),
    "infinite_box": ({"boxes": torch.tensor([[60.0, 8.0, float("inf"), 40.0]])},
                     f'targets[1]["boxes"][0] [60.0, 8.0, inf, 40.0]: {BOX_RULE}'),
    "float_labels": ({"labels": torch.tensor([2.0])},
                     'targets[1]["labels"]: dtype torch.float32; labels are int64 class indices, e.g. labels.long()'),
    "bool_labels": ({"labels": torch.tensor([True])},
                    'targets[1]["labels"]: dtype torch.bool; labels are int64 class indices, e.g. labels.long()'),
    "int32_labels": ({"labels": torch.tensor([2], dtype=torch.int32)},
                     'targets[1]["labels"]: dtype torch.int32; labels are int64 class indices, e.g. labels.long()'),
    "one_box_without_row": ({"boxes": torch.tensor([10.0, 8.0, 30.0, 40.0])},
                            'targets[1]["boxes"]: shape (4,); boxes are (N, 4) x1, y1, x2, y2, one row per object'),
    "float64_boxes": ({"boxes": torch.tensor([[10.0, 8.0, 30.0, 40.0]], dtype=torch.float64)},
                      'targets[1]["boxes"]: dtype torch.float64; boxes are float32 pixels, e.g. boxes.float()'),
    "label_per_box_missing": ({"labels": torch.tensor([2, 1])}, 'targets[1]["labels"]: shape (2,) for 1 boxes; '
                              "labels are (N,), one class index per box"),
}


@pytest.mark.parametrize("case", BAD_TARGETS)
@pytest.mark.parametrize("name", HEADS)
def test_bad_training_targets_raise_one_config_error(name, case):
    change, message = BAD_TARGETS[case]
    targets = _targets()
    targets[1] = {**targets[1], **change}
    with pytest.raises(ConfigError) as err:
        _build(name).train()(_images(), targets)
    assert str(err.value) == message


@pytest.mark.parametrize("name", HEADS)
def test_training_targets_must_come_one_per_image(name):
    model = _build(name).train()
    with pytest.raises(ConfigError) as err:
        model(_images(), _targets()[:1])
    assert str(err.value) == 'targets: 1 dicts for 2 images; give a list with one {"boxes", "labels"} dict per image'
    with pytest.raises(ConfigError, match=r"^targets: none in train mode; .* or call model\.eval\(\) to detect$"):
        model(_images())
    with pytest.raises(ConfigError, match=r'^targets\[0\]: give a dict with "boxes" \(N, 4\) float32 and "labels"'):
        model(_images(), [{"boxes": torch.zeros(0, 4)}, _targets()[1]])


@pytest.mark.parametrize("name", HEADS)
def test_boxes_given_as_fractions_of_the_image_warn_once_per_batch(name):
    """Boxes normalised to 0..1 (DETR-style datasets) trained a detector of specks without a word, while visattn's COCO
    reader warns of boxes under a pixel (a detection audit)."""
    model = _build(name).train()
    fractions = [{**target, "boxes": target["boxes"] / 64} for target in _targets()]
    fractions[1]["boxes"] = torch.tensor([[0.0, 0.0, 1.0, 1.0]])  # the whole image, as a fraction
    with pytest.warns(VisattnWarning) as caught:
        model(_images(), fractions)
    with pytest.warns(VisattnWarning):
        model(_images(), [fractions[0], _empty_targets()[1]])  # an image without boxes says nothing either way
    assert [str(w.message) for w in caught] == [
        "targets: every box of the batch lies within the first pixel of its image; boxes are x1, y1, x2, y2 in pixels, "
        "so fractions of the image's width and height (0..1) train a detector of specks: multiply them by the "
        "image's width and height"]
    with warnings.catch_warnings():
        warnings.simplefilter("error", VisattnWarning)
        model(_images(), [fractions[0], _targets()[1]])  # one box in pixels: boxes may be small
        model(_images(), _empty_targets())
        model([torch.rand(3, 2, 2)] * 2, fractions)  # images of 2 px: boxes within a pixel may be what they hold


@pytest.mark.parametrize("name", HEADS)
def test_valid_targets_with_an_image_without_boxes_still_train(name):
    model = _build(name).train()
    targets = [_targets()[0], _empty_targets()[1]]
    losses = model(_images(), targets)
    assert losses and all(v.ndim == 0 and torch.isfinite(v) for v in losses.values())
    sum(losses.values()).backward()
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)


def test_data_pipeline_targets_pass_the_training_check():
    from visattn.data.detection_samples import eval_detection_transforms, train_detection_transforms
    from visattn.models.detection import _check_targets

    image = (torch.rand(48, 64, 3) * 255).to(torch.uint8).numpy()
    # ordinary, thin, inverted, zero-area, partly and wholly outside the image
    boxes = [[4, 6, 28, 30], [10, 10, 10.5, 30], [30, 30, 10, 10], [5, 5, 5, 5], [-8, 40, 20, 60], [70, 0, 90, 10]]
    labels = [0, 1, 2, 3, 1, 2]
    torch.manual_seed(0)
    for transform in (eval_detection_transforms(), train_detection_transforms(scale=(0.5, 2.0), translate=0.4)):
        images, targets = zip(*(transform(image, boxes, labels) for _ in range(20)))
        assert targets[0]["boxes"].dtype == torch.float32 and targets[0]["labels"].dtype == torch.int64
        _check_targets(list(targets), images=images, num_classes=4)


def test_a_backbone_named_with_its_weights_tag_says_where_the_tag_goes():
    with pytest.raises(ConfigError, match=r"^backbone 'se_resnet20_cifar.fmnist': give the architecture, backbone "
                                          r"'se_resnet20_cifar', and the weights as pretrained_backbone"):
        create_model("fcos_se_resnet20_cifar", backbone="se_resnet20_cifar.fmnist")


@pytest.mark.parametrize("name", HEADS)
def test_an_image_gets_the_detections_it_gets_alone_whatever_it_is_batched_with(name):
    """Padding an image to a larger batch-mate's size changed its features everywhere (CBAM's global
    pooling, FCOS's GroupNorm), and so its detections and a dataset's mAP; eval runs each size apart."""
    model = _build(name).eval()
    torch.manual_seed(2)
    images = [torch.rand(3, 32, 64), torch.rand(3, 64, 64), torch.rand(3, 32, 64)]  # 32x64 pads to 64x64 with the other
    with torch.no_grad():
        batched = model(images)
        alone = [model([image])[0] for image in images]
    for together, single in zip(batched, alone):
        assert together.keys() == single.keys() and len(single["scores"]) > 0
        for key in single:
            torch.testing.assert_close(together[key], single[key])


def test_fcos_finds_nothing_in_the_padding_past_an_image_of_another_aspect():
    """A scene with a black band added (64x96) is resized to 43x64 and padded to 64x64: the shipped FCOS, trained on
    square scenes, found objects in the padding, clipped them to 0.6 px slivers along the image's bottom edge and
    ranked them first (0.81, 0.78)."""
    from torchvision.ops import box_iou

    from visattn.data.scenes import FashionScenes
    from visattn.data.transforms import to_tensor
    from visattn.inference.detector import load_detector

    detector = load_detector("fcos_se_resnet20_cifar.scenes")
    scene = to_tensor(FashionScenes("test", num_scenes=1)[0].image)
    band = torch.zeros(3, 64, 32)
    square, wide, tall = detector.detect([scene, torch.cat([scene, band], dim=2), torch.cat([scene, band.mT], dim=1)],
                                         score_threshold=0.5)
    for padded in (wide, tall):  # padded below, and to the right
        sides = (padded["boxes"][:, 2:] - padded["boxes"][:, :2]).min(dim=1).values
        assert len(padded["boxes"]) >= 2 and sides.min() > 10
        assert box_iou(padded["boxes"][:1], square["boxes"]).max() > 0.9  # the best is one of the scene's items


def test_a_non_finite_detr_prediction_gives_a_non_finite_loss_for_the_guard_not_a_matching_error():
    """scipy's assignment refused the NaN cost matrix, so the task's non-finite-loss guard never saw the step."""
    model = _build("detr_cbam_resnet20_cifar").train()
    images = _images()
    images[0][:, 5, 5] = float("nan")
    losses = model(images, _targets())
    assert not all(torch.isfinite(value) for value in losses.values())


def test_detr_refuses_an_image_with_more_objects_than_queries_in_one_line():
    """Matching is one-to-one: the objects beyond num_queries went unmatched, so never trained, without a word."""
    model = _build("detr_cbam_resnet20_cifar", num_queries=4).train()
    xy = torch.arange(5.0)[:, None].repeat(1, 2) * 10
    crowded = {"boxes": torch.cat([xy, xy + 8], 1), "labels": torch.zeros(5, dtype=torch.int64)}
    with pytest.raises(ConfigError, match=r"targets: an image holds 5 objects, more than num_queries=4 .*num_queries "
                                          r"of at least 5"):
        model(_images(), [_targets()[0], crowded])
    assert torch.isfinite(sum(model(_images(), [_targets()[0], {k: v[:4] for k, v in crowded.items()}]).values()))


def test_detr_set_losses_weigh_as_detrs_set_criterion():
    """DETR's SetCriterion: the no-object class weighed eos_coef in a weighted-mean cross entropy, L1 and 1 - GIoU
    summed per target box (eos_coef and giou_weight ignored had passed: only the loss names were tested)."""
    from torchvision.ops import box_convert, generalized_box_iou

    torch.manual_seed(0)
    model = create_model("detr_resnet20_cifar", num_classes=3, pretrained=False)
    assert (model.eos_coef, model.bbox_weight, model.giou_weight) == (0.1, 5.0, 2.0)
    logits = torch.randn(1, 4, 4)  # (B, Q, classes + no-object)
    boxes = torch.tensor([[[0.5, 0.5, 0.4, 0.4], [0.3, 0.3, 0.2, 0.2], [0.7, 0.6, 0.3, 0.5], [0.2, 0.8, 0.1, 0.1]]])
    targets = [{"labels": torch.tensor([2, 0]), "boxes": torch.tensor([[0.45, 0.5, 0.5, 0.3], [0.25, 0.3, 0.2, 0.3]])}]
    got = model._set_losses(logits, boxes, targets, num_boxes=2.0)
    (pred, tgt), = hungarian_match(logits, boxes, targets, class_weight=model.class_weight,
                                   bbox_weight=model.bbox_weight, giou_weight=model.giou_weight)
    classes = torch.full((4,), 3)
    classes[pred] = targets[0]["labels"][tgt]
    weights = torch.where(classes == 3, 0.1, 1.0)
    nll = -logits[0].log_softmax(-1)[torch.arange(4), classes]
    ce = (weights * nll).sum() / weights.sum()
    matched, wanted = boxes[0, pred], targets[0]["boxes"][tgt]
    l1 = (matched - wanted).abs().sum() / 2.0
    giou = (1 - generalized_box_iou(box_convert(matched, "cxcywh", "xyxy"),
                                    box_convert(wanted, "cxcywh", "xyxy")).diagonal()).sum() / 2.0
    assert got["loss_ce"].item() == pytest.approx(model.class_weight * ce.item(), rel=1e-5)
    assert got["loss_bbox"].item() == pytest.approx(5.0 * l1.item(), rel=1e-5)
    assert got["loss_giou"].item() == pytest.approx(2.0 * giou.item(), rel=1e-5)


def test_detr_normalises_target_boxes_by_width_then_height_of_a_non_square_image():
    """DETR predicts cxcywh relative to the image, x over its width and y over its height; on square test images
    a width/height swap in normalising the training targets passed."""
    model = _build("detr_resnet20_cifar").train()  # resizes 40x80 to 32x64: boxes scale by 0.8
    seen = []
    model._losses = lambda logits, boxes, targets: seen.append(targets) or {}
    image = torch.rand(3, 40, 80)
    model([image], [{"boxes": torch.tensor([[8.0, 4.0, 24.0, 20.0]]), "labels": torch.tensor([1])}])
    # centre (16, 12), size (16, 16) over width 80 and height 40, by hand
    torch.testing.assert_close(seen[0][0]["boxes"], torch.tensor([[16 / 80, 12 / 40, 16 / 80, 16 / 40]]))


def test_detr_scales_its_predicted_boxes_to_pixels_by_width_then_height_of_a_non_square_image():
    """DETR's PostProcess scales cxcywh boxes by [w, h, w, h]; a swap passed the square test images unnoticed."""
    model = _build("detr_resnet20_cifar").eval()
    queries = model.query_embed.num_embeddings
    logits = torch.zeros(1, 1, queries, model.num_classes + 1)
    logits[..., 0, 2] = 5.0  # query 0 is surely class 2
    boxes = torch.tensor([0.5, 0.25, 0.5, 0.5]).expand(1, 1, queries, 4)
    model._predict = lambda images, image_sizes: (logits.expand(-1, len(images), -1, -1),
                                                  boxes.expand(-1, len(images), -1, -1))
    with torch.no_grad():
        detections, = model([torch.rand(3, 40, 80)])  # height 40, width 80
    assert detections["labels"][0].item() == 2
    # x 0.25..0.75 of width 80, y 0..0.5 of height 40
    torch.testing.assert_close(detections["boxes"][0], torch.tensor([20.0, 0.0, 60.0, 20.0]))


def test_detr_padding_mask_covers_the_rows_below_and_columns_right_of_each_image():
    """A batch pads each image below and to the right; a mask with rows and columns swapped passed square images."""
    from visattn.models.detection import _padding_mask

    batch = torch.zeros(2, 3, 8, 12)
    mask = _padding_mask(batch, [(8, 12), (4, 10)], (8, 12))
    expected = torch.ones(2, 8, 12, dtype=torch.bool)
    expected[0] = False
    expected[1, :4, :10] = False  # image 2: 4 rows high, 10 columns wide
    assert torch.equal(mask, expected)
    # at stride 2 (nearest): rows 0, 2 and columns 0, 2, ..., 8 of the image are its own
    halved = _padding_mask(batch, [(8, 12), (4, 10)], (4, 6))
    assert torch.equal(halved[1], torch.tensor([[False] * 5 + [True]] * 2 + [[True] * 6] * 2))
    assert not halved[0].any()


def test_hungarian_match_uses_detrs_l1_box_cost_where_an_l2_cost_pairs_otherwise():
    """DETR's HungarianMatcher cost is -p(class) + 5 L1 - 2 GIoU; an L2 box distance pairs these boxes the other
    way round and had passed, the tested cases pairing alike under either distance."""
    from scipy.optimize import linear_sum_assignment
    from torchvision.ops import box_convert, generalized_box_iou

    predicted = torch.tensor([[0.4, 0.7, 0.2, 0.6], [0.2, 0.8, 0.2, 0.4]])  # cxcywh
    targets = [{"boxes": torch.tensor([[0.4, 0.5, 0.8, 0.8], [0.3, 0.6, 0.3, 0.6]]), "labels": torch.tensor([1, 3])}]
    logits = torch.zeros(1, 2, 5)
    giou = generalized_box_iou(box_convert(predicted, "cxcywh", "xyxy"), box_convert(targets[0]["boxes"], "cxcywh",
                                                                                         "xyxy"))
    offsets = predicted[:, None] - targets[0]["boxes"][None]
    prob = logits[0].softmax(-1)[:, targets[0]["labels"]]
    pairings = {}
    for name, distance in (("l1", offsets.abs().sum(-1)), ("l2", offsets.square().sum(-1).sqrt())):
        cost = 1.0 * -prob + 5.0 * distance + 2.0 * -giou
        pairings[name] = linear_sum_assignment(cost.numpy())[1].tolist()
    assert pairings == {"l1": [0, 1], "l2": [1, 0]}
    (pred, tgt), = hungarian_match(logits, predicted[None], targets)
    assert pred.tolist() == [0, 1] and tgt.tolist() == pairings["l1"]


@pytest.mark.parametrize("name, kwargs, strides", [
    ("fcos_resnet20_cifar", {}, [4, 8, 16]),
    ("fcos_resnet20_cifar", {"fpn_stages": (1, 2, 3)}, [1, 2, 4, 8, 16]),
    ("fcos_vit_small_patch16_224", {"min_size": 64, "max_size": 96, "backbone_kwargs": {"depth": 1}},
     [8, 16, 32, 64, 128]),
])
def test_each_fcos_levels_stride_and_anchor_size_is_the_padded_input_over_its_maps_size(name, kwargs, strides):
    """FCOS assigns each level the boxes of [4, 8) x its anchor size, which torchvision sets to the level's stride;
    P7 given twice P5's stride instead of 4x, or a ViT pyramid's strides inverted, had passed."""
    model = _build(name, **kwargs).eval()
    size = (128, 256) if "vit" in name else (64, 96)
    with torch.no_grad():
        levels = list(model.backbone(torch.rand(1, 3, *size)).values())
    measured = [size[0] // x.shape[-2] for x in levels]
    assert measured == [size[1] // x.shape[-1] for x in levels] == strides
    assert model.backbone.strides == strides
    assert model.anchor_generator.sizes == tuple((s,) for s in strides)


def test_fcos_resnet50_anchor_sizes_are_torchvisions_fcos_resnet50_fpn():
    """torchvision's fcos_resnet50_fpn sets anchor sizes 8 ... 128 on P3-P7, each level's stride."""
    from torchvision.models.detection import fcos_resnet50_fpn

    theirs = fcos_resnet50_fpn(weights=None, weights_backbone=None, num_classes=80)
    ours = _build("fcos_resnet50", backbone_kwargs={"layers": (1, 1, 1, 1)})
    assert ours.anchor_generator.sizes == theirs.anchor_generator.sizes == ((8,), (16,), (32,), (64,), (128,))
    assert ours.backbone.strides == [8, 16, 32, 64, 128]


def test_detr_encoder_and_decoder_see_a_padded_input_as_the_unpadded_one():
    """DETR masks padded keys in every encoder and decoder attention (nn.MultiheadAttention's key_padding_mask);
    the encoder's mask dropped had passed (a mutation audit), padded tokens then changing every detection."""
    from visattn.layers.detr_transformer import DetrTransformer

    torch.manual_seed(0)
    transformer = DetrTransformer(16, 2, num_encoder_layers=1, num_decoder_layers=1).eval()
    x, pos, query_pos = torch.randn(1, 6, 16), torch.randn(1, 6, 16), torch.randn(3, 16)
    padded_x = torch.cat([x, 5 * torch.randn(1, 3, 16)], dim=1)  # 3 padding tokens of other values
    padded_pos = torch.cat([pos, torch.randn(1, 3, 16)], dim=1)
    padding = torch.tensor([[False] * 6 + [True] * 3])
    with torch.no_grad():
        alone = transformer(x, pos, query_pos)
        padded = transformer(padded_x, padded_pos, query_pos, padding)
    assert alone.shape == padded.shape == (1, 1, 3, 16)
    torch.testing.assert_close(padded, alone)


def test_sine_encoding_is_detrs_position_embedding_sine_computed_by_hand():
    """DETR's PositionEmbeddingSine(normalize=True): positions counted over valid pixels, divided by the last
    (+1e-6) and scaled to 2 pi, over T ** (2 (i // 2) / (dim / 2)); sine on even, cosine on odd channels; the
    row half first, then the column half. A frequency per channel instead of per pair had passed everything,
    sine/cosine or halves swapped only a test of the shipped weights (a mutation audit)."""
    import math

    mask = torch.zeros(1, 3, 4, dtype=torch.bool)
    mask[0, :, 3] = True  # the last column is padding
    dim, half, eps = 8, 4, 1e-6
    valid = (~mask[0]).tolist()
    expected = torch.zeros(1, dim, 3, 4, dtype=torch.float64)
    for r in range(3):
        for c in range(4):
            y = sum(valid[k][c] for k in range(r + 1)) / (sum(valid[k][c] for k in range(3)) + eps) * 2 * math.pi
            x = sum(valid[r][k] for k in range(c + 1)) / (sum(valid[r][k] for k in range(4)) + eps) * 2 * math.pi
            for channel in range(dim):
                position = y if channel < half else x
                i = channel % half
                angle = position / 10000.0 ** (2 * (i // 2) / half)
                expected[0, channel, r, c] = math.sin(angle) if i % 2 == 0 else math.cos(angle)
    got = sine_position_encoding_2d(mask, dim)
    torch.testing.assert_close(got, expected.float())


def test_hungarian_match_weighs_the_class_by_its_softmax_probability_as_detr_does():
    """DETR's HungarianMatcher costs -softmax(logits)[target class]; boxes alike, the class alone decides. Query 0
    splits its probability between two classes (softmax 0.5, sigmoid 0.88), query 1 is sure of class 0 (softmax
    ~1, sigmoid 0.82): a sigmoid had passed, every tested pairing being decided by the boxes (a mutation audit)."""
    import math

    from scipy.optimize import linear_sum_assignment

    logits = torch.tensor([[[2.0, 2.0, -10.0], [1.5, -10.0, -10.0]]])  # 2 classes and no-object
    boxes = torch.tensor([[0.5, 0.5, 0.2, 0.2]]).expand(1, 2, 4)
    targets = [{"boxes": torch.tensor([[0.5, 0.5, 0.2, 0.2]]), "labels": torch.tensor([0])}]
    # DETR's cost matrix with its giou and L1 terms equal for both queries: -p(class 0) by hand
    p0 = math.exp(2.0) / (2 * math.exp(2.0) + math.exp(-10.0))  # 0.50
    p1 = math.exp(1.5) / (math.exp(1.5) + 2 * math.exp(-10.0))  # 1.00
    assert linear_sum_assignment([[-p0], [-p1]])[0].tolist() == [1]
    (pred, tgt), = hungarian_match(logits, boxes, targets)
    assert pred.tolist() == [1] and tgt.tolist() == [0]


def test_detr_scores_are_the_softmax_over_classes_and_no_object_as_detrs_postprocess():
    """DETR's PostProcess: softmax over the classes and "no object", then each query's best real class; a sigmoid
    of the real classes' logits had passed all but a test of the shipped weights (a mutation audit)."""
    import math

    model = _build("detr_resnet20_cifar")
    logits = torch.tensor([[[2.0, 0.0, 1.0, 0.5, 3.0], [-1.0, 1.0, 0.0, 0.0, 0.0]]])  # 4 classes and no-object
    boxes = torch.full((1, 2, 4), 0.5)
    found, = model._detections(logits, boxes, [(32, 32)])
    first = math.exp(2.0) / sum(math.exp(v) for v in (2.0, 0.0, 1.0, 0.5, 3.0))  # 0.22 (sigmoid: 0.88)
    second = math.exp(1.0) / sum(math.exp(v) for v in (-1.0, 1.0, 0.0, 0.0, 0.0))  # 0.45 (sigmoid: 0.73)
    assert found["queries"].tolist() == [1, 0] and found["labels"].tolist() == [1, 0]
    torch.testing.assert_close(found["scores"], torch.tensor([second, first]))


def _two_processes(monkeypatch, *, others: float):
    """Pretend to be one of 2 DDP processes whose all_reduce adds ``others`` times the own count."""
    monkeypatch.setattr(torch.distributed, "is_available", lambda: True)
    monkeypatch.setattr(torch.distributed, "is_initialized", lambda: True)
    monkeypatch.setattr(torch.distributed, "get_world_size", lambda group=None: 2)
    monkeypatch.setattr(torch.distributed, "all_reduce", lambda tensor, *args, **kwargs: tensor.mul_(1 + others))


def test_a_count_is_averaged_over_ddp_processes(monkeypatch):
    """DDP averages gradients, so a loss normalised by a count must use the processes' mean count."""
    from visattn.models.detection import mean_over_processes

    assert mean_over_processes(1, torch.device("cpu")) == 1.0
    _two_processes(monkeypatch, others=2.0)  # counts 1 and 2: mean 1.5
    assert mean_over_processes(1, torch.device("cpu")) == 1.5
    assert mean_over_processes(0, torch.device("cpu")) == 1.0  # at least 1


def test_fcos_losses_are_divided_by_the_foreground_count_averaged_over_ddp_processes(monkeypatch):
    """mmdetection's FCOS divides by the mean count over processes; torchvision divides by the own count, so
    the losses scale by own / mean. Neither rescale was tested (a mutation audit: both passed in one process)."""
    model = _build("fcos_cbam_resnet20_cifar").train()
    with torch.no_grad():
        alone = model(_images(), _targets())
        _two_processes(monkeypatch, others=2.0)  # the other process has twice the foreground: mean 1.5 x own
        shared = model(_images(), _targets())
    assert set(shared) == set(alone)
    for name in alone:
        torch.testing.assert_close(shared[name], alone[name] / 1.5)
