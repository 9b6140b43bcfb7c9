"""Vocabulary, Karpathy / COCO caption readers, the caption collate and the caption data modules."""
from __future__ import annotations

import functools
import inspect
import json
import re
import warnings

import numpy as np
import pytest
import torch
from fixtures_captions import image_value, write_coco_captions, write_karpathy
from test_data import needs_fashion_mnist

import visattn.data.coco
from visattn.data import (
    CocoCaptions,
    FashionScenesCaptionDataModule,
    KarpathyCaptionDataModule,
    KarpathyCaptions,
    SkippedImageWarning,
    Vocabulary,
    collate_captions,
    describe_scene,
    read_karpathy,
    tokenize,
)
from visattn.data.coco import image_file
from visattn.data.vocab import END, PAD, SPECIAL_TOKENS, START, UNK
from visattn.errors import ConfigError, VisattnWarning

# --- vocabulary ----------------------------------------------------------------------------


def test_tokenize_lowercases_and_splits_on_non_alphanumerics():
    assert tokenize("A T-shirt, 2 dogs!  Run.") == ["a", "t", "shirt", "2", "dogs", "run"]
    assert tokenize("") == []


def test_vocabulary_specials_frequency_order_and_min_count():
    vocab = Vocabulary.build(["a dog", "a cat", "A dog runs"], min_count=2)
    assert vocab.to_list() == [PAD, START, END, UNK, "a", "dog"]
    assert (vocab.pad_id, vocab.start_id, vocab.end_id, vocab.unk_id) == (0, 1, 2, 3)
    assert Vocabulary.build(["b a", "a b"]).to_list()[4:] == ["a", "b"]  # ties: alphabetical


def test_encode_decode_unknown_words_and_truncation():
    vocab = Vocabulary(["a", "red", "dog"])
    assert vocab.encode("A red cat") == [1, 4, 5, 3, 2]
    assert vocab.decode([1, 4, 5, 6, 2, 6, 0]) == "a red dog"  # stops at <end>
    assert vocab.decode([1, 4, 3, 6, 0, 0]) == "a <unk> dog"  # <start> and <pad> dropped, <unk> a wrong word
    assert vocab.encode("a red dog a red dog", max_len=4) == [1, 4, 5, 2]  # <end> kept
    with pytest.raises(ConfigError, match="max_len=1"):
        vocab.encode("a", max_len=1)


def test_vocabulary_list_round_trip_and_bad_lists():
    vocab = Vocabulary.build(["two green shirts", "a red sneaker to the left of a blue bag"])
    tokens = vocab.to_list()
    restored = Vocabulary.from_list(json.loads(json.dumps(tokens)))  # as stored in the weights index
    assert restored == vocab and restored.to_list() == tokens and len(restored) == len(tokens)
    assert restored.encode("a blue bag") == vocab.encode("a blue bag")
    with pytest.raises(ConfigError, match="must start with"):
        Vocabulary.from_list(["a", "b"])
    with pytest.raises(ConfigError, match=r"\['a'\] appear more than once"):
        Vocabulary.from_list([PAD, START, END, UNK, "a", "a"])


def test_caption_text_shows_unknown_words_and_joins_unspaced_scripts_as_written():
    """An all-<unk> caption printed as "" (a caption of unknown words read as an empty one), and Japanese
    printed a space between every character; the scored text keeps <unk>, as a word no reference holds."""
    vocab = Vocabulary.build(["日本語の青 a red bag"])
    ids = vocab.encode("日本語の青 a red <unk> zebra")
    assert vocab.caption_text(ids) == "日本語の青 a red <unk> <unk>"
    assert vocab.decode(ids) == "日 本 語 の 青 a red <unk> <unk>"
    assert vocab.caption_text([3, 3, 2, 4]) == "<unk> <unk>" == vocab.decode([3, 3])
    assert vocab.words([vocab.token_id("red"), 3, 0]) == ["red", "<unk>", ""]  # panel titles
    assert tokenize(vocab.caption_text(ids)) == tokenize(vocab.decode(ids))


@pytest.mark.parametrize("read", ["caption_text", "decode", "words"])
@pytest.mark.parametrize("bad", [-1, 9])
def test_an_id_outside_the_vocabulary_is_one_line(read, bad):
    """-1 read as the last word ("a red bag" for [4, 5, -1]); an id past the end was an IndexError."""
    vocab = Vocabulary.build(["a red bag"])
    assert len(vocab) == 7
    with pytest.raises(ConfigError, match=rf"^token id {bad} is outside this vocabulary's ids 0\.\.6; give ids the "
                                          "model of this vocabulary made$"):
        getattr(vocab, read)([4, 5, bad])


@pytest.mark.parametrize("word, tokenized", [("Dog", "['dog']"), ("t-shirt", "['t', 'shirt']"), ("", "no word"),
                                             ("a b", "['a', 'b']"), ("cafe\u0301", "['café']")])
def test_a_vocabulary_word_the_tokeniser_never_gives_is_one_line(word, tokenized):
    """Captions are encoded through tokenize, so such a word was never a caption's: every caption with "Dog"
    trained as <unk>, without a word."""
    for build in (Vocabulary, lambda words: Vocabulary.from_list([*SPECIAL_TOKENS, *words])):
        with pytest.raises(ConfigError) as err:
            build(["a", word])
        assert str(err.value).startswith(f"vocab: {word!r} is not a word captions are split into")
        assert f"gives {tokenized})" in str(err.value) if tokenized != "no word" else "gives no word)" in str(err.value)


