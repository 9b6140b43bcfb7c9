"""CaptioningTask, caption metrics, `visattn fit` on a tiny Karpathy corpus, `visattn caption` and `evaluate`."""
import json
import re
import shutil
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from PIL import Image

from fixtures_captions import write_karpathy
from test_classification import REPO
from test_data import needs_fashion_mnist
from test_detection_task import average_apart_from_the_trained_weights
from visattn import create_model, save_weights
from visattn.cli import main
from visattn.data.vocab import Vocabulary
from visattn.errors import ConfigError, VisattnWarning, WeightsError
from visattn.explain import CellCentres
from visattn.inference.caption_scoring import CaptionMetrics, caption_scores, evaluate_captioner, pointing_hits
from visattn.inference.captioner import Captioner, decode, load_captioner
from visattn.tasks.captioning import CaptioningTask

CONFIG = "configs/captioning/sat_scenes.yaml"
TINY_MODEL = json.dumps(dict(encoder_kwargs=dict(layers=[1, 1], widths=[8, 16], small_input=False), img_size=32,
                             grid_size=4, embed_dim=16, hidden_dim=16, attn_dim=16))
VOCAB = ["<pad>", "<start>", "<end>", "<unk>", "a", "red", "top", "bag", "and"]


def test_caption_scores_perfect_and_wrong():
    refs = [["a red top", "a red top on the left"], ["a blue bag", "there is a blue bag"]]
    perfect = caption_scores(["a red top on the left", "there is a blue bag"], refs)
    assert perfect["bleu1"] == pytest.approx(1.0) and perfect["bleu4"] == pytest.approx(1.0, abs=1e-6)
    assert set(perfect) == {"bleu1", "bleu2", "bleu3", "bleu4", "rouge_l", "cider"} and perfect["rouge_l"] == 1.0
    wrong = caption_scores(["green boot", "pink sandal"], refs)
    assert wrong["bleu1"] < 0.01 and wrong["cider"] < perfect["cider"]
    with pytest.raises(ConfigError, match="2 captions for 1 images"):
        caption_scores(["a", "b"], [["a"]])
    with pytest.warns(VisattnWarning, match=r"^CIDEr of one image is 0 whatever its caption"):  # it read as a miss
        assert caption_scores(["a red top"], [["a red top"]])["cider"] == 0.0


def test_caption_scores_drop_wordless_references_and_refuse_an_image_with_none():
    refs = [["a red top", "a red top on the left"], ["a blue bag", "there is a blue bag"]]
    hypotheses = ["a red top on the left", "there is a blue bag"]
    with_blank = [[*refs[0], "  ...  "], refs[1]]
    assert caption_scores(hypotheses, with_blank) == caption_scores(hypotheses, refs)  # it lowered CIDEr
    with pytest.raises(ConfigError, match=r"^the references of image 1 \(1 images in all\) have no word in them"):
        caption_scores(hypotheses, [refs[0], ["", "!"]])  # CIDEr's max() of an empty sequence


def test_pointing_hits_only_for_items_that_occur_once():
    # 8 x 8 image; a top (class 0) in the top-left corner, two bags (class 8) elsewhere
    boxes = np.array([[0, 0, 4, 4], [4, 4, 8, 8], [4, 0, 8, 4]], np.float32)
    labels = np.array([0, 8, 8])
    peak_top_left, peak_bottom_right = torch.zeros(2, 2), torch.zeros(2, 2)
    peak_top_left[0, 0] = 1.0
    peak_bottom_right[1, 1] = 1.0
    maps = torch.stack([peak_bottom_right, peak_top_left, peak_bottom_right])
    # "red" is no item word, "bag" occurs twice: only "top" counts, and its map peaks inside the top's box
    blocks = CellCentres.blocks((2, 2), (8, 8))
    assert pointing_hits(["red", "top", "bag"], maps, boxes, labels, blocks) == [True]
    assert pointing_hits(["top"], peak_bottom_right[None], boxes, labels, blocks) == [False]


def test_a_captioners_attention_cells_sit_where_its_encoder_looks():
    """Scored and drawn in equal blocks, the scenes captioner's 8 px cells sat 3.5 px right of and below
    their receptive fields' centres."""
    from visattn.inference.captioner import attention_centres

    scenes = create_model("sat_cbam_resnet_scenes", vocab_size=10)  # stride-8 encoder map, 8x8 grid
    assert attention_centres(scenes, (64, 64)) == CellCentres(*[tuple(8 * k + 0.5 for k in range(8))] * 2)
    pooled = create_model("sat_cbam_resnet_scenes", vocab_size=10, grid_size=(4, 2))  # 2 rows by 4 columns of cells averaged
    assert attention_centres(pooled, (64, 64)) == CellCentres(tuple(16 * k + 4.5 for k in range(4)), (12.5, 44.5))
    vit = create_model("sat_cbam_resnet_scenes", vocab_size=10, encoder_name="vit_tiny_patch4_28",
                       encoder_kwargs={"depth": 1}, img_size=28, grid_size=7)
    assert attention_centres(vit, (28, 28)) == CellCentres.blocks((7, 7), (28, 28))  # patches: equal blocks


def test_caption_metrics_score_each_word_with_its_own_map_past_an_unknown_word():
    """Words and maps must be paired per token, past an <unk> too."""
    from visattn.data.vocab import Vocabulary
    from visattn.models.show_attend_tell import DecodedCaptions
    from visattn.inference.caption_scoring import CaptionMetrics

    vocab = Vocabulary(["a", "top", "bag"])
    boxes = torch.tensor([[[0.0, 0.0, 4.0, 4.0], [4.0, 4.0, 8.0, 8.0]]])  # a top top-left, a bag bottom-right
    labels = torch.tensor([[0, 8]])
    corner = lambda row, col: torch.zeros(2, 2).index_put_((torch.tensor(row), torch.tensor(col)), torch.tensor(1.0))  # noqa: E731
    ids = torch.tensor([vocab.token_id("a"), vocab.token_id("top"), vocab.unk_id, vocab.token_id("bag")])
    maps = torch.stack([corner(1, 0), corner(0, 0), corner(0, 1), corner(1, 1)])  # the bag's own map is the last
    metrics = CaptionMetrics(vocab)
    captions = metrics.update(DecodedCaptions([ids], [maps], torch.zeros(1), torch.ones(1, dtype=torch.bool)),
                              {"images": torch.zeros(1, 3, 8, 8), "references": [["a top and a bag"]], "boxes": boxes,
                               "labels": labels}, lambda size: CellCentres.blocks((2, 2), size))
    assert captions == ["a top <unk> bag"] and metrics.hits == [True, True]


def test_a_generated_unknown_word_is_scored_as_a_word_no_reference_holds():
    """Left out of the scored text, it had made "a red <unk> bag on the left" score as the reference itself
    (BLEU-1..4 1.0, a captioning audit)."""
    from visattn.models.show_attend_tell import DecodedCaptions

    vocab = Vocabulary(["a", "red", "bag", "on", "the", "left"])
    reference = "a red bag on the left"
    ids = torch.tensor(vocab.encode("a red zebra bag on the left")[1:])
    metrics = CaptionMetrics(vocab)
    metrics.update(DecodedCaptions([ids], [torch.zeros(len(ids), 2, 2)], torch.zeros(1),
                                   torch.ones(1, dtype=torch.bool)),
                   {"images": torch.zeros(1, 3, 8, 8), "references": [[reference]]}, lambda size: None)
    scores = metrics.compute()
    assert scores["bleu1"] == pytest.approx(6 / 7) and scores["bleu4"] < 0.6
    assert scores == {**caption_scores(["a red unk bag on the left"], [[reference]]), "n": 1}
    # nor a placeholder a reference holds (tokenised to "unk", it had matched one: BLEU-4 1.0, a review)
    for placeholder in ("UNK", "<unk>"):
        assert caption_scores(["a red <unk> bag"], [[f"a red {placeholder} bag"]])["bleu1"] == pytest.approx(3 / 4)


