"""ONNX export: onnxruntime gives PyTorch's logits for a ViT and an attention ResNet, at any batch size."""
import json
import sys

import numpy as np
import pytest
import torch

from visattn import create_model, export, list_models, load_classifier
from visattn.cli import main
from visattn.errors import ArgumentError, ConfigError, ExportMismatchError, WeightsError
from visattn.export import checked_difference, export_onnx, onnx_max_difference, onnx_session

onnx = pytest.importorskip("onnx")
onnxruntime = pytest.importorskip("onnxruntime")

MODELS = {
    "vit": ("vit_tiny_patch4_28", dict(depth=2), (3, 28, 28)),
    "cbam_resnet": ("cbam_resnet20_cifar", {}, (3, 32, 32)),
}


@pytest.mark.parametrize("key", MODELS)
def test_onnxruntime_logits_match_pytorch(key, tmp_path):
    name, kwargs, size = MODELS[key]
    torch.manual_seed(0)
    model = create_model(name, num_classes=10, **kwargs)
    path = export_onnx(model, tmp_path / "nested" / f"{name}.onnx")  # input size from model.input_size
    assert model.training, "export must leave the model in the mode it found it in"
    session = onnx_session(path, threads=1)
    assert session.get_inputs()[0].shape[0] == "batch"
    # An independent onnxruntime session on the written file, not the code under test.
    reference_session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    for batch in (1, 5):  # exported with batch 2: the batch axis must be dynamic
        images = torch.randn(batch, *size)
        model.eval()
        with torch.no_grad():
            expected = model(images).numpy()
        model.train()
        actual = reference_session.run(None, {"images": images.numpy()})[0]
        assert actual.shape == expected.shape == (batch, 10)
        assert np.abs(actual - expected).max() <= 1e-3
        assert onnx_max_difference(model, session, images) < 1e-3
        assert model.training, "onnx_max_difference must leave the model in training mode"
    assert session.run(None, {"images": images.numpy()})[0].shape == (5, 10)


@pytest.mark.parametrize("compiled", ["wrapper", "in_place", "blocks_in_place"])
def test_a_compiled_model_exports_as_the_model_it_compiles(compiled, tmp_path):
    """The exporter's tracer refuses a compiled call ("Detected that you are using FX to torch.jit.trace a
    dynamo-optimized function"): torch.compile(model), model.compile() and blocks compiled in place failed to export."""
    torch.manual_seed(0)
    model = create_model("vit_tiny_patch4_28", depth=1, num_classes=3).eval()
    images = torch.randn(2, 3, 28, 28)
    with torch.no_grad():
        expected = model(images).numpy()
    if compiled == "wrapper":
        model = torch.compile(model, backend="eager")  # the wrapper is tested here, not inductor's code
    else:
        for module in (model.blocks if compiled == "blocks_in_place" else [model]):
            module.compile(backend="eager")
    model(images)  # a first, compiled call, as before an export in a user's code
    session = onnx_session(export_onnx(model, tmp_path / "compiled.onnx"), threads=1)
    np.testing.assert_allclose(session.run(None, {"images": images.numpy()})[0], expected, atol=1e-5, rtol=1e-5)


def test_a_loaded_classifier_exports_its_network_and_what_is_no_model_is_one_line(tmp_path):
    """A loaded classifier was "'Classifier' object has no attribute 'modules'", a path an AttributeError too."""
    classifier = load_classifier("se_resnet20_cifar.fmnist")
    images = torch.randn(2, 3, 28, 28)
    with torch.no_grad():
        expected = classifier.model(images).numpy()
    session = onnx_session(export_onnx(classifier, tmp_path / "loaded.onnx"), threads=1)
    np.testing.assert_allclose(session.run(None, {"images": images.numpy()})[0], expected, atol=1e-5, rtol=1e-5)
    with pytest.raises(ConfigError, match=r"^model='se_resnet20_cifar.fmnist': a str, not a torch module; give a"):
        export_onnx("se_resnet20_cifar.fmnist", tmp_path / "name.onnx")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["loaded.onnx"]