def test_a_cut_that_drops_many_captions_or_a_words_every_use_warns_naming_the_setting(tmp_path):
    """max_caption_len 3 cut all 96 training captions of an audit to one word, without a word."""
    split_json, images_dir = write_karpathy(tmp_path)
    kwargs = {"split_json": str(split_json), "images_dir": str(images_dir), "img_size": 8, "min_count": 1}
    with pytest.warns(VisattnWarning) as caught:
        KarpathyCaptionDataModule(**kwargs, max_caption_len=3)
    message = str(caption_cut_warning(caught).message)
    assert message.startswith("data.init_args.max_caption_len 3 keeps 1 word: 7 of the 7 training captions")
    assert "vocabulary words occur only past the cut" in message and message.endswith("keep every caption whole")
    with warnings.catch_warnings():
        warnings.simplefilter("error", VisattnWarning)
        KarpathyCaptionDataModule(**kwargs, max_caption_len=20)


def caption_cut_warning(caught) -> warnings.WarningMessage:
    return next(w for w in caught if "max_caption_len" in str(w.message))


def test_min_count_below_one_names_the_setting(tmp_path):
    split_json, images_dir = write_karpathy(tmp_path)
    with pytest.raises(ConfigError, match=r"^data.init_args.min_count 0: give a whole number, 1 or more"):
        KarpathyCaptionDataModule(str(split_json), str(images_dir), min_count=0)


@pytest.mark.parametrize("min_count", [1.5, "2", True])
def test_vocabulary_refuses_a_min_count_that_is_no_whole_number(min_count):
    """1.5 kept the words seen twice and "2" was a TypeError traceback (a captioning audit)."""
    with pytest.raises(ConfigError, match=rf"^min_count={re.escape(repr(min_count))}: give a whole number, 1 or more"):
        Vocabulary.build(["a dog", "a cat"], min_count=min_count)


@pytest.mark.parametrize("make, message", [
    # Python iterates a string letter by letter: Vocabulary("a dog") had held the words a, d, g and o
    (lambda: Vocabulary("a dog"), "tokens='a dog': give a list of words, e.g. ['dog', 'runs']"),
    (lambda: Vocabulary(5), "tokens=5: give a list of words, e.g. ['dog', 'runs']"),  # a TypeError
    (lambda: Vocabulary([1, "dog"]), "vocab: 1 is no word; give words as str, as tokenize gives them"),
    (lambda: Vocabulary.build("a dog runs"), "captions='a dog runs': give a list of captions, e.g. ['a dog runs']"),
    (lambda: tokenize(None), "text=None: give the caption as a str"),  # a TypeError in unicodedata
])
def test_a_vocabulary_of_a_string_or_no_words_is_one_line(make, message):
    with pytest.raises(ConfigError, match=f"^{re.escape(message)}$"):
        make()


def test_karpathy_train_splits_given_as_one_name_is_that_split(tmp_path):
    """KarpathyCaptions takes one split by name; the vocabulary read "train" as the splits t, r, a, i and n and
    refused, saying no image was in them."""
    split_json, images_dir = write_karpathy(tmp_path)
    kwargs = dict(split_json=str(split_json), images_dir=str(images_dir), min_count=1)
    one = KarpathyCaptionDataModule(**kwargs, train_splits="train")
    assert one.vocab == KarpathyCaptionDataModule(**kwargs, train_splits=["train"]).vocab
    assert "bird" not in one.vocab and "dog" in one.vocab  # "a bird flies" is a val caption


def test_caption_readers_refuse_a_path_that_is_no_path(tmp_path):
    """Each was pathlib's TypeError ("expected str, bytes or os.PathLike object, not int")."""
    split_json, images_dir = write_karpathy(tmp_path)
    with pytest.raises(ConfigError, match=r"^path=5: give a file path \(a str or pathlib.Path\)$"):
        read_karpathy(5)
    with pytest.raises(ConfigError, match=r"^images_dir=None: give a folder path \(a str or pathlib.Path\)$"):
        KarpathyCaptions(split_json, None)


def test_vocabulary_of_captions_without_a_word_says_so_not_to_lower_min_count():
    with pytest.raises(ConfigError, match="^captions: none holds a word .*; give captions with words$"):
        Vocabulary.build(["", "  ", "!!!"])


def test_images_in_a_split_karpathys_files_do_not_have_are_named(tmp_path):
    """Images marked "Train" in a converted file trained on nothing, without a word (a captioning audit)."""
    split_json, images_dir = write_karpathy(tmp_path)
    data = json.loads(split_json.read_text())
    data["images"][0]["split"], data["images"][3]["split"] = "Train", "dev"
    split_json.write_text(json.dumps(data))
    with pytest.warns(VisattnWarning, match=rf"^{re.escape(str(split_json))}: 2 images are in splits no stage reads "
                                            r"\(1 in 'Train', 1 in 'dev'\); Karpathy's splits are 'train', 'val', "
                                            r"'test', 'restval': rename theirs in the file$"):
        KarpathyCaptionDataModule(str(split_json), str(images_dir), min_count=1)


def test_a_json_file_with_a_byte_order_mark_is_read(tmp_path):
    """Windows editors save UTF-8 with a byte-order mark; such a file was refused as not JSON."""
    split_json, images_dir = write_karpathy(tmp_path)
    split_json.write_bytes(b"\xef\xbb\xbf" + split_json.read_bytes())
    assert len(KarpathyCaptions(split_json, images_dir, split="train")) == 3


# --- readers -------------------------------------------------------------------------------


def test_karpathy_splits_subfolders_and_captions(tmp_path):
    split_json, images_dir = write_karpathy(tmp_path)
    train = KarpathyCaptions(split_json, images_dir, split=["train", "restval"])
    assert [p.name for p in train.paths] == ["0.png", "1.png", "broken.jpg", "3.png"]
    assert train.paths[1] == images_dir / "sub" / "1.png"
    image, captions = KarpathyCaptions(split_json, images_dir, split="test")[0]
    assert image.shape == (3, 12, 16) and captions == ["a fish swims", "fish in water"]
    assert torch.allclose(image, torch.full_like(image, image_value("5.png") / 255))


