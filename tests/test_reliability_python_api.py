"""The Python API refuses what it cannot use in one line naming the argument, as the CLI does: weights
described otherwise than the model they hold, task wrappers where a module goes, and decoding and
detection settings that would give wrong results without a word."""
import json
import os
import re
import subprocess
import sys
import warnings

import pytest
import torch

from visattn import create_model, list_models, load_captioner, load_classifier, load_detector
from visattn.errors import ConfigError, VisattnError, VisattnWarning, WeightsError
from visattn.pretrained import load_weights, save_weights

GRAY_28 = dict(input_size=[3, 28, 28], mean=[0.5] * 3, std=[0.5] * 3)
DIGITS = [str(i) for i in range(10)]


@pytest.mark.parametrize("arch, kwargs, meta, message", [
    ("se_resnet20_cifar", {}, dict(labels=["a", "b"], preprocessing=GRAY_28),
     "labels: 2 names for a 10-class head; give one name per class"),
    ("se_resnet20_cifar", {}, dict(labels=DIGITS, preprocessing={**GRAY_28, "input_size": [1, 28, 28]}),
     r"preprocessing input_size \[1, 28, 28\]: the model takes 3-channel images; give \[3, H, W\]"),
    ("vit_tiny_patch4_28", dict(depth=1), dict(labels=DIGITS, preprocessing={**GRAY_28, "input_size": [3, 64, 64]}),
     r"preprocessing input_size \[3, 64, 64\]: the model takes 28x28 images; give \[3, 28, 28\], "
     "or build it with img_size=64"),
    ("fcos_se_resnet20_cifar", {}, dict(labels=["a", "b"]), "labels: 2 names for a 10-class head"),
    # any task was recorded, and the loaders pick the task from the entry (a docstring audit)
    ("se_resnet20_cifar", {}, dict(labels=DIGITS, task="segmentation"),
     "task='segmentation': se_resnet20_cifar is a classification model; give task='classification' or leave it out"),
])
def test_save_weights_refuses_a_description_the_model_contradicts_and_writes_nothing(
        weights_tmp, arch, kwargs, meta, message):
    model = create_model(arch, num_classes=10, **kwargs)
    with pytest.raises(WeightsError, match=f"^{weights_tmp}/{arch}.bad.safetensors: {message}"):
        save_weights(model, weights_tmp / f"{arch}.bad.safetensors", **meta)
    assert not list(weights_tmp.iterdir())


def test_python_arguments_a_docstring_audit_found_unchecked_are_one_line(tmp_path):
    """Each gave a nonsense result or a raw traceback: a negative validation share validated on all but one sample,
    timm's positional module kept the models with weights, an ONNX file given a folder named a temp file, an even
    spatial-gate kernel grew the map, and a refused head blamed an intact file."""
    from visattn.data import split_indices
    from visattn.errors import ArgumentError
    from visattn.export import export_onnx
    from visattn.layers.cbam import SpatialGate

    for fraction in (-0.1, 1.0, "0.2"):
        with pytest.raises(ArgumentError, match=rf"^val_fraction={fraction!r}: give the share of samples held out, "
                                                r"from 0 to below 1$"):
            split_indices(10, fraction, 0)
    with pytest.raises(ConfigError, match=r"^pretrained='resnet': give True or False; timm's second argument, module, "
                                          r"goes by name here: list_models\(..., module='resnet'\)$"):
        list_models("*resnet20*", "resnet")
    pytest.importorskip("onnx")
    with pytest.raises(ArgumentError, match=rf"^path='{tmp_path}': is a folder; give the .onnx file to write$"):
        export_onnx(create_model("resnet20_cifar"), tmp_path)
    with pytest.raises(ConfigError, match=r"^kernel_size=6: give an odd whole number"):
        SpatialGate(kernel_size=6)
    with pytest.raises(WeightsError) as err:
        load_weights(create_model("se_resnet20_cifar", num_classes=5), "se_resnet20_cifar.fmnist", new_head=False)
    assert str(err.value) == ("se_resnet20_cifar.fmnist: its classifier 'fc' does not fit num_classes=5 (fc.weight "
                              "(10, 112), fc.bias (10,)); build the model as the weights were trained (create_model "
                              "with their num_classes), or pass new_head=True to start a new head")


def test_a_warning_of_loading_weights_names_the_callers_line(tmp_path):
    """A fixed stacklevel had named contextlib.py:81, where the warning passed through a ``with`` block."""
    path = tmp_path / "plain.pth"
    torch.save(create_model("resnet20_cifar").state_dict(), path)
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        create_model("se_resnet20_cifar.fmnist", pretrained=True, num_classes=5)  # a head dropped
        create_model("se_resnet20_cifar", pretrained=str(path), strict="attention")  # attention left at its init
    shown = [(w.filename, w.lineno) for w in seen if issubclass(w.category, VisattnWarning)]
    line = sys._getframe().f_lineno
    assert len(shown) >= 2 and {filename for filename, _ in shown} == {__file__}, shown
    assert {lineno for _, lineno in shown} == {line - 3, line - 2}, shown


@pytest.mark.parametrize("mode", ["RGB", "RGBA", "L", "P", "I;16"])
def test_a_classifiers_transform_takes_a_pil_image_as_decode_image_reads_its_file(tmp_path, mode):
    """timm's and torchvision's transforms take PIL images, which notebooks open; this one had refused them."""
    import numpy as np
    from PIL import Image

    from visattn.data.image_io import decode_image

    pixels = np.random.default_rng(0).integers(0, 256, (40, 30, 4), dtype=np.uint8)
    pixels[:10, :, 3] = 0  # transparent rows: blended on white, as decoding does
    image = Image.fromarray(pixels, "RGBA") if mode == "RGBA" else Image.fromarray(pixels[..., :3]).convert(mode)
    image.save(tmp_path / "x.png")
    transform = load_classifier("se_resnet20_cifar.fmnist").transform()
    torch.testing.assert_close(transform(image), transform(decode_image(tmp_path / "x.png")), atol=0, rtol=0)
    with pytest.raises(ConfigError, match=r"^image: a list, not an \(H, W, 3\) uint8 array"):
        transform([image])


def _tiny_captioner():
    return create_model("sat_cbam_resnet_scenes", vocab_size=12, encoder_kwargs=dict(layers=(1, 1), widths=(8, 16)),
                        embed_dim=8, hidden_dim=8, attn_dim=8)


