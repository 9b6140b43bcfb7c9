"""Smoke runs of the benchmark scripts (tiny sizes, one round): they run and print their figures.

Only the output format and internal consistency are checked, never a speed.
"""
import json
import os
import re
import runpy
import subprocess
import sys
from pathlib import Path

import pytest

from test_data import needs_fashion_mnist

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


def run_smoke(capsys, monkeypatch, script: str, *extra: str) -> tuple[str, dict]:
    """Run ``benchmarks/SCRIPT --smoke`` in this process (imports are shared, so it is quick)."""
    monkeypatch.syspath_prepend(str(BENCHMARKS))
    monkeypatch.setattr(sys, "argv", [script, "--smoke", "--threads", "1", *extra])
    runpy.run_path(str(BENCHMARKS / script), run_name="__main__")
    out = capsys.readouterr().out
    lines = out.strip().splitlines()
    assert lines[-2].startswith("note: rounds interleaved A,B,B,A")
    figures = json.loads(lines[-1])
    assert figures["machine"]["threads"] == 1 and figures["machine"]["torch"]
    return out, figures


def _check_ratio(row: dict, numerator: str, denominator: str, out: str, printed: tuple[str, ...] = ()) -> None:
    """The JSON row's ratio is its two rates' quotient, and a printed line shows ``printed`` (default: the two rates
    and the ratio, in that order) as the JSON holds them: the README's rows are copied from the printed table."""
    assert row[numerator] > 0 and row[denominator] > 0
    assert row["ratio"] == pytest.approx(row[numerator] / row[denominator], rel=0.02)
    low, high = row["ratio_spread"]  # the same quotient per round: --smoke's one round gives [ratio, ratio]
    assert low - 0.01 <= row["ratio"] <= high + 0.01  # beam_search.py rounds its ratio to 2 places
    _printed_in_order(out, row, printed or (numerator, denominator, "ratio"))


_NUMBER = re.compile(r"\d+(?:\.(\d+))?")


def _printed_in_order(out: str, row: dict, keys: tuple[str, ...]) -> None:
    """The printed output (not its JSON line) shows ``row``'s values under ``keys`` in that order, each as printed
    (rounded): on one line of a table, or on the lines of a table and its summary."""
    printed = "\n".join(out.strip().splitlines()[:-1])
    numbers = [(float(m.group()), len(m.group(1) or "")) for m in _NUMBER.finditer(printed)]
    start = 0
    for key in keys:
        start = next((i + 1 for i, (value, places) in enumerate(numbers[start:], start)
                      if abs(value - row[key]) <= 0.5 * 10 ** -places + 1e-9), None)
        assert start is not None, f"the printed output does not show {keys} = {[row[k] for k in keys]} in order:\n{out}"


def test_vit_vs_timm(capsys, monkeypatch):
    out, figures = run_smoke(capsys, monkeypatch, "vit_vs_timm.py")
    assert figures["benchmark"] == "vit_vs_timm" and figures["peak_matmul_gflops"] > 0
    # MFU against the faster of torch's matmul and oneDNN's inner product (MKL's alone overstated it 2x on AMD)
    assert figures["peak_gflops"] == max(figures["peak_matmul_gflops"], figures["peak_onednn_gflops"])
    assert [(r["model"], r["mode"]) for r in figures["results"]] == [
        ("vit_tiny_patch16_224", "inference"), ("vit_tiny_patch16_224", "train_step")]
    for row in figures["results"]:
        _check_ratio(row, "visattn_img_s", "timm_img_s", out)
        assert row["max_logit_diff"] < 1e-4, "both models must hold the same weights"
        assert 0 < row["mfu_visattn"] and 0 < row["mfu_timm"]
    inference, train = figures["results"]
    assert train["gflops_per_img"] == pytest.approx(3 * inference["gflops_per_img"], rel=0.1)  # fwd + 2x bwd
    assert "visattn/timm" in out