def test_a_frozen_encoder_keeps_its_batch_norm_statistics_through_a_lightning_fit():
    """Its weights stayed, but Lightning never calls train(), whose override put the encoder in eval mode: its
    batch norms kept learning their statistics from the new data (63 of 162 encoder entries moved in an audit)."""
    import lightning.pytorch as pl

    torch.manual_seed(0)
    task = CaptioningTask(model_kwargs={**json.loads(TINY_MODEL), "freeze_encoder": True}, vocab=VOCAB)
    before = {k: v.clone() for k, v in task.model.encoder.state_dict().items()}
    batches = [{"images": torch.randn(2, 3, 32, 32) * 3 + 1, "captions": torch.tensor([[1, 4, 5, 2], [1, 6, 2, 0]])}
               for _ in range(3)]
    trainer = pl.Trainer(max_steps=3, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                         enable_model_summary=False, accelerator="cpu")
    trainer.fit(task, torch.utils.data.DataLoader(batches, batch_size=None))
    after = task.model.encoder.state_dict()
    assert any(k.endswith("running_mean") for k in after)
    assert all(torch.equal(after[k], v) for k, v in before.items())


def test_training_logs_the_optimised_loss_as_train_loss_as_every_task_does():
    """The captioner logged train/xent and train/attn_reg only: a train/loss monitor or plot had nothing to read."""
    import lightning.pytorch as pl

    torch.manual_seed(0)
    task = CaptioningTask(model_kwargs=json.loads(TINY_MODEL), vocab=VOCAB, alpha_c=1.0)
    batch = {"images": torch.randn(2, 3, 32, 32), "captions": torch.tensor([[1, 4, 5, 2], [1, 6, 2, 0]])}
    trainer = pl.Trainer(max_steps=1, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                         enable_model_summary=False, accelerator="cpu")
    trainer.fit(task, torch.utils.data.DataLoader([batch], batch_size=None))
    logged = trainer.callback_metrics
    assert float(logged["train/attn_reg"]) > 0
    assert float(logged["train/loss"]) == pytest.approx(float(logged["train/xent"] + logged["train/attn_reg"]))


def test_validation_cross_entropy_is_the_mean_over_words_whatever_the_batching():
    """Each batch's mean over its words was weighted by its images: one process's 6.1789 read 6.2011 on two
    processes and 6.2066 at batch size 2 (a DDP audit)."""
    import lightning.pytorch as pl

    torch.manual_seed(0)
    task = CaptioningTask(model_kwargs=json.loads(TINY_MODEL), vocab=VOCAB)
    captions = torch.tensor([[1, 4, 5, 6, 7, 2], [1, 6, 2, 0, 0, 0], [1, 4, 2, 0, 0, 0], [1, 8, 5, 7, 2, 0]])
    samples = [{"images": torch.randn(1, 3, 32, 32), "captions": captions[i : i + 1], "references": [["a red top"]]}
               for i in range(4)]

    def val_xent(sizes: list[int]) -> float:
        batches, start = [], 0
        for size in sizes:
            part = samples[start : start + size]
            batches.append({"images": torch.cat([s["images"] for s in part]),
                            "captions": torch.cat([s["captions"] for s in part]),
                            "references": [r for s in part for r in s["references"]]})
            start += size
        trainer = pl.Trainer(logger=False, enable_checkpointing=False, enable_progress_bar=False,
                             enable_model_summary=False, accelerator="cpu")
        return trainer.validate(task, torch.utils.data.DataLoader(batches, batch_size=None), verbose=False)[0]["val/xent"]

    whole = val_xent([4])
    assert val_xent([1, 3]) == pytest.approx(whole, rel=1e-5) and val_xent([3, 1]) == pytest.approx(whole, rel=1e-5)


@needs_fashion_mnist
def test_a_trainer_of_ones_own_given_a_data_module_refuses_a_task_built_without_its_preprocessing(tmp_path):
    """Outside `visattn fit`, which links it: the run trained, and load_captioner then refused its checkpoint."""
    import lightning.pytorch as pl
    from visattn.data.caption_datamodules import FashionScenesCaptionDataModule

    data = FashionScenesCaptionDataModule(batch_size=2, num_workers=0, num_train=2, num_val=2, num_test=2,
                                          vocab_scenes=10)
    task = CaptioningTask(model_kwargs=json.loads(TINY_MODEL), vocab=data.vocab)
    trainer = pl.Trainer(max_steps=1, logger=False, enable_progress_bar=False, enable_model_summary=False,
                         accelerator="cpu", default_root_dir=tmp_path)
    with pytest.raises(ConfigError, match=re.escape(
            "CaptioningTask's preprocessing is not FashionScenesCaptionDataModule's (preprocessing not given); build "
            "it with CaptioningTask(..., vocab=data.vocab, preprocessing=data.preprocessing) where data is")):
        trainer.fit(task, datamodule=data)
    assert not list(tmp_path.rglob("*.ckpt"))


def test_task_loss_ignores_padding_and_needs_a_vocabulary():
    torch.manual_seed(0)
    task = CaptioningTask(model_kwargs=json.loads(TINY_MODEL), vocab=VOCAB, alpha_c=0.0)
    images = torch.randn(2, 3, 32, 32)
    short = torch.tensor([[1, 4, 5, 6, 2, 0], [1, 7, 2, 0, 0, 0]])
    longer = short.clone()
    longer[1, 3:] = torch.tensor([4, 4, 4])  # changes only positions the first padding hides
    task.eval()
    ce_short, _ = task.caption_loss({"images": images, "captions": short})
    targets = short[:, 1:]
    logits, _ = task.model(images, short)
    expected = torch.nn.functional.cross_entropy(logits[targets != 0], targets[targets != 0])
    assert ce_short.item() == pytest.approx(expected.item(), rel=1e-5)
    with pytest.raises(ConfigError, match="needs a vocabulary"):
        CaptioningTask(vocab=None)