def test_windows_made_paths_find_their_images_in_subfolders(tmp_path):
    """A backslash ``filepath`` or ``file_name`` was a file of that name, so the image was skipped as "no such
    file" and the scores taken over the rest; a name whose backslashes are its own stays as it is."""
    split_json, images_dir = write_karpathy(tmp_path)
    data = json.loads(split_json.read_text())
    for image in data["images"]:
        if image.get("filepath") == "sub":
            image["filepath"], image["filename"] = "", f"sub\\{image['filename']}"
    split_json.write_text(json.dumps(data))
    train = KarpathyCaptions(split_json, images_dir, split=["train", "restval"])
    assert train.paths[1] == images_dir / "sub" / "1.png"
    (images_dir / "odd\\name.png").write_bytes((images_dir / "0.png").read_bytes())
    assert image_file(images_dir, "odd\\name.png") == images_dir / "odd\\name.png"
    assert image_file(images_dir, "gone\\x.png") == images_dir / "gone\\x.png"  # "no such file", as named


def test_broken_image_is_skipped_counted_and_replaced(tmp_path):
    split_json, images_dir = write_karpathy(tmp_path)
    train = KarpathyCaptions(split_json, images_dir, split="train")
    with pytest.warns(SkippedImageWarning, match="broken.jpg"):
        image, captions = train[2]  # the broken one: the next decodable sample comes instead
    assert captions == ["A red dog runs.", "a dog running"]
    assert image[0, 0, 0].item() == pytest.approx(image_value("0.png") / 255)
    assert train.num_skipped == 1 and [p.name for p in train.skipped] == ["broken.jpg"]
    assert train[2][1] == captions  # marked bad: not tried (nor warned about) again


def test_coco_captions_reader(tmp_path):
    annotations, images_dir = write_coco_captions(tmp_path)
    dataset = CocoCaptions(annotations, images_dir)
    assert dataset.image_ids == [1, 2, 5]  # image 7 has no caption
    assert dataset[2][1] == ["a fish swims"]
    with pytest.warns(SkippedImageWarning):
        assert dataset[1][1] == ["a fish swims"]
    assert dataset.num_skipped == 1


@pytest.mark.parametrize("reader", ["karpathy", "coco"])
def test_missing_and_invalid_json_name_the_file(tmp_path, reader):
    def read(path):
        return KarpathyCaptions(path, tmp_path) if reader == "karpathy" else CocoCaptions(path, tmp_path)

    with pytest.raises(ConfigError, match=r"nope\.json: no such file"):
        read(tmp_path / "nope.json")
    (tmp_path / "bad.json").write_text('{"images": [')
    with pytest.raises(ConfigError, match=r"bad\.json: not readable JSON") as err:
        read(tmp_path / "bad.json")
    assert "\n" not in str(err.value)
    (tmp_path / "folder.json").mkdir()
    with pytest.raises(ConfigError, match=r"folder\.json: cannot be read \(Is a directory\); give the path of an "
                                          "annotations JSON file this user may read$"):
        read(tmp_path / "folder.json")
    (tmp_path / "list.json").write_text("[1, 2]")
    with pytest.raises(ConfigError, match=r"list\.json: top level is a list"):
        read(tmp_path / "list.json")
    (tmp_path / "other.json").write_text('{"images": [{"id": 1}], "annotations": [{"image_id": 1}]}')
    with pytest.raises(ConfigError, match=r"other\.json: not"):
        read(tmp_path / "other.json")


# --- collate and data modules --------------------------------------------------------------


def test_collate_pads_with_pad_id_and_keeps_lists():
    samples = [
        {"image": torch.zeros(3, 4, 4), "caption": torch.tensor([1, 5, 2]), "references": ["x"]},
        {"image": torch.ones(3, 4, 4), "caption": torch.tensor([1, 5, 6, 7, 2]), "references": ["y", "z"]},
    ]
    batch = collate_captions(samples, pad_id=0)
    assert batch["images"].shape == (2, 3, 4, 4)
    assert batch["captions"].tolist() == [[1, 5, 2, 0, 0], [1, 5, 6, 7, 2]]
    assert batch["lengths"].tolist() == [3, 5] and batch["references"] == [["x"], ["y", "z"]]


def test_karpathy_datamodule_vocab_from_train_only_and_batches(tmp_path):
    split_json, images_dir = write_karpathy(tmp_path)
    dm = KarpathyCaptionDataModule(str(split_json), str(images_dir), batch_size=2, num_workers=0,
                                   img_size=8, min_count=1, max_caption_len=5)
    assert "cat" in dm.vocab and "sofa" in dm.vocab  # train and restval
    assert "bird" not in dm.vocab and "fish" not in dm.vocab  # val and test are never read for it
    assert dm.preprocessing == {"input_size": [3, 8, 8], "mean": [0.485, 0.456, 0.406],
                                "std": [0.229, 0.224, 0.225], "recipe": "photo", "crop_pct": 0.875,
                                "interpolation": "bilinear"}
    with pytest.warns(SkippedImageWarning):
        batches = list(dm.train_dataloader())
    assert sum(len(b["images"]) for b in batches) == 4 and dm.num_skipped == 1
    assert batches[0]["images"].shape == (2, 3, 8, 8) and batches[0]["captions"].shape[1] <= 5
    vocab = Vocabulary.from_list(dm.vocab)
    train = dm.datasets["train"]  # training captions are cut at max_caption_len, as validation's and test's are
    whole = {tuple(vocab.encode(c, max_len=5)) for captions in train.dataset.captions for c in captions}
    assert all(tuple(train[i]["caption"].tolist()) in whole for _ in range(3) for i in range(len(train)))
    val = [references for batch in dm.val_dataloader() if batch for references in batch["references"]]
    assert val == [["a bird flies"]]  # the val image alone, not the training images
    assert {p.name for p in dm.datasets["val"].dataset.paths}.isdisjoint(p.name for p in train.dataset.paths)
    test = next(iter(dm.test_dataloader()))
    assert test["references"] == [["a fish swims", "fish in water"]]
    a = vocab.token_id("a")
    assert test["captions"].tolist() == [[vocab.start_id, a, vocab.unk_id, vocab.unk_id, vocab.end_id]]


