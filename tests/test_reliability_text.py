"""Users' data written by other tools and systems: text encodings of annotation files, Unicode forms and case of
names, and the bookkeeping files macOS, Windows and NAS boxes leave among the images."""
from __future__ import annotations

import json
import unicodedata
import warnings

import pytest
from PIL import Image

from visattn.data.coco import KarpathyCaptions, read_karpathy
from visattn.data.image_folder import ImageFolder, find_classes, split_folders
from visattn.data.image_io import decode_image, list_images
from visattn.errors import ConfigError, ImageDecodeError, VisattnWarning

NFC_ECLAIR, NFD_ECLAIR = unicodedata.normalize("NFC", "éclair"), unicodedata.normalize("NFD", "éclair")
KARPATHY = {"images": [{"filename": "a.png", "split": "train", "sentences": [{"raw": "a red éclair"}]},
                       {"filename": f"{NFC_ECLAIR}.png", "split": "train", "sentences": [{"raw": "a red square"}]}]}


def _png(path):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (8, 8), "red").save(path, format="PNG")


def _class_folder(root, names, *, per_class=2):
    for name in names:
        for i in range(per_class):
            _png(root / name / f"{i}.png")
    return root


@pytest.mark.parametrize("encoding", ["utf-8-sig", "utf-16", "utf-16-le", "utf-32"])
def test_annotation_json_in_any_unicode_encoding_reads_as_utf8(encoding, tmp_path):
    """Notepad's "Unicode" (UTF-16) annotations were "not readable JSON ('utf-8' codec can't decode byte 0xff ...);
    re-download or fix the file"."""
    text = json.dumps(KARPATHY, ensure_ascii=False, indent=1).replace("\n", "\r\n")  # as Windows editors end lines
    (tmp_path / "utf8.json").write_text(text, encoding="utf-8")
    (tmp_path / "other.json").write_bytes(text.encode(encoding))
    assert read_karpathy(tmp_path / "other.json") == read_karpathy(tmp_path / "utf8.json")
    assert read_karpathy(tmp_path / "other.json")[0]["captions"] == ["a red éclair"]


def test_a_latin1_caption_is_one_line_naming_where_and_the_fix(tmp_path):
    """A caption saved as Latin-1 was "not readable JSON ('utf-8' codec can't decode byte 0xe9 in position 71 ...);
    re-download or fix the file": a byte offset, and no fix that would help."""
    path = tmp_path / "dataset.json"
    path.write_bytes(json.dumps(KARPATHY, ensure_ascii=False, indent=1).encode("latin-1"))
    with pytest.raises(ConfigError) as err:
        read_karpathy(path)
    line = next(n for n, text in enumerate(path.read_bytes().split(b"\n"), 1) if b"\xe9clair\"" in text)
    assert str(err.value).startswith(f"{path}: byte 0xe9 at line {line}, column ")
    assert "is not UTF-8 text" in str(err.value) and "save the file as UTF-8" in str(err.value)
    assert "\n" not in str(err.value)


def test_image_names_of_an_annotation_file_find_files_in_the_other_unicode_form(tmp_path):
    """The JSON's "éclair.png" (composed) did not find the file unzipped from macOS (decomposed): the image was
    skipped as "no such file", and the scores taken over the rest."""
    (tmp_path / "split.json").write_text(json.dumps(KARPATHY), encoding="utf-8")
    _png(tmp_path / "images" / "a.png")
    _png(tmp_path / "images" / f"{NFD_ECLAIR}.png")
    dataset = KarpathyCaptions(tmp_path / "split.json", tmp_path / "images")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert [dataset[i][1] for i in range(len(dataset))] == [["a red éclair"], ["a red square"]]
    assert dataset.num_skipped == 0 and dataset.paths[1].name == f"{NFD_ECLAIR}.png"


def test_class_names_and_order_do_not_depend_on_the_unicode_form_on_disk(tmp_path):
    """A folder copied from macOS ("éclair" decomposed) sorted before "fig", the same folder made elsewhere after it:
    a model trained on one copy and fine-tuned or scored on the other had its labels swapped, and recorded the
    label in a form that compared unequal to the same word typed."""
    decomposed = _class_folder(tmp_path / "mac", [NFD_ECLAIR, "fig"])
    composed = _class_folder(tmp_path / "linux", [NFC_ECLAIR, "fig"])
    assert find_classes(decomposed) == find_classes(composed) == ["fig", NFC_ECLAIR]
    folder = ImageFolder(decomposed)
    assert folder.classes == ["fig", NFC_ECLAIR]
    assert [(path.parent.name, label) for path, label in folder.samples] == [("fig", 0)] * 2 + [(NFD_ECLAIR, 1)] * 2


