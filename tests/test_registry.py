import json
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Optional

import numpy as np
import pytest
import torch
import timm

import visattn
from visattn import create_model, list_models, list_pretrained, register_model
from visattn.cli import main
from visattn.errors import ArgumentError, ConfigError, UnknownModelError
from visattn.inference.classifier import build_classifier


def test_list_models_wildcards():
    vits = list_models("vit_*")
    assert "vit_tiny_patch16_224" in vits and "vit_base_patch32_224" in vits
    assert all(n.startswith("vit_") for n in vits)
    assert list_models("deit_*_patch16_224") == ["deit_base_patch16_224", "deit_small_patch16_224", "deit_tiny_patch16_224"]
    assert list_models("no_such_*") == []
    assert list_models() == sorted(list_models())


def test_registry_key_is_function_name():
    from visattn.models import vit

    for name in list_models("vit_*") + list_models("deit_*"):
        assert getattr(vit, name).__name__ == name


def test_visattns_own_families_are_known_without_building_a_model():
    """Only another package's architecture is built (on the meta device) to find its family: building visattn's 91
    had added about 1.8 s to `visattn models` and the first create_model (a review)."""
    from visattn import registry

    assert set(list_models()) <= set(registry._model_family)


def _register_as_another_packages(monkeypatch, builder, module: str) -> str:
    """``builder`` registered as if ``module`` of another package had, for this test only."""
    from visattn import registry

    registry._import_models()
    builder.__module__ = module
    monkeypatch.setitem(registry._model_entrypoints, builder.__name__, builder)
    monkeypatch.setattr(registry, "_model_family", dict(registry._model_family))
    return builder.__name__


def test_another_packages_builder_takes_its_own_arguments_whatever_class_it_annotates(monkeypatch):
    """An audit of other packages' models: arguments were checked against the class the builder's return annotation
    names (`width` was "e_width_net has no argument 'width'", `num_classes` of a builder annotated nn.Sequential "it
    takes " and nothing), and an annotation naming a class imported only for type checkers was a NameError traceback
    in `visattn fit` and create_model."""
    from visattn.models.resnet import ResNet

    def wide_net(width: int = 1, num_classes: int = 10) -> torch.nn.Sequential:
        net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(12, 8 * width), torch.nn.Linear(8 * width,
                                                                                                      num_classes))
        net.num_classes = num_classes
        return net

    def resnet_of_width(width: int = 16, **kwargs) -> ResNet:
        return create_model("resnet20_cifar", **kwargs)

    def hinted_net(**kwargs):
        return create_model("resnet20_cifar", **kwargs)

    hinted_net.__annotations__["return"] = "NotImportedHere"  # a class imported only under TYPE_CHECKING

    for builder in (wide_net, resnet_of_width, hinted_net):
        _register_as_another_packages(monkeypatch, builder, "my_package.models")
    assert create_model("wide_net", width=2, num_classes=3)[2].weight.shape == (3, 16)
    assert create_model("resnet_of_width", width=32, num_classes=3).num_classes == 3
    assert create_model("hinted_net", num_classes=3).num_classes == 3
    with pytest.raises(ConfigError, match=r"^wide_net has no argument 'widht': did you mean width\?$"):
        create_model("wide_net", widht=2)
    # handed on to the model it is built as, which named only itself (a README audit: the README's own example)
    with pytest.raises(ConfigError, match=r"^hinted_net \(built as resnet20_cifar\) has no argument 'num_clases': did "
                                          r"you mean num_classes\?$"):
        create_model("hinted_net", num_clases=3)
    with pytest.raises(ConfigError, match=r"^resnet20_cifar has no argument 'foo'"):  # a backbone's: visattn's own
        create_model("fcos_resnet20_cifar", backbone_kwargs={"foo": 1})

    def no_arguments() -> torch.nn.Module:
        return torch.nn.Identity()

    _register_as_another_packages(monkeypatch, no_arguments, "my_package.models")
    with pytest.raises(ConfigError, match=r"^no_arguments has no argument 'num_classes': it takes no keyword "
                                          r"argument$"):
        create_model("no_arguments", num_classes=3)