def test_a_photo_captioner_takes_its_encoders_crop_and_filter(tmp_path):
    """Always bilinear with a 0.875 crop: an encoder from timm weights evaluated bicubic at 0.9 could not be fed as
    they were trained (an augmentation audit)."""
    from visattn.data.transforms import eval_transforms

    split_json, images_dir = write_karpathy(tmp_path)
    dm = KarpathyCaptionDataModule(str(split_json), str(images_dir), num_workers=0, img_size=16, min_count=1,
                                   crop_pct=0.5, interpolation="bicubic")
    assert (dm.preprocessing["crop_pct"], dm.preprocessing["interpolation"]) == (0.5, "bicubic")
    image = np.random.default_rng(0).integers(0, 256, (40, 30, 3), np.uint8)
    expected = eval_transforms(16, recipe="photo", crop_pct=0.5, interpolation="bicubic")(image)
    torch.testing.assert_close(dm.eval_transform()(image), expected, rtol=0, atol=0)
    assert not torch.equal(KarpathyCaptionDataModule(str(split_json), str(images_dir), img_size=16, min_count=1)
                           .eval_transform()(image), expected)
    with pytest.raises(ConfigError, match=r"^data.init_args.crop_pct=1.5: give the fraction of the resized image kept"):
        KarpathyCaptionDataModule(str(split_json), str(images_dir), crop_pct=1.5)
    augmented = KarpathyCaptionDataModule(str(split_json), str(images_dir), img_size=16, min_count=1, augment=True,
                                          interpolation="bicubic").train_transform()
    crop, = (step for step in augmented.pipeline.transforms if type(step).__name__ == "PilRandomResizedCrop")
    assert crop.resize_filter == "bicubic"  # training's crops too, as timm's training transform


@pytest.mark.parametrize(("min_count", "said"), [(2, "2 leaves 43% of the 23 words of the training captions out of "
                                                    "the vocabulary: they train as <unk>, which the scores leave out; "
                                                    "give 1, which leaves 0%"), (1, None)])
def test_a_min_count_that_leaves_many_training_words_unknown_warns(tmp_path, min_count, said, recwarn):
    """min_count 50 had turned 74% of an audit's training words into <unk>, without a word; the fixture's 10 words
    seen once are 43% of its 23."""
    split_json, images_dir = write_karpathy(tmp_path)
    KarpathyCaptionDataModule(str(split_json), str(images_dir), batch_size=2, num_workers=0, img_size=8,
                              min_count=min_count)
    lines = [str(w.message) for w in recwarn if "min_count" in str(w.message)]
    assert lines == ([f"data.init_args.min_count {said}"] if said else [])


def test_the_min_count_suggested_for_many_unknown_words_is_the_highest_that_leaves_a_twentieth(recwarn):
    from collections import Counter

    from visattn.data.caption_datamodules import _warn_of_unknown_words

    counts = Counter({"a": 60, "b": 20, "c": 8, "d": 6, "e": 3, "f": 2, "g": 1})  # 100 words
    _warn_of_unknown_words(counts, 10)  # c to g, 20%, out; 4 would leave e, f, g (6%), 3 leaves f, g (3%)
    _warn_of_unknown_words(counts, 7)  # d to g, 12%
    _warn_of_unknown_words(counts, 6)  # e, f, g: 6%, under a tenth
    assert [str(w.message).partition(" out of the vocabulary")[::2] for w in recwarn] == [
        ("data.init_args.min_count 10 leaves 20% of the 100 words of the training captions",
         ": they train as <unk>, which the scores leave out; give 3, which leaves 3%"),
        ("data.init_args.min_count 7 leaves 12% of the 100 words of the training captions",
         ": they train as <unk>, which the scores leave out; give 3, which leaves 3%")]


def test_a_min_count_no_word_reaches_is_one_line_naming_the_setting(tmp_path):
    """Every training caption became <start> <unk>... <end>, and the model could only learn to say nothing."""
    split_json, images_dir = write_karpathy(tmp_path)
    with pytest.raises(ConfigError, match=r"^data.init_args.min_count 50: no word occurs 50 times or more in the "
                                          r"\d+ words of the training captions; lower it, or give more captions$"):
        KarpathyCaptionDataModule(str(split_json), str(images_dir), batch_size=2, num_workers=0, img_size=8,
                                  min_count=50)
    with pytest.raises(ConfigError, match=r"^min_count=3: no word occurs 3 times or more in the 4 words"):
        Vocabulary.build(["a dog", "a cat"], min_count=3)


def test_karpathy_datamodule_coco_variant_without_validation(tmp_path):
    annotations, images_dir = write_coco_captions(tmp_path)
    dm = KarpathyCaptionDataModule(None, str(images_dir), train_annotations=str(annotations),
                                   batch_size=2, num_workers=0, img_size=8, min_count=2)
    assert dm.vocab[4:] == ["a", "dog"]  # the words seen twice in the training captions
    assert dm.val_dataloader() == []
    with pytest.raises(ConfigError, match="test_annotations"):
        dm.test_dataloader()
    with pytest.raises(ConfigError, match="either data.init_args.split_json or data.init_args.train_annotations"):
        KarpathyCaptionDataModule(None, str(images_dir))