def test_a_captioners_vocabulary_must_fit_its_word_layer_when_saved_and_when_loaded(weights_tmp):
    from visattn.data.vocab import SPECIAL_TOKENS
    from visattn.inference.captioner import load_captioner

    model = _tiny_captioner()
    words = [*SPECIAL_TOKENS, *(f"w{i}" for i in range(12 - len(SPECIAL_TOKENS)))]
    preprocessing = dict(input_size=[3, 64, 64], mean=[0.5] * 3, std=[0.5] * 3)
    with pytest.raises(WeightsError, match="vocab: 10 tokens for a 12-word output layer; give the vocabulary"):
        save_weights(model, weights_tmp / "sat_cbam_resnet_scenes.bad.safetensors", vocab=words[:10],
                     preprocessing=preprocessing)
    save_weights(model, weights_tmp / "sat_cbam_resnet_scenes.mine.safetensors", vocab=words, preprocessing=preprocessing)
    assert load_captioner("sat_cbam_resnet_scenes.mine").vocab.to_list() == words
    index = json.loads((weights_tmp / "index.json").read_text())
    index["sat_cbam_resnet_scenes.mine"]["vocab"] = words[:10]  # edited by hand
    (weights_tmp / "index.json").write_text(json.dumps(index))
    with pytest.raises(WeightsError, match="'sat_cbam_resnet_scenes.mine': 10 vocab tokens for a 12-word output "
                                           "layer; record the vocabulary the weights were trained with$"):
        load_captioner("sat_cbam_resnet_scenes.mine")


def test_a_detectors_label_names_must_be_one_per_class_when_loaded(weights_tmp):
    from visattn.inference.detector import load_detector

    save_weights(create_model("fcos_se_resnet20_cifar", num_classes=3), weights_tmp / "fcos_se_resnet20_cifar.mine.safetensors",
                 labels=["a", "b", "c"])
    assert load_detector("fcos_se_resnet20_cifar.mine").class_names == ["a", "b", "c"]
    index = json.loads((weights_tmp / "index.json").read_text())
    index["fcos_se_resnet20_cifar.mine"]["labels"] = ["a", "b"]
    (weights_tmp / "index.json").write_text(json.dumps(index))
    with pytest.raises(WeightsError, match="index entry: 2 label names for a 3-class head; record one name per class"):
        load_detector("fcos_se_resnet20_cifar.mine")


def test_a_detector_checkpoint_without_its_class_count_is_one_line(tmp_path):
    from visattn.inference.detector import load_detector

    path = tmp_path / "edited.ckpt"
    torch.save({"hyper_parameters": {"model_name": "fcos_se_resnet20_cifar"}, "state_dict": {}}, path)
    with pytest.raises(WeightsError, match=f"^{path}: not a visattn detection checkpoint \\(no detector model_name "
                                           "and num_classes\\)"):
        load_detector(checkpoint=str(path))


@pytest.mark.parametrize("loader", [load_classifier, load_captioner, load_detector])
def test_a_damaged_checkpoint_named_as_safetensors_is_a_weights_error(loader, tmp_path):
    """torch.load hands a *.safetensors path to safetensors, whose SafetensorError is no VisattnError: a service
    catching those for bad uploads crashed, and the command line printed a traceback."""
    damaged = tmp_path / "upload.safetensors"
    damaged.write_bytes(b"garbage bytes, no header")
    with pytest.raises(WeightsError, match=rf"^{damaged}: unreadable checkpoint \(.*header.*\); the file is damaged"):
        loader(checkpoint=str(damaged))


def test_weights_load_into_a_loaded_classifier_and_refuse_what_is_no_module_or_holds_whole_numbers():
    from visattn.inference.classifier import load_classifier

    classifier = load_classifier("se_resnet20_cifar.fmnist")
    other = create_model("se_resnet20_cifar", num_classes=10)
    assert load_weights(classifier, other.state_dict()) is classifier
    assert all(torch.equal(a, b) for a, b in zip(classifier.model.state_dict().values(), other.state_dict().values()))
    with pytest.raises(WeightsError, match=r"^model='resnet18': a str, not a torch module; give a model from "
                                          r"visattn.create_model, or a loaded one \(load_classifier\)$"):
        load_weights("resnet18", other.state_dict())
    rounded = {key: value.long() if key == "conv1.weight" else value for key, value in other.state_dict().items()}
    with pytest.raises(WeightsError, match="^state dict: conv1.weight holds int64 values where the model has "
                                           "floating-point weights; these are not its weights$"):
        load_weights(other, rounded)


def test_a_head_that_does_not_fit_is_dropped_whole_bias_included():
    model = create_model("resnet18", num_classes=10)
    state = create_model("resnet18", num_classes=10).state_dict()
    state["fc.weight"] = torch.zeros(10, 256)  # another width: the bias beside it fits by shape alone
    bias = model.fc.bias.detach().clone()
    with pytest.warns(UserWarning, match="dropped fc.weight, fc.bias; the new head is randomly initialised"):
        load_weights(model, state)
    assert torch.equal(model.fc.bias, bias)


def test_decoding_and_detection_settings_that_would_mislead_are_one_line():
    from visattn.inference.detector import load_detector

    captioner = _tiny_captioner().eval()
    images = torch.randn(1, 3, 64, 64)
    for penalty in (float("nan"), float("inf"), "1", None, True):
        with pytest.raises(ConfigError, match=f"^length_penalty={penalty!r}: give a finite number"):
            captioner.beam_search(images, beam_size=2, max_len=3, length_penalty=penalty)
    detector = load_detector("fcos_se_resnet20_cifar.scenes")
    for threshold in (float("nan"), "0.5", 1.5, True):
        with pytest.raises(ConfigError, match=f"^score_threshold={threshold!r}: give a number from 0 to 1, or None"):
            detector.detect([torch.rand(3, 64, 64)], score_threshold=threshold)


@pytest.mark.parametrize("kwargs, message", [
    (dict(img_size="32"), "^img_size='32': give a whole number of pixels >= 1$"),
    (dict(img_size=True), "^img_size=True: give a whole number of pixels >= 1$"),
    (dict(device=None), "^device=None: give a device name, e.g. 'cpu', 'cuda' or 'auto'$"),
])
def test_loader_arguments_of_the_wrong_type_are_one_line(kwargs, message):
    from visattn.inference.classifier import load_classifier

    with pytest.raises(ConfigError, match=message):
        load_classifier("se_resnet20_cifar.fmnist", **kwargs)