def test_fit_tiny_karpathy_then_caption_and_save_weights(tmp_path, weights_tmp, capsys):
    split_json, images_dir = write_karpathy(tmp_path)
    out = tmp_path / "run"
    code = main([
        "fit", "--config", CONFIG, "--trainer.max_epochs", "2", "--trainer.enable_progress_bar", "false",
        "--trainer.default_root_dir", str(out), "--trainer.logger", "false", "--trainer.callbacks",
        json.dumps([{"class_path": "lightning.pytorch.callbacks.ModelCheckpoint",
                     "init_args": {"dirpath": str(out / "ckpt"), "save_last": True}}]),
        "--model.model_kwargs", TINY_MODEL, "--model.beam_size", "2", "--model.max_len", "6",
        "--data", "visattn.data.caption_datamodules.KarpathyCaptionDataModule",
        "--data.split_json", str(split_json), "--data.images_dir", str(images_dir), "--data.img_size", "32",
        "--data.batch_size", "2", "--data.num_workers", "0", "--data.min_count", "1",
    ])
    assert code == 0
    checkpoint = out / "ckpt" / "last.ckpt"
    captioner = load_captioner(checkpoint=str(checkpoint))
    assert "dog" in captioner.vocab.to_list() and captioner.preprocessing["input_size"] == [3, 32, 32]

    # caption a folder with one broken file: the others still get captions, the exit code says one failed
    capsys.readouterr()
    code = main(["caption", str(images_dir), "--checkpoint", str(checkpoint), "--beam-size", "2", "--json",
                 "--attention-out", str(tmp_path / "attn")])
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert code == 1
    errors = [line for line in lines if "error" in line]
    assert len(lines) == 6 and len(errors) == 1 and errors[0]["file"].endswith("broken.jpg")
    for line in lines:
        if "caption" in line and line["caption"]:
            assert Image.open(line["attention"]).size[0] > 0

    # shipped-weights route: `visattn save-weights` on the checkpoint, then the same captions from --model ARCH.TAG
    capsys.readouterr()
    assert main(["save-weights", "--checkpoint", str(checkpoint), "--tag", "tiny", "--out-dir", str(weights_tmp)]) == 0
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1]) == {}  # no --dataset: nothing measured
    entry = json.loads((weights_tmp / "index.json").read_text())["sat_cbam_resnet_scenes.tiny"]
    assert entry["task"] == "captioning" and entry["vocab"] == captioner.vocab.to_list()
    shipped = load_captioner("sat_cbam_resnet_scenes.tiny")
    assert shipped.preprocessing == captioner.preprocessing
    images = torch.randn(3, 3, 32, 32)
    expected, got = captioner.caption(images, beam_size=2), shipped.caption(images, beam_size=2)
    assert all(torch.equal(a, b) for a, b in zip(expected.tokens, got.tokens))
    torch.testing.assert_close(got.scores, expected.scores)


def test_the_karpathy_template_trains_on_a_users_caption_file(tmp_path, capsys):
    """There was no config for one's own captions: the scenes config needed its data class swapped (an audit of
    training on users' data did so), and its 64 px FashionScenes captioner was kept for photos."""
    config = REPO / "configs" / "captioning" / "karpathy_template.yaml"
    settings = yaml.safe_load(config.read_text())
    assert settings["model"]["init_args"]["model_name"] == "sat_resnet50" and settings["data"]["init_args"]["img_size"] == 224
    split_json, images_dir = write_karpathy(tmp_path)
    out = tmp_path / "run"
    tiny_encoder = {"encoder_pretrained": False, "encoder_kwargs": {"layers": [1, 1, 1, 1], "widths": [8, 8, 16, 16]},
                    "embed_dim": 16, "hidden_dim": 16, "attn_dim": 16, "grid_size": 2}
    assert main(["fit", "--config", str(config), "--trainer.max_steps", "2", "--trainer.enable_progress_bar", "false",
                 "--trainer.default_root_dir", str(out), "--trainer.logger", "false", "--trainer.callbacks",
                 json.dumps([{"class_path": "lightning.pytorch.callbacks.ModelCheckpoint",
                              "init_args": {"dirpath": str(out / "ckpt"), "monitor": "val/cider", "mode": "max",
                                            "save_last": True}}]),
                 "--model.init_args.model_kwargs", json.dumps(tiny_encoder), "--model.init_args.max_len", "4",
                 "--data.init_args.split_json", str(split_json), "--data.init_args.images_dir", str(images_dir),
                 "--data.init_args.img_size", "64", "--data.init_args.batch_size", "2",
                 "--data.init_args.num_workers", "0", "--data.init_args.min_count", "1"]) == 0
    captioner = load_captioner(checkpoint=str(out / "ckpt" / "last.ckpt"))
    assert captioner.arch == "sat_resnet50" and "dog" in captioner.vocab.to_list()
    capsys.readouterr()
    assert main(["evaluate", "--checkpoint", str(out / "ckpt" / "last.ckpt"), "--dataset",
                 f"karpathy:{split_json}:{images_dir}", "--split", "test", "--json"]) == 0
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1])["n"] == 1


def save_tiny_captioner(weights_folder: Path) -> None:
    """An untrained tiny captioner saved as ``sat_cbam_resnet_scenes.tiny``."""
    torch.manual_seed(0)
    task = CaptioningTask(model_kwargs=json.loads(TINY_MODEL), vocab=VOCAB)
    preprocessing = {"input_size": [3, 32, 32], "mean": [0.1] * 3, "std": [0.25] * 3, "recipe": "small"}
    save_weights(task.model, weights_folder / "sat_cbam_resnet_scenes.tiny.safetensors", task="captioning",
                 vocab=VOCAB, preprocessing=preprocessing,
                 model_kwargs={**json.loads(TINY_MODEL), "vocab_size": len(VOCAB)})


def evaluate_tiny_captioner(capsys) -> dict:
    code = main(["evaluate", "--model", "sat_cbam_resnet_scenes.tiny", "--dataset", "fashion-scenes",
                 "--limit", "6", "--beam-size", "2", "--json"])
    assert code == 0
    return json.loads(capsys.readouterr().out.strip().splitlines()[-1])


@needs_fashion_mnist
def test_evaluate_emits_metric_keys(tmp_path, weights_tmp, capsys):
    save_tiny_captioner(weights_tmp)
    metrics = evaluate_tiny_captioner(capsys)
    assert {"bleu1", "bleu2", "bleu3", "bleu4", "rouge_l", "cider", "n"} <= set(metrics) and metrics["n"] == 6
    assert 0.0 <= metrics["bleu1"] <= 1.0 and "meteor" not in metrics


@needs_fashion_mnist
@pytest.mark.skipif(shutil.which("java") is None, reason="METEOR runs Java")
def test_evaluate_adds_meteor_when_asked(weights_tmp, capsys):
    """METEOR was only reachable from a config's model.init_args.meteor (a captioning audit)."""
    save_tiny_captioner(weights_tmp)
    assert main(["evaluate", "--model", "sat_cbam_resnet_scenes.tiny", "--dataset", "fashion-scenes", "--limit", "2",
                 "--beam-size", "1", "--meteor", "--json"]) == 0
    assert 0.0 <= json.loads(capsys.readouterr().out.strip().splitlines()[-1])["meteor"] <= 1.0


@needs_fashion_mnist
def test_evaluate_reports_a_tiny_score_to_six_significant_digits_not_as_zero(weights_tmp, capsys, monkeypatch):
    """A BLEU-4 of 4.5e-07 (an untrained model's) had been printed as 0.0, which reads as no match at all."""
    scores = CaptionMetrics.compute
    monkeypatch.setattr(CaptionMetrics, "compute", lambda self: {**scores(self), "bleu4": 4.5123456e-07,
                                                                  "cider": 0.1234567})
    save_tiny_captioner(weights_tmp)
    metrics = evaluate_tiny_captioner(capsys)
    assert metrics["bleu4"] == 4.51235e-07 and metrics["cider"] == 0.123457