@needs_fashion_mnist
def test_scene_datamodule_attributes_before_setup_and_batches():
    dm = FashionScenesCaptionDataModule(batch_size=4, num_workers=0, canvas_size=64, img_size=32,
                                        num_train=8, num_val=4, num_test=4, max_caption_len=8)
    assert dm.datasets == {}  # nothing set up yet
    assert dm.preprocessing["input_size"] == [3, 32, 32] and dm.preprocessing["recipe"] == "small"
    vocab = Vocabulary.from_list(dm.vocab)
    train = next(iter(dm.train_dataloader()))
    assert train.keys() == {"images", "captions", "lengths"}
    assert train["images"].shape == (4, 3, 32, 32) and train["captions"].dtype == torch.long
    for ids, length in zip(train["captions"], train["lengths"]):
        assert ids[0] == vocab.start_id and ids[length - 1] == vocab.end_id and length <= 8
        assert (ids[length:] == vocab.pad_id).all() and (ids[:length] != vocab.pad_id).all()
    val = next(iter(dm.val_dataloader()))
    scene = dm.datasets["val"].dataset.scenes[0]
    assert val["references"][0] == scene.captions
    assert torch.allclose(val["boxes"][0], torch.from_numpy(scene.boxes) / 2)  # 64 px canvas -> 32 px input
    assert val["labels"][0].tolist() == scene.labels.tolist()
    expected = vocab.encode(scene.captions[0], max_len=8)  # validation encodes the first reference
    assert val["captions"][0, : len(expected)].tolist() == expected


def test_scene_caption_length_default_fits_the_longest_captions():
    default = inspect.signature(FashionScenesCaptionDataModule).parameters["max_caption_len"].default
    # the longest grammar output: three single pairs of trousers, each in another place
    boxes = np.array([[0, 0, 20, 20], [44, 22, 64, 42], [20, 44, 40, 64]], np.float32)
    captions = describe_scene(np.array([1, 1, 1]), ["purple", "orange", "yellow"], boxes, canvas_size=64)
    assert max(len(tokenize(c)) for c in captions) + 2 <= default
    assert max(len(tokenize(c)) for c in captions) >= 24  # it is the long case


# --- captions in any script, and captions without a word ------------------------------------


def test_tokenize_keeps_words_of_any_script_and_splits_unspaced_scripts_into_characters():
    assert tokenize("Un café très chaud à côté") == ["un", "café", "très", "chaud", "à", "côté"]
    assert tokenize("Ein Mädchen, STRASSE/Straße") == ["ein", "mädchen", "strasse", "strasse"]  # case-folded
    assert tokenize("ﬁne e\u0301cole") == ["fine", "école"]  # NFKC: ligature and combining accent
    assert tokenize("हिन्दी में, مُشَكَّلة") == ["हिन्दी", "में", "مُشَكَّلة"]  # combining marks stay in their word
    assert tokenize("一只红色的包。東京") == ["一", "只", "红", "色", "的", "包", "東", "京"]
    assert Vocabulary.build(["一只红包", "一只包"], min_count=2).to_list()[4:] == ["一", "包", "只"]


def test_tokenize_on_ascii_is_lowercased_runs_of_a_to_z_and_digits():
    # the shipped captioner's vocabulary and scores depend on the ASCII rule staying as it was
    rng = np.random.default_rng(0)
    printable = [chr(c) for c in range(32, 127)] + ["\t", "\n"]
    texts = ["don't", "Women's T-shirt", "foo_bar __init__", "3x4 1,000 12.5 2nd", "e-mail@x.com #1 100%"]
    texts += ["".join(rng.choice(printable, size=int(rng.integers(0, 40)))) for _ in range(500)]
    for text in texts:
        assert tokenize(text) == re.findall("[a-z0-9]+", text.lower()), text


def _rewrite_json(path, change) -> None:
    data = json.loads(path.read_text())
    change(data)
    path.write_text(json.dumps(data, ensure_ascii=False))


def test_coco_captions_without_a_word_are_dropped_and_their_image_left_out(tmp_path):
    annotations, images_dir = write_coco_captions(tmp_path)

    def wordless(data):
        for ann in data["annotations"]:
            ann["caption"] = " ¿…? " if ann["image_id"] == 5 else ann["caption"]
        data["annotations"].append({"id": 99, "image_id": 1, "caption": "   "})
        data["images"].append({"id": 6, "file_name": "1.png"})  # no caption at all: had been left out unsaid

    _rewrite_json(annotations, wordless)
    with pytest.warns(SkippedImageWarning, match=r"captions\.json: left out 5\.png, 3\.png, 1\.png: no caption with a "
                                                 "word"):
        dataset = CocoCaptions(annotations, images_dir)
    assert dataset.image_ids == [1, 2] and dataset.captions[0] == ["A red dog runs.", "a dog running"]


def test_a_coco_file_without_any_caption_is_asked_whether_it_is_a_captions_file(tmp_path):
    """Since images without a caption are left out with a warning, such a file had been said to hold no caption with
    a word in it (a review)."""
    annotations, images_dir = write_coco_captions(tmp_path)
    _rewrite_json(annotations, lambda data: data.update(annotations=[]))
    with pytest.raises(ConfigError, match=r"captions\.json: no image has a caption; is it a COCO captions file\?$"):
        CocoCaptions(annotations, images_dir)