@pytest.mark.parametrize("kwargs, message", [
    (dict(), r"^model=None, checkpoint=None: give exactly one of model='ARCH.TAG' \(or a weights file visattn saved\) "
             r"and checkpoint='FILE.ckpt' \(a training checkpoint\)$"),
    (dict(model="se_resnet20_cifar.fmnist", checkpoint="run.ckpt"),
     r"^model='se_resnet20_cifar.fmnist', checkpoint='run.ckpt': give exactly one of model="),
    (dict(model="se_resnet20_cifar.fmnist", img_size=(32, 48)),
     r"^img_size=\(32, 48\): the classifier runs on square inputs; give one whole number of pixels >= 1, their side$"),
    (dict(model="se_resnet20_cifar.fmnist", img_size=(0, 0)), r"^img_size=\(0, 0\): give a whole number of pixels"),
    (dict(model="se_resnet20_cifar.fmnist", device="cuda"),
     r"^device='cuda': this machine has 0 CUDA devices; use cpu or auto$"),
    (dict(model="se_resnet20_cifar.fmnist", device="gpu"), r"^device='gpu': not a device; use cpu, cuda, cuda:N, mps"),
])
def test_loader_errors_name_the_python_argument_not_the_commands_flag(kwargs, message, monkeypatch):
    """They said "--model ARCH.TAG or --checkpoint FILE", "--img-size (32, 32)" and "--device cuda" (an API audit);
    the commands still name their flags (test_reliability_cli)."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(ConfigError, match=message):
        load_classifier(**kwargs)


def test_a_pair_of_equal_sides_is_the_img_size_create_model_takes_it_as():
    """It was refused, naming --img-size, while create_model takes the pair (an API audit)."""
    import numpy as np

    image = np.random.default_rng(0).integers(0, 256, (28, 28, 3), dtype=np.uint8)
    as_pair, as_number = (load_classifier("vit_tiny_patch4_28.fmnist", img_size=size) for size in ((32, 32), 32))
    assert as_pair.preprocessing == as_number.preprocessing and as_pair.preprocessing["input_size"] == [3, 32, 32]
    batch = as_number.transform()(image)[None]
    assert torch.equal(as_pair.predict(batch), as_number.predict(batch))


def test_a_path_given_as_the_model_name_is_one_line():
    from pathlib import Path

    from visattn.inference.captioner import load_captioner
    from visattn.inference.detector import load_detector

    for load in (load_captioner, load_detector):
        with pytest.raises(ConfigError, match="^'x.ckpt' is a training checkpoint: pass it as checkpoint=$"):
            load(Path("x.ckpt"))
        with pytest.raises(ConfigError, match="^model=3: give a registered name or ARCH.TAG as a string, or the path "
                                              "of a weights file visattn saved; pass a training checkpoint file as "
                                              "checkpoint=$"):
            load(3)


def test_is_model_takes_a_tagged_name_as_timm_does_and_is_exported():
    import visattn

    assert visattn.is_model("se_resnet20_cifar.fmnist") and visattn.is_model("se_resnet20_cifar")
    assert not visattn.is_model("no_such_arch.fmnist") and not visattn.is_model(["se_resnet20_cifar"])


def test_reset_classifier_takes_numpys_whole_numbers_as_create_model_does():
    import numpy as np

    for model in (create_model("resnet20_cifar", num_classes=np.int64(3)), create_model("vit_tiny_patch4_28", depth=1)):
        model.reset_classifier(np.int64(5))
        assert type(model.num_classes) is int and model(torch.randn(1, 3, 28, 28)).shape == (1, 5)


def test_list_models_former_pattern_keyword_still_lists_with_a_warning():
    import visattn

    with pytest.warns(FutureWarning, match=r"^pattern= is now filter=, as timm names it"):
        listed = visattn.list_models(pattern="deit_t*")
    assert listed == visattn.list_models(filter="deit_t*") == ["deit_tiny_patch16_224"]
    with pytest.warns(FutureWarning, match=r"^pattern= is now filter="):
        assert visattn.list_pretrained(pattern="vit_*") == visattn.list_pretrained("vit_*")
    with pytest.raises(ConfigError, match=r"^filter='resnet18\*' and pattern='vit\*': pattern= is filter='s former"):
        visattn.list_models("resnet18*", pattern="vit*")  # had listed the ViTs


@pytest.mark.parametrize("call, message", [
    (lambda: __import__("visattn").list_models(5), r"^filter=5: give an fnmatch pattern such as 'vit_\*'"),
    (lambda: __import__("visattn").list_models(exclude_filters=[None]), r"^exclude_filters=\[None\]: give an fnmatch"),
    (lambda: create_model("SE_RESNET20_CIFAR"), "^unknown model 'SE_RESNET20_CIFAR': did you mean se_resnet20_cifar"),
    # "did you mean vit_base_patch16_224, ..." had not said which one torchvision's weights fit (a torchvision audit)
    (lambda: create_model("vit_b_32"), r"^unknown model 'vit_b_32': torchvision's name for visattn's "
                                       r"vit_base_patch32_224, into which its weights load \(create_model\("),
    (lambda: create_model("resnet18", pretrained=""), "^pretrained='': give a weights file, True, a shipped ARCH.TAG"),
    # timm's ways of naming a weights file had been "has no argument ...: it takes block, layers, ..." (a timm audit)
    # timm's layer-config switches had been answered with the builder's argument list (a timm user's audit)
    (lambda: create_model("resnet18", scriptable=True),
     r"^resnet18 has no argument 'scriptable', which timm.create_model takes: leave it out \(visattn builds one "
     r"variant of each layer: trace, torch.export or `visattn export` the model as built; TorchScript scripting is "
     r"not supported\)$"),
    (lambda: create_model("vit_tiny_patch4_28", exportable=True), r"^vit_tiny_patch4_28 has no argument 'exportable'"),
    (lambda: create_model("resnet18", no_jit=True),
     r"^resnet18 has no argument 'no_jit', which timm.create_model takes"),
    (lambda: create_model("resnet18", scriptable=False, cache_dir="/tmp/hub"),
     r"^resnet18 has no argument 'cache_dir'"),
    (lambda: create_model("resnet18", cache_dir="/tmp/hub"),
     r"^resnet18 has no argument 'cache_dir', which timm.create_model takes: set \$HF_HUB_CACHE"),
    (lambda: create_model("resnet18", pretrained_cfg_overlay={"file": "w.pth"}),
     r"^resnet18 has no argument 'pretrained_cfg_overlay', which timm.create_model takes: give create_model\(\.\.\., "
     r"pretrained='FILE'\) for a weights file; a model's preprocessing comes from its weights"),
    # timm's usual idiom, with pretrained=True: "no shipped weights for resnet18" had hidden why (a timm user's audit)
    (lambda: create_model("resnet18", pretrained=True, pretrained_cfg_overlay={"file": "w.pth"}),
     r"^resnet18 has no argument 'pretrained_cfg_overlay', which timm.create_model takes"),
    (lambda: create_model("resnet18", checkpoint_path="w.pth"),
     r"^resnet18 has no argument 'checkpoint_path', which timm.create_model takes: give create_model\(\.\.\., "
     r"pretrained='FILE'\) for a weights file$"),
    # torchvision's had been "did you mean widths?" (a torchvision user's audit)
    (lambda: create_model("resnet50", weights="IMAGENET1K_V1"),
     r"^resnet50 has no argument 'weights', which torchvision's builders take: save torchvision's weights with "
     r"torch.save\(Weights.get_state_dict\(\), 'FILE.pth'\) and give create_model\(\.\.\., pretrained='FILE.pth'\)"),
    (lambda: create_model("fcos_resnet50", weights_backbone=None),
     r"^fcos_resnet50 has no argument 'weights_backbone', which torchvision's builders take"),
    # timm's arguments visattn's classes lack had been "did you mean drop_rate?" (a timm user's audit)
    (lambda: create_model("resnet18", drop_block_rate=0.1),
     r"^resnet18 has no argument 'drop_block_rate': timm's ResNet takes it, visattn's ResNet does not; timm's own "
     r"model takes it: model_name timm:resnet18 in a config, timm.create_model\('resnet18', \.\.\.\) in Python$"),
    (lambda: create_model("cbam_resnet18", block_args={}),
     r"^cbam_resnet18 has no argument 'block_args': timm's ResNet takes it, visattn's ResNet does not$"),
    (lambda: create_model("vit_tiny_patch4_28", act_layer="relu"),
     r"^act_layer='relu': use 'gelu' \(exact\), 'gelu_tanh' or 'quick_gelu' \(OpenAI CLIP's\)$"),
    (lambda: create_model("resnet18", zero_init_last=True),
     r"^resnet18 has no argument 'zero_init_last', which timm's ResNet takes: visattn's name for it is "
     r"zero_init_residual$"),
    # a TypeError deep inside ("'>' not supported between instances of 'str' and 'int'"), and -1 taken
    (lambda: create_model("resnet20_cifar").reset_classifier("10"), r"^num_classes='10': give a whole number of class"),
    (lambda: create_model("resnet20_cifar").reset_classifier(-1), r"^num_classes=-1: give a whole number of classes"),
    (lambda: create_model("vit_tiny_patch4_28", depth=1).reset_classifier(-1), r"^num_classes=-1: give a whole num"),
    # "did you mean out_channels?", the channels of its feature pyramid (an API audit)
    (lambda: create_model("fcos_se_resnet20_cifar", in_chans=1),
     r"^fcos_se_resnet20_cifar has no argument 'in_chans': detectors take 3-channel \(RGB\) images only; leave it "
     r"out, and give gray images as RGB \(their one channel repeated\)$"),
    (lambda: create_model("detr_resnet20_cifar", in_chans=1), r"^detr_resnet20_cifar has no argument 'in_chans': "
                                                               r"detectors take 3-channel \(RGB\) images only"),
])
def test_registry_arguments_it_cannot_use_are_one_line(call, message):
    with pytest.raises(VisattnError, match=message):
        call()


def test_pretrained_naming_the_architectures_own_tag_builds_it_as_the_tag_does():
    """vit_tiny_patch4_28.fmnist has 4 blocks: its weights were refused by the 12-block default."""
    model = create_model("vit_tiny_patch4_28", pretrained="vit_tiny_patch4_28.fmnist")
    tagged = create_model("vit_tiny_patch4_28.fmnist")
    assert model.visattn_name == "vit_tiny_patch4_28.fmnist" and len(model.blocks) == len(tagged.blocks) == 4
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), tagged.state_dict().values()))


def test_save_weights_takes_default_as_true_or_false_only(weights_tmp):
    model = create_model("se_resnet20_cifar", num_classes=10)
    with pytest.raises(WeightsError, match="default='no': give true or false"):
        save_weights(model, weights_tmp / "se_resnet20_cifar.mine.safetensors", labels=DIGITS, preprocessing=GRAY_28,
                     default="no")


def test_features_only_weights_are_not_loaded_as_a_classifier(weights_tmp):
    from visattn.inference.classifier import load_classifier

    save_weights(create_model("se_resnet20_cifar", num_classes=0), weights_tmp / "se_resnet20_cifar.feats.safetensors",
                 preprocessing=GRAY_28)
    with pytest.raises(WeightsError, match=r"^se_resnet20_cifar.feats: weights without a classifier head "
                                           r"\(num_classes 0\) give features, not classes"):
        load_classifier("se_resnet20_cifar.feats")


@pytest.mark.parametrize("arch, kwargs, message", [
    ("vit_tiny_patch4_28", dict(drop_path_rate="0.1"), r"^drop_path_rate='0.1': vit_tiny_patch4_28 takes a number, not a str$"),
    ("vit_tiny_patch4_28", dict(drop_path_rate=2.0), r"^drop_path_rate=2.0: give a drop probability"),  # failed in training
    ("vit_tiny_patch4_28", dict(attn_drop_rate=-1), r"^attn_drop_rate=-1: give a drop probability"),
    ("vit_tiny_patch4_28", dict(num_heads=5), r"^num_heads=5: the width 192 must split evenly into heads"),
    ("se_resnet20_cifar", dict(drop_rate=1), r"^drop_rate=1: give a drop probability"),
    ("fcos_se_resnet20_cifar", dict(num_classes=0), r"^num_classes=0: give a whole number >= 1"),
    ("detr_se_resnet20_cifar", dict(num_queries=0), r"^num_queries=0: give a whole number >= 1"),  # never detected
    ("se_resnet20_cifar", dict(strict="no"), r"^strict='no': give True \(every weight must fit\), 'attention'"),
    # From a Python-API audit: each was a ZeroDivisionError or TypeError, or built and misbehaved later
    ("vit_tiny_patch4_28", dict(num_heads=0), r"^num_heads=0: give a whole number >= 1$"),
    ("vit_tiny_patch4_28", dict(embed_dim=0), r"^embed_dim=0: give a whole number >= 1$"),
    ("sat_cbam_resnet_scenes", dict(img_size=0), r"^img_size=0: give a whole number >= 1$"),  # was 224 px
    ("sat_cbam_resnet_scenes", dict(img_size=(64, 96)), r"^img_size=\(64, 96\): give a whole number"),
    ("sat_cbam_resnet_scenes", dict(vocab_size="100"), r"^vocab_size='100': give a whole number above 2"),
    ("sat_cbam_resnet_scenes", dict(dropout=2.0), r"^dropout=2.0: give a drop probability"),
    ("sat_cbam_resnet_scenes", dict(hidden_dim=0), r"^hidden_dim=0: give a whole number >= 1$"),
    # From a second Python-API audit: a bare ValueError; "no" built a class token; "4" failed inside torch
    ("detr_se_resnet20_cifar", dict(hidden_dim=100), r"^num_heads=8: the width 100 must split evenly into heads"),
    ("vit_tiny_patch4_28", dict(class_token="no", global_pool="avg"), r"^class_token='no': vit_tiny_patch4_28 takes "
                                                                      r"True or False, not a str$"),
    ("vit_tiny_patch4_28", dict(mlp_ratio="4"), r"^mlp_ratio='4': vit_tiny_patch4_28 takes a number, not a str$"),
    # a config's model_kwargs (dict[str, Any], which nothing converts): YAML 1.1 reads 1e-5 as text
    ("vit_tiny_patch4_28", dict(init_values="1e-5"), r"^init_values='1e-5': vit_tiny_patch4_28 takes a number, not a "
                                                     r"str \(YAML reads 1e-5 as text; write it with a decimal point, "
                                                     r"e.g. 1.0e-5\)$"),
])
def test_builder_arguments_that_fail_later_or_deep_inside_are_one_line(arch, kwargs, message):
    with pytest.raises(ConfigError, match=message):
        create_model(arch, **kwargs)


@pytest.mark.parametrize("arch", ["vit_tiny_patch4_28", "se_resnet20_cifar"])
@pytest.mark.parametrize("given, message", [
    (lambda: torch.zeros(1, 3, 28, 28, dtype=torch.uint8), r"^input holds uint8 values; give normalised floating-point"),
    (lambda: [torch.zeros(3, 28, 28)], r"^input is a list, not a tensor; give a batch tensor \(B, 3, H, W\), e.g. "
                                       r"torch.stack\(images\)$"),
    (lambda: torch.zeros(1, 3, 28, 28).numpy(), r"^input is a ndarray, not a tensor; .* e.g. torch.as_tensor\(x\)$"),
])
def test_classifier_inputs_that_are_no_float_tensor_are_one_line(arch, given, message):
    # they were "'list' object has no attribute 'ndim'" or a dtype error from the first convolution
    with pytest.raises(ConfigError, match=message):
        create_model(arch).eval()(given())


@pytest.mark.parametrize("arch", ["vit_tiny_patch4_28", "se_resnet20_cifar"])
def test_inputs_of_another_dtype_or_device_than_the_weights_are_one_line_unless_autocast_casts_them(arch):
    """torch's "Input type (CPUBFloat16Type) and weight type (torch.FloatTensor) should be the same or input should
    be a MKLDNN tensor ..." had been the message of a notebook's commonest slip."""
    model, x = create_model(arch).eval(), torch.randn(1, 3, 28, 28)
    with pytest.raises(ConfigError, match=r"^input holds bfloat16 values but the model's weights are float32; cast "
                                          r"it with x.to\(torch.float32\)$"):
        model(x.bfloat16())
    with pytest.raises(ConfigError, match=r"^input is on meta but the model's weights are on cpu; move it with "
                                          r"x.to\('cpu'\)$"):
        model(x.to("meta"))
    with torch.autocast("cpu", torch.bfloat16):
        assert model(x).dtype == torch.bfloat16
        with pytest.raises(ConfigError, match=r"^input holds float64 values but the model's weights are float32"):
            model(x.double())
    model.bfloat16()
    torch.testing.assert_close(model(x.bfloat16()), model.float()(x).bfloat16(), atol=0.1, rtol=0.1)