def test_one_class_folder_in_two_unicode_forms_is_one_line(tmp_path):
    """Both forms side by side were "classes: ['éclair'] appear more than once; give each class once", naming one
    class the user never gave twice."""
    root = _class_folder(tmp_path, [NFD_ECLAIR, NFC_ECLAIR, "fig"])
    with pytest.raises(ConfigError, match=r"class folders '(e\\u0301|\\xe9)clair' and '(e\\u0301|\\xe9)clair' are one "
                                          r"name in two Unicode forms .*; merge them into one$"):
        ImageFolder(root)


def test_class_folders_that_differ_only_in_case_are_warned_about(tmp_path):
    """"Cat" and "cat" trained silently as two classes: one class split by its spelling, or folders that macOS and
    Windows merge into one."""
    root = _class_folder(tmp_path, ["Cat", "cat", "dog"])
    with pytest.warns(VisattnWarning, match=r"class folders \['Cat', 'cat'\] differ only in case"):
        assert ImageFolder(root).classes == ["Cat", "cat", "dog"]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        ImageFolder(root, classes=["Cat", "cat", "dog"])  # a model's classes, given: chosen, not found


def test_bookkeeping_files_of_macos_windows_and_nas_boxes_are_no_class_and_no_image(tmp_path):
    """A zip's __MACOSX folder was a class (refused as holding no images, or as not among a model's classes), a
    Synology @eaDir's thumbnails were read as more photos, and __MACOSX beside train/ and val/ made them classes."""
    root = _class_folder(tmp_path / "photos", ["cat", "dog"])
    for name in (".DS_Store", "._0.png", "Thumbs.db", "desktop.ini"):
        (root / "cat" / name).write_bytes(b"\x00\x05\x16\x07 metadata")
    (root / "__MACOSX" / "cat").mkdir(parents=True)
    (root / "__MACOSX" / "cat" / "._0.png").write_bytes(b"\x00\x05\x16\x07")
    _png(root / "cat" / "@eaDir" / "0.png" / "SYNOPHOTO_THUMB_M.jpg")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        for folder in (ImageFolder(root), ImageFolder(root, classes=["cat", "dog"])):
            assert folder.classes == ["cat", "dog"] and len(folder) == 4
            assert [folder[i][1] for i in range(4)] == [0, 0, 1, 1] and folder.num_skipped == 0
    assert [path.name for path in list_images(root)] == ["0.png", "1.png"] * 2
    (tmp_path / "photos").rename(tmp_path / "train")
    (tmp_path / "split" / "__MACOSX").mkdir(parents=True)
    (tmp_path / "train").rename(tmp_path / "split" / "train")
    _class_folder(tmp_path / "split" / "val", ["cat", "dog"])
    assert split_folders(tmp_path / "split") == ["train", "val"]


def test_an_appledouble_file_named_as_an_image_says_what_it_is(tmp_path):
    """`find -name '*.jpg'` on a disk a Mac wrote lists ._photo.jpg beside each photo: each was "not a supported
    image (unknown format or not an image at all)"."""
    path = tmp_path / "._photo.jpg"
    path.write_bytes(b"\x00\x05\x16\x07\x00\x02\x00\x00Mac OS X        ")
    with pytest.raises(ImageDecodeError, match=r"\._photo\.jpg: an AppleDouble file .*; leave out the files named"):
        decode_image(path)


def test_odd_file_names_give_one_result_line_each(tmp_path, monkeypatch, capsys):
    """Tabs, carriage returns, a leading '-', glob characters and '%' in names: each file is found as named (no glob
    expanded again), on one line of its own; bookkeeping files beside them are neither results nor failures."""
    from visattn.cli import main

    names = ["-lead.png", "a[1]*?.png", "100%.png", "tab\there.png", "cr\rhere.png", "x" * 200 + ".png"]
    for name in names:
        _png(tmp_path / "photos" / name)
    for name in (".DS_Store", "._-lead.png", "Thumbs.db", "desktop.ini"):
        (tmp_path / "photos" / name).write_bytes(b"\x00\x05\x16\x07")
    _png(tmp_path / "photos" / "@eaDir" / "100%.png" / "SYNOPHOTO_THUMB_M.jpg")
    assert main(["classify", str(tmp_path / "photos"), "--model", "se_resnet20_cifar.fmnist"]) == 0
    lines = capsys.readouterr().out.splitlines()
    shown = [name.replace("\t", "\\t").replace("\r", "\\r") for name in sorted(names)]
    assert [line.rsplit(": ", 1)[0] for line in lines] == [str(tmp_path / "photos" / name) for name in shown]
    monkeypatch.chdir(tmp_path / "photos")
    assert main(["classify", "--model", "se_resnet20_cifar.fmnist", "--", "-lead.png", "a[1]*?.png"]) == 0
    assert [line.rsplit(": ", 1)[0] for line in capsys.readouterr().out.splitlines()] == ["-lead.png", "a[1]*?.png"]