def test_another_packages_family_is_the_visattn_class_it_builds_or_subclasses_never_its_files_name(monkeypatch):
    """An audit of other packages' models: a subclass of visattn's detector or captioner was neither (its family was
    its module's name), one that loads weights when built was a classifier until create_model had built it (its
    trial build on the meta device fails), and a plain classifier in a file named detection.py was a detector."""
    from visattn.models.detection import FcosDetector
    from visattn.models.show_attend_tell import ShowAttendTell
    from visattn.registry import model_family, model_task

    class MyFcos(FcosDetector):
        pass

    class MySat(ShowAttendTell):
        pass

    def my_subclassed_fcos(**kwargs) -> MyFcos:
        return MyFcos(backbone="resnet20_cifar", num_classes=3, **kwargs)

    def my_subclassed_sat(**kwargs) -> MySat:
        return MySat(encoder_name="resnet20_cifar", vocab_size=7, **kwargs)

    def my_fcos_from_weights(**kwargs) -> FcosDetector:  # as a backbone's pretrained weights do on the meta device
        if torch.empty(0).device.type == "meta":
            raise RuntimeError("loading weights does nothing on the meta device")
        return create_model("fcos_resnet20_cifar", num_classes=3, **kwargs)

    def my_optional_fcos(**kwargs) -> Optional[FcosDetector]:
        return my_fcos_from_weights(**kwargs)

    def my_plain_net(num_classes: int = 10) -> torch.nn.Module:
        net = torch.nn.Linear(3, num_classes)
        net.num_classes = num_classes
        return net

    def my_plain_net_from_weights(**kwargs):  # its annotation names a class imported only for type checkers
        return my_fcos_from_weights(**kwargs)

    my_plain_net_from_weights.__annotations__["return"] = "NotImportedHere"
    for builder in (my_subclassed_fcos, my_subclassed_sat, my_fcos_from_weights, my_optional_fcos):
        _register_as_another_packages(monkeypatch, builder, "my_package.models")
    for builder in (my_plain_net, my_plain_net_from_weights):
        _register_as_another_packages(monkeypatch, builder, "my_package.detection")
    names = ("my_subclassed_fcos", "my_subclassed_sat", "my_fcos_from_weights", "my_optional_fcos", "my_plain_net",
             "my_plain_net_from_weights")
    assert [(model_family(name), model_task(name)) for name in names] == [
        ("detection", "detection"), ("show_attend_tell", "captioning"), ("detection", "detection"),
        ("detection", "detection"), ("my_package.detection", "classification"),
        ("my_package.detection", "classification")]  # until create_model has built it
    create_model("my_plain_net_from_weights")
    assert model_task("my_plain_net_from_weights") == "detection"
    from visattn.tasks.captioning import CaptioningTask
    from visattn.tasks.detection import DetectionTask

    for task, classes in ((DetectionTask, "FcosDetector or DetrDetector"), (CaptioningTask, "ShowAttendTell")):
        with pytest.raises(ConfigError, match=rf"^model_name='my_plain_net' is not a \w+ \(its builder in "
                                              rf"my_package.detection returns none of visattn's {classes}, nor a "
                                              r"subclass of one\); pick one of"):  # it did not say why
            task(model_name="my_plain_net")


def test_a_training_checkpoint_of_another_packages_model_names_what_to_install_where_it_is_missing(monkeypatch,
                                                                                                  tmp_path):
    """An audit of other packages' models: saved weights named the module to install, a run's checkpoints did not
    (`classify --checkpoint` where the package was missing said only "unknown model ...: run `visattn models`")."""
    from visattn.errors import WeightsError
    from visattn.inference.classifier import load_classifier
    from visattn.tasks.classification import ImageClassifier

    def my_linear_net(num_classes: int = 10) -> torch.nn.Module:
        net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(12, num_classes))
        net.num_classes = num_classes
        return net

    _register_as_another_packages(monkeypatch, my_linear_net, "my_package.models")
    saved, own = {}, {}
    ImageClassifier(model_name="my_linear_net", num_classes=3).on_save_checkpoint(saved)
    ImageClassifier(model_name="resnet20_cifar", num_classes=3).on_save_checkpoint(own)
    assert (saved, own) == ({"visattn_module": "my_package.models"}, {})
    state = {f"model.{k}": v for k, v in my_linear_net(3).state_dict().items()}
    torch.save({**saved, "state_dict": state, "hyper_parameters": {"model_name": "my_gone_net", "num_classes": 3}},
               tmp_path / "run.ckpt")
    with pytest.raises(WeightsError, match=rf"^{re.escape(str(tmp_path / 'run.ckpt'))}: hyper_parameters.model_name: "
                                           r"unknown model 'my_gone_net': the checkpoint records that my_package\."
                                           r"models registers it, and no installed package's visattn.models entry "
                                           r"point imports that module: install the package that has it$"):
        load_classifier(checkpoint=str(tmp_path / "run.ckpt"))


def test_duplicate_registration_raises():
    def vit_tiny_patch16_224():
        return torch.nn.Identity()

    with pytest.raises(ValueError, match="already registered"):
        register_model(vit_tiny_patch16_224)


_REGISTERED_FIRST = """
import torch, visattn
from visattn import register_model
try:
    @register_model  # before anything has imported visattn's models
    def resnet18(**kwargs):
        return torch.nn.Identity()
except ValueError as err:
    print(err)
print(type(visattn.create_model("resnet18")).__module__)
"""


def test_a_shipped_name_registered_before_visattns_models_are_imported_is_refused_there():
    """A plugin audit: a notebook's @register_model of a shipped name, run before visattn's models were imported, took
    the name, and every create_model after it failed on visattn's own resnet.py ("already registered by __main__")."""
    ran = subprocess.run([sys.executable, "-c", _REGISTERED_FIRST], capture_output=True, text=True, timeout=300)
    assert ran.stdout.splitlines() == [
        "model 'resnet18' is already registered by visattn.models.resnet; give the function another name (registry "
        "keys are builder function names)", "visattn.models.resnet"], ran.stderr


@pytest.fixture
def own_registry(monkeypatch):
    """The registry as it is, restored after the test: what it registers goes with it."""
    from visattn import registry

    registry._import_models()
    monkeypatch.setattr(registry, "_model_entrypoints", dict(registry._model_entrypoints))
    monkeypatch.setattr(registry, "_model_family", dict(registry._model_family))


def _counted(model: torch.nn.Module, num_classes: int) -> torch.nn.Module:
    model.num_classes = num_classes
    return model


def test_a_builder_registered_again_by_its_module_replaces_the_first(own_registry):
    """A plugin audit: running a notebook cell again (or importlib.reload of one's module) raised "model 'my_cell_net'
    is already registered by __main__", as timm's registry does not; the builder run again builds the new model."""
    def define(width: int) -> None:
        @register_model
        def my_cell_net(num_classes: int = 10) -> torch.nn.Module:
            return _counted(torch.nn.Linear(width, num_classes), num_classes)

    define(4)
    define(5)
    assert create_model("my_cell_net").in_features == 5 and list_models("my_cell_*") == ["my_cell_net"]

    def my_cell_net():  # another function of the name, elsewhere in this module: still refused
        return torch.nn.Identity()

    with pytest.raises(ValueError, match=r"^model 'my_cell_net' is already registered by test_registry; give the "):
        register_model(my_cell_net)