def test_caption_prints_and_titles_unknown_words_as_unk(tmp_path, capsys, monkeypatch):
    """A caption of unknown words printed as "" beside panels without titles, exit 0."""
    from visattn.explain import overlay
    from visattn.inference import captioner

    def unknown_words(model, images, **kwargs):
        decoded = decode(model, images, **kwargs)
        decoded.tokens = [torch.full_like(t, 3) for t in decoded.tokens]  # every word <unk>
        return decoded

    titles = []
    panels = overlay.word_panels_figure
    monkeypatch.setattr(captioner, "decode", unknown_words)
    monkeypatch.setattr(overlay, "word_panels_figure", lambda image, words, *a, **k: titles.append(words) or
                        panels(image, words, *a, **k))
    Image.new("RGB", (64, 64), (90, 90, 90)).save(tmp_path / "grey.png")
    assert main(["caption", str(tmp_path / "grey.png"), "--model", "sat_cbam_resnet_scenes.scenes", "--beam-size", "1",
                 "--json", "--attention-out", str(tmp_path / "panels")]) == 0
    caption = json.loads(capsys.readouterr().out)["caption"]
    assert caption and set(caption.split()) == {"<unk>"} and titles == [caption.split()]


def test_captioning_in_batches_gives_each_file_its_own_caption(tmp_path, capsys):
    """Each file of a batch is captioned as when it is captioned alone, not given another file's caption."""
    for name, colour in (("blue", (30, 30, 200)), ("green", (30, 200, 30)), ("red", (200, 30, 30)),
                         ("white", (230, 230, 230))):
        square = np.zeros((64, 64, 3), np.uint8)
        square[16:48, 16:48] = colour
        Image.fromarray(square).save(tmp_path / f"{name}.png")
    captions = []
    for batch_size in ("1", "8"):
        assert main(["caption", str(tmp_path), "--model", "sat_cbam_resnet_scenes.scenes", "--batch-size", batch_size,
                     "--json"]) == 0
        records = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
        captions.append({Path(record["file"]).stem: record["caption"] for record in records})
    alone, batched = captions
    assert batched == alone and len(set(alone.values())) == 4, alone  # four squares, four captions
    assert all(colour in alone[colour] for colour in ("green", "red", "white")), alone


def test_predict_records_say_whether_each_caption_was_cut_at_max_len():
    """predict's records held the caption alone: two words cut at max_len read as a whole caption."""
    from visattn.tasks.prediction_writer import _prediction_records

    torch.manual_seed(0)
    task = CaptioningTask(model_kwargs=json.loads(TINY_MODEL), vocab=VOCAB, max_len=1, beam_size=2)
    records = _prediction_records(task.predict_step(torch.randn(6, 3, 32, 32), 0), task.hparams, 5)
    assert [set(r) for r in records] == [{"caption", "finished"}] * 6
    # One word allowed: a caption is whole only if the model ended it at once (no words), else it was cut.
    assert [r["finished"] for r in records] == [r["caption"] == "" for r in records]
    assert not all(r["finished"] for r in records)


def test_a_caption_cut_at_max_len_says_so_in_its_line_and_record(tmp_path, capsys):
    """Two words of a longer caption read as a whole caption: the line and the record say it was cut."""
    square = np.zeros((64, 64, 3), np.uint8)
    square[16:48, 16:48] = (200, 30, 30)
    Image.fromarray(square).save(tmp_path / "red.png")
    run = ["caption", str(tmp_path / "red.png"), "--model", "sat_cbam_resnet_scenes.scenes"]
    for max_len, as_json in (("2", True), ("20", True), ("2", False), ("20", False)):
        assert main([*run, "--max-len", max_len, *(["--json"] if as_json else [])]) == 0
        out = capsys.readouterr().out.strip()
        cut = max_len == "2"
        if as_json:
            record = json.loads(out)
            assert record["finished"] is not cut and len(record["caption"].split()) <= int(max_len)
        else:
            assert out.endswith(" [cut at 2 words, before the model ended it: raise --max-len]") is cut, out


def test_a_decoder_that_does_not_say_whether_it_finished_is_recorded_as_not_known(tmp_path, monkeypatch, capsys):
    """A decoder building DecodedCaptions without `finished` (as before the field) made `caption` fail on None: a
    caption of max_len words is recorded as not known (null) and its line says it may have been cut; a shorter one
    ended."""
    import visattn.inference.captioner as captioner_module
    from visattn.models.show_attend_tell import DecodedCaptions

    def decode_unflagged(*args, **kwargs) -> DecodedCaptions:
        decoded = decode(*args, **kwargs)
        return DecodedCaptions(decoded.tokens, decoded.attention, decoded.scores)

    decode = captioner_module.decode
    monkeypatch.setattr(captioner_module, "decode", decode_unflagged)
    square = np.zeros((64, 64, 3), np.uint8)
    square[16:48, 16:48] = (200, 30, 30)
    Image.fromarray(square).save(tmp_path / "red.png")
    run = ["caption", str(tmp_path / "red.png"), "--model", "sat_cbam_resnet_scenes.scenes"]
    for max_len, finished in (("2", None), ("20", True)):
        assert main([*run, "--max-len", max_len, "--json"]) == 0
        assert json.loads(capsys.readouterr().out)["finished"] is finished
    assert main([*run, "--max-len", "2"]) == 0
    assert capsys.readouterr().out.strip().endswith(
        " [2 words, as many as --max-len allows: it may have been cut; raise --max-len to see]")


def test_a_caption_rerun_with_an_empty_caption_leaves_no_earlier_attention_panel_behind(tmp_path, monkeypatch, capsys):
    """An image whose caption is now empty has nothing to draw: the earlier run's panel of its words goes, beside
    the record's null (the panel had stayed, showing words the caption no longer had)."""
    from visattn.inference import captioner

    Image.new("RGB", (64, 64), (90, 90, 90)).save(tmp_path / "grey.png")
    out = tmp_path / "panels"
    caption = ["caption", str(tmp_path / "grey.png"), "--model", "sat_cbam_resnet_scenes.scenes", "--beam-size", "1",
               "--json", "--attention-out", str(out)]
    assert main(caption) == 0
    first = json.loads(capsys.readouterr().out)
    assert first["caption"] and Path(first["attention"]).is_file()

    def no_words(model, images, **kwargs):
        decoded = decode(model, images, **kwargs)
        decoded.tokens, decoded.attention = [t[:0] for t in decoded.tokens], [a[:0] for a in decoded.attention]
        return decoded

    monkeypatch.setattr(captioner, "decode", no_words)
    assert main(caption) == 0
    again = json.loads(capsys.readouterr().out)
    assert again["caption"] == "" and again["attention"] is None and not any(out.iterdir())


@needs_fashion_mnist
def test_shipped_scenes_captioner_rebuilds_from_its_index_entry_and_describes_test_scenes():
    from visattn.inference.caption_scoring import evaluation_loader

    captioner = load_captioner("sat_cbam_resnet_scenes.scenes")
    assert captioner.model.vocab_size == len(captioner.vocab) and captioner.model.input_size == (3, 64, 64)
    metrics = evaluate_captioner(captioner, evaluation_loader(captioner, "fashion-scenes", "test", limit=48),
                                 beam_size=3)
    # the full 1000-scene test split scores BLEU-4 0.72, CIDEr 4.4, pointing 0.92 (weights/index.json)
    assert metrics["n"] == 48 and metrics["bleu4"] > 0.5 and metrics["pointing"] > 0.6


@pytest.mark.parametrize("beam_size, max_len, message", [(0, 20, "beam_size=0: must be >= 1"),
                                                         (1, 0, "max_len=0: a caption needs at least one word"),
                                                         (5, -1, "max_len=-1: a caption needs at least one word")])
def test_decode_refuses_settings_that_give_no_caption(beam_size, max_len, message):
    model = load_captioner("sat_cbam_resnet_scenes.scenes").model
    with pytest.raises(ConfigError, match=message):
        decode(model, torch.zeros(1, *model.input_size), beam_size=beam_size, max_len=max_len)


