"""The weights loader: round trips, layouts, safety against hostile pickles, and clear errors."""
import argparse
import functools
import json
import os
import pickle
import re
import threading
import time
import warnings
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file

from visattn import create_model, list_pretrained, load_captioner, load_classifier, load_weights, save_weights
from visattn.data.preprocessing import IMAGENET_MEAN
from visattn.errors import ConfigError, UnknownModelError, VisattnWarning, WeightsError
from visattn.pretrained import (checkpoint_follows, load_index, read_state_dict, sha256_of,
                                 starting_weights_skipped)

REPO = Path(__file__).resolve().parents[1]
ARCH = "vit_tiny_patch4_28"
SMALL = {"depth": 2}


def _model(**kwargs):
    torch.manual_seed(0)
    return create_model(ARCH, **{**SMALL, **kwargs}).eval()


def _logits(model, seed=1):
    torch.manual_seed(seed)
    with torch.no_grad():
        return model(torch.randn(2, 3, 28, 28))


def _assert_one_line_naming(err, path):
    assert str(path) in str(err.value) and "\n" not in str(err.value)


def test_save_and_load_round_trip_through_the_index(weights_tmp):
    model = _model(num_classes=10)
    meta = dict(task="classification", dataset="fashion-mnist", metrics={"top1": 0.5},
                preprocessing={"input_size": [3, 28, 28], "mean": [0.5] * 3, "std": [0.5] * 3},
                labels=[str(i) for i in range(10)], config="configs/classification/x.yaml", model_kwargs=SMALL)
    entry = save_weights(model, weights_tmp / f"{ARCH}.unit.safetensors", **meta)
    index = json.loads((weights_tmp / "index.json").read_text())
    assert index[f"{ARCH}.unit"]["sha256"] == sha256_of(weights_tmp / f"{ARCH}.unit.safetensors") == entry["sha256"]
    assert index[f"{ARCH}.unit"]["num_classes"] == 10 and index[f"{ARCH}.unit"]["dataset"] == "fashion-mnist"
    loaded = create_model(f"{ARCH}.unit").eval()  # num_classes and depth come from the entry
    assert loaded.num_classes == 10 and len(loaded.blocks) == 2
    assert torch.equal(_logits(loaded), _logits(model))
    assert torch.equal(_logits(create_model(ARCH, pretrained=True).eval()), _logits(model))  # the default tag


def test_the_same_weights_save_to_the_same_bytes(weights_tmp):
    # safetensors orders its header from a hash map: before, two saves of one model differed in
    # their bytes and sha256 about every other time.
    model, hashes = _model(), set()
    for folder in "abcdefgh":  # the name is in the file: one name, in eight folders
        (weights_tmp / folder).mkdir()
        hashes.add(save_weights(model, weights_tmp / folder / f"{ARCH}.h.safetensors", model_kwargs=SMALL)["sha256"])
    assert len(hashes) == 1
    header = (weights_tmp / "a" / f"{ARCH}.h.safetensors").read_bytes()
    header = json.loads(header[8:8 + int.from_bytes(header[:8], "little")])
    assert list(header) == sorted(header) and list(header["__metadata__"]) == ["arch", "entry", "format", "tag"]
    assert torch.equal(_logits(create_model(ARCH, pretrained=str(weights_tmp / "h" / f"{ARCH}.h.safetensors")).eval()),
                       _logits(model))


def test_a_weights_file_built_by_path_carries_the_preprocessing_it_was_saved_with(weights_tmp, tmp_path):
    """Built by path (pretrained=FILE) a file visattn saved reads no index, and the model had carried ImageNet's
    statistics and 224-px crop: timm's create_transform then gave Fashion-MNIST weights inputs on which they
    scored 0.34 top-1 against 0.96 by name (an export audit). The file's header now records the preprocessing."""
    model = _model(num_classes=10)
    recorded = {"input_size": [3, 28, 28], "mean": [0.5] * 3, "std": [0.25] * 3, "recipe": "small"}
    save_weights(model, weights_tmp / f"{ARCH}.unit.safetensors", preprocessing=recorded, model_kwargs=SMALL,
                 labels=[str(i) for i in range(10)])
    moved = tmp_path / "moved.safetensors"  # away from its index
    moved.write_bytes((weights_tmp / f"{ARCH}.unit.safetensors").read_bytes())
    by_path = create_model(ARCH, pretrained=str(moved), num_classes=10, **SMALL)
    assert by_path.pretrained_cfg == create_model(f"{ARCH}.unit").pretrained_cfg
    assert by_path.pretrained_cfg["mean"] == (0.5,) * 3 and by_path.pretrained_cfg["crop_mode"] == "squash"


def test_shipped_weights_files_record_their_entry_and_carry_it_built_by_path_or_copied_away(tmp_path):
    """The shipped files record their index entry, as save_weights records it, so that one copied away from the
    index loads as by name (they had recorded only their preprocessing)."""
    for name, entry in json.loads((REPO / "weights" / "index.json").read_text()).items():
        with safe_open(str(REPO / "weights" / entry["file"]), framework="pt") as weights:
            header = weights.metadata()
        assert json.loads(header["preprocessing"]) == entry["preprocessing"], name
        recorded = {k: v for k, v in entry.items() if k not in ("file", "default", "sha256")}
        assert (json.loads(header["entry"]), f"{header['arch']}.{header['tag']}") == (recorded, name)
    shipped = create_model("se_resnet20_cifar",
                           pretrained=str(REPO / "weights" / "se_resnet20_cifar.fmnist.safetensors"))
    assert shipped.pretrained_cfg == create_model("se_resnet20_cifar.fmnist").pretrained_cfg
    copied = tmp_path / "sat_cbam_resnet_scenes.scenes.safetensors"
    copied.write_bytes((REPO / "weights" / copied.name).read_bytes())
    alone, by_name = load_captioner(copied), load_captioner("sat_cbam_resnet_scenes.scenes")
    assert (alone.name, alone.vocab.to_list()) == (by_name.name, by_name.vocab.to_list())


def _moved_away(path: Path, folder: Path) -> Path:
    """``path`` moved into ``folder`` without the index that named it (whose entry goes too)."""
    folder.mkdir(exist_ok=True)
    moved = folder / path.name
    moved.write_bytes(path.read_bytes())
    path.unlink()
    (path.parent / "index.json").unlink()
    return moved


def test_a_saved_weights_file_alone_loads_by_its_path_with_its_labels_and_builder_arguments(weights_tmp, tmp_path):
    """A file save_weights wrote recorded only its architecture and preprocessing; its labels and builder arguments
    lived in the index beside it: copied elsewhere it lost its class names, and no loader took its path (the
    Python API split 'w/x.tag.safetensors' into an unknown model 'w/x'). The file now records its whole entry."""
    model = _model(num_classes=3)
    save_weights(model, weights_tmp / f"{ARCH}.unit.safetensors", labels=["a", "b", "c"], model_kwargs=SMALL,
                 preprocessing={"input_size": [3, 28, 28], "mean": [0.5] * 3, "std": [0.25] * 3})
    alone = _moved_away(weights_tmp / f"{ARCH}.unit.safetensors", tmp_path / "copied")
    classifier = load_classifier(alone)  # a Path, or its text
    assert (classifier.name, classifier.class_names) == (f"{ARCH}.unit", ["a", "b", "c"])
    assert classifier.preprocessing["std"] == [0.25] * 3
    assert torch.allclose(_logits(classifier.model), _logits(model), atol=1e-5)
    built = create_model(ARCH, pretrained=str(alone))  # depth 2 and 3 classes, from the file's entry
    assert len(built.blocks) == 2 and built.num_classes == 3
    assert torch.equal(_logits(built.eval()), _logits(model))
    assert load_classifier(str(alone)).class_names == ["a", "b", "c"]


def test_a_weights_file_with_its_suffix_in_capitals_loads_as_in_lower_case(tmp_path):
    """A copy named MINE.SAFETENSORS was "not a weights file visattn saved" on the command line, an unknown model
    'MINE' in Python, and "unknown weights format '.SAFETENSORS'" as create_model's pretrained."""
    from visattn.cli import model_name

    copied = tmp_path / "MINE.SAFETENSORS"
    copied.write_bytes((REPO / "weights" / "se_resnet20_cifar.fmnist.safetensors").read_bytes())
    classifier, by_name = load_classifier(copied), load_classifier("se_resnet20_cifar.fmnist")
    assert (classifier.name, classifier.class_names) == (by_name.name, by_name.class_names)
    built = create_model("se_resnet20_cifar", pretrained=str(copied))
    assert all(torch.equal(a, b) for a, b in zip(built.state_dict().values(), by_name.model.state_dict().values()))
    other = create_model("cbam_resnet20_cifar", pretrained=str(copied), strict="attention")  # none of its entry
    assert built.pretrained_cfg["mean"] == other.pretrained_cfg["mean"] == by_name.model.pretrained_cfg["mean"]
    assert model_name(str(copied)) == str(copied)
    torch.save(by_name.model.state_dict(), tmp_path / "MINE.PTH")
    from_pickle = create_model("se_resnet20_cifar", pretrained=str(tmp_path / "MINE.PTH"))
    assert all(torch.equal(a, b) for a, b in zip(from_pickle.state_dict().values(), built.state_dict().values()))
    with pytest.raises(argparse.ArgumentTypeError, match="is a training checkpoint: pass it as --checkpoint"):
        model_name("run/LAST.CKPT")


def test_a_weights_file_given_by_path_beside_its_index_is_checked_against_its_sha256_there(weights_tmp):
    save_weights(_model(num_classes=3), weights_tmp / f"{ARCH}.unit.safetensors", labels=["a", "b", "c"],
                 model_kwargs=SMALL)
    index = json.loads((weights_tmp / "index.json").read_text())
    index[f"{ARCH}.unit"]["sha256"] = "0" * 64
    (weights_tmp / "index.json").write_text(json.dumps(index))
    with pytest.raises(WeightsError, match=r"sha256 mismatch, the file is corrupt or was replaced"):
        load_classifier(weights_tmp / f"{ARCH}.unit.safetensors")


def test_a_weights_file_copied_into_a_weights_folder_without_its_index_is_found_by_name(weights_tmp, tmp_path,
                                                                                        monkeypatch):
    """`VISATTN_WEIGHTS=folder` with a copied ARCH.TAG.safetensors said 'no weights ARCH.TAG', beside the file."""
    model = _model(num_classes=3)
    save_weights(model, weights_tmp / f"{ARCH}.unit.safetensors", labels=["a", "b", "c"], model_kwargs=SMALL)
    copied = _moved_away(weights_tmp / f"{ARCH}.unit.safetensors", tmp_path / "copied")
    monkeypatch.setenv("VISATTN_WEIGHTS", str(copied.parent))
    assert load_index(copied.parent)[f"{ARCH}.unit"]["labels"] == ["a", "b", "c"]
    assert torch.equal(_logits(create_model(f"{ARCH}.unit").eval()), _logits(model))


def test_a_captioners_weights_file_alone_builds_its_vocabulary_and_loads_as_by_name(weights_tmp, tmp_path):
    """create_model(ARCH, pretrained=FILE) of a captioner away from its index failed: 'wrong shape: embed.weight
    (63, 128) vs (10000, 128)', its vocabulary size being in the index only."""
    shipped = REPO / "weights" / "sat_cbam_resnet_scenes.scenes.safetensors"
    captioner = load_captioner(shipped)
    save_weights(captioner.model, weights_tmp / "sat_cbam_resnet_scenes.mine.safetensors", task="captioning",
                 vocab=captioner.vocab.to_list(), preprocessing=captioner.preprocessing, max_len=captioner.max_len)
    alone = _moved_away(weights_tmp / "sat_cbam_resnet_scenes.mine.safetensors", tmp_path / "copied")
    built = create_model("sat_cbam_resnet_scenes", pretrained=str(alone))
    assert built.vocab_size == len(captioner.vocab)
    again = load_captioner(alone)
    assert again.vocab.to_list() == captioner.vocab.to_list() and again.name == "sat_cbam_resnet_scenes.mine"
    assert all(torch.equal(a, b) for a, b in zip(again.model.state_dict().values(),
                                                  captioner.model.state_dict().values()))


def test_a_weights_file_that_records_no_entry_away_from_its_index_is_one_line_with_the_fix(weights_tmp, tmp_path):
    old = tmp_path / "se_resnet20_cifar.fmnist.safetensors"  # saved before files recorded their entry
    save_file(create_model("se_resnet20_cifar", num_classes=10).state_dict(), str(old),
              metadata={"arch": "se_resnet20_cifar", "format": "pt"})
    with pytest.raises(WeightsError, match=r"no record of what these weights are .*; keep it beside the index.json "
                                           r"it was saved with, or load it in Python with create_model\(ARCH, "
                                           r"pretrained=FILE\)$"):
        load_classifier(old)
    with pytest.raises(WeightsError, match="weights file not found; check the path"):
        load_classifier(tmp_path / "missing.safetensors")


def test_a_damaged_entry_in_a_weights_file_is_one_line_and_skipped_in_a_folder_with_a_warning(weights_tmp):
    damaged = weights_tmp / f"{ARCH}.bad.safetensors"
    save_file(_model().state_dict(), str(damaged), metadata={"arch": ARCH, "tag": "bad", "entry": '{"labels": 3}'})
    with pytest.raises(WeightsError, match=rf"^{damaged}: the weights entry it records: labels=3: give a list of "
                                           r"label names, one per class; the file was edited or damaged"):
        load_classifier(str(damaged))
    with pytest.warns(VisattnWarning, match="labels=3"):
        assert f"{ARCH}.bad" not in load_index(weights_tmp)


def test_a_weights_file_records_its_entry_less_the_folders_default_mark_and_builds_only_its_own_architecture(
        weights_tmp, tmp_path):
    """The default mark is the folder's: a copy in another folder would have made itself that architecture's
    default. Another architecture built from the file takes none of its entry (it had been named after the file's
    weights)."""
    save_weights(_model(num_classes=3), weights_tmp / f"{ARCH}.unit.safetensors", model_kwargs=SMALL, default=True)
    with safe_open(str(weights_tmp / f"{ARCH}.unit.safetensors"), framework="pt") as weights:
        recorded = json.loads(weights.metadata()["entry"])
    assert recorded["model_kwargs"] == SMALL and recorded["num_classes"] == 3 and "default" not in recorded
    resnet = create_model("resnet20_cifar", num_classes=3)
    save_weights(resnet, weights_tmp / "resnet20_cifar.unit.safetensors")
    alone = _moved_away(weights_tmp / "resnet20_cifar.unit.safetensors", tmp_path / "copied")
    built = create_model("se_resnet20_cifar", pretrained=str(alone), strict="attention")
    assert built.visattn_name == "se_resnet20_cifar" and built.num_classes == 3


def test_a_folders_index_keeps_its_names_from_files_recording_them_and_rejects_a_header_of_no_name(weights_tmp):
    """An unindexed file recording a name the index gives other weights does not take it (nor skip their sha256);
    a recorded name that is no ARCH.TAG is refused, and passed over in a folder with a warning."""
    from safetensors.torch import save_file

    first, other = _model(num_classes=3), _model(num_classes=3, depth=1)
    save_weights(first, weights_tmp / f"{ARCH}.unit.safetensors", model_kwargs=SMALL)
    save_file(other.state_dict(), str(weights_tmp / "stray.safetensors"), metadata={
        "arch": ARCH, "tag": "unit", "entry": json.dumps({"model_kwargs": {"depth": 1}})})
    index = load_index(weights_tmp)
    assert index[f"{ARCH}.unit"]["file"] == f"{ARCH}.unit.safetensors" and index[f"{ARCH}.unit"]["sha256"]
    assert torch.equal(_logits(create_model(f"{ARCH}.unit").eval()), _logits(first))
    for arch, tag in ((ARCH, "a/b"), (f"{ARCH}.x", "t")):
        bad = weights_tmp / "odd.safetensors"
        save_file(other.state_dict(), str(bad), metadata={"arch": arch, "tag": tag, "entry": "{}"})
        with pytest.raises(WeightsError, match=rf"odd.safetensors: the weights entry it records: "
                                               rf"arch='{re.escape(arch)}', tag='{tag}': give the ARCH.TAG"):
            load_classifier(bad)
        with pytest.warns(VisattnWarning, match="give the ARCH.TAG the weights were saved as"):
            assert set(load_index(weights_tmp)) == {f"{ARCH}.unit"}


def test_a_weights_file_beside_another_index_through_a_link_or_damaged_is_read_as_such(weights_tmp, tmp_path):
    """An index.json of something else beside a file blocked loading it ("unreadable weights index"); a link to a
    shipped file looked for the index beside the link; a file cut short was "not saved by visattn save-weights"."""
    save_weights(_model(num_classes=3), weights_tmp / f"{ARCH}.unit.safetensors", labels=["a", "b", "c"],
                 model_kwargs=SMALL)
    alone = _moved_away(weights_tmp / f"{ARCH}.unit.safetensors", tmp_path / "downloads")
    (alone.parent / "index.json").write_text('{"pages": [1]}')
    assert load_classifier(alone).class_names == ["a", "b", "c"]
    link = tmp_path / "link.safetensors"
    link.symlink_to(REPO / "weights" / "se_resnet20_cifar.fmnist.safetensors")
    assert load_classifier(link).class_names[0] == "T-shirt/top"
    cut = tmp_path / "cut.safetensors"
    cut.write_bytes(alone.read_bytes()[:1000])
    with pytest.raises(WeightsError, match=rf"^{cut}: not a safetensors file that reads \(damaged, cut short"):
        load_classifier(cut)


def test_an_empty_state_dict_as_starting_weights_is_refused_as_load_weights_refuses_it():
    """`pretrained={}` (a key filter that kept nothing) built a randomly initialised model without a word."""
    with pytest.raises(WeightsError, match=r"^state dict: weights do not fit VisionTransformer \(no key in common\)"):
        create_model(ARCH, pretrained={}, **SMALL)


def test_a_new_default_is_the_architectures_only_default(weights_tmp):
    first, second = _model(), _model(depth=1)
    save_weights(first, weights_tmp / f"{ARCH}.first.safetensors", model_kwargs=SMALL, default=True)
    save_weights(second, weights_tmp / f"{ARCH}.second.safetensors", model_kwargs={"depth": 1}, default=True)
    index = load_index(weights_tmp)
    assert [name for name, entry in index.items() if entry.get("default")] == [f"{ARCH}.second"]
    assert torch.equal(_logits(create_model(ARCH, pretrained=True).eval()), _logits(second))


def test_overwriting_the_default_weights_keeps_them_the_default_unless_told_otherwise(weights_tmp):
    """`save-weights --overwrite` without --default (re-measuring with --dataset) had dropped the mark: the bare
    architecture name then loaded other weights without a word."""
    first, second = _model(), _model(depth=1)
    save_weights(first, weights_tmp / f"{ARCH}.first.safetensors", model_kwargs=SMALL)
    save_weights(second, weights_tmp / f"{ARCH}.mine.safetensors", model_kwargs={"depth": 1}, default=True)
    save_weights(second, weights_tmp / f"{ARCH}.mine.safetensors", model_kwargs={"depth": 1}, overwrite=True)
    assert [name for name, entry in load_index(weights_tmp).items() if entry.get("default")] == [f"{ARCH}.mine"]
    assert torch.equal(_logits(create_model(ARCH, pretrained=True).eval()), _logits(second))
    save_weights(second, weights_tmp / f"{ARCH}.mine.safetensors", model_kwargs={"depth": 1}, overwrite=True,
                 default=False)
    assert not any(entry.get("default") for entry in load_index(weights_tmp).values())


@pytest.mark.parametrize("name", ["weights", f"{ARCH}.my tag", f"{ARCH}.$(id)", f"{ARCH}.a\nb", f"{ARCH}.a.b",
                                  f"{ARCH}." + "t" * 300])
def test_save_weights_rejects_bad_names(name, tmp_path):
    """Tags with spaces, shell characters or a newline were saved (the CLI's --tag refused them), and one too
    long for a file name was a raw OSError."""
    with pytest.raises(WeightsError, match=r"name weights files <arch>.<tag>.safetensors, the tag of letters, "
                                           r"digits, _ and -"):
        save_weights(_model(), tmp_path / f"{name}.safetensors")
    assert not any(tmp_path.iterdir())


def test_sha256_mismatch_is_refused(weights_tmp):
    path = weights_tmp / f"{ARCH}.unit.safetensors"
    save_weights(_model(), path, model_kwargs=SMALL)
    data = bytearray(path.read_bytes())
    data[-1] ^= 0xFF
    path.write_bytes(bytes(data))
    # a user's folder: git holds no copy of the file, as the hint for shipped weights says
    with pytest.raises(WeightsError, match=r"sha256 mismatch, .*; restore it, or save the weights again") as err:
        create_model(f"{ARCH}.unit")
    _assert_one_line_naming(err, path)