def test_karpathy_sentences_without_a_word_are_dropped_and_their_image_left_out(tmp_path):
    split_json, images_dir = write_karpathy(tmp_path)

    def wordless(data):
        data["images"][1]["sentences"].append({"raw": "", "tokens": []})
        data["images"][4]["sentences"] = [{"raw": "...", "tokens": []}]  # 4.png, the only val image
        data["images"][3]["sentences"] = []  # had been left out unsaid: the scored n shrank (an audit)

    _rewrite_json(split_json, wordless)
    with pytest.warns(SkippedImageWarning, match=r"dataset_tiny\.json: left out 3\.png, 4\.png: no caption with a "
                                                 "word"):
        entries = read_karpathy(split_json)
    assert {"3.png", "4.png"}.isdisjoint(e["filename"] for e in entries)
    assert entries[1]["captions"] == ["Two cats sleep", "cats on a sofa", "a cat"]
    with warnings.catch_warnings(record=True) as seen:  # the data module reads the file once per split: said once
        warnings.simplefilter("always")
        dm = KarpathyCaptionDataModule(str(split_json), str(images_dir), batch_size=2, num_workers=0, img_size=8,
                                       min_count=1)
        dm.setup("fit")
        dm.setup("test")
    assert [str(w.message).count("left out 3.png, 4.png") for w in seen] == [1]


def _karpathy_without_words(tmp_path):
    path, images_dir = write_karpathy(tmp_path)

    def wordless(data):
        for image in data["images"]:
            image["sentences"] = [{"raw": " ", "tokens": []}]

    _rewrite_json(path, wordless)
    return path, functools.partial(KarpathyCaptions, path, images_dir)


def _coco_without_words(tmp_path):
    path, images_dir = write_coco_captions(tmp_path)

    def wordless(data):
        for ann in data["annotations"]:
            ann["caption"] = " - "

    _rewrite_json(path, wordless)
    return path, functools.partial(CocoCaptions, path, images_dir)


@pytest.mark.parametrize("corpus", [_karpathy_without_words, _coco_without_words])
def test_a_file_without_a_caption_with_a_word_is_one_line(tmp_path, corpus):
    path, read = corpus(tmp_path)
    with pytest.raises(ConfigError, match=rf"{path.name}: no caption with a word in it") as err:
        read()
    assert "\n" not in str(err.value)


# --- COCO captions that disagree with themselves --------------------------------------------


@pytest.mark.parametrize("change, message", [
    (lambda d: d["annotations"][0].__setitem__("image_id", 99),
     "annotations name image ids that no image has (1 of 4, e.g. 99); make each annotation's image_id the id "
     "of its image"),
    (lambda d: [a.__setitem__("image_id", str(a["image_id"])) for a in d["annotations"]],
     'annotations name image ids that no image has (4 of 4, e.g. "1" (a string, not the number 1)); make each '
     "annotation's image_id the id of its image"),
    (lambda d: d["images"][1].__setitem__("id", 1),
     "image id 1 is given to 2 images (0.png, broken.jpg); give each image its own id"),
    (lambda d: d["images"][1].__setitem__("file_name", None),
     "image 2's file_name null is not a file name; give each image the name of its file in the images folder"),
    # they were "not COCO captions JSON (bad or missing 'int' object has no attribute 'strip')"
    (lambda d: d["annotations"][1].update(id=12, caption=42),
     'the caption of annotation 12 is 42, not text; write each caption as a string in quotes, e.g. "a dog on a sofa"'),
    (lambda d: d["annotations"][2].update(id=13, caption=["a", "fish"]),
     'the caption of annotation 13 is ["a", "fish"], not text; write each caption as a string in quotes, e.g. '
     '"a dog on a sofa"'),
], ids=["unlisted", "string_ids", "shared", "no_file_name", "number_caption", "list_caption"])
def test_coco_captions_of_unlisted_or_shared_image_ids_or_without_a_file_name_are_one_line(tmp_path, change, message):
    """Captions of an image id the file did not list were ignored silently; detection refuses them."""
    annotations, images_dir = write_coco_captions(tmp_path)
    _rewrite_json(annotations, change)
    with pytest.raises(ConfigError) as caught:
        CocoCaptions(annotations, images_dir)
    assert str(caught.value) == f"{annotations}: {message}"


def test_caption_validation_images_in_their_own_folder_are_read_from_val_images_dir(tmp_path, recwarn):
    annotations, images_dir = write_coco_captions(tmp_path)
    empty = tmp_path / "val2014"
    empty.mkdir()
    dm = KarpathyCaptionDataModule(None, str(empty), train_annotations=str(annotations), val_annotations=str(annotations),
                                   batch_size=2, num_workers=0, img_size=8, min_count=2)
    dm.hparams.images_dir = str(images_dir)  # training images found, validation ones looked for in val2014/
    dm.hparams.val_images_dir = str(empty)
    with pytest.raises(ConfigError, match=rf"^{annotations} \(images in {empty}\): none of its \d+ validation image "
                                          "files can be decoded"):
        dm.setup("fit")
    dm.hparams.val_images_dir = str(images_dir)
    dm.setup("fit")
    assert len(dm.datasets["val"]) > 0


def test_a_karpathy_file_without_a_val_split_trains_without_validation(tmp_path):
    """It could not train at all ("no images with captions in split ['val']"), unlike a COCO file without one."""
    split_json, images_dir = write_karpathy(tmp_path)
    _rewrite_json(split_json, lambda data: data.update(images=[i for i in data["images"] if i["split"] != "val"]))
    dm = KarpathyCaptionDataModule(str(split_json), str(images_dir), batch_size=2, num_workers=0, img_size=8,
                                   min_count=1)
    assert dm.val_dataloader() == [] and len(next(iter(dm.test_dataloader()))["images"]) == 1
    # A checkpoint monitoring val/cider is refused before training: the fix named COCO's val_annotations.
    import lightning.pytorch as pl

    from test_reliability_inputs import TINY_SAT
    from visattn.tasks.captioning import CaptioningTask
    from visattn.tasks.validation_checks import _never_validates

    trainer = pl.Trainer(max_epochs=1, logger=False, enable_checkpointing=False, accelerator="cpu")
    task = CaptioningTask(vocab=dm.vocab, model_kwargs=TINY_SAT)
    assert _never_validates(trainer, task, dm) == ("KarpathyCaptionDataModule holds no validation data",
                                                   f'give some images of {split_json} the split "val"')