def test_evaluation_leaves_a_broken_coco_image_out(tmp_path):
    """The COCO fixture's broken.jpg must not be replaced by (and so scored as) another image."""
    from fixtures_captions import write_coco_captions

    from visattn.data import SkippedImageWarning
    from visattn.inference.caption_scoring import evaluation_loader

    annotations, images_dir = write_coco_captions(tmp_path)
    captioner = load_captioner("sat_cbam_resnet_scenes.scenes")
    with pytest.warns(SkippedImageWarning, match="broken.jpg"):
        batches = list(evaluation_loader(captioner, f"coco:{annotations}:{images_dir}", batch_size=1))
    assert [batch["references"] for batch in batches if batch is not None] == [
        [["A red dog runs.", "a dog running"]], [["a fish swims"]]]
    assert sum(batch is None for batch in batches) == 1
    assert evaluate_captioner(captioner, batches, beam_size=2)["n"] == 2


def _tiny_captioner() -> Captioner:
    model = create_model("sat_cbam_resnet_scenes", vocab_size=len(VOCAB), **json.loads(TINY_MODEL)).eval()
    return Captioner(model, Vocabulary.from_list(VOCAB), {"input_size": [3, 32, 32]}, "tiny",
                     "sat_cbam_resnet_scenes", {})


def test_caption_with_a_model_left_training_gives_its_eval_captions_and_keeps_its_mode():
    torch.manual_seed(0)
    captioner = _tiny_captioner()
    images = torch.randn(4, 3, 32, 32)
    expected = captioner.caption(images, beam_size=2, max_len=6)
    captioner.model.train()  # dropout and batch statistics would make every call differ
    for got in (captioner.caption(images, beam_size=2, max_len=6) for _ in range(2)):
        assert all(torch.equal(a, b) for a, b in zip(got.tokens, expected.tokens))
        torch.testing.assert_close(got.scores, expected.scores)
    assert all(m.training for m in captioner.model.modules())


def test_shipped_captioner_weights_without_preprocessing_are_one_line(weights_tmp):
    """An entry written by hand: save_weights refuses to write one (see test_reliability_python_api)."""
    save_weights(_tiny_captioner(), weights_tmp / "sat_cbam_resnet_scenes.mine.safetensors", dataset="mine")
    index = json.loads((weights_tmp / "index.json").read_text())
    del index["sat_cbam_resnet_scenes.mine"]["preprocessing"]
    (weights_tmp / "index.json").write_text(json.dumps(index))
    with pytest.raises(WeightsError, match="sat_cbam_resnet_scenes.mine: the weights entry has no preprocessing"):
        load_captioner("sat_cbam_resnet_scenes.mine")


def test_a_captioning_task_of_a_classifier_is_one_line():
    with pytest.raises(ConfigError, match=r"^model_name='cbam_resnet20_cifar' is not a captioner; pick one of"):
        CaptioningTask(model_name="cbam_resnet20_cifar", vocab=VOCAB)


REFERENCES = [["a red top", "a red top on the left"], ["a blue bag", "there is a blue bag"],
              ["a bag and a top"], ["two red tops"]]
HYPOTHESES = ["a red top", "there is a bag", "a top and a bag", "a red top"]


def _score_one_shard(rank: int, world: int, port: int, out: str) -> None:
    torch.distributed.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    metrics = CaptionMetrics(Vocabulary.from_list(VOCAB))
    metrics.hypotheses, metrics.references = HYPOTHESES[rank::world], REFERENCES[rank::world]
    metrics.gather()
    torch.save(metrics.compute(), f"{out}.{rank}")
    torch.distributed.destroy_process_group()


def test_caption_metrics_score_the_whole_split_under_ddp(tmp_path):
    """Each DDP process scored its own shard and the log kept rank 0's: CIDEr of a quarter of the data."""
    import socket

    with socket.socket() as free:
        free.bind(("127.0.0.1", 0))
        port = free.getsockname()[1]
    # forked: a spawned process would import torch and visattn anew, the most of this test's time
    torch.multiprocessing.start_processes(_score_one_shard, args=(2, port, str(tmp_path / "scores")), nprocs=2,
                                          start_method="fork")
    whole = caption_scores(HYPOTHESES, REFERENCES)
    for rank in (0, 1):
        scores = torch.load(tmp_path / f"scores.{rank}", weights_only=True)
        assert scores["n"] == 4 and scores["cider"] == pytest.approx(whole["cider"])


def test_caption_scores_give_each_bleu_order_and_cider_of_a_partial_overlap():
    """Half-right captions, where BLEU-1..4 all differ, score exactly what pycocoevalcap gives on the
    tokenised captions, order by order."""
    import contextlib
    import io

    from pycocoevalcap.bleu.bleu import Bleu
    from pycocoevalcap.cider.cider import Cider
    from pycocoevalcap.rouge.rouge import Rouge

    from visattn.data.vocab import tokenize

    refs = [["a red top on the left", "a red top next to a bag"],
            ["a blue bag and a white shoe", "there is a blue bag"],
            ["a black boot on the right", "one black boot"]]
    hypotheses = ["a red top on the right of a bag", "a white bag and a blue shoe", "a black boot near the left"]
    gts = {i: [" ".join(tokenize(r)) for r in rs] for i, rs in enumerate(refs)}
    res = {i: [" ".join(tokenize(h))] for i, h in enumerate(hypotheses)}
    assert res[0] == [hypotheses[0]] and gts[1] == refs[1]  # plain lower-case words: the tokens are the words
    with contextlib.redirect_stdout(io.StringIO()):
        bleu, _ = Bleu(4).compute_score(gts, res, verbose=0)
        cider, _ = Cider().compute_score(gts, res)
    expected = {"bleu1": bleu[0], "bleu2": bleu[1], "bleu3": bleu[2], "bleu4": bleu[3], "cider": cider,
                "rouge_l": Rouge().compute_score(gts, res)[0]}  # ROUGE-L had been left out (a captioning audit)
    # a mid-range case: every order strictly lower than the one before, none near 0 or 1
    assert 0.05 < expected["bleu4"] < expected["bleu3"] < expected["bleu2"] < expected["bleu1"] < 0.95
    scores = caption_scores(hypotheses, refs)
    assert scores == pytest.approx(expected, rel=1e-9, abs=1e-12)
    if shutil.which("java") is not None:  # METEOR runs Java
        from pycocoevalcap.meteor.meteor import Meteor

        meteor = caption_scores(hypotheses, refs, meteor=True)["meteor"]
        assert 0.1 < meteor < 0.9 and meteor == pytest.approx(Meteor().compute_score(gts, res)[0], rel=1e-9)


def test_meteor_without_java_is_one_line(monkeypatch, capsys):
    """pycocoevalcap's METEOR runs a jar: without Java it was a FileNotFoundError traceback."""
    monkeypatch.setattr(shutil, "which", lambda name: None)
    with pytest.raises(ConfigError, match=r"^meteor=True: METEOR runs Java .*no `java` is on PATH; install a Java "
                                          r"runtime"):
        caption_scores(["a red top"], [["a red top"]], meteor=True)
    with pytest.raises(ConfigError, match=r"^model.init_args.meteor=true: METEOR runs Java"):  # before training
        CaptioningTask(model_kwargs=json.loads(TINY_MODEL), vocab=VOCAB, meteor=True)

    def batches():
        raise AssertionError("captioned before METEOR was refused")
        yield

    with pytest.raises(ConfigError, match=r"^meteor=True: METEOR runs Java"):
        evaluate_captioner(load_captioner("sat_cbam_resnet_scenes.scenes"), batches(), meteor=True)
    assert main(["evaluate", "--model", "sat_cbam_resnet_scenes.scenes", "--dataset", "fashion-scenes",
                 "--meteor"]) == 2
    assert capsys.readouterr().err.startswith("visattn: error: --meteor: METEOR runs Java")  # before any captioning