def _saved_twice(folder: Path) -> tuple[Path, dict, dict, bytes]:
    """``ARCH.unit`` saved, then saved again with other weights: its path, both index entries, the first file."""
    path = folder / f"{ARCH}.unit.safetensors"
    save_weights(_model(), path, model_kwargs=SMALL)
    first, first_bytes = load_index(folder)[f"{ARCH}.unit"], path.read_bytes()
    model = _model()
    torch.nn.init.normal_(model.head.weight)
    save_weights(model, path, model_kwargs=SMALL, overwrite=True)
    return path, first, load_index(folder)[f"{ARCH}.unit"], first_bytes


def test_a_load_that_read_an_overwrites_entry_before_its_file_moved_in_waits_for_the_save(weights_tmp):
    """A save holds the index's lock from writing its entry to moving its file into place: a load in between read
    the new entry and the old file, and said the file was corrupt (two processes, one saving --overwrite)."""
    from visattn.fileio import exclusive_lock

    path, _, entry, first_bytes = _saved_twice(weights_tmp)
    second_bytes = path.read_bytes()
    path.write_bytes(first_bytes)  # as between the save's index write and its move
    locked = threading.Event()

    def saving() -> None:
        with exclusive_lock(weights_tmp / "index.json.lock"):
            locked.set()
            time.sleep(0.5)
            path.write_bytes(second_bytes)

    saver = threading.Thread(target=saving)
    saver.start()
    locked.wait()
    state = read_state_dict(entry["path"], sha256=entry["sha256"])
    saver.join()
    torch.testing.assert_close(state, read_state_dict(path), rtol=0, atol=0)
    assert not torch.equal(state["head.weight"], _model().head.weight)


def test_a_load_of_an_entry_saved_again_since_it_was_read_says_so(weights_tmp):
    path, first, _, _ = _saved_twice(weights_tmp)
    with pytest.raises(WeightsError, match=rf"^{re.escape(str(path))}: saved again \(visattn save-weights "
                                           r"--overwrite\) while this loaded its earlier index entry; load it again$"):
        read_state_dict(first["path"], sha256=first["sha256"])


def test_a_weights_folder_that_cannot_be_read_is_named_with_the_fix(tmp_path, monkeypatch):
    """It was "w/index.json: Permission denied", from the last-resort handler, naming neither VISATTN_WEIGHTS nor a fix."""
    from pathlib import Path

    folder = tmp_path / "w"
    folder.mkdir()
    real_exists = Path.exists

    def unreadable(path, *args, **kwargs):
        if path.parent == folder:
            raise PermissionError(13, "Permission denied", str(path))
        return real_exists(path, *args, **kwargs)

    monkeypatch.setenv("VISATTN_WEIGHTS", str(folder))
    monkeypatch.setattr(Path, "exists", unreadable)
    with pytest.raises(WeightsError, match=rf"^the weights folder {re.escape(str(folder))} cannot be read \(Permission "
                                           r"denied\); fix its permissions, or take it out of VISATTN_WEIGHTS$"):
        create_model("se_resnet20_cifar.fmnist")


def test_an_index_entry_whose_file_is_gone_is_named_as_such(weights_tmp):
    """It said "weights file not found, nor weights of that name" and pointed to `visattn models --pretrained`,
    which lists the entry."""
    path = weights_tmp / f"{ARCH}.unit.safetensors"
    save_weights(_model(), path, model_kwargs=SMALL)
    path.unlink()
    with pytest.raises(WeightsError, match=rf"the weights file of an entry in {re.escape(str(weights_tmp / 'index.json'))} "
                                           "is missing; restore the file, or remove its entry from that index") as err:
        create_model(f"{ARCH}.unit")
    _assert_one_line_naming(err, path)


def test_indexed_weights_load_the_bytes_their_sha256_was_checked_on(weights_tmp, monkeypatch):
    """The file was hashed, then opened again to load: weights swapped in between loaded unchecked. The swap
    follows the hash itself, whatever reads the file next (it had followed a reader only the fix calls)."""
    import hashlib

    path = weights_tmp / f"{ARCH}.unit.safetensors"
    torch.manual_seed(0)
    saved = _model()
    save_weights(saved, path, model_kwargs=SMALL)
    real_sha256, swapped = hashlib.sha256, []

    class SwappedOnceHashed:
        def __init__(self, *args):
            self.digest = real_sha256(*args)

        def update(self, data: bytes) -> None:
            self.digest.update(data)

        def hexdigest(self) -> str:
            if not swapped:  # another file now, right after the check
                swapped.append(save_file({k: torch.zeros_like(v) for k, v in saved.state_dict().items()}, path))
            return self.digest.hexdigest()

    monkeypatch.setattr(hashlib, "sha256", SwappedOnceHashed)
    torch.testing.assert_close(create_model(f"{ARCH}.unit").state_dict(), saved.state_dict(), rtol=0, atol=0)
    assert swapped


def test_truncated_safetensors_is_a_clear_error(tmp_path):
    path = tmp_path / "cut.safetensors"
    save_file({"w": torch.randn(64, 64)}, path)
    path.write_bytes(path.read_bytes()[:100])
    with pytest.raises(WeightsError, match="not a valid safetensors") as err:
        read_state_dict(path)
    _assert_one_line_naming(err, path)


def test_header_larger_than_file_is_a_clear_error(tmp_path):
    path = tmp_path / "huge_header.safetensors"
    path.write_bytes((10**12).to_bytes(8, "little") + b"{}")
    with pytest.raises(WeightsError, match="not a valid safetensors") as err:
        read_state_dict(path)
    _assert_one_line_naming(err, path)


@pytest.mark.parametrize("content", [
    bytes(range(256)) * 4,  # garbage: its first 8 bytes read as a header length of ~5e17
    (9).to_bytes(8, "little") + b"{not json",  # a header that is not JSON
    (2).to_bytes(8, "little") + b"{}",  # a header with no tensors
    b"",  # empty
], ids=["garbage", "header_not_json", "no_tensors", "empty"])
def test_corrupt_safetensors_is_one_line_naming_the_file(tmp_path, content):
    path = tmp_path / "corrupt.safetensors"
    path.write_bytes(content)
    with pytest.raises(WeightsError) as err:
        create_model(ARCH, **SMALL, pretrained=str(path))
    _assert_one_line_naming(err, path)


class _CreatesFile:
    def __init__(self, target):
        self.target = target

    def __reduce__(self):
        return (open, (self.target, "w"))


@pytest.mark.parametrize("suffix", [".pth", ".bin", ".ckpt"])
def test_hostile_pickle_is_refused_and_runs_nothing(tmp_path, suffix):
    marker = tmp_path / "pwned.txt"
    path = tmp_path / f"evil{suffix}"
    with open(path, "wb") as f:
        pickle.dump({"state_dict": {"w": _CreatesFile(str(marker))}}, f)
    torch.save({"w": _CreatesFile(str(marker))}, tmp_path / f"evil_zip{suffix}")
    for candidate in (path, tmp_path / f"evil_zip{suffix}"):
        with pytest.raises(WeightsError, match="refused") as err:
            create_model(ARCH, **SMALL, pretrained=str(candidate))
        _assert_one_line_naming(err, candidate)
    assert not marker.exists()


@pytest.mark.parametrize("content", [bytes(range(256)) * 4, b"# README\n\nnot weights\n", b"a,b\n1,2\n", b"hello\n", b"."])
def test_a_file_that_is_no_pickle_is_not_called_a_dangerous_one(tmp_path, content):
    """Random bytes or a text file is a wrong path, not code to convert 'where you trust it'."""
    path = tmp_path / "weights.pth"
    path.write_bytes(content)
    with pytest.raises(WeightsError, match=r"weights.pth: not a PyTorch checkpoint \(no pickle torch can read\); "
                                           "check the path") as err:
        create_model(ARCH, **SMALL, pretrained=str(path))
    _assert_one_line_naming(err, path)


@pytest.mark.parametrize("zip_format", [True, False])
def test_a_lazy_checkpoint_read_equals_a_full_one_and_still_refuses_hostile_pickles(tmp_path, zip_format):
    """Hyperparameter looks (task detection, --ckpt_path best) memory-map the tensors; the legacy format is read whole."""
    from visattn.pretrained import read_pickle_checkpoint

    checkpoint = {"state_dict": _model().state_dict(), "hyper_parameters": {"model_name": ARCH}, "global_step": 7}
    torch.save(checkpoint, tmp_path / "run.ckpt", _use_new_zipfile_serialization=zip_format)
    lazy, full = read_pickle_checkpoint(tmp_path / "run.ckpt", lazy=True), read_pickle_checkpoint(tmp_path / "run.ckpt")
    assert lazy["hyper_parameters"] == full["hyper_parameters"] == checkpoint["hyper_parameters"]
    torch.testing.assert_close(lazy["state_dict"], full["state_dict"])
    marker = tmp_path / "pwned.txt"
    torch.save({"w": _CreatesFile(str(marker))}, tmp_path / "evil.ckpt", _use_new_zipfile_serialization=zip_format)
    with pytest.raises(WeightsError, match="refused"):
        read_pickle_checkpoint(tmp_path / "evil.ckpt", lazy=True)
    assert not marker.exists()


def test_missing_file_and_unknown_format(tmp_path):
    with pytest.raises(WeightsError, match="not found"):
        read_state_dict(tmp_path / "nope.safetensors")
    (tmp_path / "w.onnx").write_bytes(b"x")
    with pytest.raises(WeightsError, match="unknown weights format"):
        read_state_dict(tmp_path / "w.onnx")


def test_lightning_and_ddp_layouts_are_unwrapped(tmp_path):
    model = _model()
    state = model.state_dict()
    lightning = {"state_dict": {f"model.{k}": v for k, v in state.items()}, "epoch": 3, "global_step": 10}
    torch.save(lightning, tmp_path / "last.ckpt")
    torch.save({f"module.{k}": v for k, v in state.items()}, tmp_path / "ddp.pth")
    # a user's LightningModule around a compiled model, and DDP around a Lightning-style wrapper
    torch.save({f"model._orig_mod.{k}": v for k, v in state.items()}, tmp_path / "compiled.ckpt")
    torch.save({f"module.model.{k}": v for k, v in state.items()}, tmp_path / "ddp_model.pth")
    for name in ("last.ckpt", "ddp.pth", "compiled.ckpt", "ddp_model.pth"):
        loaded = create_model(ARCH, **SMALL, pretrained=str(tmp_path / name)).eval()
        assert torch.equal(_logits(loaded), _logits(model)), name


def test_a_task_checkpoint_with_an_ema_copy_loads_the_ema_weights(tmp_path):
    """The averaged weights are the ones a run validated; the stage configs warm-start from them."""
    raw, averaged = _model().state_dict(), _model(depth=2).state_dict()
    averaged = {k: v + 1 if v.is_floating_point() else v for k, v in averaged.items()}
    state = {**{f"model.{k}": v for k, v in raw.items()}, **{f"ema.module.{k}": v for k, v in averaged.items()},
             "ema.n_averaged": torch.tensor(5)}
    torch.save({"state_dict": state, "global_step": 10}, tmp_path / "last.ckpt")
    loaded = create_model(ARCH, **SMALL, pretrained=str(tmp_path / "last.ckpt"))
    torch.testing.assert_close(loaded.state_dict(), averaged, rtol=0, atol=0)


def test_weights_that_share_no_key_with_the_model_are_refused_even_non_strictly(tmp_path):
    state = {f"net.{k}": v for k, v in _model().state_dict().items()}  # a user's LightningModule: self.net
    torch.save(state, tmp_path / "user.ckpt")
    with pytest.raises(WeightsError, match="no key in common; the weights' keys all start with 'net.': strip that prefix") as err:
        create_model(ARCH, **SMALL, pretrained=str(tmp_path / "user.ckpt"), strict=False)
    _assert_one_line_naming(err, tmp_path / "user.ckpt")


def test_features_only_weights_warn_that_the_head_is_new(tmp_path):
    state = {k: v for k, v in _model().state_dict().items() if not k.startswith("head.")}  # timm num_classes=0
    with pytest.warns(UserWarning, match="no classifier 'head'.*randomly initialised"):
        model = create_model(ARCH, **SMALL, pretrained=state)
    assert torch.equal(model.blocks[0].attn.qkv.weight, state["blocks.0.attn.qkv.weight"])


def test_batchnorm_step_counters_may_be_absent(tmp_path):
    """torchvision's frozen-BatchNorm detection weights and pre-0.4.1 checkpoints have none."""
    model = create_model("resnet20_cifar", num_classes=10).eval()
    state = {k: v for k, v in model.state_dict().items() if not k.endswith("num_batches_tracked")}
    loaded = create_model("resnet20_cifar", num_classes=10, pretrained=state).eval()  # strict
    images = torch.randn(2, 3, 32, 32)
    assert torch.equal(loaded(images), model(images))


def test_saved_weights_rebuild_the_model_they_were_saved_from_by_name(weights_tmp):
    model = _model(img_size=56, num_classes=4)  # not the architecture's 28 px nor its 12 blocks
    save_weights(model, weights_tmp / f"{ARCH}.wide.safetensors")
    loaded = create_model(f"{ARCH}.wide").eval()
    assert loaded.patch_embed.grid_size == model.patch_embed.grid_size and len(loaded.blocks) == 2
    torch.manual_seed(1)
    images = torch.randn(2, 3, 56, 56)
    with torch.no_grad():
        assert torch.equal(loaded(images), model(images))


@pytest.mark.parametrize("pretrained, shown", [
    ("mine.pth", "'mine.pth'"),
    (Path("mine.pth"), "'mine.pth'"),  # was PosixPath('mine.pth')
    ({"pos_embed": torch.zeros(1, 50, 192)}, "..."),  # a state dict's repr was megabytes of tensors, over many lines
])
def test_a_tag_and_other_weights_together_are_one_line(weights_tmp, pretrained, shown):
    save_weights(_model(), weights_tmp / f"{ARCH}.unit.safetensors")
    with pytest.raises(ConfigError) as info:
        create_model(f"{ARCH}.unit", pretrained=pretrained)
    assert str(info.value) == (f"{ARCH}.unit names shipped weights and pretrained={shown} other weights; give one: "
                               f"create_model('{ARCH}', pretrained={shown}) or create_model('{ARCH}.unit')")


def test_a_tag_with_its_own_name_as_pretrained_loads_the_tag(weights_tmp):
    """A config's model_name ARCH.TAG with pretrained ARCH.TAG (a shipped config's pretrained, its model_name
    given the tag) was refused as "names shipped weights and pretrained=... other weights", both the same."""
    model = _model()
    save_weights(model, weights_tmp / f"{ARCH}.unit.safetensors")
    loaded = create_model(f"{ARCH}.unit", pretrained=f"{ARCH}.unit")
    assert all(torch.equal(a, b) for a, b in zip(loaded.state_dict().values(), model.state_dict().values()))


def test_a_tag_with_pretrained_none_loads_the_tag(weights_tmp):
    model = _model()
    save_weights(model, weights_tmp / f"{ARCH}.unit.safetensors")
    loaded = create_model(f"{ARCH}.unit", pretrained=None)  # None: unset, as a YAML null gives it
    assert all(torch.equal(a, b) for a, b in zip(loaded.state_dict().values(), model.state_dict().values()))


def test_other_num_classes_drops_the_head_with_a_warning(tmp_path):
    path = tmp_path / "w.safetensors"
    source = _model(num_classes=10).state_dict()
    save_file(source, path)
    with pytest.warns(UserWarning, match="dropped head.(weight|bias), head.(weight|bias)"):
        model = create_model(ARCH, **SMALL, num_classes=3, pretrained=str(path))
    assert model.head.out_features == 3
    assert torch.equal(model.blocks[0].attn.qkv.weight, source["blocks.0.attn.qkv.weight"])


@pytest.mark.parametrize("arch, kwargs", [(ARCH, SMALL), ("resnet18", {}),
                                          ("vit_small_patch14_dinov2", {"img_size": 28, "depth": 1})])  # headless
def test_weights_with_another_head_build_that_head_when_no_num_classes_is_given(tmp_path, recwarn, arch, kwargs):
    """From a timm user's audit: a 10-class fine-tune's file built the default 1000-class model, its trained head
    dropped for a random one with only a warning (timm refuses the size mismatch)."""
    torch.manual_seed(0)
    source = create_model(arch, **kwargs, num_classes=10).eval()
    path = tmp_path / "w.safetensors"
    save_file(source.state_dict(), path)
    for loaded in (create_model(arch, **kwargs, pretrained=str(path)),
                   create_model(arch, **kwargs, pretrained=source.state_dict())):
        assert loaded.num_classes == loaded.pretrained_cfg["num_classes"] == 10
        assert all(torch.equal(a, b) for a, b in zip(loaded.state_dict().values(), source.state_dict().values()))
    assert not [w for w in recwarn if issubclass(w.category, VisattnWarning)]


@pytest.mark.parametrize("strict", [True, False])
@pytest.mark.parametrize("absent", ["head.bias", "head.weight"])
def test_a_head_only_partly_there_is_refused_naming_its_missing_keys(tmp_path, recwarn, strict, absent):
    """A file without head.bias loaded silently, the bias left at its init: another top-1 class."""
    path = tmp_path / "cut.safetensors"
    save_file({k: v for k, v in _model(num_classes=10).state_dict().items() if k != absent}, path)
    model = _model(num_classes=10)
    with pytest.raises(WeightsError) as err:
        load_weights(model, path, strict=strict)
    assert str(err.value) == (f"{path}: classifier 'head' is incomplete (missing: {absent}); the file was edited or "
                              "damaged: re-export it with the whole head, or without any head.* key to fine-tune a "
                              "new head")
    assert not [w for w in recwarn if issubclass(w.category, VisattnWarning)], [str(w.message) for w in recwarn]
    with pytest.raises(WeightsError, match=f"missing: {absent}.*use the checkpoint as training wrote it"):
        load_weights(model, path, new_head=False)


def test_a_checkpoint_of_another_architecture_names_the_backbone_keys_not_the_head():
    """A resnet20_cifar training checkpoint read as a resnet18 one was blamed on its classifier 'fc'."""
    state = create_model("resnet20_cifar", num_classes=10).state_dict()
    for source in (state, {k: v for k, v in state.items() if k != "fc.bias"}):
        with pytest.raises(WeightsError) as err:
            load_weights(create_model("resnet18", num_classes=10), source, new_head=False, origin="run.ckpt")
        message = str(err.value)
        assert message.startswith("run.ckpt: weights do not fit ResNet (missing: layer4.0.conv1.weight")
        assert "wrong shape: conv1.weight (28, 3, 3, 3) vs (64, 3, 7, 7)" in message and "fc" not in message
        assert "another depth" not in message  # three stages against four: another architecture, not a depth


@pytest.mark.parametrize("theirs, ours, said", [
    (("resnet50", {}), ("resnet18", {}), "3, 4, 6, 3 blocks in layer1–layer4, ResNet 2, 2, 2, 2"),
    (("vit_tiny_patch4_28", {"depth": 3}), ("vit_tiny_patch4_28", {"depth": 2}), "3 blocks, VisionTransformer 2"),
])
def test_weights_of_another_depth_say_so_beside_the_keys(theirs, ours, said):
    """A deeper network's weights were refused with only lists of keys and shapes, the depth left to be inferred."""
    state = create_model(theirs[0], **theirs[1]).state_dict()
    with pytest.raises(WeightsError) as err:
        load_weights(create_model(ours[0], **ours[1]), state, origin="deep.safetensors")
    assert str(err.value).endswith(f"; another depth: the weights hold {said}; build the architecture of their depth, "
                                   "or give weights of this one")
    load_weights(create_model(ours[0], **ours[1]), create_model(ours[0], **ours[1]).state_dict())  # same depth loads


@pytest.mark.parametrize("theirs, ours, said", [
    ("resnet34", "resnet50", "the weights have BasicBlocks (two: ResNet-18, -34), this model Bottleneck blocks"),
    ("resnet50", "resnet34", "the weights have Bottleneck blocks (three convolutions: ResNet-50 and deeper), this "
                             "model BasicBlocks"),
    ("resnext50_32x4d", "resnet50", "the weights' first 3x3 convolution is 128 wide with groups=32, this model's 64 "
                                    "with groups=1: pass cardinality=32, base_width=4"),
    ("wide_resnet50_2", "resnet50", "is 128 wide with groups=1, this model's 64 with groups=1: pass cardinality=1, "
                                    "base_width=128"),
])
def test_resnet_weights_of_another_block_say_which(theirs, ours, said):
    """resnet34's weights in a resnet50 (the same 3, 4, 6, 3 blocks, so no depth to name), and ResNeXt's or Wide
    ResNet's, were 776 characters of keys ending "check the architecture and its kwargs" (a torchvision user's
    audit)."""
    import torchvision

    state = getattr(torchvision.models, theirs)().state_dict()
    with pytest.raises(WeightsError, match=re.escape(said)):
        load_weights(create_model(ours), state, origin="torchvision.pth")
    named = re.search(r"cardinality=(\d+), base_width=(\d+)", said)
    if named:  # the settings named build the model the weights load into
        load_weights(create_model(ours, cardinality=int(named[1]), base_width=int(named[2])), state)