@pytest.mark.parametrize("name, mode", [("dm_nfnet_f0.dm_in1k", "'squash' and crop_pct 0.9"),
                                        ("deepseek_vit_412m.deepseek_v4_1_flash", "'border'")])
def test_timm_weights_evaluated_in_a_way_visattn_cannot_reproduce_warn(name, mode):
    """A squash with crop_pct below 1 was recorded as the whole-image resize, a letterbox as a centre crop,
    without a word: inputs up to 3.7 normalised units off timm's."""
    from visattn.errors import VisattnWarning
    from visattn.pretrained import weights_preprocessing

    with pytest.warns(VisattnWarning, match=f"^timm:{name}: timm evaluates these weights with crop_mode {mode}"):
        weights_preprocessing(None, f"timm:{name}")


def test_timm_weights_visattn_evaluates_as_timm_does_load_without_a_warning():
    import warnings

    from visattn.pretrained import weights_preprocessing

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert weights_preprocessing(None, "timm:resnet50.a1_in1k")["recipe"] == "photo"
        assert weights_preprocessing(None, "timm:vit_base_patch16_clip_384.laion2b_ft_in12k_in1k")["recipe"] == "small"


@pytest.mark.parametrize("task, kwargs, key, source", [
    ("classification", {"model_name": "se_resnet20_cifar", "num_classes": 3}, "num_classes",
     "model.init_args.num_classes"),
    ("detection", {"model_name": "fcos_resnet20_cifar", "num_classes": 3}, "num_classes", "model.init_args.num_classes"),
    ("captioning", {"vocab": ["<pad>", "<start>", "<end>", "<unk>", "a"]}, "vocab_size",
     r"model.init_args.vocab \(the data's vocabulary\)"),
])
def test_a_model_kwargs_key_the_task_sets_from_the_data_is_one_line(task, kwargs, key, source):
    """It was "could not be built with them (... got multiple values for keyword argument 'num_classes')"."""
    from visattn.tasks.captioning import CaptioningTask
    from visattn.tasks.classification import ImageClassifier
    from visattn.tasks.detection import DetectionTask

    build = {"classification": ImageClassifier, "detection": DetectionTask, "captioning": CaptioningTask}[task]
    with pytest.raises(ConfigError, match=rf"^model.init_args.model_kwargs.{key}: {source} sets it, from the data; "
                                          "drop it from model_kwargs$"):
        build(model_kwargs={key: 10}, **kwargs)