def test_attention_panels_are_drawn_on_what_the_model_saw_not_the_whole_file(tmp_path, monkeypatch, capsys):
    # With the photo recipe the model sees a centre crop: maps laid over the whole file sat in the wrong place.
    import dataclasses

    from matplotlib.figure import Figure

    import visattn.explain.overlay
    from visattn.explain import model_view
    from visattn.inference.captioner import caption_files, load_captioner

    shipped = load_captioner("sat_cbam_resnet_scenes.scenes")
    captioner = dataclasses.replace(shipped, preprocessing={**shipped.preprocessing, "recipe": "photo"})
    image = np.random.default_rng(0).integers(0, 256, (64, 128, 3), dtype=np.uint8)  # wide: the crop drops its sides
    Image.fromarray(image).save(tmp_path / "wide.png")
    drawn, placed = [], []

    def word_panels_figure(image, *args, centres, pixel_aspect):
        drawn.append(image)
        placed.append(centres)
        return Figure()

    monkeypatch.setattr(visattn.explain.overlay, "word_panels_figure", word_panels_figure)
    assert caption_files(captioner, [str(tmp_path / "wide.png")], attention_out=str(tmp_path / "maps")) == (0, 1)
    seen = model_view(captioner.transform()(image), captioner.preprocessing["mean"], captioner.preprocessing["std"])
    assert len(drawn) == 1 and drawn[0].shape == (64, 64, 3)
    np.testing.assert_array_equal(drawn[0], seen)
    assert placed == [CellCentres(*[tuple(8 * k + 0.5 for k in range(8))] * 2)]  # the encoder's stride-8 cells


@pytest.mark.parametrize("named", [{"model_name": "sat_cbam_resnet_scenes.scenes"},
                                   {"model_name": "sat_cbam_resnet_scenes", "pretrained": True}])
def test_fine_tuning_a_shipped_captioner_on_other_words_keeps_all_but_the_per_word_layers(named):
    # It was a shape error blaming the architecture; and a vocabulary of the same size would have loaded
    # each id's embedding for the word it had in the shipped vocabulary (pretrained=True on the bare
    # architecture, its default weights, still did).
    from visattn.inference.captioner import load_captioner

    shipped = create_model("sat_cbam_resnet_scenes.scenes")
    own = Vocabulary.from_list(Vocabulary.build(["a red bag on grass", "a blue sky"] * 5, min_count=1).to_list())
    with pytest.warns(UserWarning, match=r"sat_cbam_resnet_scenes(.scenes)?: its weights were trained on another "
                                         r"vocabulary \(\d+ tokens; this data's has 11, 9 of them in both\): the word "
                                         "embedding's and output layer's rows of those 9 move to their words' new "
                                         "ids, the other words' start afresh, the rest is loaded"):
        task = CaptioningTask(vocab=own.to_list(), **named)
    tuned, reference = task.model.state_dict(), shipped.state_dict()
    assert tuned["embed.weight"].shape[0] == len(own) and tuned["fc.weight"].shape[0] == len(own)
    theirs = load_captioner("sat_cbam_resnet_scenes.scenes").vocab.to_list()
    for new, word in enumerate(own.to_list()):  # a shared word's rows follow it to its new id (they had started afresh)
        if word in theirs:
            for key in ("embed.weight", "fc.weight", "fc.bias"):
                assert torch.equal(tuned[key][new], reference[key][theirs.index(word)]), (word, key)
    kept = [k for k in reference if not k.startswith(("embed.", "fc."))]
    assert kept and all(torch.equal(tuned[k], reference[k]) for k in kept)
    shipped_words = load_captioner("sat_cbam_resnet_scenes.scenes").vocab.to_list()
    same = CaptioningTask(model_name="sat_cbam_resnet_scenes.scenes", vocab=shipped_words)
    assert torch.equal(same.model.state_dict()["embed.weight"], reference["embed.weight"])