def test_weights_of_the_same_depth_in_another_attention_resnet_are_no_depth():
    with pytest.raises(WeightsError) as err:
        load_weights(create_model("cbam_resnet20_cifar"), create_model("se_resnet20_cifar").state_dict(), origin="se")
    assert "another depth" not in str(err.value) and "strict='attention'" in str(err.value)


def test_mismatch_lists_missing_unexpected_and_shapes(tmp_path):
    state = _model().state_dict()
    del state["blocks.1.mlp.fc2.bias"]
    state["blocks.9.extra"] = torch.zeros(1)
    path = tmp_path / "w.safetensors"
    save_file(state, path)
    with pytest.raises(WeightsError) as err:
        create_model(ARCH, **SMALL, pretrained=str(path))
    message = str(err.value)
    assert "missing: blocks.1.mlp.fc2.bias" in message and "unexpected: blocks.9.extra" in message
    assert "strict='attention'" in message and "another depth" not in message  # a stray key is no block
    with pytest.warns(UserWarning, match="kept init for missing blocks.1.mlp.fc2.bias"):
        create_model(ARCH, **SMALL, pretrained=str(path), strict=False)
    with pytest.raises(WeightsError, match=r"wrong shape: blocks.0.attn.proj.bias \(192,\) vs \(384,\)"):
        load_weights(create_model("vit_small_patch4_28", depth=2), path, strict=False)


@pytest.fixture
def hf_cache(tmp_path, monkeypatch):
    """An empty Hugging Face cache, offline, for the duration of a test (the hub reads its paths on import)."""
    from huggingface_hub import constants

    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hf" / "hub"))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    return tmp_path / "hf" / "hub"


def _cache_hub_weights(cache, repo, state):
    """``state`` as ``repo``'s model.safetensors in the cache layout hf_hub_download leaves behind."""
    entry, commit = cache / f"models--{repo.replace('/', '--')}", "0" * 40
    (entry / "snapshots" / commit).mkdir(parents=True)
    (entry / "refs").mkdir()
    (entry / "refs" / "main").write_text(commit)
    save_file({k: v.contiguous() for k, v in state.items()}, entry / "snapshots" / commit / "model.safetensors")


@pytest.mark.parametrize("source", ["timm:vit_tiny_patch16_224", "hf-hub:timm/vit_tiny_patch16_224"])
def test_hub_sources_fail_fast_offline(hf_cache, source):
    with pytest.raises(WeightsError, match="cannot fetch weights .HF_HUB_OFFLINE is set. and none are in the "
                                           "Hugging Face cache") as err:
        create_model("vit_tiny_patch16_224", pretrained=source)
    assert source in str(err.value) and "\n" not in str(err.value)


def test_a_timm_local_dir_loads_offline_and_a_wrong_folder_is_one_line(hf_cache, tmp_path):
    """`timm:local-dir:FOLDER` (timm's route for a folder of config.json and weights) was refused offline as
    weights the hub could not fetch: a local folder needs no hub."""
    import timm
    from timm.models import save_for_hf

    torch.manual_seed(0)
    reference = timm.create_model("vit_tiny_patch16_224", img_size=32, patch_size=16).eval()
    save_for_hf(reference, tmp_path / "folder", safe_serialization=True)
    model = create_model("vit_tiny_patch16_224", img_size=32, pretrained=f"timm:local-dir:{tmp_path / 'folder'}").eval()
    images = torch.randn(2, 3, 32, 32)
    torch.testing.assert_close(model(images), reference(images), rtol=0, atol=0)
    with pytest.raises(WeightsError, match=r"^timm:local-dir:\S*nowhere: could not read weights \(.*\); give a folder "
                                           r"holding timm's config.json and model.safetensors"):
        create_model("vit_tiny_patch16_224", pretrained=f"timm:local-dir:{tmp_path / 'nowhere'}")


@pytest.mark.parametrize("source", ["timm:vit_tiny_patch16_224",  # timm's default tag, augreg_in21k_ft_in1k
                                    "timm:vit_tiny_patch16_224.augreg_in21k_ft_in1k",
                                    "hf-hub:timm/vit_tiny_patch16_224.augreg_in21k_ft_in1k",
                                    "hf_hub:timm/vit_tiny_patch16_224.augreg_in21k_ft_in1k"])
def test_hub_weights_already_in_the_local_cache_load_offline(hf_cache, source):
    """Weights downloaded once were refused offline: the hub check came before any look at the cache. timm's other
    spelling, hf_hub:, had been looked for as a file (which create_model's own hint for such a name suggested)."""
    import timm

    torch.manual_seed(3)
    cached = timm.create_model("vit_tiny_patch16_224", pretrained=False).state_dict()
    _cache_hub_weights(hf_cache, "timm/vit_tiny_patch16_224.augreg_in21k_ft_in1k", cached)
    model = create_model("vit_tiny_patch16_224", pretrained=source)
    torch.testing.assert_close(model.state_dict(), cached, rtol=0, atol=0)


class _RunsCode:
    def __init__(self, marker) -> None:
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def test_an_unsafe_pickle_in_the_cache_for_a_timm_name_is_refused_as_such(hf_cache, tmp_path):
    """It was "could not fetch weights (...); download the file where the hub is reachable": it had been fetched."""
    entry, commit = hf_cache / "models--timm--resnet18.tv_in1k", "0" * 40
    (entry / "snapshots" / commit).mkdir(parents=True)
    (entry / "refs").mkdir()
    (entry / "refs" / "main").write_text(commit)
    torch.save({"state_dict": _RunsCode(tmp_path / "ran")}, entry / "snapshots" / commit / "pytorch_model.bin")
    with pytest.raises(WeightsError, match=r"^timm:resnet18.tv_in1k: .*pytorch_model.bin: refused, the pickle holds "
                                           r".* \(it could run code\)"):
        create_model("resnet18", pretrained="timm:resnet18.tv_in1k")
    assert not (tmp_path / "ran").exists()


def test_a_timm_hub_model_offline_without_its_config_cached_is_one_line(hf_cache):
    """timm reads an hf-hub: name's config.json before any weights: huggingface_hub's error about the local cache
    had been wrapped in "could not be built (...); check model.init_args"."""
    from visattn.inference.classifier import build_classifier

    with pytest.raises(WeightsError, match=r"^timm:hf-hub:timm/resnet10t.a1_in1k: timm reads its config.json from the "
                                           r"Hugging Face hub, which cannot be reached, and the file is not in the "
                                           r"Hugging Face cache; run it once where the hub is reachable"):
        build_classifier("timm:hf-hub:timm/resnet10t.a1_in1k", 3)


def test_timm_weights_asked_for_in_model_kwargs_load_from_the_cache_offline_or_say_why_not(hf_cache):
    """Offline, timm retried the hub five times and the error blamed model_kwargs ("check their names and values");
    weights already in the cache were not used."""
    import timm

    from visattn.inference.classifier import build_classifier

    with pytest.raises(WeightsError, match=r"^timm:resnet10t: cannot fetch weights \(HF_HUB_OFFLINE is set\) and none "
                                           r"are in the Hugging Face cache"):
        build_classifier("timm:resnet10t", 3, {"pretrained": True})
    torch.manual_seed(0)
    cached = timm.create_model("resnet10t").state_dict()
    repo = timm.models.get_pretrained_cfg("resnet10t").hf_hub_id
    _cache_hub_weights(hf_cache, repo, cached)
    model = build_classifier("timm:resnet10t", 1000, {"pretrained": True})
    torch.testing.assert_close(model.state_dict(), cached, rtol=0, atol=0)


@pytest.mark.parametrize("kwargs, differs", [
    ({"block_fn": "ResPostBlock"}, "its blocks are timm's ResPostBlock, not the pre-norm Block"),
    ({"act_layer": "quick_gelu"}, r"its MLP activation is QuickGELU\(\), not the 'gelu'.*; build the model with "
                                  "act_layer='quick_gelu', or"),
    ({"act_layer": "gelu_tanh"}, r"its MLP activation is GELUTanh\(\), not the 'gelu'.*; build the model with "
                                 "act_layer='gelu_tanh', or"),
    ({"act_layer": "relu"}, r"its MLP activation is ReLU\(\), not the 'gelu' that visattn's ViT computes, so its "
                            "weights would load and give other outputs;"),
])
def test_timm_vit_weights_that_compute_otherwise_are_refused_for_visattns_vit(kwargs, differs):
    """Their keys and shapes are a plain ViT's, so they loaded strictly and gave other logits (timm's
    post-norm ViT-B/16 by 6.0); timm's own model of that name still takes them."""
    import timm
    from timm.models.vision_transformer import ResPostBlock

    from visattn.fetched_weights import _refuse_other_vit_computation

    kwargs = {**kwargs, "block_fn": ResPostBlock} if "block_fn" in kwargs else kwargs
    small = {"depth": 1, "embed_dim": 64, "num_heads": 2, "img_size": 32, "patch_size": 16}
    weights = timm.create_model("vit_tiny_patch16_224", **small, **kwargs)
    with pytest.raises(WeightsError, match=rf"^timm:vit_x\.tag: {differs}.* use timm's own model, model_name "
                                           r"'timm:vit_x'$"):
        _refuse_other_vit_computation(weights, "timm:vit_x.tag", "vit_x", into=create_model("vit_tiny_patch16_224", **small))
    if "act_layer" in kwargs and kwargs["act_layer"] != "relu":  # visattn's ViT computes these too
        _refuse_other_vit_computation(weights, "timm:vit_x.tag", "vit_x",
                                      into=create_model("vit_tiny_patch16_224", **small, **kwargs))
    _refuse_other_vit_computation(weights, "timm:vit_x.tag", "vit_x", into=timm.create_model("vit_tiny_patch16_224", **small))
    plain = timm.create_model("vit_tiny_patch16_224", **small)
    _refuse_other_vit_computation(plain, "timm:vit_x.tag", "vit_x", into=create_model("vit_tiny_patch16_224", **small))
    named = timm.create_model("vit_tiny_patch16_224", **small, act_layer="gelu")  # timm's own exact GELU class
    _refuse_other_vit_computation(named, "timm:vit_x.tag", "vit_x", into=create_model("vit_tiny_patch16_224", **small))


def test_timm_vit_weights_of_another_norm_epsilon_name_the_setting_that_takes_them():
    """CLIP's towers norm with eps 1e-5: refused for a ViT built with timm's 1e-6, taken by one built with norm_eps."""
    import timm

    from visattn.fetched_weights import _refuse_other_vit_computation

    small = {"depth": 1, "embed_dim": 64, "num_heads": 2, "img_size": 32}
    clip = timm.create_model("vit_base_patch16_clip_224", **small)
    with pytest.raises(WeightsError, match=r"^timm:clip: its norms are LayerNorm\(\(64,\), eps=1e-05.*\), not "
                                           r"LayerNorm with the eps 1e-06 that visattn's ViT computes, so its weights "
                                           r"would load and give other outputs; build the model with norm_eps=1e-05, "
                                           r"or use timm's own model, model_name 'timm:clip'$"):
        _refuse_other_vit_computation(clip, "timm:clip", "clip", into=create_model("vit_base_patch16_224", **small))
    _refuse_other_vit_computation(clip, "timm:clip", "clip", into=create_model("vit_base_patch16_clip_224", **small))


def test_hub_weights_whose_config_names_a_vit_that_computes_otherwise_are_refused(hf_cache):
    """timm: names were checked, hf-hub: ones not: a post-norm ViT's repository loaded into visattn's pre-norm ViT
    and gave other logits (3.8 off in an audit), though its config.json names the architecture."""
    import json

    import timm

    small = {"depth": 1, "embed_dim": 64, "num_heads": 2, "img_size": 32, "patch_size": 16}
    state = timm.create_model("vit_tiny_patch16_224", **small).state_dict()
    _cache_hub_weights(hf_cache, "timm/vit_base_patch16_rpn_224.sw_in1k", state)
    snapshot = next((hf_cache / "models--timm--vit_base_patch16_rpn_224.sw_in1k" / "snapshots").iterdir())
    (snapshot / "config.json").write_text(json.dumps({"architecture": "vit_base_patch16_rpn_224", "num_classes": 1000}))
    with pytest.raises(WeightsError, match=r"^hf-hub:timm/vit_base_patch16_rpn_224.sw_in1k: its blocks are timm's "
                                           r"ResPostBlock, .*; use timm's own model, model_name "
                                           r"'timm:vit_base_patch16_rpn_224'$"):
        create_model("vit_tiny_patch16_224", **small, pretrained="hf-hub:timm/vit_base_patch16_rpn_224.sw_in1k")
    (snapshot / "config.json").write_text(json.dumps({"architecture": "vit_tiny_patch16_224", "num_classes": 1000}))
    model = create_model("vit_tiny_patch16_224", **small, pretrained="hf-hub:timm/vit_base_patch16_rpn_224.sw_in1k")
    torch.testing.assert_close(model.state_dict(), state, rtol=0, atol=0)


def test_timm_vit_weights_reach_a_grid_of_as_many_patches_in_another_shape_as_timm_resamples_them(hf_cache, tmp_path):
    """14x14 weights in a 7x28 model (112x448 px) hold as many positions, so they were kept as they were:
    0.03 off timm's logits. timm: weights come with their grid; a file, which does not say, warns."""
    import timm

    torch.manual_seed(0)
    trained = timm.create_model("vit_tiny_patch16_224").state_dict()
    _cache_hub_weights(hf_cache, "timm/vit_tiny_patch16_224.augreg_in21k_ft_in1k", trained)
    cached = next(hf_cache.rglob("model.safetensors"))
    by_timm = timm.create_model("vit_tiny_patch16_224.augreg_in21k_ft_in1k", img_size=(112, 448),
                                pretrained=True, pretrained_cfg_overlay={"file": str(cached)}).eval()
    ours = create_model("vit_tiny_patch16_224", img_size=(112, 448),
                        pretrained="timm:vit_tiny_patch16_224.augreg_in21k_ft_in1k").eval()
    images = torch.randn(2, 3, 112, 448)
    with torch.no_grad():
        torch.testing.assert_close(ours(images), by_timm(images), rtol=0, atol=1e-5)
    with pytest.warns(VisattnWarning, match=r"pos_embed: the weights' 196 positions were kept as this model's 7x28 "
                                            r"grid; if they were trained on a 14x14 grid"):
        create_model("vit_tiny_patch16_224", img_size=(112, 448), pretrained=str(cached))


@pytest.mark.parametrize("trained_on, built_for", [((16, 64), (32, 32)), ((32, 48), (64, 96))])
def test_a_non_square_vits_saved_weights_reach_another_size_from_the_grid_they_record(weights_tmp, trained_on,
                                                                                    built_for):
    """A 2x8 grid's 16 positions were kept as a 4x4 model's, without a word, and a 4x6 grid's 24 were refused as
    no square grid; the file and the index record the size they were trained on, which timm resamples from."""
    torch.manual_seed(0)
    settings = {"patch_size": 8, "depth": 1, "num_classes": 3}
    saved = create_model("vit_tiny_patch16_224", img_size=trained_on, **settings).eval()
    path = weights_tmp / "vit_tiny_patch16_224.wide.safetensors"
    save_weights(saved, path, labels=["a", "b", "c"],
                 preprocessing={"input_size": [3, *trained_on], "mean": [0.5] * 3, "std": [0.5] * 3})
    expected = create_model("vit_tiny_patch16_224", img_size=trained_on, **settings).eval()
    expected.load_state_dict(saved.state_dict())
    expected.set_input_size(img_size=built_for)  # timm's resampling from the grid it was built for
    images = torch.randn(2, 3, *built_for)
    for model in (create_model("vit_tiny_patch16_224.wide", img_size=built_for),  # the file's record
                  create_model("vit_tiny_patch16_224", pretrained=str(path), img_size=built_for, **settings),
                  load_weights(create_model("vit_tiny_patch16_224", img_size=built_for, **settings),
                               "vit_tiny_patch16_224.wide")):  # the index entry's
        with torch.no_grad():
            torch.testing.assert_close(model.eval()(images), expected(images), rtol=0, atol=1e-6)


@pytest.mark.parametrize("arch, size", [("resnet18", 32), (ARCH, 28)])
def test_a_features_only_model_loads_its_own_weights_and_its_classifiers(tmp_path, arch, size):
    """Its keys sit under `model.` (timm's FeatureGetterNet), which loading stripped as a Lightning task's prefix:
    "no key in common" for the model's own state dict."""
    torch.manual_seed(0)
    trained = create_model(arch, features_only=True, out_indices=(1, 2))
    save_file(trained.state_dict(), tmp_path / "maps.safetensors")
    images = torch.randn(2, 3, size, size)
    for source in (trained.state_dict(), str(tmp_path / "maps.safetensors")):
        loaded = load_weights(create_model(arch, features_only=True, out_indices=(1, 2)), source)
        for ours, theirs in zip(loaded.eval()(images), trained.eval()(images)):
            torch.testing.assert_close(ours, theirs, rtol=0, atol=0)
    # a classifier's weights, as features_only=True builds from them: the layers it prunes were "unexpected"
    classifier = create_model(arch)
    save_file(classifier.state_dict(), tmp_path / "classifier.safetensors")
    built = create_model(arch, features_only=True, out_indices=(1, 2), pretrained=str(tmp_path / "classifier.safetensors"))
    loaded = load_weights(create_model(arch, features_only=True, out_indices=(1, 2)), classifier.state_dict())
    for ours, theirs in zip(loaded.eval()(images), built.eval()(images)):
        torch.testing.assert_close(ours, theirs, rtol=0, atol=0)
    with pytest.raises(WeightsError, match="missing"):  # a shallower classifier's still do not fit
        load_weights(create_model(arch, features_only=True), {k: v for k, v in classifier.state_dict().items()
                                                              if not k.startswith(("layer4", "blocks.3"))})
    # nor a deeper one's, or one with attention modules the model lacks: only what its pruning took is left out
    other = create_model("bam_resnet18" if arch == "resnet18" else arch, **({} if arch == "resnet18" else {"depth": 6}))
    with pytest.raises(WeightsError, match=r"unexpected: (bam1|blocks\.4)\."):
        load_weights(create_model(arch, features_only=True, **({} if arch == "resnet18" else {"depth": 4})),
                     other.state_dict())


def test_corrupt_index_names_the_file(weights_tmp):
    (weights_tmp / "index.json").write_text("{not json")
    with pytest.raises(WeightsError, match="index.json"):
        load_index()


def test_shipped_index_is_consistent():
    """Every entry in the repository's weights/index.json points at a file with the recorded sha256."""
    index = load_index()
    for name, entry in index.items():
        assert os.path.exists(entry["path"]), name
        assert sha256_of(entry["path"]) == entry["sha256"], name
        assert {"task", "dataset", "metrics", "preprocessing", "config"} <= set(entry), name


def test_every_torch_load_in_the_package_is_weights_only():
    """No code path may unpickle arbitrary objects: each torch.load call passes weights_only=True, and no other
    spelling reaches an unpickler (torch under another name, ``from torch import load``, torch.serialization,
    pickle, numpy's allow_pickle), which the scan would not see (a README audit)."""
    import ast
    from pathlib import Path

    offenders = []
    for path in (Path(__file__).resolve().parents[1] / "visattn").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            where = f"{path.name}:{getattr(node, 'lineno', '?')}"
            if isinstance(node, ast.Call) and ast.unparse(node.func) == "torch.load":
                if not any(k.arg == "weights_only" and isinstance(k.value, ast.Constant) and k.value.value is True
                           for k in node.keywords):
                    offenders.append(f"{where} torch.load without weights_only=True")
            elif isinstance(node, ast.Call) and ast.unparse(node.func).endswith(
                    ("serialization.load", "pickle.load", "pickle.loads", "Unpickler", "np.load", "numpy.load")):
                offenders.append(f"{where} {ast.unparse(node.func)}")
            elif isinstance(node, ast.Import) and any(a.name == "torch" and a.asname for a in node.names):
                offenders.append(f"{where} torch imported under another name")
            elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith(("torch", "pickle")) \
                    and any(a.name in ("load", "loads", "Unpickler") for a in node.names):
                offenders.append(f"{where} from {node.module} import load")
    assert not offenders, offenders