def _interleaved(module, first, second) -> dict:
    """``first()`` in thread A and ``second()`` in thread B, B started while A's forward is at ``module``, where A
    waits until B is done (1 s at most): without a lock B's whole call runs inside A's."""
    import threading

    at_module, b_done, results = threading.Event(), threading.Event(), {}

    def hold_a(*_):
        if threading.current_thread().name == "A":
            at_module.set()
            b_done.wait(1.0)

    def call(name, fn):
        try:
            results[name] = fn()
        except Exception as err:  # a wrong result or a misleading error: either is the finding
            results[name] = err
        if name == "B":
            b_done.set()

    handle = module.register_forward_hook(hold_a)
    a = threading.Thread(target=call, args=("A", first), name="A")
    a.start()
    assert at_module.wait(30)
    b = threading.Thread(target=call, args=("B", second), name="B")
    b.start()
    a.join(60), b.join(60)
    handle.remove()
    return results


def _hooks_left(model) -> int:
    return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in model.modules())


@pytest.mark.parametrize("method", ["gradcam", "gates"])
def test_explain_from_two_threads_gives_each_its_own_map_and_leaves_the_model_as_it_was(method):
    """Grad-CAM's hook recorded the other thread's forward, and gates read the other thread's kept gates: a
    thread got the other image's map or a misleading error, and keep_gate stayed on."""
    from visattn.explain import explain, gate_modules

    torch.manual_seed(0)
    model = create_model("cbam_resnet20_cifar", num_classes=10).eval()
    first, second = torch.randn(3, 32, 32), torch.randn(3, 32, 32)
    expected = {"A": explain(model, first, method), "B": explain(model, second, method)}
    results = _interleaved(model.fc, lambda: explain(model, first, method), lambda: explain(model, second, method))
    for name in "AB":
        assert not isinstance(results[name], Exception), results[name]
        torch.testing.assert_close(torch.as_tensor(results[name]), torch.as_tensor(expected[name]))
    assert _hooks_left(model) == 0 and not any(m.keep_gate for m in gate_modules(model).values())