def test_vit_export_is_not_the_explicit_attention_path(tmp_path):
    """The default forward uses SDPA; the traced graph has no second softmax branch and no attention outputs."""
    model = create_model("vit_tiny_patch4_28", depth=1, num_classes=3)
    proto = onnx.load(str(export_onnx(model, tmp_path / "vit.onnx")))
    assert [o.name for o in proto.graph.output] == ["logits"]
    assert sum(node.op_type == "Softmax" for node in proto.graph.node) == 1  # one block, one softmax


def test_metadata_is_stored(tmp_path):
    model = create_model("vit_tiny_patch4_28", depth=1, num_classes=2)
    path = export_onnx(model, tmp_path / "m.onnx", input_size=(3, 28, 28), metadata={"labels": ["a", "b"], "arch": "x"})
    props = {p.key: p.value for p in onnx.load(str(path)).metadata_props}
    assert json.loads(props["labels"]) == ["a", "b"] and props["arch"] == "x"


def test_export_onnx_with_metadata_it_cannot_store_is_one_line_and_leaves_the_earlier_file(tmp_path):
    """The file had been replaced before the metadata failed, with a raw TypeError."""
    model = create_model("vit_tiny_patch4_28", depth=1, num_classes=2)
    path = export_onnx(model, tmp_path / "m.onnx", input_size=(3, 28, 28), metadata={"arch": "x"})
    earlier = path.read_bytes()
    with pytest.raises(ConfigError, match=r"^metadata: Object of type object is not JSON serializable; give strings"):
        export_onnx(model, path, input_size=(3, 28, 28), metadata={"x": object()})
    assert path.read_bytes() == earlier and [p.name for p in tmp_path.iterdir()] == ["m.onnx"]


def test_bad_input_size_is_a_config_error(tmp_path):
    model = torch.nn.Linear(4, 2)  # no input_size attribute to fall back on
    with pytest.raises(ConfigError, match="input_size"):
        export_onnx(model, tmp_path / "m.onnx")
    with pytest.raises(ConfigError, match=r"\(C, H, W\)"):
        export_onnx(create_model("cbam_resnet20_cifar"), tmp_path / "m.onnx", input_size=(32, 32))


@pytest.mark.parametrize("input_size", [32, (3, 32.5, 32), (3, "32", 32)])
def test_an_input_size_that_is_no_three_whole_numbers_is_a_config_error(tmp_path, input_size):
    """A bare side (timm's img_size=32) was "TypeError: 'int' object is not iterable", a text side a TypeError from
    min(), and 32.5 was exported silently at 32."""
    with pytest.raises(ConfigError, match=r"^input_size=.*: give the \(C, H, W\) of one image"):
        export_onnx(create_model("resnet20_cifar"), tmp_path / "m.onnx", input_size=input_size)
    assert not list(tmp_path.iterdir())  # refused before anything is written


def test_an_input_size_of_numpy_integers_exports_at_that_size(tmp_path):
    """A numpy array of three sides had been taken (as tuple(input_size)), then was refused as no three numbers."""
    path = export_onnx(create_model("resnet20_cifar"), tmp_path / "m.onnx", input_size=np.array([3, 24, 24]))
    session = onnx_session(path, threads=1)
    assert session.run(None, {"images": np.zeros((1, 3, 24, 24), np.float32)})[0].shape == (1, 10)


def test_missing_onnx_file_is_a_weights_error(tmp_path):
    with pytest.raises(WeightsError, match="visattn export"):
        onnx_session(tmp_path / "missing.onnx")


def _checkpoint(path, model_name="cbam_resnet20_cifar", **model_kwargs):
    """A minimal Lightning-style checkpoint, as `visattn fit` writes it."""
    torch.manual_seed(0)
    net = create_model(model_name, num_classes=3, **model_kwargs)
    hparams = {"model_name": model_name, "num_classes": 3, "model_kwargs": model_kwargs,
               "class_names": ["cat", "dog", "fox"]}
    torch.save({"state_dict": {f"model.{k}": v for k, v in net.state_dict().items()}, "hyper_parameters": hparams}, path)
    return path