def test_pretrained_takes_a_shipped_arch_tag_from_any_folder(weights_tmp, tmp_path, monkeypatch):
    model = _model(num_classes=10)
    save_weights(model, weights_tmp / f"{ARCH}.unit.safetensors", model_kwargs=SMALL)
    monkeypatch.chdir(tmp_path)
    loaded = create_model(ARCH, num_classes=10, pretrained=f"{ARCH}.unit", **SMALL).eval()
    assert torch.equal(_logits(loaded), _logits(model))
    # a relative name is looked for in the working folder first: the message says which, as a config's
    # relative pretrained path is not read from the config's folder
    with pytest.raises(WeightsError, match=rf"weights file not found \(in the working folder {tmp_path}\), nor weights "
                                           rf"of that name \(searched {weights_tmp}, .*\).*--pretrained"):
        create_model(ARCH, pretrained=f"{ARCH}.nope", **SMALL)


@pytest.mark.parametrize("start, config", [
    ("outputs/vit_fmnist/checkpoints/last.ckpt", "configs/classification/vit_fmnist.yaml"),
    ("outputs/detr_scenes/checkpoints/last.ckpt", "configs/detection/detr_scenes.yaml"),
])
def test_a_later_stages_missing_start_names_the_shipped_run_that_writes_it(start, config, tmp_path, monkeypatch):
    """A stage-2 config run first said only "check the path" of its stage-1 checkpoint (a README audit)."""
    monkeypatch.chdir(tmp_path)
    with pytest.raises(WeightsError, match=rf"^{start}: weights file not found \(in the working folder {tmp_path}\), "
                                           rf".*; `visattn fit --config {config}` trains it: run that here first, or "
                                           "give false for no weights$"):
        create_model(ARCH, pretrained=start, **SMALL)
    # a folder whose name only starts as that run's (outputs/vit_fmnist) is not in it; once the run has started
    # here, a missing file of it is a wrong name (lst.ckpt), not a run to start
    (tmp_path / start).parent.mkdir(parents=True)
    for path in ("outputs/vit_fmnist_stage/last.ckpt", start.replace("last.ckpt", "lst.ckpt")):
        with pytest.raises(WeightsError, match="; check the path, see `visattn models --pretrained`"):
            create_model(ARCH, pretrained=path, **SMALL)


def test_save_weights_refuses_before_writing_anything(tmp_path):
    model = _model()
    with pytest.raises(WeightsError, match="the model is a vit_tiny_patch4_28, not a resnet18"):
        save_weights(model, tmp_path / "resnet18.unit.safetensors")
    with pytest.raises(WeightsError, match="must be plain JSON"):
        save_weights(model, tmp_path / f"{ARCH}.unit.safetensors", metrics={"top1": torch.tensor(0.9)})
    assert list(tmp_path.iterdir()) == []  # nothing written, so a corrected retry needs no --overwrite
    save_weights(model, tmp_path / f"{ARCH}.unit.safetensors", metrics={"top1": 0.9}, model_kwargs=SMALL)


@pytest.mark.filterwarnings("ignore:.*saved without preprocessing or labels")
@pytest.mark.parametrize("overwrite", [False, True], ids=["first_save", "overwrite"])
def test_a_failed_index_write_leaves_the_weights_and_the_index_as_they_were(weights_tmp, monkeypatch, overwrite):
    """The weights were replaced before the index was written: a full disk then left an index whose sha256
    no longer matched (the old weights gone), or on a first save an orphan file a rerun refused."""
    import errno

    import visattn.weights_saving as weights_saving

    old = _model(num_classes=0)
    save_weights(old, weights_tmp / f"{ARCH}.old.safetensors", model_kwargs=SMALL)
    path = weights_tmp / f"{ARCH}.{'old' if overwrite else 'new'}.safetensors"
    before = {p.name: p.read_bytes() for p in weights_tmp.iterdir()}

    def disk_full(file, text):
        raise OSError(errno.ENOSPC, "No space left on device", str(file))

    new = _model(num_classes=0, qkv_bias=False)  # other weights, other keys
    with monkeypatch.context() as patch, pytest.raises(OSError, match="No space left on device"):
        patch.setattr(weights_saving, "atomic_write_text", disk_full)
        save_weights(new, path, model_kwargs={**SMALL, "qkv_bias": False}, overwrite=overwrite)
    assert {p.name: p.read_bytes() for p in weights_tmp.iterdir()} == before  # no temp file either
    assert torch.equal(_logits(create_model(f"{ARCH}.old").eval()), _logits(old))
    save_weights(new, path, model_kwargs={**SMALL, "qkv_bias": False}, overwrite=overwrite)  # a rerun needs nothing else
    assert torch.equal(_logits(create_model(path.name.removesuffix(".safetensors")).eval()), _logits(new))


@pytest.mark.filterwarnings("ignore:.*saved without preprocessing or labels")
@pytest.mark.parametrize("overwrite", [False, True], ids=["first_save", "overwrite"])
@pytest.mark.usefixtures("ctrl_c_not_ignored")
def test_ctrl_c_once_the_index_is_written_waits_until_the_weights_are_in_place(weights_tmp, monkeypatch, overwrite):
    """Ctrl-C between the index write and the weights' move left an entry whose file was missing, or an overwrite's
    new sha256 beside the old file (a file-writing audit): the name loaded no weights, and the old entry was gone."""
    import signal

    import visattn.weights_saving as weights_saving

    save_weights(_model(num_classes=0), weights_tmp / f"{ARCH}.old.safetensors", model_kwargs=SMALL)
    path = weights_tmp / f"{ARCH}.{'old' if overwrite else 'new'}.safetensors"
    write_index = weights_saving.atomic_write_text

    def interrupted_after(file, text):
        write_index(file, text)
        os.kill(os.getpid(), signal.SIGINT)

    new = _model(num_classes=0, qkv_bias=False)
    with monkeypatch.context() as patch, pytest.raises(KeyboardInterrupt):
        patch.setattr(weights_saving, "atomic_write_text", interrupted_after)
        save_weights(new, path, model_kwargs={**SMALL, "qkv_bias": False}, overwrite=overwrite)
    assert sha256_of(path) == load_index(weights_tmp)[path.name.removesuffix(".safetensors")]["sha256"]
    assert torch.equal(_logits(create_model(path.name.removesuffix(".safetensors")).eval()), _logits(new))


@pytest.mark.usefixtures("ctrl_c_not_ignored")
def test_deferred_signals_raise_a_stop_before_ctrl_c_and_are_forgotten_after():
    """SIGINT and SIGTERM both held: the KeyboardInterrupt left the SIGTERM unsaid (exit 130, not 143); and a
    second use of one instance raised the first's signals again (a review)."""
    import signal

    from visattn.fileio import SignalsDeferred

    stops = []
    before = signal.signal(signal.SIGTERM, lambda signum, frame: stops.append(signum))
    try:
        deferred = SignalsDeferred()
        with pytest.raises(KeyboardInterrupt), deferred:
            deferred.start()
            os.kill(os.getpid(), signal.SIGINT)
            os.kill(os.getpid(), signal.SIGTERM)
            assert not stops  # held
        assert stops == [signal.SIGTERM]
        with deferred:
            deferred.start()
        assert stops == [signal.SIGTERM] and signal.getsignal(signal.SIGINT) is signal.default_int_handler
    finally:
        signal.signal(signal.SIGTERM, before)


_SAVE_MANY = """
import sys, time
from pathlib import Path
from visattn import create_model, save_weights

folder, ready, prefix, count = Path(sys.argv[1]), Path(sys.argv[2]), sys.argv[3], int(sys.argv[4])
model = create_model("vit_tiny_patch4_28", depth=1, num_classes=0)
(ready / prefix).touch()
deadline = time.monotonic() + 60
while len(list(ready.iterdir())) < 2 and time.monotonic() < deadline:  # start together, so the saves interleave
    time.sleep(0.01)
for i in range(count):
    save_weights(model, folder / f"vit_tiny_patch4_28.{prefix}{i}.safetensors")
"""


def test_saves_into_one_folder_from_two_processes_keep_every_entry(tmp_path):
    """Each process wrote back the index it had read, without the entries the other saved meanwhile."""
    import subprocess
    import sys

    folder, ready, count = tmp_path / "weights", tmp_path / "ready", 20
    ready.mkdir()
    processes = [subprocess.Popen([sys.executable, "-W", "ignore", "-c", _SAVE_MANY, str(folder), str(ready), prefix,
                                   str(count)], stderr=subprocess.PIPE, text=True,
                                  env={**os.environ, "OMP_NUM_THREADS": "1"}) for prefix in ("a", "b")]
    for process in processes:
        _, errors = process.communicate(timeout=300)
        assert process.returncode == 0, errors
    expected = {f"{ARCH}.{prefix}{i}" for prefix in ("a", "b") for i in range(count)}
    assert set(load_index(folder)) == expected
    assert all(sha256_of(entry["path"]) == entry["sha256"] for entry in load_index(folder).values())


def test_vit_weights_of_another_token_layout_are_one_line():
    state = _model().state_dict()
    distilled = {**state, "dist_token": torch.zeros(1, 1, 192), "head_dist.weight": torch.zeros(10, 192)}
    with pytest.raises(WeightsError, match="distilled DeiT"):
        load_weights(_model(), distilled)
    two_prefix = {**state, "pos_embed": torch.zeros(1, 2 + 49, 192)}  # 50 grid tokens after one prefix token
    with pytest.raises(WeightsError, match=r"pos_embed \(1, 51, 192\) does not hold a square patch grid"):
        load_weights(_model(), two_prefix)


def test_loading_into_a_meta_model_is_refused_not_a_silent_no_op():
    with torch.device("meta"):
        model = create_model(ARCH, **SMALL)
    with pytest.raises(WeightsError, match="on the meta device, where loading weights does nothing"):
        load_weights(model, _model().state_dict())


def _same_tensors(model, reference) -> bool:
    ours, theirs = model.state_dict(), reference.state_dict()
    return ours.keys() == theirs.keys() and all(torch.equal(ours[k], theirs[k]) for k in ours) and [
        p.requires_grad for p in model.parameters()] == [p.requires_grad for p in reference.parameters()]


@pytest.mark.parametrize("name", list_pretrained())
def test_weights_that_fill_the_model_load_into_it_uninitialised_drawing_no_random_numbers(name):
    """create_model builds a model for weights on the meta device and puts them there without initialising it
    first (ViT-B's random init had been most of a load's time): the tensors of the model built, then loaded, and
    torch's random numbers as they were."""
    reference = load_weights(create_model(name, pretrained=False), name)
    torch.manual_seed(0)
    before = torch.random.get_rng_state()
    model = create_model(name)
    assert torch.equal(torch.random.get_rng_state(), before)
    assert _same_tensors(model, reference) and model.training == reference.training
    assert all(value.untyped_storage().resizable() for value in model.state_dict().values())  # as torch allocates


def test_weights_that_leave_part_of_the_model_new_initialise_it_as_a_model_built_then_loaded(tmp_path):
    """A new head, or attention modules a plain ResNet's weights lack, take their initialisation: the model built
    on the meta device is built again for them, drawing random numbers as a model built, then loaded, does."""
    plain = tmp_path / "resnet20.safetensors"  # of 5 classes: the model's head takes them, the default being 10
    save_file(create_model("resnet20_cifar", num_classes=5).state_dict(), plain)
    for arch, weights, kwargs in (("se_resnet20_cifar", "se_resnet20_cifar.fmnist", {"num_classes": 3}),
                                  ("cbam_resnet20_cifar", str(plain), {"strict": "attention"})):
        with pytest.warns(VisattnWarning):
            torch.manual_seed(0)
            model = create_model(arch, pretrained=weights, **kwargs)
            torch.manual_seed(0)
            reference = create_model(arch, num_classes=kwargs.get("num_classes", 10))
            load_weights(reference, weights, strict=kwargs.get("strict", True), head_from_weights="strict" in kwargs)
        assert _same_tensors(model, reference) and model.visattn_name.startswith(arch)
    assert model.num_classes == 5


def test_weights_without_batch_norm_step_counters_load_them_as_zero(tmp_path):
    path = tmp_path / "no_counters.safetensors"
    torch.manual_seed(0)
    reference = create_model("se_resnet20_cifar")
    save_file({k: v for k, v in reference.state_dict().items() if not k.endswith("num_batches_tracked")}, path)
    assert _same_tensors(create_model("se_resnet20_cifar", pretrained=str(path)), reference)


class _Inner(torch.nn.Module):
    """One kind of tensor a state dict does not fill, one module down: a buffer it does not save, a tensor attribute
    (or one in a list), or a weight or buffer shared by two modules."""

    def __init__(self, kind: str):
        super().__init__()
        self.first, self.second = torch.nn.Linear(3, 3), torch.nn.Linear(3, 3)
        self.register_buffer("offsets", torch.arange(3.0), persistent=kind != "unsaved_buffer")
        self.scale = torch.tensor(2.0) if kind == "tensor_attribute" else [torch.tensor(2.0)] if (
            kind == "tensor_list") else 2.0
        if kind == "shared_weight":
            self.second.weight = self.first.weight
        if kind == "shared_buffer":
            self.first.register_buffer("offsets", self.offsets)

    def forward(self, x):
        scale = self.scale[0] if isinstance(self.scale, list) else self.scale
        return self.second(self.first(x)) * scale + self.offsets


def _three_class(net: torch.nn.Module) -> torch.nn.Module:
    net.num_classes = 3
    return net


def _net_with_an_unsaved_buffer(num_classes: int = 3) -> torch.nn.Module:
    return _three_class(torch.nn.Sequential(_Inner("unsaved_buffer")))


def _net_with_a_tensor_attribute(num_classes: int = 3) -> torch.nn.Module:
    return _three_class(torch.nn.Sequential(_Inner("tensor_attribute")))


def _net_with_a_tensor_list(num_classes: int = 3) -> torch.nn.Module:
    return _three_class(torch.nn.Sequential(_Inner("tensor_list")))


def _net_with_a_shared_buffer(num_classes: int = 3) -> torch.nn.Module:
    return _three_class(torch.nn.Sequential(_Inner("shared_buffer")))


def _net_with_a_shared_weight(num_classes: int = 3) -> torch.nn.Module:
    return _three_class(torch.nn.Sequential(_Inner("shared_weight")))


def _net_built_from_values(num_classes: int = 3) -> torch.nn.Module:
    width = int(torch.tensor(3.0).item())  # no value on the meta device: the builder fails there
    return _three_class(torch.nn.Linear(width, num_classes))


def _net_with_a_marked_parameter(num_classes: int = 3) -> torch.nn.Module:
    net = torch.nn.Sequential(_Inner("marked_parameter"))
    net[0].first.weight.no_weight_decay = True  # read by its package's optimiser grouping
    return _three_class(net)


@pytest.mark.parametrize("builder", [_net_with_an_unsaved_buffer, _net_with_a_tensor_attribute, _net_with_a_tensor_list,
                                     _net_with_a_shared_weight, _net_with_a_shared_buffer,
                                     _net_with_a_marked_parameter])
def test_load_weights_into_a_meta_model_holding_tensors_a_state_dict_cannot_fill_initialises_it(builder, tmp_path):
    torch.manual_seed(0)
    saved = builder()
    path = tmp_path / f"{builder.__name__}.safetensors"
    save_file({k: v.clone() for k, v in saved.state_dict().items()}, path)
    with torch.device("meta"):
        meta = builder()
    model = load_weights(meta, str(path), initialise=builder)
    x = torch.randn(2, 3)
    torch.testing.assert_close(model(x), saved(x), rtol=0, atol=0)
    assert (model[0].first.weight is model[0].second.weight) == (builder is _net_with_a_shared_weight)
    assert (model[0].first._buffers.get("offsets") is model[0].offsets) == (builder is _net_with_a_shared_buffer)
    assert getattr(model[0].first.weight, "no_weight_decay", False) == (builder is _net_with_a_marked_parameter)


def test_another_packages_builder_is_built_once_for_real_for_weights(monkeypatch, tmp_path):
    """Another package's builder may draw random numbers, warn, or keep tensors where weights cannot reach them (in a
    list): create_model builds it as it did, once and on the CPU, and only visattn's own on the meta device."""
    from visattn import registry

    devices = []

    def _net_of_another_package(num_classes: int = 3) -> torch.nn.Module:
        devices.append(torch.empty(0).device.type)
        net = _three_class(torch.nn.Linear(3, num_classes))
        net.scales = [torch.full((num_classes,), 2.0)]
        return net

    registry._import_models()
    monkeypatch.setitem(registry._model_entrypoints, _net_of_another_package.__name__, _net_of_another_package)
    save_file({k: v.clone() for k, v in _net_of_another_package().state_dict().items()}, tmp_path / "w.safetensors")
    devices.clear()
    model = create_model("_net_of_another_package", pretrained=str(tmp_path / "w.safetensors"))
    assert devices == ["cpu"] and model.scales[0].device.type == "cpu"


def test_a_meta_model_given_with_its_builder_where_loading_is_skipped_is_built_for_real(tmp_path):
    with torch.device("meta"):
        meta = _net_with_a_tensor_attribute()
    with checkpoint_follows():
        model = load_weights(meta, str(tmp_path / "never_read.safetensors"), initialise=_net_with_a_tensor_attribute)
    assert not any(p.is_meta for p in model.parameters()) and not model[0].scale.is_meta


def test_a_builder_failing_on_the_meta_device_builds_for_real_and_its_own_error_is_raised_once():
    from visattn.pretrained import built_for_weights

    devices = []

    def refusing() -> torch.nn.Module:
        devices.append(torch.empty(0).device.type)
        raise ConfigError("width=0: give a width of 1 or more")

    model, initialise = built_for_weights(_net_built_from_values)
    assert model.weight.device.type == "cpu" and initialise is None
    with pytest.raises(ConfigError, match="width=0"):
        built_for_weights(refusing)
    assert devices == ["meta"]


def test_load_weights_fills_a_features_only_model_built_on_the_meta_device_or_initialises_it_for_new_parts(tmp_path):
    plain = tmp_path / "resnet20.safetensors"
    torch.manual_seed(0)
    save_file(create_model("resnet20_cifar").state_dict(), plain)
    for arch, strict in (("resnet20_cifar", True), ("cbam_resnet20_cifar", "attention")):
        build = functools.partial(create_model, arch, features_only=True)
        with torch.device("meta"):
            meta = build()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", VisattnWarning)  # the attention modules' init kept
            torch.manual_seed(1)
            model = load_weights(meta, str(plain), strict=strict, initialise=build)
            torch.manual_seed(1)
            reference = load_weights(build(), str(plain), strict=strict)
        assert type(model) is type(reference) and _same_tensors(model, reference)


def test_a_parts_starting_weights_are_read_only_where_the_models_weights_leave_it_new_and_a_users_meta_build_is_refused(
        tmp_path):
    """A captioner's encoder weights (encoder_pretrained) are not read where the captioner's weights fill it, as for
    a checkpoint (loading into the encoder on the meta device had been refused), and are where those leave part of it
    new. A model the caller builds on the meta device with weights is refused as before: to_empty would have given it
    garbage for them."""
    kwargs = dict(vocab_size=9, encoder_name="se_resnet20_cifar", encoder_pretrained="se_resnet20_cifar.fmnist")
    reference = create_model("sat_cbam_resnet_scenes", **kwargs)
    path, partial = tmp_path / "captioner.safetensors", tmp_path / "without_its_output_layer.safetensors"
    save_file({k: v.contiguous() for k, v in reference.state_dict().items()}, path)
    save_file({k: v.contiguous() for k, v in reference.state_dict().items() if not k.startswith("fc.")}, partial)
    gone = {**kwargs, "encoder_pretrained": str(tmp_path / "gone.safetensors")}
    assert _same_tensors(create_model("sat_cbam_resnet_scenes", pretrained=str(path), **gone), reference)
    with pytest.warns(VisattnWarning, match="kept init for missing fc.weight"), pytest.raises(
            WeightsError, match="gone.safetensors"):
        create_model("sat_cbam_resnet_scenes", pretrained=str(partial), strict=False, **gone)
    with torch.device("meta"), pytest.raises(WeightsError, match="on the meta device, where loading weights does"):
        create_model("se_resnet20_cifar.fmnist")


def test_a_part_built_with_its_own_weights_draws_as_without_them_so_a_seeded_recipe_initialises_the_rest_alike():
    """A detector's backbone weights (the shipped detectors' recipes: seed_everything 0 and a pretrained backbone):
    building the backbone on the meta device had left the random numbers of the detector's own layers otherwise."""
    torch.manual_seed(0)
    with_weights = create_model("fcos_se_resnet20_cifar", pretrained_backbone="se_resnet20_cifar.fmnist")
    drawn = torch.random.get_rng_state()
    torch.manual_seed(0)
    without = create_model("fcos_se_resnet20_cifar", pretrained_backbone=False)
    assert torch.equal(torch.random.get_rng_state(), drawn)
    ours, theirs = with_weights.state_dict(), without.state_dict()
    assert {key.split(".")[1] for key in ours if not torch.equal(ours[key], theirs[key])} == {"body"}