def test_detect_from_two_threads_keeps_each_calls_threshold_and_attention():
    """A thread's lowered FCOS score floor stayed lowered for the rest of the process (100 detections instead of
    19 at the default), and DETR's attention maps were taken from the other thread's images."""
    from visattn.inference.detector import load_detector

    fcos, detr = load_detector("fcos_se_resnet20_cifar.scenes"), load_detector("detr_se_resnet20_cifar.scenes")
    torch.manual_seed(0)
    first, second = [torch.rand(3, 64, 64)], [torch.rand(3, 64, 64) * 0.5]
    default = fcos.detect(first)[0]["scores"]
    results = _interleaved(fcos.model.head, lambda: fcos.detect(first, score_threshold=0.01),
                           lambda: fcos.detect(second, score_threshold=0.001))
    torch.testing.assert_close(results["A"][0]["scores"], fcos.detect(first, score_threshold=0.01)[0]["scores"])
    torch.testing.assert_close(results["B"][0]["scores"], fcos.detect(second, score_threshold=0.001)[0]["scores"])
    assert fcos.model.score_thresh == 0.05 and torch.equal(fcos.detect(first)[0]["scores"], default)
    expected = {"A": detr.detect(first, attention=True), "B": detr.detect(second, attention=True)}
    results = _interleaved(detr.model.bbox_embed, lambda: detr.detect(first, attention=True),
                           lambda: detr.detect(second, attention=True))
    for name in "AB":
        assert not isinstance(results[name], Exception), results[name]
        torch.testing.assert_close(results[name][0]["attention"], expected[name][0]["attention"])
    assert _hooks_left(detr.model) == 0 and not detr.model.transformer.decoder[-1].cross_attn.keep_attention


def test_predictions_are_ordinary_tensors_the_caller_can_write_and_differentiate():
    """They were inference tensors: an in-place write or autograd on them raised a RuntimeError."""
    from visattn.inference.captioner import load_captioner
    from visattn.inference.classifier import load_classifier
    from visattn.inference.detector import load_detector

    probs = load_classifier("se_resnet20_cifar.fmnist").predict(torch.randn(2, 3, 28, 28))
    probs[probs < 0.1] = 0.0
    found = load_detector("fcos_se_resnet20_cifar.scenes").detect([torch.rand(3, 64, 64)], score_threshold=0.0)
    found[0]["boxes"] += 1.0
    decoded = load_captioner("sat_cbam_resnet_scenes.scenes").caption(torch.randn(2, 3, 64, 64), beam_size=2)
    decoded.attention[0].mul_(2.0)
    assert (probs * torch.ones(1, requires_grad=True)).sum().requires_grad
    # one caption's maps are its own, not a view holding every image's
    assert all(maps.untyped_storage().nbytes() == maps.numel() * maps.element_size() for maps in decoded.attention)


def test_evaluation_leaves_the_callers_random_numbers_as_they_were():
    """Its DataLoader drew the workers' seeds from the global RNG, so scoring between two draws changed them."""
    from torch.utils.data import TensorDataset

    from visattn.inference.classifier import load_classifier
    from visattn.inference.classifier_scoring import evaluate_classifier

    classifier = load_classifier("se_resnet20_cifar.fmnist")
    images = TensorDataset(torch.randn(6, 3, 28, 28), torch.randint(0, 10, (6,)))
    torch.manual_seed(5)
    before = torch.get_rng_state()
    evaluate_classifier(classifier, images, batch_size=4)
    assert torch.equal(torch.get_rng_state(), before)


@pytest.mark.parametrize("old, new", [
    ("visattn.tasks.classification.load_classifier", "visattn.inference.classifier.load_classifier"),
    ("visattn.tasks.classification.read_checkpoint", "visattn.inference.checkpoints.read_checkpoint"),
    ("visattn.tasks.captioning.load_captioner", "visattn.inference.captioner.load_captioner"),
    ("visattn.tasks.detection.detect_files", "visattn.inference.detector.detect_files"),
    ("visattn.tasks.captioning.evaluate_captioner", "visattn.inference.caption_scoring.evaluate_captioner"),
    ("visattn.tasks.detection.evaluate_detector", "visattn.inference.detection_scoring.evaluate_detector"),
    ("visattn.tasks.classification.evaluate_classifier", "visattn.inference.classifier_scoring.evaluate_classifier"),
    ("visattn.tasks.classification.evaluation_dataset", "visattn.inference.classifier_scoring.evaluation_dataset"),
    ("visattn.tasks.classification.imagefolder_root", "visattn.inference.classifier_scoring.imagefolder_root"),
    ("visattn.tasks.classification.check_fashion_mnist_labels",
     "visattn.inference.classifier_scoring.check_fashion_mnist_labels"),
    ("visattn.tasks.classification.class_accuracies", "visattn.inference.classifier_scoring.class_accuracies"),
    # what the loaders return, and the schedule's helpers (ImportError, from an audit of older versions' users)
    ("visattn.tasks.classification.Classifier", "visattn.inference.classifier.Classifier"),
    ("visattn.tasks.captioning.Captioner", "visattn.inference.captioner.Captioner"),
    ("visattn.tasks.detection.Detector", "visattn.inference.detector.Detector"),
    ("visattn.tasks.classification.warmup_cosine", "visattn.tasks.optimization.warmup_cosine"),
    ("visattn.tasks.classification.adamw_warmup_cosine", "visattn.tasks.optimization.adamw_warmup_cosine"),
    ("visattn.tasks.classification.weight_decay_groups", "visattn.tasks.optimization.weight_decay_groups"),
    ("visattn.tasks.classification.warn_of_a_changed_schedule",
     "visattn.tasks.optimization.warn_of_a_changed_schedule"),
    ("visattn.tasks.classification.split_folders", "visattn.data.image_folder.split_folders"),
])
def test_the_loaders_old_import_paths_still_give_them_with_a_warning_naming_the_new(old, new):
    """The loaders and what they read moved to visattn.inference (their import had loaded Lightning); visattn
    0.1.0's README named the old paths, which then raised ImportError (from a review)."""
    import importlib

    module, name = old.rsplit(".", 1)
    with pytest.warns(FutureWarning, match=rf"^{re.escape(old)} moved to {re.escape(new)}; import it from there"):
        found = getattr(importlib.import_module(module), name)
    assert found is getattr(importlib.import_module(new.rsplit(".", 1)[0]), name)
    with pytest.raises(AttributeError, match=r"has no attribute 'load_nothing'"):
        importlib.import_module(module).load_nothing