def test_vit_vs_timm_with_grad_checkpointing(capsys, monkeypatch):
    out, figures = run_smoke(capsys, monkeypatch, "vit_vs_timm.py", "--grad-checkpointing")
    assert figures["grad_checkpointing"] is True
    inference, train = figures["results"]
    _check_ratio(train, "visattn_img_s", "timm_img_s", out)
    # MFU counts the model's FLOPs: the recomputed forward is not among them.
    assert train["gflops_per_img"] == pytest.approx(3 * inference["gflops_per_img"], rel=0.1)
    plain = run_smoke(capsys, monkeypatch, "vit_vs_timm.py")[1]["results"][1]
    # The same model keeps several times less for its backward pass, and as little as timm's.
    assert train["visattn_saved_mib_per_img"] == train["timm_saved_mib_per_img"]
    assert train["visattn_saved_mib_per_img"] * 3 < plain["visattn_saved_mib_per_img"] == plain["timm_saved_mib_per_img"]

def test_onnx_speed(capsys, monkeypatch):
    out, figures = run_smoke(capsys, monkeypatch, "onnx_speed.py")
    assert [r["model"] for r in figures["results"]] == ["vit_tiny_patch16_224", "cbam_resnet20_cifar"]
    for row in figures["results"]:
        _check_ratio(row, "onnxruntime_img_s", "pytorch_img_s", out,
                     printed=("pytorch_img_s", "onnxruntime_img_s", "ratio"))
        assert row["max_logit_diff"] < 1e-3
    assert set(figures["matmul_gflops"]) == {"torch", "onednn", "onnxruntime"}  # each checked against torch's product
    assert all(rate > 0 for rate in figures["matmul_gflops"].values())


def test_non_local(capsys, monkeypatch):
    out, figures = run_smoke(capsys, monkeypatch, "non_local.py")
    (row,) = figures["results"]
    assert row["positions"] == 144 and row["max_diff"] < 1e-3
    for name in ("forward", "train"):
        _check_ratio(row[name], "explicit_ms", "fused_ms", out, printed=("fused_ms", "explicit_ms", "ratio"))
    assert set(row["peak_mib"]) == {"fused", "explicit"} and all(mib >= 0 for mib in row["peak_mib"].values())


def test_data_pipeline(capsys, monkeypatch):
    out, figures = run_smoke(capsys, monkeypatch, "data_pipeline.py")
    pipelines = [r["pipeline"] for r in figures["results"]]
    assert pipelines[0].startswith("decode+train_transform png") and pipelines[1].startswith("decode+train_transform jpeg")
    assert pipelines[2].startswith("train_transform") and pipelines[3] == "fashion-mnist train batches"
    for row in figures["results"]:
        _check_ratio(row, "visattn_img_s", "reference_img_s", out)


def test_lightning_overhead(capsys, monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)
    out, figures = run_smoke(capsys, monkeypatch, "lightning_overhead.py", "--num-workers", "0")
    assert figures["model"] == "cbam_resnet20_cifar" and figures["timed_steps"] == 3
    _check_ratio(figures, "lightning_img_s", "bare_img_s", out)
    assert list(tmp_path.iterdir()) == [], "runs write into temporary folders only"


def test_weights_loading(capsys, monkeypatch):
    out, figures = run_smoke(capsys, monkeypatch, "weights_loading.py")
    assert [(r["model"], r["format"]) for r in figures["results"]] == [
        (model, fmt) for model in ("vit_tiny_patch16_224", "resnet18") for fmt in ("none", "safetensors", "pth")]
    for row in figures["results"]:
        _check_ratio(row, "timm_s", "visattn_s", out, printed=("visattn_s", "timm_s", "ratio"))
        if row["format"] == "none":  # the build alone: random weights, nothing to compare
            assert row["max_logit_diff"] is None and row["mib"] == 0.0
        else:  # one file, the same weights on both sides
            assert row["max_logit_diff"] <= 1e-6 and row["mib"] > 0
    assert "timm/visattn" in out


def test_checkpoint_loading(capsys, monkeypatch):
    out, figures = run_smoke(capsys, monkeypatch, "checkpoint_loading.py")
    assert [r["model"] for r in figures["results"]] == ["vit_tiny_patch16_224", "resnet18"]
    for row in figures["results"]:  # one checkpoint, loaded by each side
        _check_ratio(row, "lightning_s", "visattn_s", out, printed=("visattn_s", "lightning_s", "ratio"))
        assert row["max_logit_diff"] <= 1e-4 and row["mib"] > 0  # visattn's model is channels-last: sums reordered
    assert "Lightning/visattn" in out