def test_warnings_of_a_parts_weights_are_given_once_when_the_model_is_built_again_for_new_layers(tmp_path):
    """A detector's backbone weights warn as they load in its meta build; a new head builds it again for real."""
    plain, detector = tmp_path / "resnet20.safetensors", tmp_path / "fcos.safetensors"
    save_file(create_model("resnet20_cifar").state_dict(), plain)
    save_file(create_model("fcos_cbam_resnet20_cifar").state_dict(), detector)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        torch.manual_seed(0)
        model = create_model("fcos_cbam_resnet20_cifar", pretrained=str(detector), pretrained_backbone=str(plain),
                             num_classes=3)
    messages = [str(w.message) for w in caught]
    assert len(messages) == len(set(messages)) == 2, messages  # the backbone's new attention modules, the new head
    torch.manual_seed(0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        reference = load_weights(create_model("fcos_cbam_resnet20_cifar", pretrained_backbone=str(plain),
                                              num_classes=3), str(detector))
    assert _same_tensors(model, reference)


def test_a_training_checkpoint_loads_for_inference_without_initialising_its_model(tmp_path):
    """load_classifier, load_captioner and load_detector build a checkpoint's model on the meta device, as its
    weights replace every value: they had initialised it first."""
    from test_reliability_checkpoints import _classifier_checkpoint
    from test_reliability_inputs import write_captioner_checkpoint, write_detector_checkpoint

    from visattn import load_detector

    written = {load_classifier: _classifier_checkpoint(tmp_path / "classifier.ckpt"),
               load_captioner: write_captioner_checkpoint(tmp_path / "captioner.ckpt"),
               load_detector: write_detector_checkpoint(tmp_path / "detector.ckpt")}
    for load, path in written.items():
        saved = torch.load(path, weights_only=True)["state_dict"]
        before = torch.random.get_rng_state()
        model = load(checkpoint=str(path)).model
        assert torch.equal(torch.random.get_rng_state(), before)
        loaded = model.state_dict()
        assert loaded and all(torch.equal(value, saved[f"model.{key}"]) for key, value in loaded.items())


@pytest.mark.parametrize("zip_format", [True, False])
def test_pickled_weights_are_read_through_a_map_and_the_model_keeps_its_own_copy(tmp_path, monkeypatch, zip_format):
    """A ``.pth`` file's and a training checkpoint's tensors are memory-mapped (torch's zip format; the legacy one is
    read whole), a checkpoint's optimizer states never read, and the weights copied out of the map at once: the file
    rewritten in place once it was read (during the load, before its checks, as another process might) or after
    leaves the model as first read."""
    import visattn.pretrained as pretrained
    from test_reliability_checkpoints import _classifier_checkpoint

    weights, checkpoint = tmp_path / "weights.pth", _classifier_checkpoint(tmp_path / "run.ckpt")
    torch.save(_model().state_dict(), weights, _use_new_zipfile_serialization=zip_format)
    torch.save(torch.load(checkpoint, weights_only=True), checkpoint, _use_new_zipfile_serialization=zip_format)
    saved = {path: {key.removeprefix("model."): value for key, value in _state(path).items()}
             for path in (weights, checkpoint)}
    first_read, loading, torch_load = {}, [], torch.load  # whether torch.load first read each file mapped

    def recorded_load(path, *args, **kwargs):
        first_read.setdefault(Path(path), kwargs.get("mmap"))
        return torch_load(path, *args, **kwargs)

    monkeypatch.setattr(torch, "load", recorded_load)
    monkeypatch.setattr(pretrained, "check_state_dict", lambda *args, check=pretrained.check_state_dict, **kwargs:
                        _zeroed(loading[-1]) or check(*args, **kwargs))
    models = {}
    for path, load in ((weights, lambda: create_model(ARCH, **SMALL, pretrained=str(path))),
                       (checkpoint, lambda: load_classifier(checkpoint=str(path)).model)):
        loading.append(path)
        models[path] = load()
    assert first_read == {weights: True, checkpoint: True}  # the legacy format: then read whole
    for path, model in models.items():
        _zeroed(path)
        assert model.state_dict().keys() == saved[path].keys()
        assert all(torch.equal(value, saved[path][key]) for key, value in model.state_dict().items())


def test_a_pickled_weights_file_is_read_once_for_its_weights_and_what_it_records(tmp_path, monkeypatch):
    """A ViT's load looks for the patch grid its file records and create_model for the preprocessing: both read with
    the weights, not by a torch.load each (three reads of the file, each a whole one in torch's legacy format)."""
    from test_reliability_checkpoints import SMALL_PREPROCESSING, _classifier_checkpoint

    weights, checkpoint = tmp_path / "vit.pth", _classifier_checkpoint(tmp_path / "run.ckpt")
    torch.save(_model().state_dict(), weights)
    reads, torch_load = [], torch.load
    monkeypatch.setattr(torch, "load", lambda *args, **kwargs: reads.append(args[0]) or torch_load(*args, **kwargs))
    create_model(ARCH, **SMALL, pretrained=str(weights))
    load_weights(_model(), str(weights))
    model = create_model("resnet20_cifar", pretrained=str(checkpoint))
    assert reads == [weights, weights, checkpoint]
    assert model.visattn_recorded_preprocessing == SMALL_PREPROCESSING and model.num_classes == 3


def _zeroed(path: Path) -> None:
    """``path`` rewritten in place, its bytes all zero (the same inode and size)."""
    with open(path, "r+b") as file:
        file.write(bytes(path.stat().st_size))


@pytest.mark.parametrize("fmt", ["pth", "safetensors", "dict"])
def test_weights_load_into_tensors_of_the_models_own_sharing_no_memory(tmp_path, fmt):
    """The model takes the tensors a weights file was read into, not a copy, but never one it would share: views of one
    tensor, a tensor under two names, the caller's own state dict, another dtype's. Each parameter changes alone."""
    state = _model().state_dict()
    rows = torch.randn(2, state["blocks.0.norm1.weight"].numel())
    if fmt == "pth":  # views of one storage, and one tensor under two names, as torch.save keeps them
        state["blocks.0.norm1.weight"], state["blocks.0.norm2.weight"] = rows[0], rows[1]
        state["blocks.1.norm1.weight"] = state["blocks.0.norm1.weight"]
        state["blocks.0.attn.proj.weight"] = state["blocks.0.attn.proj.weight"].t().contiguous().t()  # strided
    state["head.weight"] = state["head.weight"].double()
    given = {key: value.clone() for key, value in state.items()}
    if fmt == "pth":
        torch.save(state, tmp_path / "w.pth")
    elif fmt == "safetensors":
        save_file(state, tmp_path / "w.safetensors")
    with torch.device("meta"):
        meta = create_model(ARCH, **SMALL)
    model = load_weights(meta, state if fmt == "dict" else str(tmp_path / f"w.{fmt}"),
                         initialise=functools.partial(create_model, ARCH, **SMALL))
    loaded = model.state_dict()
    assert all(torch.equal(value, given[key].float() if key == "head.weight" else given[key])
               for key, value in loaded.items())
    assert loaded["head.weight"].dtype == torch.float32 and all(value.is_contiguous() for value in loaded.values())
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.add_(1)
    assert all(torch.equal(value, given[key].to(value.dtype) + 1) for key, value in model.state_dict().items()
               if not key.endswith("num_batches_tracked"))
    assert all(torch.equal(value, given[key]) for key, value in state.items())  # the caller's, untouched


class _FusedQK(torch.nn.Module):
    """Weights whose ``adapt_state_dict`` splits a fused ``qk.weight`` into views of it, and ties ``v`` and ``o`` to
    one tensor (layouts of other libraries)."""

    def __init__(self):
        super().__init__()
        self.q, self.k, self.v, self.o = (torch.nn.Linear(4, 4, bias=False) for _ in range(4))

    def adapt_state_dict(self, state, *, source_grid=None):
        fused = state["qk.weight"]  # (8, 4): q's rows, then k's
        return {"q.weight": fused[:4], "k.weight": fused[4:], "v.weight": state["vo.weight"],
                "o.weight": state["vo.weight"]}


def test_weights_an_adapter_splits_or_ties_load_into_tensors_of_their_own(tmp_path):
    fused, tied = torch.randn(8, 4), torch.randn(4, 4)
    save_file({"qk.weight": fused, "vo.weight": tied}, tmp_path / "fused.safetensors")
    with torch.device("meta"):
        meta = _FusedQK()
    model = load_weights(meta, str(tmp_path / "fused.safetensors"), initialise=_FusedQK)
    with torch.no_grad():
        model.q.weight.add_(1)
        model.v.weight.add_(1)
    assert torch.equal(model.q.weight, fused[:4] + 1) and torch.equal(model.k.weight, fused[4:])
    assert torch.equal(model.v.weight, tied + 1) and torch.equal(model.o.weight, tied)
    assert all(p.untyped_storage().nbytes() == p.nbytes for p in model.parameters())  # no larger tensor kept alive


class _CopiesIntoItsWeights(torch.nn.Linear):
    """Loads as some modules do, copying into its own tensors (a copy into a meta tensor does nothing)."""

    def _load_from_state_dict(self, state_dict, prefix, *args):
        with torch.no_grad():
            self.weight.copy_(state_dict[prefix + "weight"])
            self.bias.copy_(state_dict[prefix + "bias"])


def test_a_module_that_copies_into_its_weights_as_it_loads_is_built_for_real_to_take_them(tmp_path):
    saved = _CopiesIntoItsWeights(3, 2)
    save_file({k: v.clone() for k, v in saved.state_dict().items()}, tmp_path / "w.safetensors")
    with torch.device("meta"):
        meta = _CopiesIntoItsWeights(3, 2)
    model = load_weights(meta, str(tmp_path / "w.safetensors"), initialise=lambda: _CopiesIntoItsWeights(3, 2))
    assert not model.weight.is_meta and torch.equal(model.weight, saved.weight) and torch.equal(model.bias, saved.bias)


def _state(path: Path) -> dict[str, torch.Tensor]:
    """The state dict a pickled file holds, read whole."""
    checkpoint = torch.load(path, weights_only=True)
    return checkpoint.get("state_dict", checkpoint)


@pytest.mark.parametrize("source, kind", [(None, "NoneType"), (3, "int"), (torch.zeros(2, 2), "Tensor")])
def test_a_weights_source_of_another_type_is_one_line(source, kind):
    with pytest.raises(WeightsError) as info:  # a tensor's repr took several lines
        load_weights(_model(), source)
    assert str(info.value) == (f"weights source of type {kind}: give a file path, a shipped ARCH.TAG, 'timm:NAME', "
                               "'hf-hub:ORG/REPO' or a state dict")


class _RunsAShellCommand:
    def __reduce__(self):  # what a hostile checkpoint holds: a call into a module torch blocks
        return os.system, ("true",)


def test_a_pickle_calling_a_blocked_module_is_refused_not_called_no_pickle(tmp_path):
    path = tmp_path / "evil.pth"
    torch.save({"w": _RunsAShellCommand()}, path)
    with pytest.raises(WeightsError, match=r"refused, the pickle holds posix.system besides tensors \(it could run "
                                           r"code\); convert it to .safetensors where you trust it") as err:
        create_model(ARCH, **SMALL, pretrained=str(path))
    _assert_one_line_naming(err, path)


def test_a_whole_pickled_model_is_named_with_the_fix_that_keeps_its_weights(tmp_path):
    """torch.save(model) was refused as "objects other than tensors", with no word of saving the state dict."""
    path = tmp_path / "whole.pth"
    torch.save(create_model(ARCH, **SMALL), path)
    with pytest.raises(WeightsError, match=r"refused, the pickle holds a whole model "
                                           r"\(visattn.models.vit.VisionTransformer\), not its weights; where you "
                                           r"trust it, save torch.save\(model.state_dict\(\), FILE\)") as err:
        create_model(ARCH, **SMALL, pretrained=str(path))
    _assert_one_line_naming(err, path)


def test_a_pooling_switched_by_reset_classifier_survives_save_weights(weights_tmp):
    torch.manual_seed(0)
    model = create_model(ARCH, num_classes=3, **SMALL).eval()
    model.reset_classifier(4, global_pool="avg")
    save_weights(model, weights_tmp / f"{ARCH}.pool.safetensors", labels=list("abcd"), preprocessing=VALID_PREPROCESSING)
    rebuilt = create_model(f"{ARCH}.pool").eval()
    images = torch.randn(2, 3, 28, 28)
    assert rebuilt.global_pool == "avg"
    torch.testing.assert_close(rebuilt(images), model(images))  # it pooled the class token instead: 0.78 apart


def test_non_local_blocks_survive_the_json_index(weights_tmp):
    torch.manual_seed(0)
    model = create_model("nl_resnet20_cifar", num_classes=4, non_local_blocks={2: (0,), 3: (1, 2)}).eval()
    save_weights(model, weights_tmp / "nl_resnet20_cifar.nlb.safetensors", labels=list("abcd"),
                 preprocessing={"input_size": [3, 32, 32], "mean": [0.5] * 3, "std": [0.5] * 3})
    images = torch.randn(2, 3, 32, 32)
    torch.testing.assert_close(create_model("nl_resnet20_cifar.nlb").eval()(images), model(images))


@pytest.mark.filterwarnings("ignore:.*saved without labels")
def test_saved_weights_rebuild_without_the_backbone_file_they_started_from(weights_tmp, tmp_path):
    backbone = tmp_path / "backbone.safetensors"
    save_file({k: v.contiguous() for k, v in create_model("se_resnet20_cifar").state_dict().items()}, backbone)
    detector = create_model("fcos_se_resnet20_cifar", num_classes=3, pretrained_backbone=str(backbone)).eval()
    save_weights(detector, weights_tmp / "fcos_se_resnet20_cifar.own.safetensors")
    backbone.unlink()  # the saved file holds every weight
    rebuilt = create_model("fcos_se_resnet20_cifar.own").eval()
    assert load_index()["fcos_se_resnet20_cifar.own"]["model_kwargs"] == {"pretrained_backbone": False}
    image = [torch.rand(3, 64, 64)]
    torch.testing.assert_close(rebuilt(image)[0]["scores"], detector(image)[0]["scores"])


def test_a_classifier_saved_without_labels_or_preprocessing_warns(weights_tmp):
    model = create_model(ARCH, num_classes=10, **SMALL)
    with pytest.warns(UserWarning, match=r"saved without preprocessing or labels; loading it will assume \w+'s "
                                         r"default mean \[0.485, 0.456, 0.406\], std \[0.229, 0.224, 0.225\] and "
                                         r"labels"):
        save_weights(model, weights_tmp / f"{ARCH}.bare.safetensors")
    clip = create_model("vit_base_patch32_clip_224", num_classes=2, depth=1, img_size=32)
    with pytest.warns(UserWarning, match=r"saved without preprocessing; loading it will assume "
                                         r"vit_base_patch32_clip_224's default mean \[0.4814.*\], interpolation "
                                         r"bicubic; pass"):
        save_weights(clip, weights_tmp / "vit_base_patch32_clip_224.bare.safetensors", labels=["a", "b"])
    # ... as loading it does, in visattn's transform and timm's data helpers alike
    from timm.data import resolve_data_config

    from visattn.data.preprocessing import timm_data_config
    from visattn.models.vit import OPENAI_CLIP_EVALUATION
    from visattn.inference.classifier import load_classifier

    loaded = load_classifier("vit_base_patch32_clip_224.bare")
    assert {key: loaded.preprocessing[key] for key in OPENAI_CLIP_EVALUATION} == OPENAI_CLIP_EVALUATION
    config, by_timm = timm_data_config(loaded.preprocessing), resolve_data_config(model=loaded.model)
    assert by_timm == {key: config[key] for key in by_timm}


def test_a_captioners_timm_encoder_loads_the_file_it_is_given(tmp_path):
    import timm

    encoder = timm.create_model("resnet18", num_classes=0)
    path = tmp_path / "r18.safetensors"
    save_file({k: v.contiguous() for k, v in encoder.state_dict().items()}, path)
    captioner = create_model("sat_cbam_resnet_scenes", encoder_name="timm:resnet18", encoder_kwargs={}, vocab_size=20,
                             encoder_pretrained=str(path))
    assert all(torch.equal(a, b) for a, b in zip(encoder.state_dict().values(), captioner.encoder.state_dict().values()))


@pytest.mark.parametrize("registers, side", [(4, 3), (8, 5)])
@pytest.mark.parametrize("no_embed_class", [True, False])
def test_vit_weights_of_this_grid_in_the_other_position_layout_are_refused_not_resampled(registers, side,
                                                                                          no_embed_class):
    """From a register-token audit: 9 positions of a 3x3 grid laid out without prefix positions passed for a 2x2
    grid after 5 prefix tokens (and 25 of a 5x5 one for 4x4 after 9), resampled without a word."""
    kwargs = dict(img_size=16 * side, patch_size=16, depth=1, embed_dim=32, num_heads=2, reg_tokens=registers)
    state = create_model("vit_tiny_patch16_224", no_embed_class=no_embed_class, **kwargs).state_dict()
    with pytest.raises(WeightsError, match=rf"holds this model's {side}x{side} grid in the other position layout; .* "
                                           rf"build the model with no_embed_class={no_embed_class}$"):
        create_model("vit_tiny_patch16_224", no_embed_class=not no_embed_class, pretrained=state, **kwargs)


@pytest.mark.parametrize("timm_kwargs, visattn_kwargs, message", [
    ({"reg_tokens": 4}, {}, r"the weights have 4 register tokens \(reg_token\) and this model 0; build it with "
                            "reg_tokens=4$"),
    ({}, {"reg_tokens": 4}, r"the weights have 0 register tokens \(reg_token\) and this model 4; build it with "
                            "reg_tokens=0$"),
    ({"reg_tokens": 4, "no_embed_class": True}, {"reg_tokens": 1, "no_embed_class": True}, "the weights have 4 "
                                                                                        "register tokens .* model 1;"),
    ({"no_embed_class": True}, {"img_size": 64}, r"pos_embed \(1, 196, 192\) does not hold a square patch grid after 1 "
                                                 r"prefix tokens; its positions leave out the prefix tokens \(class, "
                                                 r"registers\): build the model with no_embed_class=True$"),
    ({"reg_tokens": 3}, {"reg_tokens": 3, "no_embed_class": True},
     r"pos_embed \(1, 200, 192\) holds this model's 14x14 grid in the other position layout; its positions hold one "
     "for each of the prefix tokens"),
    ({}, {"class_token": False, "global_pool": "avg"}, "the weights have a class token and this model does not; "
                                                       "build it with class_token=True"),
    ({"class_token": False, "global_pool": "avg"}, {}, "the weights lack a class token and this model does"),
    ({"pre_norm": True}, {}, r"the weights have a norm before the blocks \(norm_pre, CLIP's\) and this model does not; "
                             "build it with pre_norm=True$"),
    ({}, {"pre_norm": True}, r"the weights lack a norm before the blocks \(norm_pre, CLIP's\) and this model does; "
                             "build it with pre_norm=False$"),
    ({"class_token": False, "global_pool": "map"}, {"class_token": False, "global_pool": "avg"},
     r"the weights pool by attention \(attn_pool, SigLIP's head\) and this model does not; build it with "
     "global_pool='map'$"),
    ({"class_token": False, "global_pool": "avg"}, {"class_token": False, "global_pool": "map"},
     r"the weights have no attention pool \(attn_pool\) and this model pools by one; build it with global_pool='avg'$"),
])
def test_a_vit_checkpoint_of_another_token_layout_names_the_file_and_the_cause(tmp_path, timm_kwargs, visattn_kwargs,
                                                                              message):
    import timm

    path = tmp_path / "vit.safetensors"
    reference = timm.create_model("vit_tiny_patch16_224", depth=1, **timm_kwargs)
    save_file({k: v.contiguous() for k, v in reference.state_dict().items()}, path)
    with pytest.raises(WeightsError, match=f"^{path}: {message}"):
        create_model("vit_tiny_patch16_224", depth=1, pretrained=str(path), **visattn_kwargs)


def test_a_captioner_whose_encoder_name_has_a_tag_rebuilds_without_reading_the_encoders_file(weights_tmp):
    """Left out, encoder_pretrained is None, which loads the tag's weights: the saved captioner must say False."""
    encoder_kwargs = dict(layers=(1, 1), widths=(8, 16), small_input=False)
    encoder = create_model("cbam_resnet20_cifar", num_classes=10, **encoder_kwargs)
    save_weights(encoder, weights_tmp / "cbam_resnet20_cifar.enc.safetensors", labels=[str(i) for i in range(10)],
                 preprocessing={"input_size": [3, 32, 32], "mean": [0.5] * 3, "std": [0.5] * 3})
    captioner = create_model("sat_cbam_resnet_scenes", encoder_name="cbam_resnet20_cifar.enc",
                             encoder_kwargs=encoder_kwargs, vocab_size=20, img_size=32, grid_size=4).eval()
    save_weights(captioner, weights_tmp / "sat_cbam_resnet_scenes.mine.safetensors", vocab=[str(i) for i in range(20)],
                 preprocessing={"input_size": [3, 32, 32], "mean": [0.5] * 3, "std": [0.5] * 3})
    assert load_index()["sat_cbam_resnet_scenes.mine"]["model_kwargs"]["encoder_pretrained"] is False
    (weights_tmp / "cbam_resnet20_cifar.enc.safetensors").unlink()  # a rebuild reading it would fail
    rebuilt = create_model("sat_cbam_resnet_scenes.mine").eval()
    assert all(torch.equal(a, b) for a, b in zip(captioner.state_dict().values(), rebuilt.state_dict().values()))


def test_a_model_without_a_head_drops_the_checkpoints_head_without_a_warning(recwarn):
    """A detector's backbone or a captioner's encoder (num_classes=0) was told its new head was random."""
    from visattn.errors import VisattnWarning

    features = create_model("se_resnet20_cifar.fmnist", num_classes=0)
    assert not [w for w in recwarn if issubclass(w.category, VisattnWarning)], [str(w.message) for w in recwarn]
    shipped = create_model("se_resnet20_cifar.fmnist")
    assert all(torch.equal(v, shipped.state_dict()[k]) for k, v in features.state_dict().items())
    create_model("fcos_se_resnet20_cifar", pretrained_backbone="se_resnet20_cifar.fmnist")
    assert not [w for w in recwarn if issubclass(w.category, VisattnWarning)], [str(w.message) for w in recwarn]


def test_save_weights_refuses_a_model_its_name_would_not_rebuild(weights_tmp):
    """Saved, such weights got an index entry that create_model("ARCH.TAG") could never load."""
    path = weights_tmp / "resnet18.lin.safetensors"
    with pytest.raises(WeightsError, match=r"do not fit ResNet \(no key in common\); create_model\('resnet18.lin'\) "
                                           "would build another model") as err:
        save_weights(torch.nn.Linear(2, 2), path)
    _assert_one_line_naming(err, path)
    with pytest.raises(WeightsError, match=r"unexpected: blocks.1.norm1.weight, .* \(\+\d+ more\)"):
        save_weights(_model(), weights_tmp / f"{ARCH}.deep.safetensors", model_kwargs={"depth": 1})
    assert list(weights_tmp.iterdir()) == []  # refused before anything was written
    features = _model(num_classes=0)  # a headless model still saves and rebuilds
    save_weights(features, weights_tmp / f"{ARCH}.features.safetensors")
    assert torch.equal(_logits(create_model(f"{ARCH}.features").eval()), _logits(features))


@pytest.mark.parametrize("wrap", [torch.compile, torch.nn.DataParallel], ids=["compile", "data_parallel"])
def test_weights_load_into_and_save_from_a_wrapped_model(weights_tmp, wrap):
    """torch.compile's OptimizedModule and DataParallel hold the model as _orig_mod and module."""
    source = _model(num_classes=10)
    with torch.no_grad():
        for p in source.parameters():
            p.add_(1)  # not the wrapped model's initialisation
    wrapped = wrap(_model(num_classes=10))
    assert load_weights(wrapped, source.state_dict()) is wrapped
    inner = wrapped._orig_mod if hasattr(wrapped, "_orig_mod") else wrapped.module
    assert torch.equal(_logits(inner.eval()), _logits(source))
    save_weights(wrapped, weights_tmp / f"{ARCH}.wrapped.safetensors", labels=[str(i) for i in range(10)],
                 preprocessing={"input_size": [3, 28, 28], "mean": [0.5] * 3, "std": [0.5] * 3})
    assert torch.equal(_logits(create_model(f"{ARCH}.wrapped").eval()), _logits(source))


def test_a_timm_training_checkpoint_loads_its_ema_weights(tmp_path):
    """timm's train.py writes model_best.pth.tar / checkpoint-N.pth.tar with its args, optimizer and EMA copy."""
    import argparse

    from timm.utils import CheckpointSaver, ModelEmaV3

    model = _model()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    ema = ModelEmaV3(model)
    with torch.no_grad():
        for p in ema.module.parameters():
            p.add_(1)
    args = argparse.Namespace(model=ARCH, lr=0.1, epochs=3)
    for run in ("ema", "raw"):
        (tmp_path / run).mkdir()
    CheckpointSaver(model, optimizer, args=args, model_ema=ema, checkpoint_dir=str(tmp_path / "ema")).save_checkpoint(
        0, metric=0.5)
    CheckpointSaver(model, optimizer, args=args, checkpoint_dir=str(tmp_path / "raw")).save_checkpoint(0)
    best = create_model(ARCH, **SMALL, pretrained=str(tmp_path / "ema" / "model_best.pth.tar"))
    torch.testing.assert_close(best.state_dict(), ema.module.state_dict(), rtol=0, atol=0)
    raw = create_model(ARCH, **SMALL, pretrained=str(tmp_path / "raw" / "checkpoint-0.pth.tar"))
    torch.testing.assert_close(raw.state_dict(), model.state_dict(), rtol=0, atol=0)


def test_a_deit_training_checkpoint_loads_its_ema_weights(tmp_path):
    """DeiT's main.py saves {'model', 'model_ema', 'args', ...}: the raw weights had loaded, 2.6 off timm's logits
    (timm's load_checkpoint takes the EMA copy)."""
    import argparse

    from timm.models import load_checkpoint

    model = _model()
    averaged = {k: v + 1 if v.is_floating_point() else v for k, v in model.state_dict().items()}
    path = tmp_path / "checkpoint.pth"
    torch.save({"model": model.state_dict(), "model_ema": averaged, "epoch": 299,
                "args": argparse.Namespace(model=ARCH)}, path)
    loaded = create_model(ARCH, **SMALL, pretrained=str(path))
    torch.testing.assert_close(loaded.state_dict(), averaged, rtol=0, atol=0)
    reference = _model()
    load_checkpoint(reference, str(path))
    torch.testing.assert_close(reference.state_dict(), averaged, rtol=0, atol=0)


def test_a_visattn_file_recording_no_preprocessing_stays_unknown(tmp_path):
    """Weights visattn saved without preprocessing may have been trained with anything: not taken as evaluated as
    timm's of the name (resnet18d's: bicubic), which fine-tuning would have warned about."""
    import warnings

    save_weights(create_model("resnet18d", num_classes=3), tmp_path / "resnet18d.mine.safetensors",
                 labels=["a", "b", "c"])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        loaded = create_model("resnet18d", pretrained=str(tmp_path / "resnet18d.mine.safetensors"))
    assert loaded.visattn_recorded_preprocessing is None


@pytest.mark.parametrize("header", ["{not json", '"abc"', "[1, 2]", '{"mean": null, "std": [1, 1, 1]}'])
def test_recorded_preprocessing_that_builds_no_transform_is_one_line_naming_the_file(tmp_path, header):
    """A header that is no JSON had become a JSONDecodeError naming nothing; a checkpoint's settings a TypeError in
    timm's data helpers (mean None), or a model whose transform failed later (an unknown filter)."""
    state = create_model("resnet18", num_classes=3).state_dict()
    save_file(state, tmp_path / "w.safetensors", metadata={"preprocessing": header})
    if header == "{not json":  # no JSON: no record (loading reads the tensors)
        model = create_model("resnet18", pretrained=str(tmp_path / "w.safetensors"))
        assert model.visattn_recorded_preprocessing is None
    else:
        with pytest.raises(WeightsError, match=r"w.safetensors: the header's preprocessing.* the file was edited or "
                                               r"damaged"):
            create_model("resnet18", pretrained=str(tmp_path / "w.safetensors"))
    for bad in ({"mean": None, "std": None}, {"mean": "abc", "std": [1, 1, 1]}, {"interpolation": "nonsense"}):
        torch.save({"hyper_parameters": {"model_name": "resnet18", "preprocessing": bad},
                    "state_dict": {f"model.{k}": v for k, v in state.items()}}, tmp_path / "run.ckpt")
        with pytest.raises(WeightsError, match=r"run.ckpt: hyper_parameters.preprocessing\.(mean|interpolation)="):
            create_model("resnet18", pretrained=str(tmp_path / "run.ckpt"))


def test_a_torchvision_reference_training_checkpoint_loads_its_ema_weights(tmp_path):
    """torchvision's references/classification train.py --model-ema saves its ExponentialMovingAverage (an
    AveragedModel: ``module.*`` keys and an ``n_averaged`` count) as ``model_ema``: "no key in common"."""
    import argparse

    model = _model()
    ema = torch.optim.swa_utils.AveragedModel(model)
    for parameter in ema.parameters():
        parameter.data += 1
    path = tmp_path / "checkpoint.pth"
    torch.save({"model": model.state_dict(), "model_ema": ema.state_dict(), "optimizer": {}, "epoch": 3,
                "args": argparse.Namespace(model="resnet50")}, path)
    loaded = create_model(ARCH, **SMALL, pretrained=str(path))
    torch.testing.assert_close(loaded.state_dict(), ema.module.state_dict(), rtol=0, atol=0)


@pytest.mark.parametrize("arch, kwargs, message", [
    ("vit_small_patch4_28", {"depth": 2, "num_classes": 10}, "wrong shape: cls_token"),
    ("resnet20_cifar", {"num_classes": 10}, "no key in common"),
], ids=["wider_vit", "resnet"])
def test_weights_that_do_not_fit_raise_without_a_warning_about_the_head_first(recwarn, arch, kwargs, message):
    from visattn.errors import VisattnWarning

    with pytest.raises(WeightsError, match=message):
        load_weights(create_model(arch, **kwargs), _model(num_classes=10).state_dict())
    assert not [w for w in recwarn if issubclass(w.category, VisattnWarning)], [str(w.message) for w in recwarn]


@pytest.mark.parametrize("bad", [[float("nan")], [float("inf")], [float("inf"), float("-inf")]])
def test_weights_holding_nan_or_inf_are_refused_naming_the_tensor(tmp_path, bad):
    state = {k: v.clone().contiguous() for k, v in _model(num_classes=10).state_dict().items()}
    state["head.weight"][3, :len(bad)] = torch.tensor(bad)  # what a diverged run saves
    save_file(state, tmp_path / "diverged.safetensors")
    model = _model(num_classes=10)
    before = _logits(model)
    with pytest.raises(WeightsError) as err:
        load_weights(model, tmp_path / "diverged.safetensors")
    assert str(err.value) == (f"{tmp_path / 'diverged.safetensors'}: tensor 'head.weight' holds NaN or Inf values; "
                              "the file is corrupt or from a diverged run: use an earlier checkpoint")
    assert torch.equal(_logits(model), before)  # nothing loaded


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16, torch.float8_e5m2,
                                   torch.float8_e4m3fn], ids=lambda dtype: str(dtype).removeprefix("torch."))