def test_visattns_warning_filters_from_several_threads_leave_the_processs_filters_as_they_were():
    """warnings.catch_warnings saves the filter list and puts it back on leaving: two threads' blocks left out of
    order kept one thread's filter for good (an `always` filter from explain_image ahead of the host's own, an
    `ignore` of Pillow's decompression-bomb warning from decode_image). visattn's blocks take turns."""
    import io
    import threading
    import warnings

    from PIL import Image

    from visattn.data.image_io import decode_image
    from visattn.errors import caught_warnings

    before = list(warnings.filters)
    first_inside, second_inside, first_left = threading.Event(), threading.Event(), threading.Event()

    def first() -> None:
        with caught_warnings():
            warnings.simplefilter("ignore", ResourceWarning)
            first_inside.set()
            second_inside.wait(1)  # never set while this thread holds the filters
        first_left.set()

    def second() -> None:
        first_inside.wait(10)
        with caught_warnings():
            second_inside.set()
            first_left.wait(10)

    threads = [threading.Thread(target=first), threading.Thread(target=second)]
    [thread.start() for thread in threads]
    [thread.join(30) for thread in threads]
    assert warnings.filters == before
    png = io.BytesIO()
    Image.new("RGB", (8, 8)).save(png, format="PNG")
    threads = [threading.Thread(target=lambda: [decode_image(png.getvalue()) for _ in range(300)]) for _ in range(4)]
    [thread.start() for thread in threads]
    [thread.join(60) for thread in threads]
    assert warnings.filters == before


@pytest.mark.skipif(not os.path.exists("/proc/self/status"), reason="the umask is read from /proc on Linux")
def test_files_visattn_writes_take_the_umask_without_it_being_changed_meanwhile(tmp_path, monkeypatch):
    """The umask was read by setting it to 0 and back, so another thread of the program could create a
    world-writable file meanwhile (some 9,800 of 44,000 files in an audit's loop)."""
    from visattn.fileio import atomic_path

    mask = os.umask(0o027)
    try:
        monkeypatch.setattr(os, "umask", lambda _: pytest.fail("the umask was changed"))
        with atomic_path(tmp_path / "out.png") as tmp:
            tmp.write_bytes(b"map")
    finally:
        monkeypatch.undo()
        os.umask(mask)
    assert (tmp_path / "out.png").stat().st_mode & 0o777 == 0o640


def test_decoding_does_not_wait_for_another_threads_visattn_call_holding_the_warning_filters():
    """An image's decoding waited for a checkpoint's reading or a figure's saving in another thread (0.2 s behind a
    400 MB checkpoint); it goes on, leaving the filters to that call."""
    import io
    import threading

    from PIL import Image

    from visattn.data.image_io import decode_image
    from visattn.errors import caught_warnings

    png = io.BytesIO()
    Image.new("RGB", (8, 8)).save(png, format="PNG")
    inside, decoded, order = threading.Event(), threading.Event(), []

    def hold() -> None:
        with caught_warnings():
            inside.set()
            order.append("decoded first" if decoded.wait(10) else "waited")

    holder = threading.Thread(target=hold)
    holder.start()
    inside.wait(10)
    assert decode_image(png.getvalue()).shape == (8, 8, 3)
    decoded.set()
    holder.join(30)
    assert order == ["decoded first"]


@pytest.mark.skipif(not hasattr(os, "fork"), reason="a forked process's copy of the lock")
def test_a_process_forked_while_another_thread_holds_the_warning_filters_takes_them():
    """DataLoader workers forked while a thread read a checkpoint inherited the lock as held, by a thread they do not
    have: each worker's first decode waited for ever. They inherit the filters and display outside that thread's
    block, not its own (an `always` filter and a recording display had swallowed every warning of the child)."""
    import signal
    import threading
    import time
    import warnings

    from visattn.errors import caught_warnings

    inside, leave = threading.Event(), threading.Event()
    filters, display = list(warnings.filters), warnings.showwarning

    def hold() -> None:
        with caught_warnings(record=True):
            warnings.simplefilter("always")
            inside.set()
            leave.wait(60)

    holder = threading.Thread(target=hold)
    holder.start()
    inside.wait(10)
    try:
        pid = os.fork()
        if pid == 0:  # the child: 0 once it has taken the filters, as they were outside the other thread's block
            code = 1
            try:
                with caught_warnings():
                    code = 0 if (warnings.filters, warnings.showwarning) == (filters, display) else 3
            finally:
                os._exit(code)
        deadline, (done, status) = time.monotonic() + 30, (0, 0)
        while done == 0 and time.monotonic() < deadline:
            time.sleep(0.05)
            done, status = os.waitpid(pid, os.WNOHANG)
        if done == 0:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
        assert done == pid and os.waitstatus_to_exitcode(status) == 0
    finally:
        leave.set()
        holder.join(30)


def test_the_loaders_import_from_visattn_inference_without_lightning_as_the_readme_places_them():
    """The README placed them in visattn.inference, whose __init__ held neither: an ImportError."""
    probe = ("import sys, visattn\n"
             "from visattn.inference import load_captioner, load_classifier, load_detector\n"
             "load_classifier('se_resnet20_cifar.fmnist')\n"
             "print(load_classifier is visattn.load_classifier, load_captioner is visattn.load_captioner,\n"
             "      load_detector is visattn.load_detector, *sorted({'lightning', 'torchmetrics'} & {*sys.modules}))")
    found = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=300)
    assert found.stdout.split() == ["True", "True", "True"], found.stderr
    import visattn.inference

    with pytest.raises(AttributeError, match="has no attribute 'load_model'"):
        visattn.inference.load_model