def test_cli_exports_a_checkpoint(tmp_path, capsys):
    ckpt = _checkpoint(tmp_path / "run.ckpt", "vit_tiny_patch4_28", depth=1, img_size=28)
    out = tmp_path / "model.onnx"
    assert main(["export", "--checkpoint", str(ckpt), "--format", "onnx", "--out", str(out)]) == 0
    line = capsys.readouterr().out.strip()
    assert line.startswith(f"wrote {out}") and "opset 17" in line
    assert float(line.rsplit(" ", 1)[-1]) < 1e-3
    props = {p.key: p.value for p in onnx.load(str(out)).metadata_props}
    assert json.loads(props["labels"]) == ["cat", "dog", "fox"] and props["arch"] == "vit_tiny_patch4_28"


def test_cli_errors_are_one_line(tmp_path, capsys):
    assert main(["export", "--checkpoint", str(tmp_path / "nope.ckpt"), "--out", str(tmp_path / "m.onnx")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "nope.ckpt: checkpoint not found" in err
    with pytest.raises(SystemExit) as excinfo:  # argparse: only onnx is a known format
        main(["export", "--checkpoint", "x.ckpt", "--format", "tflite", "--out", "m.tflite"])
    assert excinfo.value.code == 2  # a user mistake, like the missing checkpoint above
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "tflite" in err
    # refused before anything is made: the folders of --out had been left behind
    assert main(["export", "--model", "se_resnet20_cifar.fmnist", "--out", str(tmp_path / "new" / "sub" / "m.pt")]) == 2
    assert "give the file the .onnx suffix" in capsys.readouterr().err and not (tmp_path / "new").exists()


@pytest.mark.parametrize("opset, message", [
    (3, "--opset 3: the exporter writes opsets 9 to 20; use the default, 17"),
    # in range, but SDPA has no ONNX form before opset 14: the exporter's reason, without its graph dump
    (13, "--opset 13: Exporting the operator 'aten::scaled_dot_product_attention' to ONNX opset version 13"),
])
def test_an_opset_that_cannot_hold_the_model_is_one_line_and_nothing_on_stdout(opset, message, tmp_path, capfd):
    ckpt = _checkpoint(tmp_path / "run.ckpt", "vit_tiny_patch4_28", depth=1, img_size=28)
    code = main(["export", "--checkpoint", str(ckpt), "--out", str(tmp_path / "m.onnx"), "--opset", str(opset)])
    out, err = capfd.readouterr()
    assert code == 2 and out == "" and err.count("\n") == 1 and message in err


@pytest.mark.parametrize("name, opset, message", [
    ("vit_tiny_patch4_28", 13, r"^opset=13: Exporting the operator 'aten::scaled_dot_product_attention' to ONNX opset "
                               r"version 13 is not supported\..*; use the default, 17$"),
    # the exporter's own line quoted a node of the traced graph (%110 : Long(device=cpu) = onnx::Gather...)
    ("coord_resnet20_cifar", 9, r"^opset=9: the exporter cannot write this model's graph at opset 9; use the default, 17$"),
])
def test_export_onnx_at_an_opset_the_model_needs_more_than_is_one_line_naming_opset(name, opset, message, tmp_path):
    """The Python export raised the exporter's exception (and the README promised opsets 9-20 to every family)."""
    model = create_model(name, num_classes=2, **({"depth": 1} if name.startswith("vit") else {}))
    with pytest.raises(ArgumentError, match=message):
        export_onnx(model, tmp_path / "m.onnx", opset=opset)
    assert list(tmp_path.iterdir()) == []
    export_onnx(model, tmp_path / "m.onnx", opset=14)  # the first opset both write


class _TracedBranch(torch.nn.Module):
    """Logits doubled for any image but black: the trace of a black example keeps the other branch."""
    input_size = (3, 4, 4)

    def forward(self, images):
        return images.flatten(1)[:, :2] * (2.0 if bool(images.abs().sum() > 0) else 1.0)


class _TracedBatch(torch.nn.Module):
    """A tensor made at the batch size as a number: the graph keeps the traced 2."""
    input_size = (3, 4, 4)

    def forward(self, images):
        return images.flatten(1)[:, :2] + torch.zeros(int(images.shape[0]), 2)


class _TracedBatchColumn(torch.nn.Module):
    """A column made at the batch size as a number, joined on: onnxruntime cannot join 2 rows to 1."""
    input_size = (3, 4, 4)

    def forward(self, images):
        return torch.cat([images.flatten(1)[:, :2], torch.zeros(int(images.shape[0]), 1)], dim=1)


@pytest.mark.parametrize("model, message", [
    (_TracedBranch(), r"^onnxruntime's logits differ from PyTorch's \(largest difference [0-9.]+, tolerance 0\.001 "
                      r"absolute and relative, a batch of 1\); nothing was written: try another opset$"),
    (_TracedBatch(), r"^onnxruntime's logits for a batch of 1 have shape \(2, 2\), PyTorch's \(1, 2\); nothing was "
                     r"written: try another opset$"),
    (_TracedBatchColumn(), r"^onnxruntime cannot run the exported graph on a batch of 1 \(.+\); nothing was written$"),
])
def test_an_export_that_computes_other_logits_is_refused(model, message, tmp_path):
    """The check measured only the traced batch of 2 and never compared the difference with a tolerance."""
    session = onnx_session(export_onnx(model, tmp_path / "m.onnx"))
    with pytest.raises(ExportMismatchError, match=message):
        checked_difference(model, session, model.input_size)


class _ShiftedAtBatch:
    """An onnxruntime session whose logits are ``model``'s plus ``shifts[batch size]``."""

    def __init__(self, model, shifts):
        self.model, self.shifts = model, shifts

    def run(self, names, feeds):
        (images,) = feeds.values()
        with torch.no_grad():
            return [self.model(torch.from_numpy(images)).numpy() + self.shifts[len(images)]]


def test_the_checked_difference_is_the_largest_of_every_batch_not_the_last():
    """The difference export prints is the largest onnxruntime gave, whichever batch gave it."""
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(48, 2))
    difference = checked_difference(model, _ShiftedAtBatch(model, {1: 5e-4, 3: 0.0}), (3, 4, 4))
    assert difference == pytest.approx(5e-4, rel=1e-2)


def test_an_exporter_failure_at_the_default_opset_is_raised_as_the_bug_it_is(tmp_path, monkeypatch):
    """Every visattn classifier exports at the default opset: a failure there is a bug to report with its own
    exception, not a line blaming the opset and advising the default the user already has."""
    def fail(*args, **kwargs):
        raise RuntimeError("boom")

    monkeypatch.setattr(torch.onnx, "export", fail)
    model = create_model("resnet20_cifar", num_classes=2)
    with pytest.raises(RuntimeError, match="^boom$"):
        export_onnx(model, tmp_path / "m.onnx")
    with pytest.raises(ArgumentError, match=r"^opset=14: the exporter cannot write this model's graph at opset 14; "
                                            r"use the default, 17$"):  # a chosen opset is the user's to change
        export_onnx(model, tmp_path / "m.onnx", opset=14)


def test_cli_export_whose_logits_differ_exits_2_and_keeps_the_earlier_file(tmp_path, monkeypatch, capsys):
    out = tmp_path / "m.onnx"
    assert main(["export", "--model", "se_resnet20_cifar.fmnist", "--out", str(out)]) == 0
    exported = out.read_bytes()
    real_session = export.onnx_session

    class Shifted:  # onnxruntime's logits, off by 0.01
        def __init__(self, path):
            self.session = real_session(path)

        def run(self, names, feeds):
            return [self.session.run(names, feeds)[0] + 0.01]

    monkeypatch.setattr(export, "onnx_session", Shifted)
    capsys.readouterr()
    assert main(["export", "--model", "se_resnet20_cifar.fmnist_stage2", "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "visattn: error: onnxruntime's logits differ from PyTorch's" in err
    assert out.read_bytes() == exported and [p.name for p in tmp_path.iterdir()] == ["m.onnx"]


def test_a_rerun_onto_an_earlier_export_says_which_it_replaced(tmp_path, capsys):
    """The second model's file silently took the place of the first's."""
    out = tmp_path / "m.onnx"
    assert main(["export", "--model", "se_resnet20_cifar.fmnist", "--out", str(out)]) == 0
    assert "replacing" not in capsys.readouterr().out
    assert main(["export", "--model", "vit_tiny_patch4_28.fmnist", "--out", str(out)]) == 0
    assert "dynamic batch, replacing an earlier export of se_resnet20_cifar.fmnist);" in capsys.readouterr().out


def test_export_onnx_takes_the_input_size_the_weights_were_trained_at(tmp_path):
    """se_resnet20_cifar.fmnist's architecture says 32 px and its weights 28: the graph took 32, and images
    prepared as its weights' preprocessing says were refused by onnxruntime."""
    model = create_model("se_resnet20_cifar.fmnist")
    assert model.input_size == (3, 32, 32) and model.pretrained_cfg["input_size"] == (3, 28, 28)
    session = onnx_session(export_onnx(model, tmp_path / "m.onnx"))
    assert session.get_inputs()[0].shape == ["batch", 3, 28, 28]
    session = onnx_session(export_onnx(create_model("se_resnet20_cifar"), tmp_path / "bare.onnx"))
    assert session.get_inputs()[0].shape == ["batch", 3, 32, 32]  # no weights: the architecture's size


@pytest.mark.parametrize("name, message", [
    ("sat_cbam_resnet_scenes", r"^sat_cbam_resnet_scenes is a captioner, not a classifier; use `visattn caption`"),
    ("fcos_resnet20_cifar", r"^fcos_resnet20_cifar is a detector, not a classifier; use `visattn detect`"),
])
def test_export_onnx_of_a_captioner_or_detector_names_its_command(name, message, tmp_path):
    """A captioner raised a raw TypeError (forward() missing 'captions'), a detector advice about lists of images
    that export_onnx cannot take, with tensor(2) for its batch."""
    with pytest.raises(ConfigError, match=message):
        export_onnx(create_model(name), tmp_path / "m.onnx", input_size=(3, 32, 32))
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_export_onnx_of_16_bit_weights_is_one_line(dtype, tmp_path):
    """A raw RuntimeError: Input type (torch.FloatTensor) and weight type (torch.HalfTensor) should be the same."""
    model = create_model("resnet20_cifar", num_classes=2).to(dtype)
    with pytest.raises(ConfigError, match=rf"^the model's weights are {dtype}: ONNX export writes float32 graphs; "
                                          r"export model\.float\(\)"):
        export_onnx(model, tmp_path / "m.onnx")


def test_a_vit_traced_at_another_size_names_it_in_numbers(tmp_path):
    """The tracer's sizes are tensors: the line read input is (tensor(32), tensor(32))."""
    model = create_model("vit_tiny_patch4_28", depth=1, num_classes=2)
    with pytest.raises(ConfigError, match=r"^input is \(32, 32\) but the model expects \(28, 28\); resize the image, "
                                          r"or build the model with img_size=\(32, 32\) or dynamic_img_size=True$"):
        export_onnx(model, tmp_path / "m.onnx", input_size=(3, 32, 32))


def test_an_export_that_fails_its_check_leaves_the_earlier_file_and_no_other(tmp_path, monkeypatch, capsys):
    ckpt = _checkpoint(tmp_path / "run.ckpt", "vit_tiny_patch4_28", depth=1, img_size=28)
    earlier = tmp_path / "m.onnx"
    assert main(["export", "--checkpoint", str(ckpt), "--out", str(earlier)]) == 0
    exported = earlier.read_bytes()

    def refuse(path, **kwargs):  # the graph is written; onnxruntime then fails to load it
        raise WeightsError(f"{path}: onnxruntime cannot load it")

    monkeypatch.setattr(export, "onnx_session", refuse)
    capsys.readouterr()
    assert main(["export", "--checkpoint", str(ckpt), "--out", str(earlier)]) == 2
    assert "onnxruntime cannot load it" in capsys.readouterr().err
    assert earlier.read_bytes() == exported
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.onnx", "run.ckpt"]  # no temporary file left


def _another_tools_onnx_model() -> bytes:
    """A valid ONNX model another exporter wrote: a graph and metadata, none of visattn's."""
    x, y = (onnx.helper.make_tensor_value_info(name, onnx.TensorProto.FLOAT, [1]) for name in "xy")
    graph = onnx.helper.make_graph([onnx.helper.make_node("Identity", ["x"], ["y"])], "theirs", [x], [y])
    model = onnx.helper.make_model(graph, producer_name="another-exporter")
    model.metadata_props.add(key="source", value="their-model")
    return model.SerializeToString()


@pytest.mark.parametrize("name, content", [("run.ckpt", b"a checkpoint"), ("config.yaml", b"model: {}"),
                                           ("model.onnx", b"an ONNX file visattn did not write"),
                                           ("their.onnx", _another_tools_onnx_model()), ("out", None)])
def test_export_replaces_only_its_own_onnx_files(tmp_path, capsys, name, content):
    """--out onto another run's checkpoint, a config or someone's model (a loadable one too) wrote ONNX over it;
    a folder-like --out wrote a file named after the folder."""
    target = tmp_path / name
    if content is not None:
        target.write_bytes(content)
    assert main(["export", "--model", "se_resnet20_cifar.fmnist", "--out", str(target) + ("/" if content is None else "")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("visattn: error: --out ")
    assert content is None or target.read_bytes() == content
    assert main(["export", "--model", "se_resnet20_cifar.fmnist", "--out", str(tmp_path / "m.onnx")]) == 0
    assert main(["export", "--model", "se_resnet20_cifar.fmnist", "--out", str(tmp_path / "m.onnx")]) == 0  # its own


def test_an_export_onto_a_link_replaces_its_target_and_keeps_the_link(tmp_path, capsys):
    """The link had been replaced by a file, and its target, what anything following the link reads, kept the
    earlier model while the command said it wrote."""
    (tmp_path / "real").mkdir()
    target, link = tmp_path / "real" / "deploy.onnx", tmp_path / "current.onnx"
    assert main(["export", "--model", "se_resnet20_cifar.fmnist", "--out", str(target)]) == 0
    earlier = target.read_bytes()
    link.symlink_to(target)
    assert main(["export", "--model", "se_resnet20_cifar.fmnist_stage2", "--out", str(link)]) == 0
    assert link.is_symlink() and link.resolve() == target and target.read_bytes() != earlier
    assert sorted(p.name for p in target.parent.iterdir()) == ["deploy.onnx"]  # no temporary file left
    assert {p.key: p.value for p in onnx.load(str(link)).metadata_props}["source"] == "se_resnet20_cifar.fmnist_stage2"


def test_onnx_sessions_do_not_spin_between_runs(tmp_path):
    """onnxruntime's idle workers spin after each run by default, taking a core from what runs next in the
    process: benchmarks/onnx_speed.py's PyTorch rounds ran 1.5x slower on 2 cores."""
    path = export_onnx(create_model("resnet20_cifar", num_classes=3), tmp_path / "m.onnx")
    options = onnx_session(path, threads=2).get_session_options()
    assert options.get_session_config_entry("session.intra_op.allow_spinning") == "0"
    assert options.intra_op_num_threads == 2


def test_without_the_onnx_packages_exporting_and_running_are_one_line_each(tmp_path, monkeypatch):
    """They are an extra (visattn[export]): torch's exporter failed deep inside with "Module onnx is not installed!"."""
    monkeypatch.setitem(sys.modules, "onnx", None)
    monkeypatch.setitem(sys.modules, "onnxruntime", None)
    with pytest.raises(ConfigError, match=r"^exporting to ONNX needs the onnx package; run `pip install "
                                          r"'visattn\[export\]'`$"):
        export_onnx(create_model("resnet18", num_classes=2), tmp_path / "m.onnx")
    assert not (tmp_path / "m.onnx").exists()
    with pytest.raises(ConfigError, match=r"^onnxruntime is not installed; run `pip install 'visattn\[export\]'`"):
        onnx_session(tmp_path / "m.onnx")


@pytest.mark.parametrize("name", list_models("*resnet20_cifar", exclude_filters=["fcos_*", "detr_*"]))
def test_a_resnet_exported_with_dynamic_size_takes_any_image_size(name, tmp_path):
    """Every exported graph took the traced size only (onnxruntime: "Got invalid dimensions"), though a ResNet
    takes any size; timm's exporter has --dynamic-size."""
    torch.manual_seed(0)
    model = create_model(name, num_classes=4).eval()
    path = export_onnx(model, tmp_path / "m.onnx", input_size=(3, 32, 32), dynamic_size=True)
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    assert session.get_inputs()[0].shape == ["batch", 3, "height", "width"]
    for shape in ((1, 3, 48, 40), (2, 3, 24, 80)):
        images = torch.randn(shape)
        with torch.no_grad():
            expected = model(images).numpy()
        assert np.abs(session.run(None, {"images": images.numpy()})[0] - expected).max() <= 1e-4


def test_cli_export_with_dynamic_size(tmp_path, capsys):
    out = tmp_path / "m.onnx"
    assert main(["export", "--model", "se_resnet20_cifar.fmnist", "--out", str(out), "--dynamic-size"]) == 0
    assert "(onnx, opset 17, dynamic batch and image size);" in capsys.readouterr().out
    assert onnx_session(out).get_inputs()[0].shape == ["batch", 3, "height", "width"]
    # a ViT's position embeddings are laid out for one grid
    assert main(["export", "--model", "vit_tiny_patch4_28.fmnist", "--out", str(out), "--dynamic-size"]) == 2
    assert capsys.readouterr().err == ("visattn: error: --dynamic-size: VisionTransformer takes 28x28 images only (its "
                                       "position embeddings are laid out for one grid); export it at that size: "
                                       "leave --dynamic-size out\n")


def test_a_vit_of_any_size_exports_at_one_and_refuses_dynamic_size(tmp_path):
    """Its position embeddings are resampled in Python: a dynamic-size graph traced at 28 px failed at any other
    size in onnxruntime ("Attempting to broadcast an axis by a dimension other than 1"), and one traced at another
    size than it was built for did not export (ONNX has no antialiased bicubic resize)."""
    model = create_model("vit_tiny_patch4_28", depth=1, num_classes=3, dynamic_img_size=True).eval()
    with pytest.raises(ArgumentError, match=r"^dynamic_size=True: VisionTransformer resamples its position embeddings "
                                            r"to each image size in Python, .*; export it at one size$"):
        export_onnx(model, tmp_path / "m.onnx", dynamic_size=True)
    path = export_onnx(model, tmp_path / "m.onnx", input_size=(3, 32, 24))
    images = torch.randn(2, 3, 32, 24)
    with torch.no_grad():
        expected = model(images).numpy()
    assert np.abs(onnx_session(path).run(None, {"images": images.numpy()})[0] - expected).max() <= 1e-4


def test_onnxruntime_refusing_a_chosen_opset_is_one_line(tmp_path, monkeypatch, capsys):
    def refuse(path, **kwargs):
        raise RuntimeError("[ONNXRuntimeError] : 9 : NOT_IMPLEMENTED : Could not find an implementation for Gather(13)")

    monkeypatch.setattr(export, "onnx_session", refuse)
    out = tmp_path / "m.onnx"
    assert main(["export", "--model", "se_resnet20_cifar.fmnist", "--out", str(out), "--opset", "14"]) == 2
    assert capsys.readouterr().err == ("visattn: error: --opset 14: [ONNXRuntimeError] : 9 : NOT_IMPLEMENTED : Could not "
                                       "find an implementation for Gather(13); use the default, 17\n")
    assert not out.exists()


def test_a_rerun_reads_the_earlier_export_once(tmp_path, monkeypatch):
    """An ONNX file holds the model's weights: its metadata was read twice, to keep it and to name it."""
    out = tmp_path / "m.onnx"
    assert main(["export", "--model", "se_resnet20_cifar.fmnist", "--out", str(out)]) == 0
    reads = []
    real = export.exported_source
    monkeypatch.setattr(export, "exported_source", lambda path: reads.append(path) or real(path))
    assert export.export_classifier("se_resnet20_cifar.fmnist", out=out).replaced == "se_resnet20_cifar.fmnist"
    assert reads == [out]