def test_command_startup(capsys, monkeypatch):
    out, figures = run_smoke(capsys, monkeypatch, "command_startup.py")
    assert [row["command"] for row in figures["results"]] == ["classify"]
    assert re.fullmatch(r"image\.png: \S+ \d\.\d{3}", figures["results"][0]["line"])  # what classify printed
    _check_ratio(figures["results"][0], "floor_s", "command_s", out, printed=("command_s", "floor_s", "ratio"))
    assert "floor/command" in out and "import torch, torchvision, timm" in figures["floor"]


def test_beam_search(capsys, monkeypatch):
    out, figures = run_smoke(capsys, monkeypatch, "beam_search.py")
    assert figures["benchmark"] == "beam_search" and figures["batch"] == 4 and figures["beam_size"] == 5
    assert figures["identical_captions"] is True  # batching must not change a single word
    _check_ratio(figures, "batched_captions_s", "per_image_captions_s", out)
    assert "batched / per-image" in out
    # The ceiling: one-image decoding's seconds over batched decoding's FLOPs at the faster product rate.
    per_image_seconds = figures["batch"] / figures["per_image_captions_s"]
    peak = max(figures["peak_matmul_gflops"], figures["peak_onednn_gflops"]) * 1e9
    floor_seconds = figures["batched_mflops_per_caption"] * 1e6 * figures["batch"] / peak
    assert figures["ratio_ceiling"] == pytest.approx(per_image_seconds / floor_seconds, rel=0.02)
    assert 10 < figures["batched_mflops_per_caption"] < 1000  # the shipped captioner: about 100


def test_gpu_script_runs_each_benchmark_on_the_device_it_is_given(tmp_path):
    env = {**os.environ, "DEVICE": "cpu", "SMOKE": "1", "PYTHON": sys.executable, "OUT": str(tmp_path)}
    # The timeout only guards against a hang: four fresh interpreters take ~280 s on 2 loaded cores.
    subprocess.run(["bash", str(BENCHMARKS / "gpu.sh")], env=env, check=True, capture_output=True, timeout=900)
    runs = {path.name: json.loads(path.read_text().strip().splitlines()[-1]) for path in tmp_path.glob("*.txt")}
    assert sorted(runs) == ["beam_search.txt", "device_agreement.txt", "vit_vs_timm_bf16.txt", "vit_vs_timm_fp32.txt"]
    assert {run["device"] for run in runs.values()} == {"cpu"}
    agreement = runs["device_agreement.txt"]
    assert agreement["agree"] is True and {r["model"] for r in agreement["results"]} == {
        "se_resnet20_cifar.fmnist_stage4", "vit_tiny_patch4_28.fmnist", "sat_cbam_resnet_scenes.scenes",
        "fcos_se_resnet20_cifar.scenes", "detr_se_resnet20_cifar.scenes"}
    assert runs["vit_vs_timm_bf16.txt"]["precision"] == "bf16" and runs["vit_vs_timm_fp32.txt"]["precision"] == "fp32"
    assert runs["beam_search.txt"]["identical_captions"] is True


@needs_fashion_mnist
@pytest.mark.parametrize("model, dataset, method, scored", [
    ("se_resnet20_cifar.fmnist", "fashion-mnist-canvas", "gradcam", "gradcam of the true class"),
    ("se_resnet20_cifar.fmnist", "fashion-mnist-pairs", "gradcam", "gradcam of each class present"),
    ("se_resnet20_cifar.fmnist", "fashion-mnist-pairs", "gradcam++", "gradcam++ of each class present"),
    ("vit_tiny_patch4_28.fmnist", "fashion-mnist-pairs", "gradrollout", "gradrollout of each class present"),
])
def test_pointing_baseline_scores_the_shipped_weights_against_untrained_copies(model, dataset, method, scored, capsys,
                                                                               monkeypatch):
    monkeypatch.syspath_prepend(str(BENCHMARKS))
    monkeypatch.setattr(sys, "argv", ["pointing_baseline.py", "--model", model, "--dataset", dataset,
                                      "--limit", "6", "--seeds", "2", "--method", method])
    runpy.run_path(str(BENCHMARKS / "pointing_baseline.py"), run_name="__main__")
    figures = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    shipped, *untrained = figures["results"]
    assert {row["pointing_method"] for row in figures["results"]} == {scored}
    assert shipped["model"] == model and figures["pointing"] == shipped["pointing"]
    assert [row["model"] for row in untrained] == [f"{model.split('.')[0]} untrained (seed {s})" for s in (0, 1)]
    assert figures["untrained_pointing"] == [row["pointing"] for row in untrained]
    assert 0.0 < figures["random_peak"] < 0.5 and shipped["n"] >= 6