def test_the_tasks_are_classes_of_visattn_tasks_as_a_config_may_name_them():
    """`class_path: visattn.tasks.ImageClassifier` was "module 'visattn.tasks' has no attribute 'ImageClassifier'",
    though `visattn.data.FashionMNISTDataModule` names a data module so; the package still imports no Lightning."""
    probe = ("import sys, visattn.tasks\n"
             "print(sorted({'lightning', 'torchmetrics'} & {*sys.modules}))\n"
             "from visattn.tasks import CaptioningTask, DetectionTask, ImageClassifier\n"
             "from visattn.tasks.lightning_cli import config_task\n"
             "print([config_task(f'visattn.tasks.{c.__name__}') is c\n"
             "       for c in (ImageClassifier, CaptioningTask, DetectionTask)], ImageClassifier.__module__)")
    found = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=300)
    assert found.stdout.splitlines() == ["[]", "[True, True, True] visattn.tasks.classification"], found.stderr
    import visattn.tasks

    with pytest.raises(AttributeError, match="has no attribute 'Classifier'"):
        visattn.tasks.Classifier


@pytest.mark.parametrize("name", ["se_resnet20_cifar.fmnist", "vit_tiny_patch4_28.fmnist"])
def test_a_loaded_classifier_saved_whole_loads_back_with_its_labels_and_preprocessing(name, tmp_path):
    """Its labels became '0'..'9' and its preprocessing ImageNet's (probabilities 0.42 off), with a warning asking for
    what the object held (an API audit); arguments given still win over the object's."""
    import numpy as np

    loaded = load_classifier(name)
    arch = name.split(".")[0]
    with warnings.catch_warnings():
        warnings.simplefilter("error", VisattnWarning)
        save_weights(loaded, tmp_path / f"{arch}.copy.safetensors")
    again = load_classifier(tmp_path / f"{arch}.copy.safetensors")
    assert again.class_names == loaded.class_names and again.preprocessing == loaded.preprocessing
    image = np.random.default_rng(0).integers(0, 256, (40, 30, 3), dtype=np.uint8)
    assert torch.equal(again.transform()(image), loaded.transform()(image))
    batch = loaded.transform()(image)[None]
    assert torch.equal(again.predict(batch), loaded.predict(batch))
    renamed = [f"class {i}" for i in range(10)]
    save_weights(loaded, tmp_path / f"{arch}.renamed.safetensors", labels=renamed, task="classification")
    assert load_classifier(tmp_path / f"{arch}.renamed.safetensors").class_names == renamed


def test_a_loaded_detector_saved_whole_loads_back_with_its_class_names_and_category_ids(tmp_path):
    """Its class names became '0', '1', ... without a word (an API audit)."""
    loaded = load_detector("fcos_se_resnet20_cifar.scenes")
    with warnings.catch_warnings():
        warnings.simplefilter("error", VisattnWarning)
        save_weights(loaded, tmp_path / "fcos_se_resnet20_cifar.copy.safetensors")
    again = load_detector(tmp_path / "fcos_se_resnet20_cifar.copy.safetensors")
    assert again.class_names == loaded.class_names and again.category_ids == loaded.category_ids
    assert again.preprocessing == loaded.preprocessing
    images = [torch.rand(3, 64, 64, generator=torch.Generator().manual_seed(0))]
    for ours, theirs in zip(again.detect(images, score_threshold=0.05), loaded.detect(images, score_threshold=0.05)):
        assert ours.keys() == theirs.keys() and all(torch.equal(ours[k], theirs[k]) for k in ours)


def test_a_loaded_captioner_saved_whole_loads_back_with_its_vocabulary_and_max_len(tmp_path):
    """The file was written, then load_captioner refused it: "the weights entry has no vocab" (an API audit)."""
    import numpy as np

    loaded = load_captioner("sat_cbam_resnet_scenes.scenes")
    save_weights(loaded, tmp_path / "sat_cbam_resnet_scenes.copy.safetensors")
    again = load_captioner(tmp_path / "sat_cbam_resnet_scenes.copy.safetensors")
    assert again.vocab.to_list() == loaded.vocab.to_list() and again.max_len == loaded.max_len
    assert again.preprocessing == loaded.preprocessing
    image = np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8)
    batch = loaded.transform()(image)[None]
    ours, theirs = again.caption(batch, beam_size=2), loaded.caption(batch, beam_size=2)
    assert [t.tolist() for t in ours.tokens] == [t.tolist() for t in theirs.tokens] and len(ours.tokens[0])
    torch.testing.assert_close(ours.scores, theirs.scores, rtol=0, atol=0)


@pytest.mark.parametrize("given, missing", [
    (dict(), r"vocab and preprocessing; pass vocab=\[...\] \(its words by id: Captioner.vocab.to_list\(\)\) and "
              r"preprocessing=dict\(input_size=..., mean=..., std=...\)"),
    (dict(vocab="words"), r"preprocessing; pass preprocessing=dict\(input_size=..., mean=..., std=...\)"),
])
def test_a_captioners_module_saved_without_what_load_captioner_needs_is_refused_before_writing(given, missing,
                                                                                               tmp_path):
    """Written, the file was refused by load_captioner: "the weights entry has no vocab" (an API audit)."""
    loaded = load_captioner("sat_cbam_resnet_scenes.scenes")
    given = {key: loaded.vocab.to_list() for key in given}
    path = tmp_path / "sat_cbam_resnet_scenes.bare.safetensors"
    with pytest.raises(WeightsError, match=rf"^{path}: a captioner's weights load only with their {missing}, or save "
                                           "the loaded Captioner, which carries them$"):
        save_weights(loaded.model, path, **given)
    assert not list(tmp_path.iterdir())


def test_a_detectors_module_saved_without_labels_warns_that_they_load_as_numbers(tmp_path):
    """Its class names became '0', '1', ... without a word, where a classifier's warned (an API audit)."""
    path = tmp_path / "fcos_se_resnet20_cifar.bare.safetensors"
    with pytest.warns(VisattnWarning, match=r"saved without labels; loading it will assume labels '0'..'N-1'; pass "
                                            r"labels=\[...\] to save_weights, or save what load_detector returned, "
                                            r"which carries them$"):
        save_weights(create_model("fcos_se_resnet20_cifar", num_classes=3), path)
    assert load_detector(path).class_names == ["0", "1", "2"]