def test_weights_of_any_floating_dtype_load_even_when_their_sum_overflows_and_nan_is_refused(tmp_path, dtype):
    """The check sums each tensor first, then reads the values when the sum is not finite (float32 and bfloat16 here).
    torch sums no float8 tensor on the CPU (e5m2 weights had then failed with a NotImplementedError), and has no
    NaN check for e4m3fn (which failed before that)."""
    state = {k: v.to(dtype).contiguous() for k, v in _model(num_classes=10).state_dict().items()}
    state["head.weight"][:] = torch.finfo(dtype).max / 2
    save_file(state, tmp_path / "large.safetensors")
    model = load_weights(_model(num_classes=10), tmp_path / "large.safetensors")
    assert torch.equal(model.head.weight, state["head.weight"].float())
    state["head.weight"][3, 1] = float("nan")
    save_file(state, tmp_path / "nan.safetensors")
    with pytest.raises(WeightsError, match="tensor 'head.weight' holds NaN or Inf values"):
        load_weights(_model(num_classes=10), tmp_path / "nan.safetensors")


def test_a_fifo_given_as_weights_is_not_a_regular_file_and_is_not_read(tmp_path):
    fifo = tmp_path / "weights.safetensors"
    os.mkfifo(fifo)  # opening it would wait for a writer forever
    with pytest.raises(WeightsError) as err:
        create_model(ARCH, **SMALL, pretrained=str(fifo))
    assert str(err.value) == f"{fifo}: not a regular file (a device, FIFO or socket); give a file path"


@pytest.mark.parametrize("arch, kwargs, first_conv", [
    ("resnet20_cifar", {}, "conv1"),
    ("vit_tiny_patch4_28", SMALL, "patch_embed.proj"),
], ids=["resnet", "vit"])
@pytest.mark.parametrize("in_chans", [1, 2, 4])
def test_rgb_weights_load_into_a_model_of_other_in_chans_as_timm_adapts_them(tmp_path, arch, kwargs, first_conv,
                                                                             in_chans):
    from timm.models import adapt_input_conv

    from visattn.errors import VisattnWarning

    torch.manual_seed(0)
    rgb = create_model(arch, num_classes=3, **kwargs).eval()
    path = tmp_path / "rgb.safetensors"
    save_file({k: v.contiguous() for k, v in rgb.state_dict().items()}, path)
    with pytest.warns(VisattnWarning) as record:
        model = create_model(arch, num_classes=3, in_chans=in_chans, pretrained=str(path), **kwargs).eval()
    how = "summed over R, G and B" if in_chans == 1 else f"repeated over the channels and scaled by 3/{in_chans}"
    assert [str(w.message) for w in record] == [f"{path}: {first_conv}.weight holds RGB filters and the model takes "
                                                f"in_chans={in_chans}: {how}, as timm does"]
    key = f"{first_conv}.weight"
    expected = {**rgb.state_dict(), key: adapt_input_conv(in_chans, rgb.state_dict()[key])}
    torch.testing.assert_close(model.state_dict(), expected, rtol=0, atol=0)
    if in_chans == 1:  # a gray image meets the summed filters as its RGB copy meets the RGB ones
        gray = torch.rand(2, 1, *rgb.input_size[1:])
        torch.testing.assert_close(model(gray), rgb(gray.expand(-1, 3, -1, -1)))


def test_weights_of_other_in_chans_and_other_widths_are_refused_not_adapted(tmp_path):
    rgb = create_model("resnet20_cifar", num_classes=3)
    width = rgb.conv1.out_channels
    narrow = create_model("resnet20_cifar", num_classes=3, in_chans=1, widths=(8, 32, 64))
    with pytest.raises(WeightsError, match=rf"wrong shape: conv1.weight \({width}, 3, 3, 3\) vs \(8, 1, 3, 3\), "
                                           rf"bn1.weight \({width},\) vs \(8,\)"):
        load_weights(narrow, rgb.state_dict())
    gray = create_model("resnet20_cifar", num_classes=3, in_chans=1)
    with pytest.raises(WeightsError, match=rf"conv1.weight \({width}, 1, 3, 3\) vs \({width}, 3, 3, 3\)\)"):
        load_weights(rgb, gray.state_dict())  # only RGB filters are adapted, as in timm


VALID_PREPROCESSING = {"input_size": [3, 28, 28], "mean": [0.5] * 3, "std": [0.5] * 3, "recipe": "small"}


def test_an_index_that_is_a_folder_is_one_line_saying_so(weights_tmp):
    """The line held Python's "[Errno 21] Is a directory: '...'" (a file-writing audit)."""
    (weights_tmp / "index.json").mkdir()
    for read in (list_pretrained, lambda: save_weights(_model(num_classes=3), weights_tmp / f"{ARCH}.a.safetensors")):
        with pytest.raises(WeightsError) as err:
            read()
        assert str(err.value) == (f"{weights_tmp / 'index.json'}: unreadable weights index (a folder, not a file); "
                                  "restore it from git or a backup, or move it away and save the weights again with "
                                  "`visattn save-weights`")


@pytest.mark.parametrize("field, value, problem", [
    ("model_kwargs", [1], "model_kwargs=[1]: give an object of builder arguments, e.g. {'depth': 4}"),
    ("preprocessing", [3, 28, 28], "preprocessing=[3, 28, 28]: give an object with input_size, mean and std"),
    ("preprocessing", {**VALID_PREPROCESSING, "std": [0, 0, 0]},
     "preprocessing.std=[0, 0, 0]: give 3 finite numbers above 0 (one per RGB channel) or 1 for all"),
    ("preprocessing", {**VALID_PREPROCESSING, "mean": [float("nan")] * 3},
     "preprocessing.mean=[nan, nan, nan]: give 3 finite numbers (one per RGB channel) or 1 for all"),
    ("preprocessing", {**VALID_PREPROCESSING, "input_size": [28, 28]},
     "preprocessing.input_size=[28, 28]: give [C, H, W], C being 1 (gray) or 3 (RGB)"),
    ("labels", [1, 2, 3], "labels=[1, 2, 3]: give a list of label names, one per class"),
    ("num_classes", "3", "num_classes='3': give a whole number of classes (0: features only)"),
    ("num_classes", True, "num_classes=True: give a whole number of classes (0: features only)"),  # Python's 1
], ids=["model_kwargs_list", "preprocessing_list", "zero_std", "nan_mean", "input_size_pair", "labels_ints",
        "num_classes_string", "num_classes_true"])
def test_a_malformed_field_of_an_index_entry_is_one_line_naming_it(weights_tmp, capsys, field, value, problem):
    from visattn.cli import main
    from visattn.inference.classifier import load_classifier

    save_weights(_model(num_classes=3), weights_tmp / f"{ARCH}.mine.safetensors", labels=list("abc"),
                 preprocessing=VALID_PREPROCESSING)
    index = json.loads((weights_tmp / "index.json").read_text())
    index[f"{ARCH}.mine"][field] = value  # edited by hand
    (weights_tmp / "index.json").write_text(json.dumps(index))
    expected = (f"{weights_tmp / 'index.json'}: unreadable weights index (entry '{ARCH}.mine': {problem}); restore it "
                "from git or a backup, or move it away and save the weights again with `visattn save-weights`")
    for load in (create_model, load_classifier):
        with pytest.raises(WeightsError) as err:
            load(f"{ARCH}.mine")
        assert str(err.value) == expected
    assert main(["classify", "x.png", "--model", f"{ARCH}.mine"]) == 2
    assert capsys.readouterr().err == f"visattn: error: {expected}\n"


@pytest.mark.parametrize("edit", [lambda entry: entry.pop("sha256"), lambda entry: entry.update(sha256=None)],
                         ids=["no_sha256", "null_sha256"])
def test_an_index_entry_without_its_sha256_is_one_line_not_loaded_unchecked(weights_tmp, edit):
    """Deleting the hash would otherwise turn its check off without a word (a mutation review: untested)."""
    save_weights(_model(num_classes=3), weights_tmp / f"{ARCH}.mine.safetensors")
    index = json.loads((weights_tmp / "index.json").read_text())
    edit(index[f"{ARCH}.mine"])
    (weights_tmp / "index.json").write_text(json.dumps(index))
    with pytest.raises(WeightsError, match=rf"unreadable weights index \(entry '{ARCH}.mine' is not an \"ARCH.TAG\" "
                                           r"object with \"file\" and \"sha256\" strings\); restore it"):
        create_model(f"{ARCH}.mine")


@pytest.mark.parametrize("preprocessing, missing", [
    ({"mean": [0.5] * 3, "std": [0.5] * 3}, "input_size"),
    ({"input_size": [3, 28, 28]}, "mean or std"),
], ids=["no_input_size", "no_mean_std"])
def test_a_classifier_entry_without_what_its_transform_reads_is_one_line(weights_tmp, preprocessing, missing):
    from visattn.inference.classifier import load_classifier

    save_weights(_model(num_classes=3), weights_tmp / f"{ARCH}.mine.safetensors", labels=list("abc"),
                 preprocessing=VALID_PREPROCESSING)
    index = json.loads((weights_tmp / "index.json").read_text())
    index[f"{ARCH}.mine"]["preprocessing"] = preprocessing  # edited by hand: save_weights refuses it
    (weights_tmp / "index.json").write_text(json.dumps(index))
    with pytest.raises(WeightsError) as err:
        load_classifier(f"{ARCH}.mine")
    assert str(err.value) == (f"{weights_tmp / 'index.json'}: entry '{ARCH}.mine': preprocessing has no {missing}; "
                              "record input_size [C, H, W], mean and std there, or save the weights again with "
                              "`visattn save-weights --checkpoint`")