@pytest.mark.parametrize("sentence", [{"raw": None, "tokens": None}, {"raw": 5}, {"text": "a red top"}, "a red top",
                                      {"raw": "  ", "tokens": [1, 2]}])
def test_a_karpathy_sentence_without_text_is_one_line_naming_its_image(tmp_path, sentence):
    """They were "not a Karpathy split JSON (bad or missing 'int' object has no attribute 'strip')", naming no image."""
    split_json, _ = write_karpathy(tmp_path)
    _rewrite_json(split_json, lambda data: data["images"][0]["sentences"].insert(1, sentence))
    name = json.loads(split_json.read_text())["images"][0]["filename"]
    with pytest.raises(ConfigError, match=rf"dataset_tiny\.json: sentence 1 of image (\w+/)?{re.escape(name)} is .*, with "
                                          r'no text; give each sentence its "raw" text as a string \(or "tokens"'):
        read_karpathy(split_json)


@pytest.mark.parametrize("change, message", [
    (lambda image: image.update(filename=5), r"images\[0\]'s filename is 5; give it as a file or folder name"),
    (lambda image: image.update(filepath=["a"]), r'image "\w+\.png"\'s filepath is \["a"\]; give it as a file'),
    (lambda image: image.update(split=["test"]), r'image "\w+\.png"\'s split is \["test"\]; give it as one split'),
    (lambda image: image.update(split=1), r'image "\w+\.png"\'s split is 1; give it as one split name'),
    (lambda image: image.pop("split"), r'not a Karpathy split JSON: images\[0\] has no "split"; give each image its "filename"'),
    (lambda image: image.update(sentences="a red top"), r'image "\w+\.png"\'s sentences are \'a red top\'; give a list'),
])
def test_a_karpathy_image_field_that_is_not_text_is_one_line_naming_it(tmp_path, change, message):
    """A number or list as filename, filepath or split had been a traceback of the path join or of an unhashable
    type in `visattn evaluate`, and a line naming neither file nor image in `fit`; a split 1 left the image out."""
    split_json, _ = write_karpathy(tmp_path)
    _rewrite_json(split_json, lambda data: change(data["images"][0]))
    with pytest.raises(ConfigError, match=r"dataset_tiny\.json: " + message):
        read_karpathy(split_json)


_IMAGES_AN_OBJECT = (lambda data: data.update(images={"a": 1}),
                     r'"images" is object \{\'a\': 1\}, not a list; give "images" as a list')
_AN_IMAGE_A_NAME = (lambda data: data.update(images=["a.png"]),
                    r"images\[0\] is string 'a.png', not an object; give each of images")


@pytest.mark.parametrize("reader, change, message", [
    ("karpathy", *_IMAGES_AN_OBJECT), ("karpathy", *_AN_IMAGE_A_NAME), ("coco", *_IMAGES_AN_OBJECT),
    ("coco", *_AN_IMAGE_A_NAME),
    ("coco", lambda data: data.update(annotations=[5]), r"annotations\[0\] is number 5, not an object"),
    ("coco", lambda data: data.update(annotations=None), r'"annotations" is null, not a list'),
])
def test_a_caption_file_whose_lists_hold_no_objects_is_one_line_naming_the_list(tmp_path, reader, change, message):
    """The line had quoted Python: "bad or missing string indices must be integers, not 'str'"."""
    path = write_karpathy(tmp_path)[0] if reader == "karpathy" else write_coco_captions(tmp_path)[0]
    _rewrite_json(path, change)
    with pytest.raises(ConfigError, match=rf"{re.escape(path.name)}: {message}"):
        read_karpathy(path) if reader == "karpathy" else CocoCaptions(path, tmp_path)


def test_sentences_read_raw_text_or_else_their_tokens(tmp_path):
    split_json, _ = write_karpathy(tmp_path)
    _rewrite_json(split_json, lambda data: data["images"][0].update(sentences=[
        {"raw": "A Red top.", "tokens": ["x"]}, {"raw": "", "tokens": ["a", "blue", "bag"]}, {"tokens": ["a", "hat"]},
        {"raw": "  "}]))
    assert read_karpathy(split_json)[0]["captions"] == ["A Red top.", "a blue bag", "a hat"]  # the blank one left out


def test_a_karpathy_file_with_no_training_image_says_so_not_that_min_count_is_too_high(tmp_path):
    split_json, images_dir = write_karpathy(tmp_path)
    _rewrite_json(split_json, lambda data: [image.update(split="test") for image in data["images"]])
    with pytest.raises(ConfigError, match=r"dataset_tiny\.json: no image is in the training splits \['train', "
                                          r"'restval'\] \(data.init_args.train_splits\); its splits are \['test'\]$"):
        KarpathyCaptionDataModule(str(split_json), str(images_dir), min_count=1)


def test_a_karpathy_image_listed_twice_is_one_line(tmp_path):
    """It was trained on twice as often, or scored twice, as COCO files with a repeated id are refused."""
    split_json, _ = write_karpathy(tmp_path)
    _rewrite_json(split_json, lambda data: data["images"].append(data["images"][-1]))
    with pytest.raises(ConfigError, match=r"dataset_tiny\.json: image 5\.png is listed 2 times; list each image once"):
        read_karpathy(split_json)