@needs_fashion_mnist
@pytest.mark.parametrize("model, keys", [
    ("sat_cbam_resnet_scenes.scenes", ("word_map", "caption_mean_map", "brightness")),
    ("detr_se_resnet20_cifar.scenes", ("detection_map", "image_mean_map", "brightness")),
])
def test_pointing_baseline_smoke_run_reports_each_score_as_a_share(model, keys, capsys, monkeypatch):
    monkeypatch.syspath_prepend(str(BENCHMARKS))
    monkeypatch.setattr(sys, "argv", ["pointing_baseline.py", "--model", model, "--limit", "8"])
    runpy.run_path(str(BENCHMARKS / "pointing_baseline.py"), run_name="__main__")
    figures = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert figures["n"] > 0 and set(figures) >= set(keys)
    assert all(0.0 <= figures[key] <= 1.0 for key in keys)


@pytest.mark.parametrize("steps, message", [
    # The bare loop runs one epoch: it timed fewer steps than asked and its rate counted them all.
    ("1000", "--skip 5 + --steps 1000 reach an epoch's 421 batches"),
    # Lightning would write its logs inside its window, the bare loop nothing.
    ("45", "--skip 5 + --steps 45 reach the config's log_every_n_steps 50"),
])
def test_lightning_overhead_refuses_a_window_holding_more_than_training_steps(steps, message, capsys, monkeypatch):
    monkeypatch.syspath_prepend(str(BENCHMARKS))
    monkeypatch.setattr(sys, "argv", ["lightning_overhead.py", "--steps", steps, "--num-workers", "0"])
    with pytest.raises(SystemExit) as exit:
        runpy.run_path(str(BENCHMARKS / "lightning_overhead.py"), run_name="__main__")
    assert exit.value.code == 2
    assert message in capsys.readouterr().err


def test_interleave_alternates_the_order_and_the_spread_pairs_each_rounds_times(monkeypatch):
    """--smoke runs one round, so no smoke run ever checked the alternation or the per-round ratios."""
    monkeypatch.syspath_prepend(str(BENCHMARKS))
    import side_by_side

    calls = []
    times = {"a": iter([9.0, 1.0, 2.0, 4.0, 1.0]), "b": iter([9.0, 2.0, 2.0, 1.0, 3.0])}  # warm-up first
    monkeypatch.setattr(side_by_side, "_timed", lambda run: (None, run()))
    candidates = {name: (lambda name=name: calls.append(name) or next(times[name])) for name in "ab"}
    seconds = side_by_side.interleave(candidates, rounds=4)
    assert "".join(calls) == "ab" + "abbaabba"
    assert seconds == {"a": [1.0, 2.0, 4.0, 1.0], "b": [2.0, 2.0, 1.0, 3.0]}
    assert side_by_side.ratio_spread(seconds, "a", "b") == [0.25, 3.0]  # b's seconds over a's, per round
    assert side_by_side.rate(seconds["a"], 3) / side_by_side.rate(seconds["b"], 3) == pytest.approx(2.0 / 1.5)


def test_a_benchmark_whose_two_sides_disagree_exits_non_zero(monkeypatch, capsys):
    monkeypatch.syspath_prepend(str(BENCHMARKS))
    import side_by_side

    side_by_side.require_agreement(True, "unused")
    with pytest.raises(SystemExit, match="error: captions differ, so timing them would compare different work; "
                                         "no figure is printed"):
        side_by_side.require_agreement(False, "captions differ")