def test_save_weights_refuses_an_entry_its_index_would_refuse_before_writing(weights_tmp):
    path = weights_tmp / f"{ARCH}.mine.safetensors"
    with pytest.raises(WeightsError) as err:
        save_weights(_model(num_classes=3), path, labels=list("abc"), preprocessing={**VALID_PREPROCESSING, "std": 0})
    assert str(err.value) == (f"{path}: preprocessing.std=0: give 3 finite numbers above 0 (one per RGB channel) "
                              "or 1 for all")
    assert list(weights_tmp.iterdir()) == []
    with pytest.raises(WeightsError) as err:  # what loading the classifier would refuse
        save_weights(_model(num_classes=3), path, labels=list("abc"), preprocessing={"input_size": [3, 28, 28]})
    assert str(err.value) == (f"{path}: preprocessing has no mean or std; "
                              "pass preprocessing=dict(input_size=..., mean=..., std=...)")
    assert list(weights_tmp.iterdir()) == []


@pytest.mark.parametrize("height, width", [(375, 500), (333, 250), (28, 28)])
@pytest.mark.parametrize("name", ["se_resnet20_cifar.fmnist", "vit_tiny_patch4_28.fmnist", "resnet18", "timm_augreg",
                                  "deit_tiny_patch16_224", "recorded_without_filter"])
def test_timm_data_helpers_preprocess_a_model_as_visattn_does(name, height, width, request):
    """timm's ``create_transform(**resolve_data_config(model=m))`` and visattn's own transform agree to float
    rounding on noise (where aliasing shows most). resolve_data_config had read no pretrained_cfg (ImageNet's
    224-px crop for a 28-px model); visattn's OpenCV resize did not antialias a shrunk image, rounded the
    resized side and the crop offset otherwise than torchvision, and dropped recorded crop_pct and interpolation.
    DeiT's weights are all evaluated bicubic at crop 0.9; weights of such an architecture recording no filter are
    evaluated with visattn's default, bilinear, on both sides."""
    import numpy as np
    from PIL import Image
    from timm.data import create_transform, resolve_data_config

    from visattn.data.preprocessing import default_preprocessing
    from visattn.data.transforms import eval_transform_of
    from visattn.inference.classifier import load_classifier

    if name == "timm_augreg":  # a ViT's settings as timm's augreg weights record them, saved and loaded back
        weights_tmp = request.getfixturevalue("weights_tmp")
        shipped = {"input_size": [3, 32, 32], "mean": [0.5] * 3, "std": [0.5] * 3, "interpolation": "bicubic",
                   "crop_pct": 0.9}
        save_weights(create_model("vit_tiny_patch4_32", num_classes=2), weights_tmp / "vit_tiny_patch4_32.augreg.safetensors",
                     labels=["a", "b"], preprocessing=shipped)
        name = "vit_tiny_patch4_32.augreg"
    if name == "recorded_without_filter":  # as a Fashion-MNIST run records its settings: no crop, no filter
        weights_tmp = request.getfixturevalue("weights_tmp")
        recorded = {"input_size": [3, 32, 32], "mean": [0.5] * 3, "std": [0.5] * 3, "recipe": "photo"}
        save_weights(create_model("deit_tiny_patch16_224", img_size=32, depth=1, num_classes=2),
                     weights_tmp / "deit_tiny_patch16_224.gray.safetensors", labels=["a", "b"], preprocessing=recorded)
        name = "deit_tiny_patch16_224.gray"
    classifier = load_classifier(name) if "." in name else None
    model = classifier.model if classifier else create_model(name)
    config = resolve_data_config(model=model)
    image = np.random.default_rng(0).integers(0, 256, (height, width, 3), dtype=np.uint8)
    by_timm = create_transform(**config)(Image.fromarray(image))
    ours = (classifier.transform() if classifier else eval_transform_of(default_preprocessing(model)))(image)
    assert by_timm.shape == ours.shape
    torch.testing.assert_close(by_timm, ours, rtol=0, atol=1e-5)


@pytest.mark.parametrize("name, kwargs", [("se_resnet20_cifar.fmnist", {"in_chans": 1}),
                                          ("vit_tiny_patch4_28.fmnist", {"img_size": 56})])
def test_timm_data_helpers_preprocess_for_the_model_as_built_not_as_its_weights_were(name, kwargs):
    """The weights' 3 channels at 28 px stayed in pretrained_cfg: timm's transform gave inputs the model refused."""
    import numpy as np
    from PIL import Image
    from timm.data import create_transform, resolve_data_config

    model = create_model(name, **kwargs).eval()
    config = resolve_data_config(model=model)
    assert config["input_size"] == ((1, 28, 28) if "in_chans" in kwargs else (3, 56, 56))
    assert config["mean"] == pytest.approx((0.286,) * config["input_size"][0], abs=1e-3)
    image = Image.fromarray(np.random.default_rng(0).integers(0, 256, (40, 30, 3), dtype=np.uint8))
    image = image.convert("L") if "in_chans" in kwargs else image  # timm's transform keeps the image's channels
    assert model(create_transform(**config)(image)[None]).shape == (1, 10)


def test_timm_data_helpers_normalise_each_of_more_than_three_channels():
    """in_chans=4 gave 4 channels but R, G and B's 3 values: timm's transform failed on the first RGBA image (a
    timm-parity audit). The fourth takes R's, as the stem's weights for it repeat R's."""
    import numpy as np
    from PIL import Image
    from timm.data import create_transform, resolve_data_config

    from visattn.data.preprocessing import IMAGENET_MEAN, IMAGENET_STD

    model = create_model("se_resnet20_cifar.fmnist", in_chans=4).eval()
    config = resolve_data_config(model=model)
    assert config["input_size"][0] == 4 and len(config["mean"]) == len(config["std"]) == 4
    assert config["mean"][3] == config["mean"][0] and config["std"][3] == config["std"][0]
    photo = create_model("resnet20_cifar", in_chans=5)
    assert resolve_data_config(model=photo)["mean"] == pytest.approx((*IMAGENET_MEAN, *IMAGENET_MEAN[:2]))
    assert resolve_data_config(model=photo)["std"] == pytest.approx((*IMAGENET_STD, *IMAGENET_STD[:2]))
    image = Image.fromarray(np.random.default_rng(0).integers(0, 256, (40, 30, 4), dtype=np.uint8), mode="RGBA")
    assert model(create_transform(**config)(image)[None]).shape == (1, 10)


def test_a_classifier_from_a_training_checkpoint_carries_its_recorded_preprocessing_for_timm(tmp_path):
    from test_export import _checkpoint
    from timm.data import resolve_data_config

    from visattn.inference.classifier import load_classifier

    path = _checkpoint(tmp_path / "run.ckpt")
    checkpoint = torch.load(path, weights_only=True)
    checkpoint["hyper_parameters"]["preprocessing"] = VALID_PREPROCESSING
    torch.save(checkpoint, path)
    config = resolve_data_config(model=load_classifier(checkpoint=str(path)).model)
    assert config == {"input_size": (3, 28, 28), "interpolation": "bilinear", "mean": (0.5,) * 3, "std": (0.5,) * 3,
                      "crop_pct": 1.0, "crop_mode": "squash"}


def test_weights_from_timm_by_name_carry_timms_preprocessing_for_them(monkeypatch):
    """``pretrained="timm:NAME"`` kept only the state dict: an augreg ViT (mean and std 0.5, bicubic, crop 0.9)
    reported ImageNet's statistics, bilinear and 0.875 to resolve_data_config."""
    import timm
    from timm.data import resolve_data_config

    import visattn.pretrained as pretrained

    monkeypatch.setattr(pretrained, "_fetch_timm",
                        lambda name, into: (timm.create_model(name, pretrained=False).state_dict(), None))
    small = {"img_size": 32}
    model = create_model("vit_small_patch16_224", pretrained="timm:vit_small_patch16_224.augreg_in21k_ft_in1k", **small)
    config = resolve_data_config(model=model)
    assert config == {"input_size": (3, 32, 32), "interpolation": "bicubic", "mean": (0.5, 0.5, 0.5),
                      "std": (0.5, 0.5, 0.5), "crop_pct": 0.9, "crop_mode": "center"}
    # timm's weights of this name differ in their statistics (DeiT's are ImageNet's)
    assert resolve_data_config(model=create_model("vit_small_patch16_224", **small))["mean"] == IMAGENET_MEAN


def test_a_one_channel_models_timm_config_normalises_as_visattn_does():
    """Three mean and std values on a (1, H, W) input_size made timm's create_transform fail."""
    import numpy as np
    from PIL import Image
    from timm.data import create_transform, resolve_data_config

    from visattn.data.preprocessing import default_preprocessing
    from visattn.data.transforms import eval_transform_of

    model = create_model("resnet18", in_chans=1)
    config = resolve_data_config(model=model)
    assert config["input_size"] == (1, 224, 224) and config["mean"] == IMAGENET_MEAN[:1]
    gray = np.repeat(np.random.default_rng(0).integers(0, 256, (230, 240, 1), dtype=np.uint8), 3, axis=2)
    by_timm = create_transform(**config)(Image.fromarray(gray))  # timm keeps 3 equal channels
    ours = eval_transform_of(default_preprocessing(model))(gray)
    assert ours.shape == (1, 224, 224)
    torch.testing.assert_close(by_timm[:1], ours, rtol=0, atol=1e-5)


def test_models_built_for_a_checkpoint_read_no_starting_weights(recwarn):
    """What `--ckpt_path` runs build: the checkpoint replaces every weight, so the starting file may be gone."""
    from visattn.data.vocab import Vocabulary
    from visattn.tasks.captioning import build_captioner

    with pytest.raises(WeightsError, match="gone.pth: weights file not found"):
        create_model("resnet20_cifar", pretrained="gone.pth")
    with checkpoint_follows():
        model = create_model("resnet20_cifar", pretrained="gone.pth")
        shipped = create_model("se_resnet20_cifar.fmnist")
        build_captioner("sat_cbam_resnet_scenes.scenes", Vocabulary.from_list(["<pad>", "<start>", "<end>", "<unk>"]), {})
    assert not starting_weights_skipped()
    assert not torch.equal(shipped.conv1.weight, create_model("se_resnet20_cifar.fmnist").conv1.weight)
    assert model.num_classes == 10 and not [w for w in recwarn if "vocabulary" in str(w.message)]


def test_an_installed_wheel_carries_every_package_and_the_shipped_weights(tmp_path):
    """The wheel held no weights: an installed (not editable) visattn listed none and said to reinstall. It saves the
    user's weights in their data folder, not into the installed package. It carries the configs, and the README's
    ``fit --config configs/...`` runs from a folder without them (LightningCLI said "File does not exist")."""
    import shutil
    import subprocess
    import sys
    import zipfile
    from pathlib import Path

    pytest.importorskip("setuptools")
    repo, source = Path(__file__).resolve().parents[1], tmp_path / "source"
    for folder in ("visattn", "weights", "configs"):  # a copy: a build writes build/ into its source folder
        shutil.copytree(repo / folder, source / folder, ignore=shutil.ignore_patterns("__pycache__"))
    for file in ("pyproject.toml", "README.md", "LICENSE"):
        shutil.copy(repo / file, source / file)
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check", "-q"]
    subprocess.run([*pip, "wheel", str(source), "--no-deps", "--no-build-isolation", "-w", str(tmp_path / "dist")],
                   check=True, cwd=tmp_path)
    wheel = next((tmp_path / "dist").glob("visattn-*.whl"))
    with zipfile.ZipFile(wheel) as archive:  # Apache-2.0 asks that copies passed on carry the licence's text
        metadata = archive.read(next(n for n in archive.namelist() if n.endswith(".dist-info/METADATA"))).decode()
        licence = [n for n in archive.namelist() if n.endswith(".dist-info/licenses/LICENSE")]
        assert "License-Expression: Apache-2.0" in metadata.splitlines() and len(licence) == 1
        assert archive.read(licence[0]) == (repo / "LICENSE").read_bytes()
    subprocess.run([*pip, "install", "--no-deps", "--target", str(tmp_path / "site"), str(wheel)], check=True)
    packages = sorted(f"visattn.{p.parent.name}" for p in (repo / "visattn").glob("*/__init__.py"))
    # The checkout's editable install maps visattn's subpackages to it: out of the way, so that only the wheel's import.
    probe = ("import importlib, sys; sys.meta_path = [f for f in sys.meta_path if '__editable__' not in f.__module__]; "
             "import visattn, visattn.pretrained as p; "
             f"print(*[importlib.import_module(m).__file__ for m in {packages}], sep='\\n'); "
             "print(visattn.__file__, p.shipped_weights_dir(), p.weights_dir(), visattn.list_pretrained(), sep='\\n'); "
             "visattn.create_model('se_resnet20_cifar.fmnist'); from visattn.cli import PARAMETER_COUNTS, main; "
             "assert PARAMETER_COUNTS.is_file(), PARAMETER_COUNTS; "
             "main(['fit', '--config', 'configs/classification/vit_fmnist.yaml', '--print_config'])")
    env = {k: v for k, v in os.environ.items() if k != "VISATTN_WEIGHTS"}
    env.update(PYTHONPATH=str(tmp_path / "site"), XDG_DATA_HOME=str(tmp_path / "data"))
    probed = subprocess.run([sys.executable, "-c", probe], env=env, cwd=tmp_path, check=True, capture_output=True,
                            text=True)
    site, (found, printed) = tmp_path / "site" / "visattn", probed.stdout.split("# lightning.pytorch", 1)
    found = found.splitlines()
    assert found[:-1] == [*(str(site / m[8:] / "__init__.py") for m in packages), str(site / "__init__.py"),
                          str(site / "weights"), str(tmp_path / "data" / "visattn" / "weights")]
    assert found[-1] == str(sorted(json.loads((repo / "weights" / "index.json").read_text())))
    shipped = site / "configs" / "classification" / "vit_fmnist.yaml"
    assert "model_name: vit_tiny_patch4_28" in printed and "default_root_dir: outputs/vit_fmnist" in printed
    assert probed.stderr == (f"visattn: no configs/classification/vit_fmnist.yaml here; using the shipped config "
                             f"{site / 'configs' / 'classification' / 'vit_fmnist.yaml'}\n")
    assert shipped.read_bytes() == (repo / "configs" / "classification" / "vit_fmnist.yaml").read_bytes()
    assert sorted(p.relative_to(site).as_posix() for p in (site / "configs").rglob("*.yaml")) == \
        sorted(p.relative_to(repo).as_posix() for p in (repo / "configs").rglob("*.yaml"))


def test_every_package_visattn_imports_is_a_declared_dependency():
    """scenes.py imported cv2, which only albumentations' own requirements brought (a packaging audit)."""
    import ast
    import importlib.metadata
    import re
    import sys
    import tomllib
    from pathlib import Path

    repo = Path(__file__).resolve().parents[1]
    project = tomllib.loads((repo / "pyproject.toml").read_text())["project"]
    declared = {re.match(r"[\w.-]+", spec)[0].lower().replace("_", "-")
                for spec in [*project["dependencies"], *project["optional-dependencies"]["export"]]}
    imported = set()
    for path in (repo / "visattn").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                imported.update(alias.name.partition(".")[0] for alias in node.names)
            elif isinstance(node, ast.ImportFrom) and node.level == 0:
                imported.add(node.module.partition(".")[0])
    third_party = imported - set(sys.stdlib_module_names) - {"visattn"}
    installed = importlib.metadata.packages_distributions()
    undeclared = {name: installed.get(name) for name in third_party
                  if not {d.lower().replace("_", "-") for d in installed.get(name, [])} & declared}
    assert undeclared == {}


def _save_own(folder, tag, *, seed=0, **meta):
    """A user's own weights ``ARCH.tag`` saved into ``folder``; the model they were saved from."""
    torch.manual_seed(seed)
    model = create_model(ARCH, num_classes=3, **SMALL).eval()
    save_weights(model, folder / f"{ARCH}.{tag}.safetensors", labels=list("abc"), preprocessing=VALID_PREPROCESSING,
                 model_kwargs=SMALL, **meta)
    return model


@pytest.fixture
def two_folders(tmp_path, monkeypatch):
    """VISATTN_WEIGHTS naming two empty folders, searched in that order before the shipped weights."""
    first, second = tmp_path / "first", tmp_path / "second"
    first.mkdir()
    second.mkdir()
    monkeypatch.setenv("VISATTN_WEIGHTS", f"{first}{os.pathsep}{second}")
    return first, second


def test_a_users_weights_hide_the_shipped_ones_of_that_name_and_the_others_still_load(user_weights):
    """VISATTN_WEIGHTS replaced the shipped weights: every shipped name failed once it was set."""
    from visattn.pretrained import shipped_weights_dir

    mine = _save_own(user_weights, "fmnist", overwrite=True)  # the name of shipped weights: hides them
    assert create_model("se_resnet20_cifar.fmnist").visattn_name == "se_resnet20_cifar.fmnist"
    shipped = load_index()["se_resnet20_cifar.fmnist"]
    assert shipped["path"] == str(shipped_weights_dir() / "se_resnet20_cifar.fmnist.safetensors")
    assert shipped["index"] == str(shipped_weights_dir() / "index.json")
    assert torch.equal(_logits(create_model(f"{ARCH}.fmnist")), _logits(mine))
    assert torch.equal(_logits(create_model(ARCH, num_classes=3, pretrained=f"{ARCH}.fmnist", **SMALL).eval()),
                       _logits(mine))
    assert load_index()[f"{ARCH}.fmnist"]["index"] == str(user_weights / "index.json")


def test_pretrained_weights_are_listed_with_a_users_own(user_weights, capsys):
    from visattn import list_pretrained
    from visattn.cli import main
    from visattn.pretrained import shipped_weights_dir

    _save_own(user_weights, "mine")
    expected = sorted([f"{ARCH}.mine", *load_index(shipped_weights_dir())])
    assert list_pretrained() == expected
    assert main(["models", "--pretrained"]) == 0
    assert [line.split()[0] for line in capsys.readouterr().out.splitlines()[1:]] == expected


def test_visattn_weights_folders_are_searched_in_order_before_the_shipped_ones(two_folders):
    from visattn import pretrained

    first, second = two_folders
    ours, hidden = _save_own(first, "both", seed=1), _save_own(second, "both", seed=2)
    theirs = _save_own(second, "second_only", seed=3)
    assert not torch.equal(_logits(ours), _logits(hidden))
    assert torch.equal(_logits(create_model(f"{ARCH}.both")), _logits(ours))
    assert torch.equal(_logits(create_model(f"{ARCH}.second_only")), _logits(theirs))
    assert create_model("se_resnet20_cifar.fmnist").visattn_name == "se_resnet20_cifar.fmnist"
    assert load_index()[f"{ARCH}.second_only"]["index"] == str(second / "index.json")
    assert pretrained.weights_search_path() == [first, second, pretrained.shipped_weights_dir()]
    assert pretrained.weights_dir() == first


def test_save_weights_writes_into_the_first_visattn_weights_folder_only(two_folders, tmp_path, capsys):
    from test_export import _checkpoint

    from visattn.cli import main
    from visattn.pretrained import shipped_weights_dir

    first, second = two_folders
    _save_own(second, "other")
    before = {folder: {p.name: p.read_bytes() for p in folder.iterdir()} for folder in (second, shipped_weights_dir())}
    assert main(["save-weights", "--checkpoint", str(_checkpoint(tmp_path / "run.ckpt")), "--tag", "t"]) == 0
    out = capsys.readouterr().out
    assert f"wrote {first / 'cbam_resnet20_cifar.t.safetensors'} " in out
    # without --dataset the entry holds no metrics: said, not only shown as {} (from a fine-tuning journey audit)
    assert "; it records no metrics: give --dataset to score the test split\n{}\n" in out
    assert set(load_index(first)) == {"cbam_resnet20_cifar.t"}
    assert {folder: {p.name: p.read_bytes() for p in folder.iterdir()} for folder in before} == before
    assert create_model("cbam_resnet20_cifar.t").num_classes == 3  # found there by name


def test_an_architectures_default_weights_come_from_the_first_folder_that_marks_one(user_weights, tmp_path,
                                                                                    monkeypatch):
    from visattn.pretrained import find_weights_entry, shipped_weights_dir

    _save_own(user_weights, "plain")  # not marked default: the shipped default stays the default
    assert find_weights_entry(ARCH)["path"] == str(shipped_weights_dir() / f"{ARCH}.fmnist.safetensors")
    assert create_model(ARCH, pretrained=True).visattn_name == f"{ARCH}.fmnist"
    _save_own(user_weights, "mine", default=True)
    assert find_weights_entry(ARCH)["path"] == str(user_weights / f"{ARCH}.mine.safetensors")
    first = tmp_path / "first"
    first.mkdir()
    monkeypatch.setenv("VISATTN_WEIGHTS", f"{first}{os.pathsep}{user_weights}")
    _save_own(first, "first", default=True)
    assert find_weights_entry(ARCH)["path"] == str(first / f"{ARCH}.first.safetensors")
    assert create_model(ARCH, pretrained=True).visattn_name == f"{ARCH}.first"