def test_a_captioner_started_from_weights_of_other_normalisation_warns_as_a_classifier_does():
    """Fashion-MNIST encoder weights (mean 0.286, std 0.353), and the shipped captioner's scenes statistics, had
    taken a photo data module's ImageNet normalisation without a word."""
    imagenet = {"input_size": [3, 32, 32], "mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225]}
    encoder = {"encoder_name": "se_resnet20_cifar", "encoder_pretrained": "se_resnet20_cifar.fmnist", "img_size": 32,
               "grid_size": 4, "embed_dim": 8, "hidden_dim": 8, "attn_dim": 8}
    trained_with = r"^the data normalises with mean \[0.485, 0.456, 0.406\], std .* but the starting weights were trained "
    with pytest.warns(VisattnWarning, match=trained_with + r"with mean \[0.286, 0.286, 0.286\]"):
        CaptioningTask(model_kwargs=encoder, vocab=VOCAB, preprocessing=imagenet)
    shipped = load_captioner("sat_cbam_resnet_scenes.scenes")
    with pytest.warns(VisattnWarning, match=trained_with + rf"with mean \[{shipped.preprocessing['mean'][0]}"):
        CaptioningTask(model_name="sat_cbam_resnet_scenes.scenes", vocab=shipped.vocab.to_list(),
                       preprocessing={**imagenet, "input_size": shipped.preprocessing["input_size"]})
    with warnings.catch_warnings():
        warnings.simplefilter("error", VisattnWarning)
        CaptioningTask(model_kwargs=encoder, vocab=VOCAB, preprocessing={**imagenet, "mean": [0.286] * 3,
                                                                         "std": [0.353] * 3})
        CaptioningTask(model_kwargs={**encoder, "encoder_pretrained": False}, vocab=VOCAB, preprocessing=imagenet)


def test_a_captioner_started_from_weights_of_another_crop_or_filter_warns_as_a_classifier_does(weights_tmp):
    """A photo captioner's data now records crop_pct and interpolation; an encoder evaluated bicubic at 0.9 took
    0.875 bilinear without a word (a review: only mean and std were compared)."""
    from visattn import create_model, save_weights

    photo = {"input_size": [3, 32, 32], "mean": [0.5] * 3, "std": [0.5] * 3, "recipe": "photo", "crop_pct": 0.9,
             "interpolation": "bicubic"}
    save_weights(create_model("resnet20_cifar"), weights_tmp / "resnet20_cifar.photo.safetensors",
                 labels=[str(k) for k in range(10)], preprocessing=photo)
    encoder = {"encoder_name": "resnet20_cifar", "encoder_pretrained": "resnet20_cifar.photo", "img_size": 32,
               "grid_size": 4, "embed_dim": 8, "hidden_dim": 8, "attn_dim": 8}
    with pytest.warns(VisattnWarning, match=r"^the data evaluates with crop_pct 0.875, interpolation bilinear but "
                                            r"the starting weights were evaluated with crop_pct 0.9, interpolation "
                                            r"bicubic"):
        CaptioningTask(model_kwargs=encoder, vocab=VOCAB, preprocessing={**photo, "crop_pct": 0.875,
                                                                         "interpolation": "bilinear"})
    with warnings.catch_warnings():
        warnings.simplefilter("error", VisattnWarning)
        CaptioningTask(model_kwargs=encoder, vocab=VOCAB, preprocessing=photo)


@pytest.mark.parametrize("given_as", ["pretrained", "model_kwargs"])
def test_a_new_run_starts_from_a_training_checkpoint_of_its_own_or_another_vocabulary(tmp_path, given_as):
    """The resume warning's `--model.init_args.pretrained CKPT` was refused by the captioning task, and the route
    that worked, `model_kwargs: {pretrained: CKPT}`, loaded a vocabulary of as many other words row for row
    (each id's embedding that of the word it had before) and was a shape error for one of another size."""
    from test_reliability_inputs import TINY_SAT, VOCAB, write_captioner_checkpoint

    path = str(write_captioner_checkpoint(tmp_path / "first.ckpt"))
    earlier = {k.removeprefix("model."): v for k, v in torch.load(path, weights_only=True)["state_dict"].items()}

    def started(vocab: list[str]) -> dict[str, torch.Tensor]:
        start = {"pretrained": path} if given_as == "pretrained" else {"model_kwargs": {**TINY_SAT, "pretrained": path}}
        kwargs = {"model_kwargs": TINY_SAT, **start}
        return CaptioningTask(vocab=vocab, **kwargs).model.state_dict()

    same = started(VOCAB)
    assert all(torch.equal(same[k], earlier[k]) for k in earlier)
    for other in (VOCAB[:4] + ["a", "blue", "top"], VOCAB + ["bag"]):  # as many words, and one more
        shared = len(set(other) & set(VOCAB))
        with pytest.warns(UserWarning, match=rf"first.ckpt: its weights were trained on another vocabulary \(7 tokens; "
                                             rf"this data's has {len(other)}, {shared} of them in both\)"):
            tuned = started(other)
        kept = [k for k in earlier if not k.startswith(("embed.", "fc."))]
        assert kept and all(torch.equal(tuned[k], earlier[k]) for k in kept)
        for new, word in enumerate(other):  # each id's row is its word's, not the row of the id's earlier word
            if word in VOCAB:
                assert torch.equal(tuned["embed.weight"][new], earlier["embed.weight"][VOCAB.index(word)])
            else:
                assert not any(torch.equal(tuned["embed.weight"][new], row) for row in earlier["embed.weight"])
    with pytest.raises(ConfigError, match="^model.init_args.pretrained and model_kwargs.pretrained both name"):
        CaptioningTask(vocab=VOCAB, model_kwargs={**TINY_SAT, "pretrained": path}, pretrained=path)


def test_evaluate_scores_a_split_of_a_karpathy_file(tmp_path, capsys):
    """evaluate and save-weights took fashion-scenes and coco: only: a run trained on a Karpathy file could be
    scored only by `visattn test` with that run's exact training file."""
    from test_reliability_inputs import write_captioner_checkpoint

    split_json, images_dir = write_karpathy(tmp_path)
    checkpoint = str(write_captioner_checkpoint(tmp_path / "run.ckpt"))
    spec = f"karpathy:{split_json}:{images_dir}"
    scored = {}
    for split in (None, "train", "val"):
        options = ["--split", split] if split else []
        assert main(["evaluate", "--checkpoint", checkpoint, "--dataset", spec, "--json", "--beam-size", "1", *options]) == 0
        scored[split] = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert {split: metrics["n"] for split, metrics in scored.items()} == {None: 1, "train": 2, "val": 1}  # broken.jpg out
    assert {split: metrics["skipped"] for split, metrics in scored.items()} == {None: 0, "train": 1, "val": 0}
    assert all(0.0 <= metrics["bleu4"] <= 1.0 and "cider" in metrics for metrics in scored.values())
    assert main(["evaluate", "--checkpoint", checkpoint, "--dataset", f"karpathy:{split_json}:"]) == 2
    assert capsys.readouterr().err.startswith(f"visattn: error: --dataset karpathy:{split_json}:: name the split file "
                                              "and the images folder, e.g. karpathy:")


def test_a_checkpoint_scored_on_data_of_another_vocabulary_is_refused_and_typed_settings_hold(tmp_path, monkeypatch,
                                                                                            capsys):
    """`test`, `predict` and a resumed `fit` link the data's vocabulary into the model: the same number of words
    in another order decoded every id as another word, silently. And LightningCLI put the checkpoint's
    hyperparameters over the settings typed on the command line (`--model.beam_size 3` decoded with 2)."""
    from visattn.tasks import captioning

    split_json, images_dir = write_karpathy(tmp_path)
    out = tmp_path / "run"
    run = ["--config", CONFIG, "--trainer.enable_progress_bar", "false", "--trainer.default_root_dir", str(out),
           "--trainer.logger", "false", "--model.model_kwargs", TINY_MODEL, "--model.beam_size", "2",
           "--model.max_len", "6", "--data", "visattn.data.caption_datamodules.KarpathyCaptionDataModule",
           "--data.split_json", str(split_json), "--data.images_dir", str(images_dir), "--data.img_size", "32",
           "--data.batch_size", "2", "--data.num_workers", "0", "--data.min_count", "1", "--trainer.callbacks",
           json.dumps([{"class_path": "lightning.pytorch.callbacks.ModelCheckpoint",
                        "init_args": {"dirpath": str(out / "ckpt"), "save_last": True}}])]
    assert main(["fit", *run, "--trainer.max_epochs", "1"]) == 0
    checkpoint = out / "ckpt" / "last.ckpt"
    original = split_json.read_text()
    split_json.write_text(original.replace("dog", "wolf"))  # as many words, one of them another
    capsys.readouterr()
    for command in (["test", "--ckpt_path", str(checkpoint)], ["fit", "--ckpt_path", "last", "--trainer.max_epochs", "2"]):
        assert main([command[0], *run, *command[1:]]) == 2
        assert re.fullmatch(rf"visattn: error: --ckpt_path {checkpoint}: the data gives other words than the run was "
                            r"trained on: word \d+ is '\w+' here, '\w+' in the checkpoint; give the data settings of "
                            r"that run", capsys.readouterr().err.strip())
    split_json.write_text(original)
    # a data setting that changes the vocabulary is named with the run's value, which Lightning's checkpoint holds
    assert main(["test", *run, "--ckpt_path", str(checkpoint), "--data.min_count", "2"]) == 2
    assert capsys.readouterr().err.strip().endswith("give the data settings of that run: data.init_args.min_count 1 "
                                                    "(here 2)")

    beams, decode = [], captioning.decode
    monkeypatch.setattr(captioning, "decode", lambda model, images, **kw: beams.append(kw["beam_size"]) or
                        decode(model, images, **kw))
    assert main(["test", *run, "--ckpt_path", str(checkpoint), "--model.beam_size", "3"]) == 0
    assert beams and set(beams) == {3}


def test_caption_decodes_as_long_as_the_checkpoints_run_unless_told(tmp_path, monkeypatch, capsys):
    """`caption` (and `evaluate`, which takes the same default) decoded at most 20 words whatever max_len
    the run validated with."""
    import visattn.inference.captioner as captioner
    from test_reliability_inputs import write_captioner_checkpoint

    checkpoint = write_captioner_checkpoint(tmp_path / "sat.ckpt", max_len=3)
    image = tmp_path / "x.png"
    Image.new("RGB", (32, 32), (200, 10, 10)).save(image)
    asked = []
    real_decode = captioner.decode
    monkeypatch.setattr(captioner, "decode", lambda model, images, **kw: asked.append(kw["max_len"]) or
                        real_decode(model, images, **kw))
    for extra in ([], ["--max-len", "6"]):
        assert main(["caption", str(image), "--checkpoint", str(checkpoint), "--json", *extra]) == 0
    assert asked == [3, 6]
    assert len(json.loads(capsys.readouterr().out.splitlines()[0])["caption"].split()) <= 3
    assert captioner.load_captioner("sat_cbam_resnet_scenes.scenes").max_len == 20  # shipped weights record none
    edited = torch.load(checkpoint, weights_only=True)
    edited["hyper_parameters"]["max_len"] = 0
    torch.save(edited, tmp_path / "edited.ckpt")
    with pytest.raises(WeightsError, match=r"edited.ckpt: hyper_parameters.max_len=0; the file was edited or damaged"):
        captioner.load_captioner(checkpoint=str(tmp_path / "edited.ckpt"))
    # save-weights records it, so the weights decode as the checkpoint does
    monkeypatch.setenv("VISATTN_WEIGHTS", str(tmp_path / "weights"))
    assert main(["save-weights", "--checkpoint", str(checkpoint), "--tag", "short", "--out-dir", str(tmp_path / "weights")]) == 0
    assert captioner.load_captioner("sat_cbam_resnet_scenes.short").max_len == 3


def test_a_captioners_validation_decodes_and_scores_with_its_weight_average():
    """Only the classifier task kept a weight average (`ema_decay` was refused as an unknown option here)."""
    torch.manual_seed(0)
    task = average_apart_from_the_trained_weights(
        CaptioningTask(model_kwargs=json.loads(TINY_MODEL), vocab=VOCAB, ema_decay=0.5))
    images = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    decoded, averaged, trained = (task(images), decode(task.ema.module, images, max_len=20),
                                  decode(task.model, images, max_len=20))
    assert all(torch.equal(a, b) for a, b in zip(decoded.attention, averaged.attention, strict=True))
    assert not all(a.shape == b.shape and torch.equal(a, b) for a, b in zip(decoded.attention, trained.attention))
    batch = {"images": images, "captions": torch.tensor([[1, 4, 5, 2], [1, 6, 7, 2]])}
    task.val_metrics.update = lambda *args: None  # the words' scores need references; the loss is what is checked
    with torch.no_grad():
        task.validation_step(batch, 0)
        averaged, trained = task.caption_loss(batch, task.ema.module)[0], task.caption_loss(batch)[0]
    assert torch.isclose(task.val_xent.compute(), averaged) and not torch.isclose(averaged, trained)


def test_weights_of_another_width_and_vocabulary_are_refused_naming_the_shapes():
    """Moving the per-word rows to the new ids must not meet rows of another width first (an index error)."""
    with pytest.raises(WeightsError, match=r"^sat_cbam_resnet_scenes.scenes: weights do not fit ShowAttendTell \(wrong "
                                           r"shape: "):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", VisattnWarning)
            CaptioningTask(model_name="sat_cbam_resnet_scenes.scenes", vocab=VOCAB, model_kwargs={"embed_dim": 32})


def test_validation_cross_entropy_leaves_the_training_label_smoothing_out():
    torch.manual_seed(0)
    task = CaptioningTask(model_kwargs=json.loads(TINY_MODEL), vocab=VOCAB, label_smoothing=0.2).eval()
    batch = {"images": torch.rand(2, 3, 32, 32), "captions": torch.tensor([[1, 4, 5, 6, 2], [1, 4, 7, 2, 0]]),
             "references": [["a red top"], ["a bag"]]}
    with torch.no_grad():
        task.validation_step(batch, 0)
        logits, _ = task.model(batch["images"], batch["captions"])
    plain = torch.nn.functional.cross_entropy(logits.transpose(1, 2), batch["captions"][:, 1:], ignore_index=0)
    assert float(task.val_xent.compute()) == pytest.approx(float(plain), rel=1e-5)
    assert float(task.caption_loss(batch)[0]) != pytest.approx(float(plain), rel=1e-5)  # training smooths


# ------------------------------------------------- the losses the steps optimise (from a mutation review)


def test_the_attention_penalty_of_a_padded_batch_is_that_of_its_captions_alone():
    """Padded steps counted, and alpha_c ignored, had passed: the paper's λ Σ_p (1 - Σ_t α_tp)² over each caption's
    own steps, summed over captions and divided by their words."""
    torch.manual_seed(0)
    task = CaptioningTask(model_kwargs=json.loads(TINY_MODEL), vocab=VOCAB, alpha_c=0.7).eval()
    images = torch.randn(2, 3, 32, 32)
    captions = torch.tensor([[1, 4, 5, 6, 2, 0], [1, 7, 2, 0, 0, 0]])
    with torch.no_grad():
        _, penalty = task.caption_loss({"images": images, "captions": captions})
        total, words = 0.0, 0
        for i, length in enumerate([5, 3]):
            _, alphas = task.model(images[i:i + 1], captions[i:i + 1, :length])  # (1, length-1, P), no padding
            total += (1 - alphas.sum(dim=1)).square().sum()
            words += length - 1
    assert penalty.item() == pytest.approx(0.7 * total.item() / words, rel=1e-5)


def test_the_training_loss_adds_the_attention_penalty():
    torch.manual_seed(0)
    task = CaptioningTask(model_kwargs=json.loads(TINY_MODEL), vocab=VOCAB, alpha_c=1.0).eval()
    batch = {"images": torch.randn(2, 3, 32, 32), "captions": torch.tensor([[1, 4, 5, 6, 2, 0], [1, 7, 2, 0, 0, 0]])}
    with torch.no_grad():
        xent, penalty = task.caption_loss(batch)
        loss = task.training_step(batch, 0)
    assert penalty > 0 and loss.item() == pytest.approx((xent + penalty).item(), rel=1e-6)


def test_validation_and_test_decode_with_the_tasks_length_penalty(monkeypatch):
    """The task passing 1.0 instead of its length_penalty had passed: beam search's own normalisation is tested,
    not that the setting reaches it."""
    import visattn.tasks.captioning as captioning

    seen = []
    monkeypatch.setattr(captioning, "decode", lambda model, images, **kw: seen.append(kw) or None)
    task = CaptioningTask(model_kwargs=json.loads(TINY_MODEL), vocab=VOCAB, beam_size=3, length_penalty=0.6,
                          max_len=7)
    task(torch.randn(1, 3, 32, 32))
    assert seen == [dict(beam_size=3, max_len=7, length_penalty=0.6)]


@pytest.mark.parametrize("setting, value, message", [
    ("max_len", 0, "model.init_args.max_len=0: a caption needs at least one word"),
    ("beam_size", -2, "model.init_args.beam_size=-2: must be >= 1"),
    ("length_penalty", float("nan"), "model.init_args.length_penalty=nan: give a finite number"),
])
def test_decoding_settings_that_give_no_caption_are_refused_when_the_task_is_built(setting, value, message):
    """They were refused at the first validation: after a whole training epoch without a sanity check, whose
    weights no checkpoint kept, and after the run's config.yaml and checkpoint folder were written."""
    from visattn.tasks.captioning import CaptioningTask

    with pytest.raises(ConfigError, match=f"^{re.escape(message)}"):
        CaptioningTask(vocab=["<pad>", "<start>", "<end>", "<unk>", "a"], **{setting: value})