@pytest.mark.parametrize("script", ["vit_vs_timm.py", "onnx_speed.py", "weights_loading.py",
                                    "checkpoint_loading.py", "non_local.py"])
def test_a_benchmark_whose_sides_disagree_prints_no_figure(script, monkeypatch, capsys):
    """The check ran after the figures: a forced mismatch printed visattn/timm 1.053, then the error."""
    monkeypatch.syspath_prepend(str(BENCHMARKS))
    import side_by_side

    monkeypatch.setattr(side_by_side, "LOGIT_TOLERANCE", {"fp32": -1.0, "bf16": -1.0})  # any difference disagrees
    monkeypatch.setattr(sys, "argv", [script, "--smoke", "--threads", "1"])
    with pytest.raises(SystemExit, match="no figure is printed"):
        runpy.run_path(str(BENCHMARKS / script), run_name="__main__")
    out = capsys.readouterr().out
    assert "img/s" not in out and "ratio" not in out and "{" not in out


@needs_fashion_mnist
def test_cell_placement_scores_visattns_placement_and_the_blocks_centres(capsys, monkeypatch):
    import visattn.explain as explain_module
    from visattn.cli import pointing_scenes
    from visattn.explain import CellCentres, evaluate_pointing
    from visattn.inference.classifier import load_classifier

    monkeypatch.syspath_prepend(str(BENCHMARKS))
    monkeypatch.setattr(sys, "argv", ["cell_placement.py", "--smoke", "--threads", "1"])
    runpy.run_path(str(BENCHMARKS / "cell_placement.py"), run_name="__main__")
    visattn_row, blocks_row = json.loads(capsys.readouterr().out.strip().splitlines()[-1])["results"]
    classifier, scenes = load_classifier("se_resnet20_cifar.fmnist"), pointing_scenes("fashion-mnist-canvas", "test", 8)
    assert visattn_row["pointing"] == evaluate_pointing(classifier, scenes)["pointing"]
    monkeypatch.setattr(explain_module, "map_centres", lambda model, cells, pixels: CellCentres.blocks(cells, pixels))
    assert blocks_row["placement"].endswith("(block's centre)")
    assert blocks_row["pointing"] == evaluate_pointing(classifier, scenes)["pointing"]


@needs_fashion_mnist
def test_attention_ablation_scores_each_module_against_the_plain_resnet_over_the_same_seeds(capsys, monkeypatch):
    monkeypatch.syspath_prepend(str(BENCHMARKS))
    monkeypatch.setattr(sys, "argv", ["attention_ablation.py", "--smoke", "--threads", "1",
                                      "--models", "eca_resnet20_cifar", "--seeds", "3", "4"])
    runpy.run_path(str(BENCHMARKS / "attention_ablation.py"), run_name="__main__")
    out = capsys.readouterr().out
    figures = json.loads(out.strip().splitlines()[-1])
    plain, eca = figures["results"]
    assert (plain["model"], eca["model"]) == ("resnet20_cifar", "eca_resnet20_cifar") and figures["seeds"] == [3, 4]
    assert (plain["parameters"], eca["parameters"]) == (830_966, 830_993)  # ECA: a 3-tap convolution in 9 blocks
    assert plain["top1_gain"] == 0.0 and plain["train_speed_ratio"] == 1.0
    for row in (plain, eca):
        for score in ("top1", "pointing"):
            assert len(row[score]) == 2 and all(0.0 <= value <= 1.0 for value in row[score])
            assert row[f"{score}_mean"] == pytest.approx(sum(row[score]) / 2, abs=1e-4)
            assert row[f"{score}_std"] == pytest.approx(abs(row[score][0] - row[score][1]) / 2 ** 0.5, abs=1e-4)
        # 16 scenes of two items: each of the 32 (scene, class) pairs is a hit or a miss
        assert all((value * 32) == pytest.approx(round(value * 32), abs=2e-3) for value in row["pointing"])
    assert eca["top1_gain"] == pytest.approx(eca["top1_mean"] - plain["top1_mean"], abs=2e-4)
    assert 0.0 < eca["train_speed_ratio"] and figures["pointing_scenes"] == 16
    _printed_in_order(out, eca, ("top1_mean", "top1_std", "pointing_mean", "pointing_std", "train_speed_ratio"))