def test_weights_found_in_no_folder_name_the_folders_searched(two_folders, capsys):
    from visattn.cli import main
    from visattn.pretrained import shipped_weights_dir

    first, second = two_folders
    searched = f"searched {first}, {second}, {shipped_weights_dir()}"
    expected = f"no weights {ARCH}.nope ({searched}): weights for {ARCH} are {ARCH}.fmnist"
    with pytest.raises(UnknownModelError) as err:
        create_model(f"{ARCH}.nope")
    assert str(err.value) == expected
    with pytest.raises(UnknownModelError) as err:
        create_model("cbam_resnet20_cifar", pretrained=True)
    assert str(err.value) == (f"no shipped weights for cbam_resnet20_cifar, nor saved ones ({searched}): see "
                              "`visattn models --pretrained`; weights of your own load from a training checkpoint "
                              "(--checkpoint FILE.ckpt) or, in Python, a file (pretrained='FILE.safetensors')")
    with pytest.raises(WeightsError) as err:
        create_model(ARCH, pretrained=f"{ARCH}.nope")
    assert str(err.value).startswith(f"{ARCH}.nope: weights file not found (in the working folder {os.getcwd()}), nor "
                                     f"weights of that name ({searched}); ")
    assert main(["classify", "x.png", "--model", f"{ARCH}.nope"]) == 2
    assert capsys.readouterr().err == f"visattn: error: {expected}\n"


@pytest.mark.parametrize("kwargs, named", [({"name": "resnet18.a1_in1k"}, "resnet18.a1_in1k"),
                                           ({"name": "resnet18.a1_in1k", "pretrained": False}, "resnet18.a1_in1k"),
                                           ({"name": "resnet18", "pretrained": True}, "resnet18")])
def test_a_timm_weights_name_says_how_timms_weights_load(kwargs, named):
    """From a timm user's audit: timm's ``ARCH.TAG`` names were refused without a word of ``timm:``."""
    with pytest.raises(UnknownModelError, match=rf"; timm's weights of that name load as pretrained='timm:{named}'$"):
        create_model(**kwargs)


def test_no_timm_weights_hint_for_a_name_timm_ships_untrained():
    from visattn.weights_index import _timm_weights_hint

    assert _timm_weights_hint("vit_base_patch16_reg4_gap_256") == ""  # timm's default tag is "untrained"
    assert _timm_weights_hint("vit_base_patch16_reg4_gap_256.untrained") == ""
    assert _timm_weights_hint("resnet18").startswith("; timm's weights")


@pytest.mark.parametrize("arch", ["resnet20_cifar", "vit_tiny_patch4_28"])
def test_a_head_built_from_the_weights_is_where_the_model_is_and_of_its_dtype(arch):
    """A reset head had been float32 (on the CPU) in a bf16 model, which then failed in its first forward; timm makes
    it where the model's weights are."""
    model = create_model(arch, depth=1, num_classes=3) if arch.startswith("vit") else create_model(arch, num_classes=3)
    ten_classes = {**model.state_dict()}
    head = type(model).classifier
    ten_classes[f"{head}.weight"] = torch.randn(10, ten_classes[f"{head}.weight"].shape[1])
    ten_classes[f"{head}.bias"] = torch.randn(10)
    model = model.to(torch.bfloat16).eval()
    load_weights(model, ten_classes, head_from_weights=True)
    assert getattr(model, head).weight.dtype == torch.bfloat16 and model.num_classes == 10
    with torch.no_grad():
        assert model(torch.randn(1, 3, 28, 28, dtype=torch.bfloat16)).shape == (1, 10)


def test_a_partial_state_dict_loads_non_strictly_into_a_vit_with_registers():
    """A head alone had been refused as weights of 0 register tokens ("build it with reg_tokens=0")."""
    model = create_model("vit_tiny_patch4_28", depth=1, num_classes=3, reg_tokens=2)
    head = {"head.weight": torch.zeros(3, 192), "head.bias": torch.ones(3)}
    with pytest.warns(VisattnWarning):
        load_weights(model, head, strict=False)
    assert torch.equal(model.head.bias, torch.ones(3))


def test_a_message_about_an_index_entry_names_the_index_it_came_from(two_folders):
    from visattn.pretrained import model_files
    from visattn.inference.classifier import load_classifier

    first, second = two_folders
    _save_own(second, "mine")
    index = json.loads((second / "index.json").read_text())
    del index[f"{ARCH}.mine"]["preprocessing"]["mean"]  # edited by hand: save_weights refuses it
    (second / "index.json").write_text(json.dumps(index))
    assert model_files(f"{ARCH}.mine") == [second / f"{ARCH}.mine.safetensors", second / "index.json"]
    with pytest.raises(WeightsError) as err:
        load_classifier(f"{ARCH}.mine")
    assert str(err.value).startswith(f"{second / 'index.json'}: entry '{ARCH}.mine': preprocessing has no mean")



@pytest.mark.parametrize("broken", ["{not json", '{"x": 1}'], ids=["unparseable", "malformed"])
def test_weights_an_earlier_folder_provides_load_past_a_broken_later_index(two_folders, capsys, broken):
    """A broken index.json in a later folder refused every name, even those an earlier folder provides
    (which hide the later folder's): the later index is never needed for them."""
    from visattn import list_pretrained
    from visattn.cli import main
    from visattn.pretrained import model_files
    from visattn.inference.classifier import load_classifier

    first, second = two_folders
    mine = _save_own(first, "mine", default=True)
    (second / "index.json").write_text(broken)
    assert torch.equal(_logits(create_model(f"{ARCH}.mine")), _logits(mine))
    assert torch.equal(_logits(create_model(ARCH, pretrained=True)), _logits(mine))  # the default it marks
    assert torch.equal(_logits(load_weights(_model(num_classes=3), f"{ARCH}.mine")), _logits(mine))
    # the weights, not logits: load_classifier's channels-last layout sums the patch embedding in another order
    loaded = load_classifier(f"{ARCH}.mine").model.state_dict()
    assert all(torch.equal(loaded[key], value) for key, value in mine.state_dict().items())
    assert model_files(f"{ARCH}.mine") == [first / f"{ARCH}.mine.safetensors", first / "index.json"]
    # the later index is needed to list every name, or to find one the earlier folder lacks
    for read in (list_pretrained, lambda: create_model(f"{ARCH}.fmnist"), lambda: create_model(f"{ARCH}.nope")):
        with pytest.raises(WeightsError, match="unreadable weights index") as err:
            read()
        _assert_one_line_naming(err, second / "index.json")
    assert main(["models", "--pretrained"]) == 2
    assert capsys.readouterr().err.startswith(f"visattn: error: {second / 'index.json'}: unreadable weights index")


def test_a_visattn_weights_folder_that_does_not_exist_is_refused_by_every_reader(tmp_path, monkeypatch, capsys):
    """A mistyped folder was named only when a name was looked up: pretrained='ARCH.TAG', load_weights and
    the lists skipped it, and loaded or listed the shipped weights of that name instead of the user's."""
    from visattn import list_models, list_pretrained
    from visattn.cli import main
    from visattn.pretrained import shipped_weights_dir

    kwargs = load_index(shipped_weights_dir())[f"{ARCH}.fmnist"]["model_kwargs"]  # the shipped weights fit
    model = create_model(ARCH, num_classes=10, **kwargs)  # no weights: the index is not read
    typo = tmp_path / "typo"
    monkeypatch.setenv("VISATTN_WEIGHTS", str(typo))
    expected = f"the weights folder {typo} in VISATTN_WEIGHTS does not exist; create it, or take it out of VISATTN_WEIGHTS"
    readers = [lambda: create_model(ARCH, num_classes=10, pretrained=f"{ARCH}.fmnist", **kwargs),
               lambda: load_weights(model, f"{ARCH}.fmnist"), list_pretrained, lambda: list_models(pretrained=True),
               lambda: create_model(f"{ARCH}.fmnist"), lambda: create_model(ARCH, pretrained=True)]
    for read in readers:
        with pytest.raises(WeightsError) as err:
            read()
        assert str(err.value) == expected
    assert main(["models", "--pretrained"]) == 2
    assert capsys.readouterr().err == f"visattn: error: {expected}\n"


def test_a_users_weights_load_when_the_shipped_folder_is_missing(user_weights, tmp_path, monkeypatch):
    """A broken install (no shipped weights folder) refused every name, a user's own weights included."""
    from visattn import list_pretrained
    from visattn.errors import UnknownModelError

    missing = tmp_path / "site-packages" / "visattn" / "weights"
    for module in ("visattn.weights_folders", "visattn.weights_files"):  # where it is looked up
        monkeypatch.setattr(f"{module}.shipped_weights_dir", lambda: missing)
    mine = _save_own(user_weights, "mine")
    assert torch.equal(_logits(create_model(f"{ARCH}.mine")), _logits(mine))
    assert list_pretrained() == [f"{ARCH}.mine"]
    searched = (f"searched {user_weights}, {missing}; the shipped weights folder {missing} does not exist: "
                "reinstall visattn with its weights")
    with pytest.raises(UnknownModelError) as err:
        create_model(f"{ARCH}.fmnist")
    assert str(err.value) == f"no weights {ARCH}.fmnist ({searched}): weights for {ARCH} are {ARCH}.mine"
    with pytest.raises(UnknownModelError) as err:
        create_model("cbam_resnet20_cifar", pretrained=True)
    assert f"({searched})" in str(err.value)


@pytest.mark.filterwarnings("ignore:.*saved without preprocessing or labels")
@pytest.mark.parametrize("overwrite", [False, True])
def test_saving_over_the_file_of_an_entry_renamed_in_the_index_is_refused(weights_tmp, overwrite):
    """A tag renamed by editing only its key in index.json (a.safetensors now .best's): saving tag a was refused as
    "weights a already exist", a name no listing showed, and --overwrite then replaced .best's weights."""
    kept = _model(num_classes=0)
    save_weights(kept, weights_tmp / f"{ARCH}.a.safetensors", model_kwargs=SMALL)
    index_file = weights_tmp / "index.json"
    index = json.loads(index_file.read_text())
    index[f"{ARCH}.best"] = index.pop(f"{ARCH}.a")
    index_file.write_text(json.dumps(index))
    path = weights_tmp / f"{ARCH}.a.safetensors"
    with pytest.raises(WeightsError) as err:
        save_weights(_model(num_classes=0, qkv_bias=False), path, model_kwargs={**SMALL, "qkv_bias": False},
                     overwrite=overwrite)
    assert str(err.value) == (f"{path}: the weights file of {ARCH}.best ({index_file} names it there); pick another "
                              f"--tag, or give {ARCH}.best a file of its own name")
    assert torch.equal(_logits(create_model(f"{ARCH}.best").eval()), _logits(kept))


def test_saving_the_name_of_shipped_weights_is_refused_unless_overwrite_hides_them(user_weights):
    """Saved into the first folder, they hid the shipped weights of that name without a word."""
    from visattn.pretrained import find_weights_entry, shipped_weights_dir

    shipped_index = shipped_weights_dir() / "index.json"
    with pytest.raises(WeightsError) as err:
        _save_own(user_weights, "fmnist")
    assert str(err.value) == (f"{user_weights / f'{ARCH}.fmnist.safetensors'}: weights {ARCH}.fmnist already exist in "
                              f"{shipped_index}, which these would hide; pick another --tag, or pass --overwrite to "
                              "hide them")
    assert list(user_weights.iterdir()) == []
    assert find_weights_entry(ARCH, "fmnist")["index"] == str(shipped_index)
    mine = _save_own(user_weights, "fmnist", overwrite=True)
    assert torch.equal(_logits(create_model(f"{ARCH}.fmnist")), _logits(mine))
    assert find_weights_entry(ARCH)["index"] == str(user_weights / "index.json")  # the shipped default's name


def test_save_weights_refuses_to_hide_a_later_folders_weights_unless_overwrite(two_folders, tmp_path, capsys):
    from test_export import _checkpoint

    from visattn.cli import main

    first, second = two_folders
    save = ["save-weights", "--checkpoint", str(_checkpoint(tmp_path / "run.ckpt")), "--tag", "t"]
    assert main([*save, "--out-dir", str(second)]) == 0
    capsys.readouterr()
    assert main(save) == 2
    assert capsys.readouterr().err == (f"visattn: error: {first / 'cbam_resnet20_cifar.t.safetensors'}: weights "
                                       f"cbam_resnet20_cifar.t already exist in {second / 'index.json'}, which these "
                                       "would hide; pick another --tag, or pass --overwrite to hide them\n")
    assert list(first.iterdir()) == []
    assert main([*save, "--overwrite"]) == 0
    assert load_index()["cbam_resnet20_cifar.t"]["index"] == str(first / "index.json")


def test_weights_that_hide_a_later_folders_default_take_the_default_over(two_folders):
    """The default moved to another weights of a later folder when the entry marked default was hidden."""
    from visattn.pretrained import find_weights_entry

    first, second = two_folders
    _save_own(second, "a")
    _save_own(second, "b", default=True)
    assert find_weights_entry(ARCH)["path"] == str(second / f"{ARCH}.b.safetensors")
    _save_own(first, "b", overwrite=True)  # not marked default itself
    assert find_weights_entry(ARCH)["path"] == str(first / f"{ARCH}.b.safetensors")
    assert create_model(ARCH, pretrained=True).visattn_name == f"{ARCH}.b"
    _save_own(first, "c", default=True)  # its own folder marks another default: that one
    assert find_weights_entry(ARCH)["path"] == str(first / f"{ARCH}.c.safetensors")


def test_the_search_path_expands_home_and_searches_each_folder_once(tmp_path, monkeypatch):
    """``~`` was taken literally (a folder that does not exist), and the shipped folder named relatively
    was searched twice."""
    from pathlib import Path

    from visattn.pretrained import find_weights_entry, shipped_weights_dir, weights_search_path

    monkeypatch.setenv("HOME", str(tmp_path))
    mine, shipped = tmp_path / "mine", shipped_weights_dir()
    mine.mkdir()
    monkeypatch.chdir(shipped.parent)
    monkeypatch.setenv("VISATTN_WEIGHTS", os.pathsep.join(["~/mine", shipped.name, str(mine), str(shipped)]))
    assert weights_search_path() == [mine, Path(shipped.name)]
    _save_own(mine, "mine")
    assert find_weights_entry(ARCH, "mine")["path"] == str(mine / f"{ARCH}.mine.safetensors")

def test_an_installed_package_saves_the_users_weights_in_their_data_folder(tmp_path, monkeypatch):
    """save-weights wrote into site-packages: the next install replaced the index, and the weights were gone from
    the listing while their files stayed. A source checkout keeps saving into weights/, where the shipped ones are
    made."""
    import visattn
    from visattn import pretrained, weights_folders
    from visattn.cli import main

    monkeypatch.delenv("VISATTN_WEIGHTS", raising=False)
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "data"))
    assert pretrained.user_weights_dir() is None
    assert pretrained.weights_dir() == pretrained.shipped_weights_dir()
    monkeypatch.setattr(weights_folders, "installed_package", lambda: True)
    user = tmp_path / "data" / "visattn" / "weights"
    assert pretrained.weights_search_path() == [user, pretrained.shipped_weights_dir()]
    assert ARCH + ".fmnist" in visattn.list_pretrained()  # the shipped ones, past a folder not made yet
    # save-weights without --out-dir prepares the user's folder before it reads the checkpoint
    assert main(["save-weights", "--checkpoint", str(tmp_path / "x.ckpt"), "--tag", "t"]) == 2 and user.is_dir()
    _save_own(user, "mine")
    assert pretrained.find_weights_entry(ARCH, "mine")["path"] == str(user / f"{ARCH}.mine.safetensors")


def test_weights_refused_as_already_saved_get_no_warning_about_what_they_lack(tmp_path, recwarn):
    """The "saved without preprocessing or labels" warning came before the refusal, for weights never saved."""
    from visattn.errors import VisattnWarning

    path = tmp_path / f"{ARCH}.once.safetensors"
    with pytest.warns(VisattnWarning, match="saved without preprocessing or labels"):
        save_weights(_model(), path, model_kwargs=SMALL)
    recwarn.clear()
    with pytest.raises(WeightsError, match="already exist"):
        save_weights(_model(), path, model_kwargs=SMALL)
    assert not [w for w in recwarn if issubclass(w.category, VisattnWarning)]


def _cache_timm_hub_model(cache, repo: str, arch: str, state) -> None:
    """``state`` and timm's config.json of ``arch`` as hub repository ``repo`` in the local cache."""
    import json

    import timm

    _cache_hub_weights(cache, repo, state)
    snapshot = next((cache / f"models--{repo.replace('/', '--')}" / "snapshots").iterdir())
    pretrained_cfg = timm.models.get_pretrained_cfg(arch).to_dict()
    (snapshot / "config.json").write_text(json.dumps({"architecture": arch, "num_classes": 1000,
                                                      "pretrained_cfg": pretrained_cfg}))


def test_a_timm_hub_name_loads_from_the_cache_offline(hf_cache):
    """timm:hf-hub:ORG/REPO was refused offline as "none are in the Hugging Face cache" while they were: timm has
    no pretrained config of a hub name to find the repository by (an offline-weights audit)."""
    import timm

    from visattn.inference.classifier import build_classifier

    torch.manual_seed(0)
    cached = timm.create_model("resnet10t").state_dict()
    _cache_timm_hub_model(hf_cache, "timm/resnet10t.a1_in1k", "resnet10t", cached)
    for model in (build_classifier("timm:hf-hub:timm/resnet10t.a1_in1k", 1000, {"pretrained": True}),
                  build_classifier("timm:hf-hub:timm/resnet10t.a1_in1k", 1000, pretrained=True)):
        torch.testing.assert_close(model.state_dict(), cached, rtol=0, atol=0)


def test_an_unreachable_hub_is_not_retried_for_files_the_cache_may_hold(hf_cache, monkeypatch):
    """Unreachable without HF_HUB_OFFLINE set, huggingface_hub retried a hub name's config.json for 25-29 s, printing
    a dozen "Retrying" lines, before the cache (or one line) answered (an offline-weights audit)."""
    import socket

    import timm
    from huggingface_hub import constants

    from visattn.inference.classifier import build_classifier

    connections = []

    def unreachable(address, *args, **kwargs):  # visattn's one probe of the hub, then any request's connection
        connections.append(address)
        raise OSError(-2, "Name or service not known")

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(socket, "create_connection", unreachable)
    with pytest.raises(WeightsError, match=r"^timm:hf-hub:timm/resnet10t.a1_in1k: timm reads its config.json from the "
                                           r"Hugging Face hub, which cannot be reached"):
        build_classifier("timm:hf-hub:timm/resnet10t.a1_in1k", 3)
    assert connections == [("huggingface.co", 443)]
    torch.manual_seed(0)
    vit = timm.create_model("vit_tiny_patch16_224").state_dict()
    _cache_hub_weights(hf_cache, "timm/vit_tiny_patch16_224.augreg_in21k_ft_in1k", vit)  # no config.json beside
    model = create_model("vit_tiny_patch16_224", pretrained="hf-hub:timm/vit_tiny_patch16_224.augreg_in21k_ft_in1k")
    torch.testing.assert_close(model.state_dict(), vit, rtol=0, atol=0)
    assert connections == [("huggingface.co", 443)] * 2
    resnet = timm.create_model("resnet10t").state_dict()
    _cache_timm_hub_model(hf_cache, "timm/resnet10t.a1_in1k", "resnet10t", resnet)
    model = build_classifier("timm:hf-hub:timm/resnet10t.a1_in1k", 1000, {"pretrained": True})
    torch.testing.assert_close(model.state_dict(), resnet, rtol=0, atol=0)
    assert connections == [("huggingface.co", 443)] * 3  # one probe for the weights and the model (it was two)
    assert constants.HF_HUB_OFFLINE is False  # huggingface_hub's offline mode lasts as long as those calls only


def test_a_hub_behind_an_https_proxy_is_not_called_unreachable_by_a_direct_probe(monkeypatch):
    """The probe connects directly, which a proxied network refuses: huggingface_hub's requests, which go through
    the proxy, tell instead (a review: building a timm:hf-hub: model had been sent offline)."""
    import socket

    from huggingface_hub import constants

    from visattn.pretrained import unreachable_hub

    def refused(*args, **kwargs):
        raise OSError(111, "Connection refused")

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(socket, "create_connection", refused)
    for name in ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy"):
        monkeypatch.delenv(name, raising=False)
    assert unreachable_hub() == "huggingface.co unreachable: Connection refused"
    monkeypatch.setenv("HTTPS_PROXY", "http://proxy.example:3128")
    assert unreachable_hub() is None