@pytest.mark.parametrize("builder", ["not a function", lambda **kwargs: torch.nn.Identity()])
def test_registering_what_has_no_function_name_is_one_line(builder):
    """A plugin audit: a string was an AttributeError, a lambda registered as '<lambda>', a name nothing can build."""
    with pytest.raises(TypeError, match=r"^register_model\(.*\): decorate a function def NAME\(\*\*kwargs\) that "
                                        r"returns the model; its name is the registry key$"):
        register_model(builder)


class _MyAttentionNet(torch.nn.Module):
    def __init__(self, num_classes: int = 10, in_chans: int = 3, width: int = 8):
        super().__init__()
        self.num_classes = num_classes
        self.layers = torch.nn.Sequential(torch.nn.Conv2d(in_chans, width, 3), torch.nn.AdaptiveAvgPool2d(1),
                                          torch.nn.Flatten(), torch.nn.Linear(width, num_classes))

    def forward(self, x):
        return self.layers(x)


def test_a_keyword_a_builder_hands_on_to_its_model_is_one_line(own_registry):
    """A plugin audit: `def my_net(**kwargs) -> MyNet: return MyNet(**kwargs)`, the README's own shape of builder,
    took any name, and the model's constructor refused a misspelt one with a TypeError traceback."""
    @register_model
    def my_annotated_net(**kwargs) -> _MyAttentionNet:
        return _MyAttentionNet(**kwargs)

    @register_model
    def my_unannotated_net(**kwargs):
        return _MyAttentionNet(**kwargs)

    assert create_model("my_annotated_net", width=4, in_chans=1, num_classes=3)(torch.zeros(2, 1, 9, 9)).shape == (2, 3)
    with pytest.raises(ConfigError, match=r"^my_annotated_net has no argument 'widht': did you mean width\?$"):
        create_model("my_annotated_net", widht=4)
    with pytest.raises(ConfigError, match=r"^my_unannotated_net has no argument 'widht': its builder hands it to "
                                          r"_MyAttentionNet.__init__, which does not take it$"):
        create_model("my_unannotated_net", widht=4)


@pytest.mark.parametrize("returned", ["a model", None])
def test_a_builder_that_returns_no_module_says_so(own_registry, returned):
    """A plugin audit: it said the str (or NoneType) lacked num_classes, and to give it one."""
    @register_model
    def my_moduleless_net(**kwargs):
        return returned

    with pytest.raises(ConfigError, match=rf"^my_moduleless_net: its builder \(test_registry\) returned "
                                          rf"{type(returned).__name__}, not a torch.nn.Module; return the model it "
                                          r"builds$"):
        create_model("my_moduleless_net")


def test_an_unknown_name_close_to_none_says_how_a_model_of_ones_own_becomes_known():
    """A plugin audit: `visattn fit` of a config naming one's own model said only "run `visattn models` to list
    them", which did not list it."""
    with pytest.raises(UnknownModelError, match=r"^unknown model 'qqqq': run `visattn models` to list them; a model of "
                                                r"your own is known once its module is imported, in the visattn "
                                                r"command when a visattn.models entry point of an installed package "
                                                r"names the module \(README: Your own models\)$"):
        create_model("qqqq")


def test_unknown_model_suggests_close_names():
    with pytest.raises(UnknownModelError, match="vit_tiny_patch16_224") as err:
        create_model("vit_tiny_patch16_244")
    assert "\n" not in str(err.value)


def test_unknown_tag_lists_available(weights_tmp):
    with pytest.raises(UnknownModelError, match="no shipped weights"):
        create_model("vit_tiny_patch4_28", pretrained=True)
    with pytest.raises(UnknownModelError, match="vit_tiny_patch4_28.nope"):
        create_model("vit_tiny_patch4_28.nope")


def test_an_empty_tag_is_refused_not_read_as_the_default_weights():
    with pytest.raises(UnknownModelError, match=r"'se_resnet20_cifar.' ends in a dot: give 'se_resnet20_cifar' alone"):
        create_model("se_resnet20_cifar.")


@pytest.mark.parametrize("name, kwargs", [("vit_tiny_patch16_224", dict(depth=1, num_classes=3)),
                                          ("se_resnet20_cifar", dict(pretrained=True)),
                                          ("sat_cbam_resnet_scenes", dict(vocab_size=9)),
                                          ("fcos_se_resnet20_cifar", dict(num_classes=4))])
def test_a_builder_called_directly_builds_as_create_model_does(name, kwargs):
    """As timm's model functions: a ViT built by calling vit_tiny_patch16_224() had no pretrained_cfg, so timm's
    resolve_data_config gave ImageNet's statistics and crop, not the architecture's."""
    import importlib

    from visattn.registry import model_family

    builder = getattr(importlib.import_module(f"visattn.models.{model_family(name)}"), name)
    torch.manual_seed(0)
    direct = builder(**kwargs)
    torch.manual_seed(0)
    made = create_model(name, **kwargs)
    assert direct.visattn_name == made.visattn_name and direct.visattn_kwargs == made.visattn_kwargs
    assert getattr(direct, "pretrained_cfg", None) == getattr(made, "pretrained_cfg", None)
    for (key, value), (other_key, other) in zip(direct.state_dict().items(), made.state_dict().items(), strict=True):
        assert key == other_key and torch.equal(value, other), key
    if name == "vit_tiny_patch16_224":
        assert timm.data.resolve_data_config(model=direct)["mean"] == (0.5, 0.5, 0.5)
    with pytest.raises(TypeError, match="keyword arguments only"):
        builder(True)