@pytest.mark.parametrize("corpus", ["coco", "karpathy", "instances"])
def test_evaluating_on_a_folder_holding_none_of_the_listed_images_is_one_line(tmp_path, corpus, capsys):
    """A warning per image, then "the evaluation dataset is empty; check --dataset, --split and --limit", none of
    which was the cause (another split's folder, say)."""
    from types import SimpleNamespace

    from test_detection_data import CLASS_NAMES, write_coco_instances
    from test_reliability_inputs import write_captioner_checkpoint
    from visattn.cli import main
    from visattn.inference.detection_scoring import evaluation_loader

    other = tmp_path / "other"
    other.mkdir()
    if corpus == "instances":
        path, _ = write_coco_instances(tmp_path)
        first = json.loads(path.read_text())["images"][0]["file_name"]
        with pytest.raises(ConfigError, match=rf"^{re.escape(str(other))}: holds none of the \d+ images "
                                              rf"{re.escape(str(path))} lists \(e.g. {re.escape(first)}\); give the "
                                              "folder holding them$"):
            evaluation_loader(SimpleNamespace(class_names=CLASS_NAMES, category_ids=None), f"coco:{path}:{other}")
        return
    path, _ = write_coco_captions(tmp_path) if corpus == "coco" else write_karpathy(tmp_path)
    checkpoint = str(write_captioner_checkpoint(tmp_path / "run.ckpt"))
    assert main(["evaluate", "--checkpoint", checkpoint, "--dataset", f"{corpus}:{path}:{other}"]) == 2
    uncaptioned = [f"warning: {path}: left out 3.png: no caption with a word in it"] if corpus == "coco" else []
    assert capsys.readouterr().err.splitlines() == [*uncaptioned, (
        f"visattn: error: {other}: holds none of the {3 if corpus == 'coco' else 1} images {path} lists "
        f"(e.g. {'0' if corpus == 'coco' else '5'}.png); give the folder holding them")]


@pytest.mark.parametrize("corpus", ["coco", "karpathy"])
def test_a_missing_images_folder_is_one_line_naming_it(tmp_path, corpus):
    """A warning per image, then "the evaluation dataset is empty", never naming the folder."""
    if corpus == "coco":
        path, _ = write_coco_captions(tmp_path)
        build = functools.partial(CocoCaptions, path)
    else:
        path, _ = write_karpathy(tmp_path)
        build = functools.partial(KarpathyCaptions, path, split="test")
    with pytest.raises(ConfigError, match=rf"^{re.escape(str(tmp_path / 'nothere'))}: no such folder; give the folder "
                                          rf"holding the images of {re.escape(str(path))}$"):
        build(tmp_path / "nothere")


@pytest.mark.parametrize("img_size", [0, -64, 2.5])
def test_an_image_size_that_is_no_side_is_one_line_not_the_canvas_size(tmp_path, img_size):
    """img_size 0 drew the scenes at canvas_size as if it had not been given, and a fit trained on them."""
    with pytest.raises(ConfigError, match=rf"^data.init_args.img_size={img_size}: give the side of the model's square "
                                          "input"):
        FashionScenesCaptionDataModule(img_size=img_size)
    with pytest.raises(ConfigError, match=rf"^data.init_args.img_size={img_size}: give the side"):
        KarpathyCaptionDataModule(split_json=str(tmp_path / "dataset.json"), images_dir=str(tmp_path), img_size=img_size)


def test_karpathy_datamodule_reads_its_split_json_once_for_every_split(tmp_path, monkeypatch):
    split_json, images_dir = write_karpathy(tmp_path)
    reads = []
    read_json = visattn.data.coco._read_json
    monkeypatch.setattr(visattn.data.coco, "_read_json", lambda path: reads.append(path) or read_json(path))
    dm = KarpathyCaptionDataModule(str(split_json), str(images_dir), num_workers=0, img_size=8, min_count=1)
    dm.setup("fit")
    dm.setup("test")
    assert len(reads) == 1  # each split had read and tokenized the whole file again
    for split, splits in {"train": ("train", "restval"), "val": "val", "test": "test"}.items():
        alone = KarpathyCaptions(split_json, images_dir, split=splits)
        assert dm.datasets[split].dataset.paths == alone.paths
        assert dm.datasets[split].dataset.captions == alone.captions


def test_coco_caption_datamodule_reads_its_training_file_once_and_splits_each_caption_once(tmp_path, monkeypatch):
    """The training file was read twice (for the vocabulary, again in setup) and each caption split into words three
    times (to drop wordless ones at each read, then for the vocabulary)."""
    import visattn.data.caption_datamodules

    annotations, images_dir = write_coco_captions(tmp_path)
    loads, split = [], []
    load_coco, tokenize_text = visattn.data.coco.load_coco, visattn.data.vocab.tokenize
    monkeypatch.setattr(visattn.data.coco, "load_coco", lambda path: loads.append(path) or load_coco(path))
    for module in (visattn.data.coco, visattn.data.caption_datamodules):  # where captions are read, not encoded
        monkeypatch.setattr(module, "tokenize", lambda text: split.append(text) or tokenize_text(text), raising=False)
    with pytest.warns(SkippedImageWarning, match="left out 3.png: no caption") as caught:
        dm = KarpathyCaptionDataModule(None, str(images_dir), train_annotations=str(annotations), num_workers=0,
                                       img_size=8, min_count=1)
        dm.setup("fit")
    assert len(caught) == 1 and loads == [annotations]
    monkeypatch.undo()
    with pytest.warns(SkippedImageWarning):
        alone = CocoCaptions(annotations, images_dir)
    train = dm.datasets["train"].dataset
    assert (train.paths, train.captions, train.image_ids) == (alone.paths, alone.captions, alone.image_ids)
    assert sorted(split) == sorted(c for cs in alone.captions for c in cs)
    assert dm.vocabulary == Vocabulary.build([c for cs in alone.captions for c in cs])
    assert train.transform is not None  # setup's, given to the dataset read for the vocabulary


@pytest.mark.parametrize("text", ["a dog", "  ", "...", "", "\u0301", "一只狗", "ＡＢＣ", "_", "T-shirt!",
                                  "\u200d x"])
def test_has_word_is_whether_tokenize_finds_a_word(text):
    from visattn.data.vocab import has_word

    assert has_word(text) == bool(tokenize(text))