def test_kwargs_reach_the_builder():
    model = create_model("vit_tiny_patch16_224", img_size=64, num_classes=5, depth=2)
    assert model.input_size == (3, 64, 64) and model.num_classes == 5 and len(model.blocks) == 2


def test_pretrained_listing_follows_the_index(weights_tmp):
    assert list_pretrained() == [] and list_models(pretrained=True) == []
    visattn.save_weights(create_model("vit_tiny_patch4_28", depth=1), weights_tmp / "vit_tiny_patch4_28.unit.safetensors",
                         model_kwargs={"depth": 1})
    assert list_pretrained() == ["vit_tiny_patch4_28.unit"]
    assert list_pretrained("deit*") == []
    assert list_models(pretrained=True) == ["vit_tiny_patch4_28"]


def test_cli_models_table(capsys, weights_tmp):
    assert main(["models", "vit_tiny*"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split() == ["model", "family", "params", "pretrained"]
    rows = {line.split()[0]: line.split() for line in lines[1:]}
    assert set(rows) == set(list_models("vit_tiny*"))
    assert rows["vit_tiny_patch16_224"][2] == "5.72M"  # timm's count for ViT-Ti/16


def test_cli_models_pretrained_counts_each_shipped_model_as_its_entry_builds_it(capsys, weights_tmp):
    visattn.save_weights(create_model("vit_tiny_patch4_28", depth=1, num_classes=3),
                         weights_tmp / "vit_tiny_patch4_28.unit.safetensors", model_kwargs={"depth": 1})
    assert main(["models", "--pretrained"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split() == ["weights", "family", "params"]
    shipped = create_model("vit_tiny_patch4_28.unit")
    assert shipped.num_classes == 3 and len(shipped.blocks) == 1
    expected = f"{sum(p.numel() for p in shipped.parameters()) / 1e6:.2f}M"
    assert [line.split() for line in lines[1:]] == [["vit_tiny_patch4_28.unit", "vit", expected]]
    assert expected != "5.55M"  # the registered 12-block architecture's count
    assert main(["models", "--pretrained", ""]) == 0  # an empty pattern lists every architecture, as list_models'
    assert capsys.readouterr().out.splitlines() == lines


def test_the_listed_parameter_counts_are_those_of_a_build_of_every_visattn_architecture():
    """`visattn models` reads visattn's own architectures' counts from a file rather than build some 90 models (2.6 s
    of its 6.8 s): every one listed, each the count of a build."""
    from visattn.cli import PARAMETER_COUNTS, parameter_table

    built = parameter_table()
    rewrite = (f"write it anew: python -c \"import json; from visattn.cli import parameter_table; print(json.dumps("
               f"parameter_table(), indent=1, sort_keys=True))\" > {PARAMETER_COUNTS.relative_to(Path.cwd())}"
               if PARAMETER_COUNTS.is_relative_to(Path.cwd()) else "")
    assert json.loads(PARAMETER_COUNTS.read_text()) == built, rewrite
    assert len(built) == len(list_models()) > 80  # visattn's own, no other package's here


def test_a_parameter_count_is_read_for_a_bare_architecture_and_built_for_weights_with_hyperparameters(monkeypatch):
    """The file holds each architecture as its builder's defaults make it: weights whose entry gives other
    hyperparameters (the 4-block Fashion-MNIST ViT) are counted as built."""
    from visattn import cli

    monkeypatch.setattr(cli, "_listed_parameter_counts", lambda: {"vit_tiny_patch4_28": 1})
    with torch.device("meta"):
        tagged = create_model("vit_tiny_patch4_28.fmnist", pretrained=False)
    assert cli.count_parameters("vit_tiny_patch4_28") == 1
    assert cli.count_parameters("vit_tiny_patch4_28.fmnist") == sum(p.numel() for p in tagged.parameters()) > 1


def test_cli_models_no_match(capsys):
    assert main(["models", "zzz*"]) == 2
    assert capsys.readouterr().err == "visattn: error: no model matches 'zzz*'; see `visattn models` for the full list\n"


@pytest.mark.parametrize("name", [None, 5, Path("vit_tiny_patch16_224")])
def test_a_model_name_that_is_no_string_is_one_line(name):
    with pytest.raises(UnknownModelError, match="give a string such as"):
        create_model(name)


@pytest.mark.parametrize("num_classes", ["10", -1, 2.0, True])
def test_a_num_classes_that_is_no_count_is_one_line(num_classes):
    with pytest.raises(ConfigError, match="give a whole number of classes"):
        create_model("resnet20_cifar", num_classes=num_classes)


@pytest.mark.parametrize("name", list_models())
def test_a_misspelled_builder_argument_is_one_line_with_the_nearest_name(name):
    meant = "vocab_size" if visattn.registry.model_task(name) == "captioning" else "num_classes"
    typo = meant.replace("s", "", 1)
    with pytest.raises(ConfigError, match=rf"^{name} has no argument '{typo}': did you mean {meant}\?$"):
        create_model(name, **{typo: 5})


def _flag_and_number_arguments(name):
    """The builder class's keyword arguments annotated ``bool`` and ``float`` (optional or not)."""
    import typing

    hints = typing.get_type_hints(typing.get_type_hints(visattn.registry._model_entrypoints[name])["return"].__init__)
    kinds = {arg: tuple(k for k in (typing.get_args(hint) if typing.get_origin(hint) is typing.Union else (hint,))
                        if k is not type(None)) for arg, hint in hints.items()}
    return [arg for arg, kind in kinds.items() if kind == (bool,)], [arg for arg, kind in kinds.items() if kind == (float,)]


@pytest.mark.parametrize("name", list_models())
def test_a_flag_or_number_builder_argument_of_another_type_is_one_line(name):
    """"no" is true: ``class_token="no"`` built a class token and ``qkv_bias="no"`` a bias, and ``mlp_ratio="4"``
    failed inside torch with a multi-line error."""
    flags, numbers = _flag_and_number_arguments(name)
    for argument, value in [*((flag, "no") for flag in flags), *((number, "4") for number in numbers)]:
        kind = "True or False" if argument in flags else "a number"
        with pytest.raises(ArgumentError, match=rf"^{argument}='{value}': {name} takes {kind}, not a str$"):
            create_model(name, **{argument: value})


def test_flags_and_numbers_of_their_kinds_build(weights_tmp):
    from visattn import save_weights

    tmp_path = weights_tmp
    assert "class_token" in _flag_and_number_arguments("vit_tiny_patch4_28")[0]
    assert "zero_init_residual" in _flag_and_number_arguments("resnet18")[0]
    assert "mlp_ratio" in _flag_and_number_arguments("vit_tiny_patch4_28")[1]
    model = create_model("vit_tiny_patch4_28", class_token=False, global_pool="avg", qkv_bias=np.False_, mlp_ratio=2,
                         init_values=None, drop_rate=np.float64(0.1))
    assert model.cls_token is None and model.blocks[0].attn.qkv.bias is None and model.blocks[0].mlp.fc1.out_features == 384
    # a code review: numpy's bool is named bool too ("takes True or False, not a bool"), and the index is JSON
    save_weights(model, tmp_path / "vit_tiny_patch4_28.npbool.safetensors", labels=[str(k) for k in range(1000)],
                 preprocessing={"input_size": [3, 28, 28], "mean": [0.5] * 3, "std": [0.5] * 3})
    assert create_model("vit_tiny_patch4_28.npbool").blocks[0].attn.qkv.bias is None
    for arguments, message in [({"mlp_ratio": True}, "mlp_ratio=True: vit_tiny_patch4_28 takes a number, not a bool"),
                               ({"qkv_bias": 0}, "qkv_bias=0: vit_tiny_patch4_28 takes True or False, not an int")]:
        with pytest.raises(ArgumentError, match=f"^{re.escape(message)}$"):
            create_model("vit_tiny_patch4_28", **arguments)


def test_an_unknown_builder_argument_lists_what_the_architecture_takes():
    with pytest.raises(ConfigError, match=r"^resnet18 has no argument 'zzz': it takes .*\bnum_classes\b.*\bin_chans\b"):
        create_model("resnet18", zzz=1)


# ``pretrained=False`` with ``arch.tag``: the tag's architecture and label count, random init (as timm does)
SHIPPED = "vit_tiny_patch4_28.fmnist"  # 4 blocks, average pooling, no class token, 10 classes


def _shipped_state() -> dict[str, torch.Tensor]:
    from visattn.pretrained import find_weights_entry, read_state_dict

    return read_state_dict(find_weights_entry(*visattn.registry.split_model_name(SHIPPED))["path"])


def test_pretrained_false_with_a_tag_builds_the_tags_architecture_without_its_weights():
    from visattn.pretrained import find_weights_entry

    entry = find_weights_entry("vit_tiny_patch4_28", "fmnist")
    arch, loads, kwargs = visattn.registry.model_arguments(SHIPPED, pretrained=False)
    assert (arch, loads) == ("vit_tiny_patch4_28", None)
    assert kwargs == {**entry["model_kwargs"], "num_classes": entry["num_classes"]}
    model = create_model(SHIPPED, pretrained=False)
    assert model.num_classes == entry["num_classes"] == 10 and len(model.blocks) == entry["model_kwargs"]["depth"] == 4
    assert model.global_pool == "avg" and model.cls_token is None
    assert model.visattn_name == "vit_tiny_patch4_28"  # not the shipped weights' name: it holds none of them
    assert model.visattn_kwargs == entry["model_kwargs"]  # so save_weights records the tag's architecture
    assert not torch.equal(model.patch_embed.proj.weight, _shipped_state()["patch_embed.proj.weight"])
    assert create_model(SHIPPED, pretrained=False, num_classes=3).num_classes == 3  # the caller's count first


def test_pretrained_false_with_a_tag_keeps_the_tags_preprocessing_for_timms_data_helpers():
    """timm keeps a tag's pretrained_cfg without its weights; the Fashion-MNIST ViT got ImageNet's statistics and
    crop 0.875, which timm's resolve_data_config handed on to anyone retraining the recipe from scratch."""
    timm_data = pytest.importorskip("timm.data")
    random_init = create_model(SHIPPED, pretrained=False)
    assert random_init.pretrained_cfg == create_model(SHIPPED).pretrained_cfg
    config = timm_data.resolve_data_config({}, model=random_init)
    assert (config["mean"], config["crop_pct"], config["input_size"]) == ((0.286,) * 3, 1.0, (3, 28, 28))
    assert random_init.visattn_recorded_preprocessing is None  # no weights: nothing for the tasks to compare


@pytest.mark.parametrize("pretrained", ["omitted", None, True])
def test_a_tag_loads_its_weights_unless_pretrained_is_false(pretrained):
    loaded = create_model(SHIPPED) if pretrained == "omitted" else create_model(SHIPPED, pretrained=pretrained)
    assert loaded.visattn_name == SHIPPED
    state = _shipped_state()
    assert all(torch.equal(v, state[k]) for k, v in loaded.state_dict().items())
    random_init = create_model(SHIPPED, pretrained=False).state_dict()
    assert not torch.equal(random_init["patch_embed.proj.weight"], loaded.state_dict()["patch_embed.proj.weight"])


def test_pretrained_defaults_to_none_and_a_bare_architecture_loads_nothing(weights_tmp, monkeypatch):
    import inspect

    for fn in (create_model, visattn.registry.model_arguments):
        assert inspect.signature(fn).parameters["pretrained"].default is None
    monkeypatch.setattr("visattn.pretrained.load_weights", lambda *a, **k: pytest.fail("loaded weights"))
    # weights_tmp: an empty index, so no entry is looked up either
    assert visattn.registry.model_arguments("vit_tiny_patch4_28", depth=1) == ("vit_tiny_patch4_28", None, {"depth": 1})
    for model in (create_model("vit_tiny_patch4_28", depth=1), create_model("vit_tiny_patch4_28", pretrained=None, depth=1)):
        assert model.visattn_name == "vit_tiny_patch4_28" and model.num_classes == 1000 and len(model.blocks) == 1


def test_an_unknown_name_suggests_its_completions_and_the_architectures_shipping_its_tag(capsys):
    """Edit distance alone offered se_resnet50, se_resnet101, se_resnet34, never se_resnet20_cifar."""
    assert main(["classify", "x.png", "--model", "se_resnet20.fmnist"]) == 2
    assert capsys.readouterr().err == ("visattn: error: unknown model 'se_resnet20' (the architecture of "
                                       "'se_resnet20.fmnist'): did you mean se_resnet20_cifar, se_resnet50, se_resnet101?\n")
    # the tag's weights ship only for fcos_se_resnet20_cifar: it comes before the closer fcos_resnet20_cifar
    with pytest.raises(UnknownModelError, match=r": did you mean fcos_se_resnet20_cifar, fcos_resnet20_cifar, "
                                                r"fcos_resnet50\?$"):
        create_model("fcos_resnet20.scenes")


def test_list_models_takes_several_patterns_and_exclusions_as_timm_does():
    assert list_models(["deit_tiny*", "vit_base_patch32_2*"]) == ["deit_tiny_patch16_224", "vit_base_patch32_224"]
    assert list_models("deit_*", exclude_filters="*base*") == ["deit_small_patch16_224", "deit_tiny_patch16_224"]
    assert list_models(("deit_*",), exclude_filters=["*base*", "*small*"]) == ["deit_tiny_patch16_224"]
    shipped = list_pretrained()
    assert list_pretrained(["se_*", "vit_*"]) == sorted(n for n in shipped if n.startswith(("se_", "vit_")))
    assert list_pretrained(exclude_filters="*.scenes") == [n for n in shipped if not n.endswith(".scenes")]
    # timm's empty filter lists everything (an empty user filter had listed nothing)
    assert list_models("") == list_models([]) == list_models() and list_pretrained("") == shipped
    # by name, as timm names it (a timm user's list_models(filter=...) had been a TypeError)
    assert list_models(filter="deit_t*") == ["deit_tiny_patch16_224"] and list_pretrained(filter="") == shipped


def test_list_models_takes_the_registering_module_as_timm_does():
    """timm's list_models(module="resnet") was a TypeError, and list_modules missing (a timm-parity audit)."""
    from visattn.registry import model_module

    assert visattn.list_modules() == ["detection", "resnet", "show_attend_tell", "vit"]
    for module in visattn.list_modules():
        assert list_models(module=module) == [n for n in list_models() if model_module(n).endswith(f".{module}")]
    assert "cbam_resnet50" in list_models(module="resnet") and "vit_tiny_patch16_224" in list_models(module="vit")
    assert list_models("*resnet50", module=["resnet", "detection", "show_attend_tell"]) == list_models("*resnet50")
    assert list_models(module="detection", exclude_filters="detr_*") == list_models("fcos_*")
    with pytest.raises(ConfigError, match=r"^module='vision_transformer': no architecture is registered there; give "
                                          r"one of detection, resnet, show_attend_tell, vit \(visattn.list_modules"):
        list_models(module="vision_transformer")


def test_create_model_takes_pretrained_second_as_timm_does():
    """timm.create_model(name, True), in many a timm tutorial, had been a TypeError (a timm-parity audit)."""
    torch.testing.assert_close(create_model("se_resnet20_cifar", True).state_dict(),
                               create_model("se_resnet20_cifar", pretrained=True).state_dict(), rtol=0, atol=0)
    shipped, random = (create_model("se_resnet20_cifar", weights).conv1.weight for weights in (True, False))
    assert not torch.equal(shipped, random)


def test_timms_switches_asking_for_nothing_build_as_without_them():
    """Ported timm code passes scriptable=False (and exportable, no_jit, cache_dir unset): each had been refused."""
    torch.manual_seed(0)
    switched = create_model("resnet20_cifar", scriptable=False, exportable=None, no_jit=False, cache_dir=None)
    torch.manual_seed(0)
    torch.testing.assert_close(switched.state_dict(), create_model("resnet20_cifar").state_dict(), rtol=0, atol=0)


@pytest.mark.parametrize("build", [
    lambda name: create_model("vit_tiny_patch16_224", pretrained=f"timm:{name}"),
    lambda name: build_classifier(f"timm:{name}", 10),
    lambda name: create_model("sat_resnet50", vocab_size=8, encoder_name=f"timm:{name}"),
], ids=["pretrained", "classifier", "captioner_encoder"])
def test_a_timm_name_timm_lacks_names_close_ones_or_the_weights_it_has(build):
    """An unknown name fetched offline was called a network problem; as a model, timm's "Unknown model" named none."""
    with pytest.raises(UnknownModelError, match=r"^timm has no model 'vit_tiny_patch16_22': did you mean "
                                                r"timm:vit_tiny_patch16_224"):
        build("vit_tiny_patch16_22")
    with pytest.raises(UnknownModelError, match=r"^timm has no weights 'vit_tiny_patch16_224.nope': "
                                                r"vit_tiny_patch16_224's are vit_tiny_patch16_224.augreg_in21k, "):
        build("vit_tiny_patch16_224.nope")


def test_create_model_of_a_hub_name_says_timm_builds_it():
    """ORG/REPO.TAG had been read as an architecture: "unknown model 'hf-hub:timm/resnet18' ... did you mean
    bam_resnet18, cbam_resnet18?"."""
    name = "hf-hub:timm/resnet18.a1_in1k"
    with pytest.raises(UnknownModelError, match=rf"^'{name}': a hub model is built by timm: name it 'timm:{name}' "
                                                rf".* create_model\(ARCH, pretrained='{name}'\)$"):
        create_model(name)


@pytest.mark.parametrize("name", ["timm:resnet10t", "timm:resnet10t.a1_in1k"])
def test_create_model_of_a_timm_name_says_where_timm_models_are_built(name):
    """It suggested unrelated visattn models (resnet101, bam_resnet101, ...)."""
    with pytest.raises(UnknownModelError, match=rf"^'{re.escape(name)}': create_model builds visattn's registered "
                                                r"models; build a timm model with visattn.inference.classifier"
                                                rf".build_classifier\('{re.escape(name)}', num_classes\)"):
        create_model(name)


_PLUGIN_MODULE = '''
from torch import nn
from visattn import create_model, register_model


@register_model
def tiny_cbam_resnet8_cifar(**kwargs):
    """Another package's model: a CIFAR-layout CBAM-ResNet-8."""
    return create_model("cbam_resnet20_cifar", layers=(1, 1, 1), **kwargs)


class TinyNet(nn.Module):  # written by hand: its class count, and no `classifier` naming its head
    def __init__(self, num_classes=10, in_chans=3):
        super().__init__()
        self.num_classes = num_classes
        self.layers = nn.Sequential(nn.Conv2d(in_chans, 8, 3), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                                    nn.Linear(8, num_classes))

    def forward(self, x):
        return self.layers(x)


@register_model
def tiny_own_net(**kwargs):
    return TinyNet(**kwargs)


@register_model
def tiny_countless_net(**kwargs):
    return nn.Sequential(nn.Flatten())


@register_model
def tiny_vit_sized(img_size, **kwargs):  # needs an argument: of the ViT family once create_model has built it
    return create_model("vit_tiny_patch4_28", depth=1, img_size=img_size, **kwargs)


BUILT_AS_IMPORTED = create_model("tiny_own_net")  # the registry, asked while it imports this module, answers
'''
# What `pip install` of a package declaring [project.entry-points."visattn.models"] leaves on the path.
_PLUGIN_ENTRY_POINTS = ("[visattn.models]\nextra = attn_zoo_extra\nbroken = broken_zoo\ntaken = taken_zoo\n"
                        "attr = attn_zoo_extra:TinyNet\nexits = exiting_zoo\nspaced = spaced zoo\n")
_TAKEN_NAME_MODULE = "from visattn import register_model\n\n\n@register_model\ndef se_resnet20_cifar():\n    pass\n"
_PLUGIN_PROBE = """
import json, warnings, torch, visattn
from visattn.registry import model_family
with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always")
    names = visattn.list_models("tiny_*")
try:
    visattn.create_model("tiny_countless_net")
except visattn.VisattnError as err:
    refused = str(err)
families = [model_family(name) for name in names]
visattn.create_model("tiny_vit_sized", img_size=28)
print(json.dumps({"names": names, "families": families, "vit_built": model_family("tiny_vit_sized"),
                  "logits": [list(visattn.create_model(name, num_classes=3)(torch.zeros(2, 3, 28, 28)).shape)
                             for name in ("tiny_cbam_resnet8_cifar", "tiny_own_net")],
                  "refused": refused, "warnings": sorted(str(w.message) for w in caught),
                  "saved": visattn.save_weights(visattn.create_model("tiny_own_net", num_classes=3),
                                                visattn.pretrained.weights_dir() / "tiny_own_net.mine.safetensors",
                                                labels=["a", "b", "c"])["module"],
                  "se_resnet20_cifar": type(visattn.create_model("se_resnet20_cifar")).__module__}))
"""


def test_another_packages_entry_point_models_are_registered_and_train_from_a_config(tmp_path):
    """A model of one's own could be built in Python after importing its module, but neither listed nor trained by
    the command, which imports only visattn's; a package whose module fails is one warning, not a broken zoo."""
    from test_classification import CBAM_CONFIG, QUICK

    site = tmp_path / "site"
    (site / "attn_zoo_extra-0.1.dist-info").mkdir(parents=True)
    (site / "attn_zoo_extra-0.1.dist-info" / "METADATA").write_text("Metadata-Version: 2.1\nName: attn-zoo-extra\n"
                                                                    "Version: 0.1\n")
    (site / "attn_zoo_extra-0.1.dist-info" / "entry_points.txt").write_text(_PLUGIN_ENTRY_POINTS)
    (site / "attn_zoo_extra.py").write_text(_PLUGIN_MODULE)
    (site / "broken_zoo.py").write_text("raise RuntimeError('boom')\n")
    (site / "exiting_zoo.py").write_text("import sys\nsys.exit('bye')\n")  # it had ended every visattn command
    (site / "taken_zoo.py").write_text(_TAKEN_NAME_MODULE)
    # the tree under test stays on the path (conftest puts it there), after the package's folder
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(site), os.environ.get("PYTHONPATH")])),
           "VISATTN_WEIGHTS": str(tmp_path / "weights")}
    (tmp_path / "weights").mkdir()
    entry, fix = "visattn.models entry point", "its models may be missing: fix it, or uninstall attn-zoo-extra"
    expected_warnings = [
        f"{entry} attr = attn_zoo_extra:TinyNet of attn-zoo-extra names type TinyNet, not a module; name the module "
        "whose import registers the models (attn_zoo_extra)",
        f"{entry} broken = broken_zoo of attn-zoo-extra failed to import (RuntimeError: boom); {fix}",
        f"{entry} exits = exiting_zoo of attn-zoo-extra failed to import (SystemExit: bye); {fix}",
        f"{entry} spaced = spaced zoo of attn-zoo-extra names no module ('spaced zoo'); give the module whose import "
        "registers the models, e.g. my_package.models, in its pyproject.toml",
        f"{entry} taken = taken_zoo of attn-zoo-extra failed to import (ValueError: model 'se_resnet20_cifar' is "
        "already registered by visattn.models.resnet; give the function another name (registry keys are builder "
        f"function names)); {fix}"]
    countless = ("tiny_countless_net: its builder (attn_zoo_extra) gave a Sequential without num_classes; give the "
                 "model its head's class count as num_classes (0 without a head), as timm's models have")

    def run(*argv: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, *argv], capture_output=True, text=True, env=env, cwd=tmp_path,
                              timeout=300)

    probe = run("-c", _PLUGIN_PROBE)
    assert json.loads(probe.stdout) == {
        "names": ["tiny_cbam_resnet8_cifar", "tiny_countless_net", "tiny_own_net", "tiny_vit_sized"],
        # a wrapper of visattn's ResNet is one; one that needs an argument, once create_model has built it
        "families": ["resnet", "attn_zoo_extra", "attn_zoo_extra", "attn_zoo_extra"], "vit_built": "vit",
        "logits": [[2, 3], [2, 3]], "refused": countless, "warnings": expected_warnings, "saved": "attn_zoo_extra",
        "se_resnet20_cifar": "visattn.models.resnet"}, probe.stderr  # visattn's kept its name
    listed = run("-m", "visattn", "models", "tiny_*")
    assert listed.returncode == 0 and "tiny_cbam_resnet8_cifar  resnet" in listed.stdout
    assert "tiny_countless_net       attn_zoo_extra  ?" in listed.stdout  # and the others still listed
    assert sorted(listed.stderr.splitlines()) == sorted(
        [f"warning: {line}" for line in expected_warnings]
        + [f"warning: tiny_countless_net cannot be built to count its parameters ({countless})",
           "warning: tiny_vit_sized cannot be built to count its parameters (TypeError: tiny_vit_sized() missing 1 "
           "required positional argument: 'img_size')"])
    for name in ("tiny_cbam_resnet8_cifar", "tiny_own_net"):
        trained = run("-m", "visattn", "fit", "--config", str(CBAM_CONFIG), *QUICK, "--trainer.fast_dev_run", "true",
                      "--model.init_args.model_name", name)
        assert trained.returncode == 0, trained.stderr
        assert all(f"warning: {line}\n" in trained.stderr for line in expected_warnings)
    # weights of an architecture the installed package no longer has (renamed), then the package uninstalled: the
    # saved weights name the module, and what to install
    weights = tmp_path / "weights"
    index = json.loads((weights / "index.json").read_text())
    index["tiny_gone_net.mine"] = {**index["tiny_own_net.mine"], "file": "tiny_gone_net.mine.safetensors"}
    (weights / "index.json").write_text(json.dumps(index))
    (weights / "tiny_gone_net.mine.safetensors").write_bytes((weights / "tiny_own_net.mine.safetensors").read_bytes())
    renamed = run("-m", "visattn", "classify", "--model", "tiny_gone_net.mine", "photo.png")
    assert renamed.returncode == 2 and renamed.stderr.endswith(
        "visattn: error: unknown model 'tiny_gone_net' (the architecture of 'tiny_gone_net.mine'): its weights record "
        "that attn_zoo_extra registers it, which the installed attn_zoo_extra does not: install the version of its "
        "package that has it\n")
    env["PYTHONPATH"] = os.environ.get("PYTHONPATH", "")
    listed = run("-m", "visattn", "models", "--pretrained", "tiny_*")  # the weights had been left out unsaid
    assert listed.returncode == 0 and re.search(r"^tiny_own_net\.mine +\? +\?$", listed.stdout, re.M), listed.stdout
    assert ("warning: unknown model 'tiny_own_net' (the architecture of 'tiny_own_net.mine'): its weights record that "
            "attn_zoo_extra registers it") in listed.stderr
    for command in (["classify", "photo.png"], ["evaluate", "--dataset", "fashion-mnist"]):  # evaluate had no hint
        orphan = run("-m", "visattn", command[0], "--model", "tiny_own_net.mine", *command[1:])
        assert (orphan.returncode, orphan.stderr) == (
            2, "visattn: error: unknown model 'tiny_own_net' (the architecture of 'tiny_own_net.mine'): its weights "
               "record that attn_zoo_extra registers it, and no installed package's visattn.models entry point imports "
               "that module: install the package that has it\n")
