"""The ``visattn`` command.

Every error a user can cause (:class:`~visattn.errors.VisattnError`) is printed as one line
naming the thing and the fix, with exit code 2 and no traceback. A warning visattn itself issues
(a skipped unreadable image, ...) is printed as one line too, ``warning: MESSAGE``.
"""
import _thread
import argparse
import codecs
import contextlib
import difflib
import errno
import fnmatch
import functools
import itertools
import json
import math
import os
import re
import signal
import sys
import threading
import time
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterator, Optional, Sequence

from .devices import DEVICE_CHOICES, MAX_WORKERS_PER_CPU, max_workers
from .errors import (ONE_LINE_WARNINGS_ENV, WORKERS_STOPPED, ArgumentError, ConfigError, MissingSplit,
                     NotATrainingCheckpoint, UnknownModelError, VisattnError, VisattnWarning, WeightsError, error_line,
                     one_line, one_line_showwarning)
from .fileio import stdout_closed
from .shipped import shipped_config, shipped_config_names, shipped_folder
from .weight_names import WEIGHTS_TAG, model_source_problem

# Commands import torch and what they use when they run: `visattn --help`, a command's --help and a usage
# mistake are answered in a fraction of a second, not after the seconds torch and timm take to import.
if TYPE_CHECKING:
    from .data.scenes import FashionScenes
    from .terminal_progress import FileProgress

DEFAULT_BEAM_SIZE = 5  # caption, evaluate and save-weights score captioners with this beam width
DEFAULT_MAX_LEN = 20  # and captions of at most this many words
# visattn.explain.METHODS, which imports torch: the parser is built without it
EXPLAIN_METHODS = ("rollout", "attention", "gradcam", "gradcam++", "gradrollout", "gates")
IMAGE_PATHS_HELP = ("image files or folders; a folder's image files (by extension: .jpg, .png, .webp, ...) are read, "
                    "also in its sub-folders, hidden files skipped")


def count_parameters(name: str) -> int:
    """Parameter count of a registered architecture, or of shipped weights ``ARCH.TAG`` as their entry
    builds the model, built on the meta device (no memory, no init cost, no weights read); visattn's own
    architectures' as :data:`PARAMETER_COUNTS` lists them."""
    from .registry import built_by_visattn, model_arguments

    arch, _, kwargs = model_arguments(name)
    listed = _listed_parameter_counts().get(arch) if not kwargs and built_by_visattn(arch) else None
    return listed if listed is not None else _built_parameter_count(arch, kwargs)


def _built_parameter_count(arch: str, kwargs: dict[str, Any]) -> int:
    import torch

    from .registry import create_model

    with torch.device("meta"):
        model = create_model(arch, **kwargs)
    return sum(p.numel() for p in model.parameters())


# visattn's own architectures' parameter counts: `visattn models` read them rather than build some 90 models (2.6 s of
# its 6.8 s); test_registry.py checks each against a build, and parameter_table() writes the file anew.
PARAMETER_COUNTS = Path(__file__).parent / "models" / "parameter_counts.json"


@functools.lru_cache(maxsize=1)
def _listed_parameter_counts() -> dict[str, int]:
    try:
        return json.loads(PARAMETER_COUNTS.read_text(encoding="utf-8"))
    except (OSError, ValueError):  # an install without the file: every count is built
        return {}


def parameter_table() -> dict[str, int]:
    """Every visattn architecture's parameter count, built: what :data:`PARAMETER_COUNTS` holds."""
    from .registry import built_by_visattn, list_models

    return {arch: _built_parameter_count(arch, {}) for arch in list_models() if built_by_visattn(arch)}


def _parameter_count(name: str) -> str:
    """:func:`count_parameters` as the listing shows it; ``?`` and a warning for a model that cannot be built (another
    package's builder with a bug, an index entry with arguments its architecture refuses): the rest still list."""
    try:
        count = count_parameters(name)
    except Exception as err:
        reason = str(err) if isinstance(err, VisattnError) else f"{type(err).__name__}: {err}"
        warnings.warn(f"{name} cannot be built to count its parameters ({one_line(reason)})", VisattnWarning)
        return "?"
    return f"{count / 1e6:.2f}M" if count >= 1e5 else f"{count / 1e3:.1f}K"


def cmd_help(args: argparse.Namespace) -> int:
    """`visattn help [COMMAND]` prints `visattn COMMAND --help`, as git's and pip's `help` do."""
    if args.topic in LIGHTNING_COMMANDS:
        return run_lightning([args.topic, "--help"])
    build_parser().parse_args([args.topic, "--help"] if args.topic else ["--help"])  # prints, and exits
    return 0


def cmd_models(args: argparse.Namespace) -> int:
    from .registry import list_models, list_pretrained, matching_names, model_family, split_model_name

    if args.pretrained:  # one row per ARCH.TAG: its tag's hyperparameters set its size; also of a missing package's
        weights = list_pretrained()
        archs = set(matching_names({split_model_name(full)[0] for full in weights}, args.pattern))
        names = [full for full in weights if split_model_name(full)[0] in archs]
    else:
        names = list_models(args.pattern)
    if not names:
        which = "model with shipped or saved weights" if args.pretrained else "model"
        raise ConfigError(f"no {which} matches {args.pattern!r}; see `visattn models` for the full list")
    if args.pretrained:
        header = ("weights", "family", "params")
        rows = [_weights_row(n) for n in names]
    else:
        tags: dict[str, list[str]] = {}
        for full in list_pretrained():
            arch, tag = split_model_name(full)
            tags.setdefault(arch, []).append(tag)
        header = ("model", "family", "params", "pretrained")
        rows = [(n, model_family(n), _parameter_count(n), ",".join(tags.get(n, [])) or "-")
                for n in names]
    widths = [max(len(r[i]) for r in rows + [header]) for i in range(len(header))]
    for row in [header, *rows]:
        print("  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip())
    return 0


def _weights_row(name: str) -> tuple[str, str, str]:
    """``visattn models --pretrained``'s row of weights ``ARCH.TAG``; ``?`` and a warning saying what to install for
    weights whose architecture no installed package registers (rather than silently left out)."""
    from .registry import model_family

    try:
        family = model_family(name)
    except UnknownModelError as err:
        warnings.warn(one_line(str(err)), VisattnWarning)
        return name, "?", "?"
    return name, family, _parameter_count(name)


def cmd_configs(args: argparse.Namespace) -> int:
    names = [name for name in shipped_config_names() if fnmatch.fnmatch(name, f"*{args.pattern}*")]
    if not names:
        raise ConfigError(f"no shipped config matches {args.pattern!r}; see `visattn configs` for the full list")
    rows = [(name, _first_comment(shipped_folder("configs") / name.removeprefix("configs/"))) for name in names]
    width = max(len(name) for name, _ in rows)
    for name, about in rows:
        print(f"{name.ljust(width)}  {about}".rstrip())
    print(f"(shipped in {shipped_folder('configs')}; `--config NAME` runs one from any folder, and a copy of it "
          "in the working folder under that name comes first)")
    return 0


def _first_comment(path: Path, width: int = 100) -> str:
    """The first sentence of a config's opening comment (what it trains), cut to ``width`` characters at a word."""
    lines = itertools.takewhile(lambda line: line.startswith("#"), path.read_text(encoding="utf-8").splitlines())
    text = " ".join(line.removeprefix("#").strip() for line in lines)
    sentence = re.split(r"(?<=\.)\s", text, maxsplit=1)[0]
    return sentence if len(sentence) <= width else sentence[:width].rsplit(" ", 1)[0] + " ..."


def cmd_demo(args: argparse.Namespace) -> int:
    from .demo import StepStopped, main as demo

    try:
        demo()
    except StepStopped as stopped:
        return stopped.code
    return 0


LIGHTNING_COMMANDS = ("fit", "validate", "test", "predict")


def run_lightning(argv: Sequence[str]) -> int:
    """``visattn fit|validate|test|predict --config FILE [--section.key value ...]`` through LightningCLI."""
    from lightning.pytorch.utilities import rank_zero_only

    from .tasks.lightning_cli import run_lightning_cli

    try:
        with _stop_signals_as_exception():  # from the first moment; Lightning's SIGTERM handling once it runs
            run_lightning_cli(list(argv))
    except _Terminated as terminated:  # before or after Lightning's handling, or SIGHUP, which Lightning leaves
        if rank_zero_only.rank == 0:
            print(terminated.line(), file=sys.stderr)
        return 128 + terminated.signum
    except KeyboardInterrupt as interrupt:  # also after Lightning's shutdown, which run_lightning_cli turns into this
        terminated = getattr(interrupt, "terminated", False)  # SIGTERM, which Lightning stopped the run for
        if getattr(interrupt, "output_closed", False):
            _stdout_to_devnull()
            if argv[0] == "fit" and rank_zero_only.rank == 0:  # quiet as other commands, but for the lost steps
                print(f"visattn: stopped, as its standard output was closed{_resume_hint(argv[0], interrupt)}",
                      file=sys.stderr)
            return 141  # 128 + SIGPIPE, as for `visattn classify photos/ | head`
        if rank_zero_only.rank == 0:  # Ctrl-C reaches every DDP process: one line, not one per process
            stopped = "terminated" if terminated else "interrupted"
            print(f"visattn: {stopped}{_resume_hint(argv[0], interrupt)}", file=sys.stderr)
        return 128 + signal.SIGTERM if terminated else 130
    return 0


def _resume_hint(subcommand: str, interrupt: KeyboardInterrupt) -> str:
    if subcommand != "fit":
        return ""
    resume_from = getattr(interrupt, "resume_from", None)
    if resume_from is not None:
        lost = getattr(interrupt, "steps_lost", 0)
        since = (f" (the {lost} steps since its last checkpoint are trained again)" if lost > 1 else
                 " (the step since its last checkpoint is trained again)" if lost == 1 else "")
        return f"; resume with --ckpt_path {resume_from}{since}"
    return "; no checkpoint was saved yet, so run the same command again to start afresh"


def print_metrics(name: str, args: argparse.Namespace, metrics: dict, settings: str = "") -> None:
    """A readable line (unless --json), then the metrics as one JSON object on the last line; ``settings``
    says how the model ran (a captioner's decoding), in the readable line."""
    if not args.json:
        split = f" {args.split}" if args.split else ""
        how = f" ({settings})" if settings else ""
        scalars = {k: v for k, v in metrics.items() if k not in ("per_class", "randomization")}
        print(f"{name} on {args.dataset}{split}{how}: " + ", ".join(f"{k}={v}" for k, v in scalars.items()))
        for label, scores in metrics.get("per_class", {}).items():
            mistaken = f", most often mistaken for {scores['mistaken_for']}" if scores["mistaken_for"] else ""
            print(one_line(f"  {label}: accuracy {scores['accuracy']} of {scores['n']}{mistaken}"))
        if "randomization" in metrics:
            print_randomization(metrics["randomization"])
    print(json.dumps(metrics))


def print_randomization(test: dict) -> None:
    """The randomization test's lines: its reference, then its steps in the order they were taken."""
    def similarity(scores: dict) -> str:
        return f"spearman {scores['spearman']}, ssim {scores['ssim']}"

    reference = test["another_image"]
    print(f"  {test['mode']} randomization test of {test['method']} maps on {test['n']} images, each against the "
          "trained model's map" + (f" (another image's map: {similarity(reference)})" if reference else "") + ":")
    redrawn = "    re-drawn down to {}" if test["mode"] == "cascading" else "    {} alone re-drawn"
    for step in test["steps"]:
        print(one_line(f"{redrawn.format(step['stage'])}: {similarity(step)}"))


# FashionScenes for classifiers' pointing game: one tinted item, or one gray Fashion-MNIST item on a
# larger canvas; "pairs" adds a second item of another class, a distractor for the other's map.
POINTING_DATASETS = {"fashion-scenes": {},
                     "fashion-mnist-canvas": {"colors": ("white",)},
                     "fashion-mnist-pairs": {"colors": ("white",), "min_items": 2, "max_items": 2, "distinct_classes": True}}

ONE_ITEM_POINTING = [name for name, settings in POINTING_DATASETS.items() if "max_items" not in settings]


def pointing_scenes(dataset: str, split: str, limit: Optional[int]) -> "FashionScenes":
    """The ``limit`` (default 1000) scenes of ``split`` that ``evaluate --dataset DATASET`` scores a classifier's maps on."""
    from .data.scenes import FashionScenes

    settings = {"min_items": 1, "max_items": 1, **POINTING_DATASETS[dataset]}
    return FashionScenes(split, num_scenes=limit or 1000, **settings)


def cmd_evaluate(args: argparse.Namespace) -> int:
    from .inference.captioner import is_captioner
    from .inference.classifier import load_classifier
    from .inference.detector import is_detector

    detector, captioner = is_detector(args.model, args.checkpoint), is_captioner(args.model, args.checkpoint)
    check_evaluate_options(args, "detector" if detector else "captioner" if captioner else "classifier")
    if args.pointing_target is not None and args.dataset not in ONE_ITEM_POINTING:
        raise ConfigError(f"--pointing-target: applies to the one-item scenes {' and '.join(ONE_ITEM_POINTING)}, "
                          f"not {args.dataset}; drop it")
    for flag, needs, option, method in (
            ("--faithfulness-fill", "--faithfulness", args.faithfulness_fill, args.faithfulness),
            ("--randomization-mode", "--randomization", args.randomization_mode, args.randomization)):
        if option is not None and method is None:
            raise ConfigError(f"{flag}: applies with {needs} METHOD; add it, or drop {flag}")
    for flag, method in (("--faithfulness", args.faithfulness), ("--randomization", args.randomization)):
        if method is not None and args.dataset in POINTING_DATASETS:
            raise ConfigError(f"{flag}: scores a classifier's maps on fashion-mnist or an imagefolder: dataset, "
                              f"not the pointing scenes {args.dataset}; drop it, or pick such a dataset")
    if args.pointing_method is not None and args.dataset not in POINTING_DATASETS:
        raise ConfigError(f"--pointing-method: applies to the pointing scenes {', '.join(POINTING_DATASETS)}, "
                          f"not {args.dataset}; drop it")
    if args.max_pixels is not None and not (args.dataset.startswith("imagefolder:") and not (detector or captioner)):
        raise ConfigError(f"--max-pixels: it limits the image files of a classifier's imagefolder: dataset, not "
                          f"{args.dataset}; drop it")
    args.split = evaluation_split(args.dataset, args.split)
    if detector:
        return cmd_evaluate_detector(args)
    if captioner:
        return cmd_evaluate_captioner(args)
    from .inference.classifier_scoring import evaluate_classifier, evaluation_dataset

    classifier = _loaded(load_classifier, args, img_size=args.img_size)
    if args.dataset in POINTING_DATASETS:  # single-object scenes: accuracy and the pointing game
        if args.per_class:
            raise ConfigError(f"--per-class: {args.dataset} scores the pointing game, whose scenes are drawn at "
                              "random; score per-class accuracy on fashion-mnist or an imagefolder: dataset")
        metrics = cmd_evaluate_pointing(classifier, args)
    else:
        for flag, method in (("--faithfulness", args.faithfulness), ("--randomization", args.randomization)):
            if method is not None:
                check_explain_method(classifier, method, flag)
        dataset = evaluation_dataset(args.dataset, args.split, classifier.transform(), classifier.class_names,
                                     max_pixels=max_pixels(args))
        maps_scores = {**(faithfulness_scores(classifier, dataset, args) if args.faithfulness is not None else {}),
                       **(randomization_scores(classifier, dataset, args) if args.randomization is not None else {})}
        metrics = evaluate_classifier(classifier, dataset, batch_size=args.batch_size,
                                      num_workers=args.num_workers, limit=args.limit, per_class=bool(args.per_class))
        metrics.update(maps_scores)
    print_metrics(classifier.name, args, metrics)
    return 0


def evaluation_split(dataset: str, split: Optional[str]) -> Optional[str]:
    """``--split``, ``test`` when not given; ``None`` for a ``coco:`` dataset, whose annotations file is
    the split, and for an image folder without split folders, which is scored whole (a ``--split`` there
    is refused: it would be printed as if it had chosen the images)."""
    from .data.image_folder import SPLIT_FOLDERS, split_folders

    root = None
    if dataset.startswith("imagefolder:"):  # a classifier's dataset
        from .inference.classifier_scoring import imagefolder_root

        root = imagefolder_root(dataset)
    if dataset.startswith("coco:"):
        whole = "a coco: dataset is scored on the annotations file it names; drop --split and name the split's file instead"
    elif root is not None and root.is_dir() and not split_folders(root):
        whole = (f"{root} has no {'/, '.join(SPLIT_FOLDERS)}/ folder, so it is scored whole; drop "
                 "--split, or put its class folders in split folders")
    else:
        return split or "test"
    if split is not None:
        raise ConfigError(f"--split {split}: {whole}")
    return None


# evaluate's options that only one kind of model takes; any other would silently ignore them
MODEL_KIND_OPTIONS = {"beam_size": ("--beam-size", "captioner"), "max_len": ("--max-len", "captioner"),
                      "length_penalty": ("--length-penalty", "captioner"), "meteor": ("--meteor", "captioner"),
                      "img_size": ("--img-size", "classifier"),
                      "pointing_target": ("--pointing-target", "classifier"),
                      "pointing_method": ("--pointing-method", "classifier"),
                      "faithfulness": ("--faithfulness", "classifier"),
                      "faithfulness_fill": ("--faithfulness-fill", "classifier"),
                      "randomization": ("--randomization", "classifier"),
                      "randomization_mode": ("--randomization-mode", "classifier"),
                      "per_class": ("--per-class", "classifier")}


def check_evaluate_options(args: argparse.Namespace, kind: str) -> None:
    for attr, (flag, takes_it) in MODEL_KIND_OPTIONS.items():
        if getattr(args, attr) is not None and kind != takes_it:
            raise ConfigError(f"{flag}: {args.model or args.checkpoint} is a {kind}, and only a {takes_it} "
                              f"takes {flag}; drop it")


def check_explain_method(classifier, method: str, flag: str) -> None:
    from .explain import check_method

    try:
        check_method(classifier.model, method)
    except ArgumentError as err:
        raise err.for_flag(flag) from None


def faithfulness_scores(classifier, dataset, args: argparse.Namespace) -> dict:
    """``evaluate --faithfulness METHOD``: the deletion and insertion areas of the maps, and of random maps."""
    from .explain import evaluate_faithfulness

    return evaluate_faithfulness(classifier, dataset, method=args.faithfulness, fill=args.faithfulness_fill or "black",
                                 batch_size=min(args.batch_size, 64), limit=args.limit)


def randomization_scores(classifier, dataset, args: argparse.Namespace) -> dict:
    """``evaluate --randomization METHOD``: how like the trained model's maps are those of the model re-drawn stage by
    stage, from its output down (``--randomization-mode cascading``) or one stage at a time (``independent``)."""
    from .explain import evaluate_randomization

    return {"randomization": evaluate_randomization(classifier, dataset, method=args.randomization,
                                                    mode=args.randomization_mode or "cascading",
                                                    batch_size=min(args.batch_size, 64), limit=args.limit)}


def cmd_evaluate_pointing(classifier, args: argparse.Namespace) -> dict:
    from .explain import evaluate_class_pointing, evaluate_pointing
    from .explain.attention import gives_attention
    from .inference.classifier_scoring import check_fashion_mnist_labels

    check_fashion_mnist_labels(classifier.class_names, args.dataset)  # the scenes hold Fashion-MNIST items
    if args.pointing_target is not None and args.pointing_method is None and gives_attention(classifier.model):
        raise ConfigError(f"--pointing-target: {classifier.name} is scored with rollout, whose maps do not depend "
                          "on the class; drop it, or add --pointing-method gradrollout (or gradcam)")
    if args.pointing_method == "gradrollout" and not gives_attention(classifier.model):
        raise ConfigError(f"--pointing-method gradrollout: rolls out a ViT's attention, and {classifier.name} gives "
                          "none; use gradcam or gradcam++")
    scenes, batch_size = pointing_scenes(args.dataset, args.split, args.limit), min(args.batch_size, 64)
    if scenes.max_items > 1:
        return evaluate_class_pointing(classifier, scenes, method=args.pointing_method, batch_size=batch_size)
    return evaluate_pointing(classifier, scenes, method=args.pointing_method, batch_size=batch_size,
                             target=args.pointing_target or "label")


def cmd_evaluate_captioner(args: argparse.Namespace) -> int:
    from .inference.caption_scoring import check_java, evaluate_captioner, evaluation_loader
    from .inference.captioner import load_captioner

    if args.meteor:
        check_java("--meteor")
    captioner = _loaded(load_captioner, args)
    loader = evaluation_loader(captioner, args.dataset, args.split, limit=args.limit,
                               batch_size=min(args.batch_size, 64), num_workers=args.num_workers)
    decoding = dict(beam_size=args.beam_size or DEFAULT_BEAM_SIZE, max_len=args.max_len or captioner.max_len,
                    length_penalty=1.0 if args.length_penalty is None else args.length_penalty)
    metrics = evaluate_captioner(captioner, loader, **decoding, meteor=bool(args.meteor))
    print_metrics(captioner.name, args, metrics, settings=", ".join(f"{k} {v}" for k, v in decoding.items()))
    return 0


def cmd_evaluate_detector(args: argparse.Namespace) -> int:
    from .inference.detection_scoring import evaluate_detector, evaluation_loader
    from .inference.detector import load_detector

    detector = _loaded(load_detector, args)
    loader = evaluation_loader(detector, args.dataset, args.split, limit=args.limit,
                               batch_size=min(args.batch_size, 16), num_workers=args.num_workers)
    print_metrics(detector.name, args, evaluate_detector(detector, loader))
    return 0


def cmd_detect(args: argparse.Namespace) -> int:
    from .inference.detector import detect_files, load_detector

    detector = _loaded(load_detector, args)
    with _progress(args) as progress:
        failures, total = detect_files(detector, args.paths, score_threshold=args.score_threshold, out=args.out,
                                       attention_out=args.attention_out, as_json=args.json,
                                       batch_size=args.batch_size, max_pixels=max_pixels(args), progress=progress)
    if failures:
        print(f"visattn: {failures} of {total} files could not be read", file=sys.stderr)
    return 1 if failures else 0


def cmd_caption(args: argparse.Namespace) -> int:
    from .inference.captioner import caption_files, load_captioner

    captioner = _loaded(load_captioner, args)
    with _progress(args) as progress:
        failures, total = caption_files(captioner, args.paths, beam_size=args.beam_size, max_len=args.max_len,
                                        length_penalty=args.length_penalty, attention_out=args.attention_out,
                                        as_json=args.json, batch_size=args.batch_size, max_pixels=max_pixels(args),
                                        progress=progress)
    if failures:
        print(f"visattn: {failures} of {total} files could not be captioned", file=sys.stderr)
    return 1 if failures else 0


def cmd_classify(args: argparse.Namespace) -> int:
    import torch

    from .data.image_io import list_images, run_in_batches
    from .inference.classifier import load_classifier

    classifier = _loaded(load_classifier, args)
    files = list_images(args.paths, allow_empty=False)
    failures = 0
    def predict_batch(images: list[torch.Tensor]) -> torch.Tensor:
        return classifier.predict(torch.stack(images))

    results = run_in_batches(files, args.batch_size, classifier.transform(), predict_batch, max_pixels=max_pixels(args))
    with _progress(args) as progress:
        for item, probs in progress.track(results, total=len(files), batch_size=args.batch_size):
            if item.error is not None:
                failures += 1
                print(item.error_line(args.json))
                continue
            top = probs.topk(min(args.topk, len(probs)))
            preds = [{"label": classifier.class_names[i], "index": int(i), "prob": float(p)}
                     for p, i in zip(top.values, top.indices)]
            print(json.dumps({"file": str(item.path), "predictions": preds}) if args.json
                  else one_line(f"{item.path}: " + ", ".join(f"{p['label']} {p['prob']:.3f}" for p in preds)))
    if failures:
        print(f"visattn: {failures} of {len(files)} files could not be classified", file=sys.stderr)
    return 1 if failures else 0


# explain_image's arguments as `visattn explain` takes them
EXPLAIN_FLAGS = {"method": "--method", "layer": "--layer", "head": "--head", "target_class": "--class",
                 "out": "--out"}


def cmd_explain(args: argparse.Namespace) -> int:
    from .data.image_io import list_images, run_in_batches
    from .explain.overlay import figure_format
    from .fileio import output_paths, prepare_output_file
    from .inference.classifier import load_classifier
    from .weights_index import model_files

    if (args.out is None) == (args.out_dir is None):
        raise ConfigError("explain: give --out FILE for the map of one image, or --out-dir DIR for a map of each "
                          "image file and folder given (DIR/SUB/STEM.png)")
    if args.out is not None and (len(args.paths) > 1 or Path(args.paths[0]).is_dir()):
        raise ConfigError(f"--out {args.out}: names the map of one image file; give --out-dir DIR for a map of each "
                          f"of {', '.join(args.paths[:3])}{' ...' if len(args.paths) > 3 else ''}")
    classifier = _loaded(load_classifier, args)
    if args.out is not None:
        figure_format(args.out)  # a suffix matplotlib cannot write, refused before the work
        files = list_images(args.paths, allow_empty=False)
        maps = [prepare_output_file(args.out, flag="--out", inputs=[*args.paths, *model_files(args.model,
                                                                                             args.checkpoint)],
                                    command="explain")]
    else:
        files = list_images(args.paths, allow_empty=False, exclude=[args.out_dir], rerun_of=["explain"])
        maps = output_paths(files, args.out_dir, flag="--out-dir", commands={"": "explain"})[""]
    failures = 0
    decoded = run_in_batches(files, 1, lambda image: image, lambda images: images, max_pixels=max_pixels(args))
    with _progress(args) as progress:
        for (item, image), out in progress.track(zip(decoded, maps), total=len(files), batch_size=1):
            if item.error is not None:
                failures += 1
                print(item.error_line(args.json))
                continue
            _print_explained(args, item.path, _explained(classifier, image, args, out))
    if failures:
        print(f"visattn: {failures} of {len(files)} files could not be explained", file=sys.stderr)
    return 1 if failures else 0


def _explained(classifier: Any, image: Any, args: argparse.Namespace, out: Path) -> dict[str, Any]:
    """``explain_image`` as ``visattn explain`` asks for it, its argument errors naming the flags."""
    from .explain import explain_image

    try:
        result = explain_image(classifier, image, args.method, out,
                               layer=args.layer, head=args.head, target_class=args.target_class)
    except ArgumentError as err:
        if err.argument == "out" and args.out_dir is not None:  # a map of --out-dir's: --out cannot be given then
            raise ConfigError(f"--out-dir {args.out_dir}: {err.value}: {err.reason.removesuffix(' file')} --out-dir "
                              "folder") from None
        raise err.for_flag(EXPLAIN_FLAGS[err.argument]) from None
    return {**result, "map": str(out)}


def _print_explained(args: argparse.Namespace, path: Any, result: dict[str, Any]) -> None:
    if args.json:
        print(json.dumps({"file": str(path), "label": result["label"], "prob": result["prob"],
                          "explained": result["explained"], "method": args.method, "drawn_on": result["drawn_on"],
                          "map": result["map"]}))
        return
    explained = f" of {result['explained']}" if result["explained"] != result["label"] else ""
    crop = " (of the centre crop the model saw)" if result["drawn_on"] == "centre crop" else ""
    print(one_line(f"{path}: {result['label']} {result['prob']:.3f}; {args.method} map{explained}{crop} written to "
                   f"{result['map']}"))


def _refuse_another_recipe(config: str, task: str, arch: str) -> None:
    """``save-weights --config``, recorded as the weights' recipe, must be a config that trains ``arch`` for ``task``
    (a detection config, a PNG or broken YAML had been recorded for a classifier)."""
    import inspect

    from .registry import split_model_name
    from .tasks.config_files import config_task, read_config

    settings = read_config(shipped_config(config) or Path(config))
    model = settings.get("model") if settings is not None else None
    class_path = model.get("class_path") if isinstance(model, dict) else None
    init_args = model.get("init_args", {}) if isinstance(model, dict) else None
    task_class = config_task(class_path) if isinstance(class_path, str) else None
    if not isinstance(init_args, dict) or task_class is None:
        raise ConfigError(f"--config {config}: no model: class_path naming a task and its init_args, as a config "
                          "`visattn fit` trains from has; give the config that trained the checkpoint, or leave "
                          "--config out")
    default = inspect.signature(task_class).parameters.get("model_name")
    model_name = init_args.get("model_name", default.default if default is not None else None)
    trains = getattr(task_class, "task", None)
    named = split_model_name(model_name)[0] if isinstance(model_name, str) and model_name else None
    if trains != task or named != arch:
        raise ConfigError(f"--config {config}: trains {task_class.__name__} {model_name!r}, not this {task} "
                          f"checkpoint's {arch}; give the config that trained the checkpoint, or leave --config out")


def cmd_save_weights(args: argparse.Namespace) -> int:
    from .fileio import output_errors, prepare_output_dir
    from .inference.captioner import is_captioner, load_captioner
    from .inference.classifier import load_classifier
    from .inference.detector import is_detector, load_detector
    from .weights_folders import weights_dir
    from .weights_saving import refuse_existing_weights, save_weights

    if args.limit is not None and not args.dataset:
        raise ConfigError(f"--limit {args.limit}: it limits the --dataset measurement; give --dataset too, "
                          "or drop --limit")
    # Recorded in the index as the recipe, as given: a shipped config's README name stays valid elsewhere.
    if args.config is not None and not Path(args.config).is_file() and shipped_config(args.config) is None:
        what = "a folder" if Path(args.config).is_dir() else "no such file"
        raise ConfigError(f"--config {args.config}: {what}; give the config that trained the checkpoint, "
                          "or leave --config out")
    # First: the folder may be the $VISATTN_WEIGHTS that loading a run fine-tuned from ARCH.TAG reads the tag from.
    # Its errors name where the folder came from: the variable's, not a --out-dir the user never gave.
    flag = "$VISATTN_WEIGHTS" if args.out_dir is None and os.environ.get("VISATTN_WEIGHTS", "").strip(os.pathsep) \
        else "--out-dir"
    folder = prepare_output_dir(weights_dir() if args.out_dir is None else args.out_dir, flag=flag)
    try:
        task = ("detection" if is_detector(checkpoint=args.checkpoint) else
                "captioning" if is_captioner(checkpoint=args.checkpoint) else "classification")
        load = {"classification": load_classifier, "captioning": load_captioner, "detection": load_detector}[task]
        loaded = _loaded(load, args)
    except NotATrainingCheckpoint as err:  # its fix names --model, which save-weights does not take
        raise WeightsError(f"{err.path}: {err.problem}; save-weights turns the .ckpt files `visattn fit` writes into "
                           "weights (to index a weights file, load it with create_model(ARCH, pretrained=FILE) and "
                           "save it with visattn.save_weights in Python)") from None
    if loaded.arch.startswith("timm:"):  # the index names visattn architectures, which build its weights
        raise ConfigError(f"--checkpoint {args.checkpoint}: a {loaded.arch} run has no visattn architecture to index "
                          "its weights under; use the checkpoint itself (classify, evaluate, explain and export take "
                          "--checkpoint, Python load_classifier(checkpoint=...))")
    if args.config is not None:
        _refuse_another_recipe(args.config, task, loaded.arch)
    path = folder / f"{loaded.arch}.{args.tag}.safetensors"
    if len(path.name.encode()) > 255:  # before the measurement, not "File name too long" after it
        raise ConfigError(f"--tag {args.tag}: the file {loaded.arch}.TAG.safetensors would have a name of "
                          f"{len(path.name.encode())} bytes, and file names take at most 255; give a shorter tag")
    refuse_existing_weights(path, overwrite=args.overwrite)  # before the test-set measurement, which can take minutes
    scores = _test_scores(task, loaded, args.dataset, args.limit) if args.dataset else {}
    metrics = {f"test/{k}": v for k, v in scores.items()}
    with output_errors(folder, flag=flag):  # the loaded object's labels (or vocabulary), preprocessing and task too
        entry = save_weights(loaded, path, overwrite=args.overwrite, dataset=args.dataset,
                             model_kwargs=loaded.model_kwargs, config=args.config, metrics=metrics,
                             **({"default": True} if args.default else {}))
    unscored = "" if metrics else "; it records no metrics: give --dataset to score the test split"
    print(f"wrote {path} (sha256 {entry['sha256'][:12]}...) and its entry in {path.parent / 'index.json'}{unscored}")
    print(json.dumps(metrics))
    return 0


def _test_scores(task: str, loaded: Any, dataset: str, limit: Optional[int]) -> dict[str, Any]:
    """The metrics `visattn evaluate` gives on ``dataset``'s test split (its first ``limit`` samples)."""
    if task == "classification":
        from .inference.classifier_scoring import evaluate_classifier, evaluation_dataset

        try:
            test_set = evaluation_dataset(dataset, "test", loaded.transform(), loaded.class_names)
        except MissingSplit as err:  # its line names --split, which save-weights does not take
            raise ConfigError(f"--dataset {dataset}: save-weights records scores of a test split, and it has no test/ "
                              f"folder (its splits: {', '.join(err.splits)}); give imagefolder:DIR of held-out images, "
                              "or leave --dataset out") from None
        return evaluate_classifier(loaded, test_set, limit=limit)
    if task == "detection":
        from .inference.detection_scoring import evaluate_detector, evaluation_loader

        return evaluate_detector(loaded, evaluation_loader(loaded, dataset, "test", limit=limit))
    from .inference.caption_scoring import evaluate_captioner, evaluation_loader

    loader = evaluation_loader(loaded, dataset, "test", limit=limit)
    scores = evaluate_captioner(loaded, loader, beam_size=DEFAULT_BEAM_SIZE)
    return {**scores, "beam_size": DEFAULT_BEAM_SIZE}


def cmd_export(args: argparse.Namespace) -> int:
    from .export import export_classifier

    try:
        written = export_classifier(args.model, args.checkpoint, out=args.out, opset=args.opset,
                                    dynamic_size=args.dynamic_size)
    except ArgumentError as err:
        if err.argument == "dynamic_size":  # a switch: no value to quote
            raise ConfigError(f"--dynamic-size: {err.reason}: leave --dynamic-size out") from None
        raise err.for_flag("--opset") from None
    replaced = f", replacing an earlier export of {written.replaced}" if written.replaced else ""
    dynamic = "dynamic batch and image size" if args.dynamic_size else "dynamic batch"
    print(f"wrote {written.path} ({args.format}, opset {args.opset}, {dynamic}{replaced}); "
          f"onnxruntime vs PyTorch max |logit difference| {written.difference:.2e}")
    return 0


def positive_int(text: str) -> int:
    """argparse type for counts such as --batch-size: argparse prints the one-line usage error."""
    return _whole_number(text, minimum=1, kind="positive")


def non_negative_int(text: str) -> int:
    """argparse type for counts that may be 0, such as --num-workers."""
    return _whole_number(text, minimum=0, kind="non-negative")


def worker_count(text: str) -> int:
    """argparse type for --num-workers: 0 (load in the main process) up to MAX_WORKERS_PER_CPU per CPU."""
    value = non_negative_int(text)
    if value > max_workers():
        raise argparse.ArgumentTypeError(f"{text!r} workers for {os.cpu_count() or 1} CPUs; give at most "
                                         f"{max_workers()} ({MAX_WORKERS_PER_CPU} per CPU)")
    return value


def unit_interval(text: str) -> float:
    """argparse type for scores such as --score-threshold: a number from 0 to 1 (nan is none)."""
    try:
        value = float(text)
    except ValueError:
        value = float("nan")
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number from 0 to 1")
    return value


def finite_float(text: str) -> float:
    """argparse type for settings such as --length-penalty: any finite number."""
    try:
        value = float(text)
    except ValueError:
        value = float("nan")
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"{text!r} is not a finite number")
    return value


def weights_tag(text: str) -> str:
    """argparse type for --tag: the TAG of the file name ARCH.TAG.safetensors."""
    if not WEIGHTS_TAG.fullmatch(text):
        raise argparse.ArgumentTypeError(f"{text!r} is not a weights tag; use letters, digits, _ and - "
                                         "(no dots or slashes: the file is named ARCH.TAG.safetensors), e.g. fmnist")
    return text


def user_path(text: str) -> str:
    """argparse type for a path: a leading ``~`` is the home folder, as the shell makes it of a word on its own but
    not after ``--out=`` (else a folder named ``~`` is made in the working folder while the
    command says "written to ~/maps")."""
    return os.path.expanduser(text)


def model_name(text: str) -> str:
    """argparse type for --model: a registered name, ARCH.TAG or a visattn weights file (FILE.safetensors); another
    file, a timm: or a hub name is told which option takes it."""
    text = user_path(text)
    problem = model_source_problem(text, model="--model", checkpoint="--checkpoint FILE")
    if problem:
        raise argparse.ArgumentTypeError(problem)
    return text


def _whole_number(text: str, *, minimum: int, kind: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = minimum - 1
    if value < minimum:
        raise argparse.ArgumentTypeError(f"{text!r} is not a {kind} whole number")
    return value


def _add_model_source(parser: argparse.ArgumentParser) -> None:
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--model", type=model_name,
                        help="shipped weights ARCH.TAG (or ARCH for its default weights; see `visattn models`), or "
                             "the path of a file `visattn save-weights` wrote, ARCH.TAG.safetensors")
    source.add_argument("--checkpoint", type=user_path, help="a Lightning checkpoint written by `visattn fit`")


def _add_max_pixels(parser: argparse.ArgumentParser, *, applies: str = "") -> None:
    parser.add_argument("--max-pixels", type=positive_int, default=None, metavar="N",
                        help=f"{applies}refuse image files whose header declares more pixels (width x height), before "
                             "decoding them: a guard against decompression bombs (default: 67108864, 64 Mi)")


def max_pixels(args: argparse.Namespace) -> int:
    """The command's ``--max-pixels`` (``decode_image`` raises Pillow's own limit to it where that is lower, also in
    DataLoader workers; the command puts Pillow's back at its end)."""
    from .data.image_io import DEFAULT_MAX_PIXELS

    return args.max_pixels or DEFAULT_MAX_PIXELS


def _add_progress(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--no-progress", action="store_true",
                        help="draw no progress line (it is drawn on standard error only when that is a terminal and "
                             "standard output no pipe, for more than one batch)")


def _progress(args: argparse.Namespace) -> "FileProgress":
    """The command's progress line over its files, unless ``--no-progress``."""
    from .terminal_progress import FileProgress

    return FileProgress(f"visattn {args.command}", enabled=not args.no_progress)


def _add_device(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--device", default="auto", help=f"where the model runs: {DEVICE_CHOICES}")


# The loaders' arguments that commands take as flags: their errors name the flag (img_size=0 is --img-size 0).
LOADER_FLAGS = {"device": "--device", "img_size": "--img-size"}


def _loaded(load: Callable[..., Any], args: argparse.Namespace, **kwargs: Any) -> Any:
    """``load`` (load_classifier, load_captioner or load_detector) of the command's --model or --checkpoint on its
    --device, an error in an argument the command took as a flag naming the flag."""
    try:
        return load(getattr(args, "model", None), args.checkpoint, device=args.device, **kwargs)
    except ArgumentError as err:
        if err.argument not in LOADER_FLAGS:
            raise
        raise err.for_flag(LOADER_FLAGS[err.argument]) from None


class _OneLineErrorParser(argparse.ArgumentParser):
    """Usage mistakes print one line, like every other user error, instead of the usage text; exit code 2."""

    def error(self, message: str) -> None:
        where = "" if self.prog == "visattn" else f"{self.prog}: "  # the top parser's name starts the line already
        self.exit(2, f"visattn: error: {where}{message}; see `{self.prog} --help`\n")


class _TopParser(_OneLineErrorParser):
    """The ``visattn`` parser: an unknown command is named with the nearest commands (``fti``, ``FIT``: fit)."""

    _args: Sequence[str] = ()  # what the last parse was given, for error()

    def parse_known_args(self, args: Optional[Sequence[str]] = None,  # type: ignore[override]
                         namespace: Optional[argparse.Namespace] = None) -> tuple[argparse.Namespace, list[str]]:
        self._args = list(sys.argv[1:] if args is None else args)
        return super().parse_known_args(self._args, namespace)

    def error(self, message: str) -> None:
        # The command is the first word that is no option: the options before it (--version, --help) take no value.
        given = next((arg for arg in self._args if not arg.startswith("-")), None)
        commands = [name for action in self._actions if isinstance(action, argparse._SubParsersAction)
                    for name in action.choices]
        if given is not None and given not in commands:
            close = difflib.get_close_matches(given.lower(), commands, n=2)
            if close:
                message = f"unknown command {given!r} (did you mean {' or '.join(close)}?)"
        super().error(message)


class _HelpWithDefaults(argparse.HelpFormatter):
    """Each option's help ends with its default, unless that is nothing (None, an off switch) or the help
    already says what happens without the option. argparse's ArgumentDefaultsHelpFormatter also prints
    ``(default: None)`` and ``(default: False)``."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        nothing = action.default is None or action.default is False or action.default == argparse.SUPPRESS
        if nothing or action.required or "default" in text:  # `is`: a default of 0 is one to show
            return text
        return f"{text} (default: %(default)s)" if text else "default: %(default)s"


class _CommandParser(_OneLineErrorParser):
    """A sub-command's parser. argparse reports a missing required option before an unknown one (`--checkpiont X`
    read as "--model or --checkpoint is required") and unknown ones from the top parser (`see visattn --help`);
    here an unknown option wins, named with the nearest of this command's options and this command's --help."""

    _args: Sequence[str] = ()  # what the last parse was given, for error()

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("formatter_class", _HelpWithDefaults)
        # no abbreviations: `save-weights --out w.safetensors` would be read as --out-dir, making a folder of that name
        kwargs.setdefault("allow_abbrev", False)
        super().__init__(*args, **kwargs)

    def parse_known_args(self, args: Optional[Sequence[str]] = None,  # type: ignore[override]
                         namespace: Optional[argparse.Namespace] = None) -> tuple[argparse.Namespace, list[str]]:
        self._args = list(sys.argv[1:] if args is None else args)
        namespace, extras = super().parse_known_args(self._args, namespace)
        if extras:  # here, not in the top parser, so that the message names this command
            self.error(f"unrecognized arguments: {' '.join(extras)}")
        return namespace, extras

    def error(self, message: str) -> None:
        known = self._known_options()
        unknown = _unknown_options(self._args, known)  # a typo can cause the reported error: it comes first
        value = self._dashed_value(unknown[0]) if len(unknown) == 1 and not unknown[0].startswith("--") else None
        if value and not difflib.get_close_matches(unknown[0], known, n=1):  # `--out -x.png`, not a typo
            option, text = value
            super().error(f"{option} {text}: a value starting with '-' is read as an option; give it as "
                          f"{option}={text}")
        super().error(_unrecognized(unknown, known) if unknown else message)

    def _dashed_value(self, name: str) -> Optional[tuple[str, str]]:
        """The option and the argument as given (``-x=1.png``), where the argument read as option ``name``
        follows an option taking a value; else None."""
        at = next((i for i, given in enumerate(self._args) if given.split("=", 1)[0] == name), 0)
        action = self._option_string_actions.get(self._args[at - 1]) if at > 0 else None
        return (self._args[at - 1], self._args[at]) if action is not None and action.nargs is None else None

    def _known_options(self) -> list[str]:
        return [option for action in self._actions for option in action.option_strings]


def _unknown_options(args: Sequence[str], known: Sequence[str]) -> list[str]:
    """The options in ``args`` that are none of ``known``, as argparse reads them: ``--name=value``
    is ``--name``; ``-``, negative numbers, text with spaces and anything after ``--`` are values. A
    prefix of a known option is unknown too: the commands take no abbreviations."""
    unknown = []
    for arg in args:
        if arg == "--":
            break
        name = arg.split("=", 1)[0]
        if arg.startswith("-") and arg != "-" and " " not in arg and not _reads_as_number(arg) \
                and name not in known:
            unknown.append(name)
    return unknown


def _reads_as_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def _unrecognized(unknown: Sequence[str], known: Sequence[str]) -> str:
    """``unrecognized argument --jsn (did you mean --json?)``: the fix is the nearest known option."""
    def meant(name: str) -> Optional[str]:
        close = difflib.get_close_matches(name, known, n=1)
        return close[0] if close else None

    if len(unknown) == 1:
        nearest = meant(unknown[0])
        if nearest is None and os.path.lexists(unknown[0]):  # a file named like an option: `classify -dash.png`
            return f"unrecognized argument {unknown[0]} (a file? name it ./{unknown[0]}, or put -- before it)"
        return f"unrecognized argument {unknown[0]}" + (f" (did you mean {nearest}?)" if nearest else "")
    named = [f"{name} (did you mean {meant(name)}?)" if meant(name) else name for name in unknown]
    return f"unrecognized arguments {', '.join(named)}"


def version_line() -> str:
    """visattn's version with those of the libraries its results depend on, as a bug report wants them."""
    from importlib.metadata import PackageNotFoundError, version

    from . import __version__

    def installed(name: str) -> str:
        try:
            return version(name)
        except PackageNotFoundError:
            return "not installed"

    libraries = ", ".join(f"{name} {installed(name)}" for name in ("torch", "torchvision", "timm", "lightning"))
    return f"visattn {__version__} ({libraries}; Python {sys.version.split()[0]})"


class _PrintVersion(argparse.Action):
    """``--version`` on one line (argparse's own wraps it at the terminal's width)."""

    def __call__(self, parser: argparse.ArgumentParser, *args: Any) -> None:
        print(version_line())
        parser.exit()


def build_parser() -> argparse.ArgumentParser:
    """The ``visattn`` command line: LightningCLI's commands, then one ``_add_*_command`` per command of its own."""
    parser = _TopParser(prog="visattn", description="Vision attention model zoo.")
    parser.add_argument("--version", action=_PrintVersion, nargs=0,
                        help="print visattn's version and its libraries' (torch, torchvision, timm, lightning)")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND", parser_class=_CommandParser)
    for name in LIGHTNING_COMMANDS:  # listed for --help; main() hands them to LightningCLI
        sub.add_parser(name, help=f"{name} from a YAML config (LightningCLI): visattn {name} --config FILE", add_help=False)
    for add_command in (_add_models_command, _add_configs_command, _add_demo_command, _add_evaluate_command,
                        _add_classify_command, _add_caption_command, _add_detect_command, _add_explain_command,
                        _add_save_weights_command, _add_export_command):
        add_command(sub)
    help_command = sub.add_parser("help", help="visattn help COMMAND: the same as visattn COMMAND --help")
    help_command.add_argument("topic", nargs="?", metavar="COMMAND",
                              help="one that visattn --help lists (default: visattn --help)")
    help_command.set_defaults(func=cmd_help)
    for listed in sub._choices_actions:  # `visattn COMMAND --help` opens with what `visattn --help` lists it for
        sub.choices[listed.dest].description = listed.help
    return parser


def _add_models_command(sub: argparse._SubParsersAction) -> None:
    models = sub.add_parser("models", help="list registered models with parameter counts and pretrained tags")
    models.add_argument("pattern", nargs="?", default="*", help="fnmatch pattern, e.g. 'cbam_*'")
    models.add_argument("--pretrained", action="store_true",
                        help="list the weights (ARCH.TAG), those in VISATTN_WEIGHTS folders and the shipped "
                             "ones, each with its own parameter count")
    models.set_defaults(func=cmd_models)


def _add_configs_command(sub: argparse._SubParsersAction) -> None:
    configs = sub.add_parser("configs", help="list the shipped training configs, each with what it trains")
    configs.add_argument("pattern", nargs="?", default="",
                         help="part of a config's name or an fnmatch pattern, e.g. 'fmnist' or 'detection/*' "
                              "(default: all configs)")
    configs.set_defaults(func=cmd_configs)


def _add_demo_command(sub: argparse._SubParsersAction) -> None:
    demo = sub.add_parser("demo", help="train an attention CNN briefly, score, use and explain it, and run the shipped "
                                       "captioner and detectors, writing outputs/demo/ (what `make demo` runs)")
    demo.set_defaults(func=cmd_demo)


def _add_evaluate_command(sub: argparse._SubParsersAction) -> None:
    evaluate = sub.add_parser("evaluate",
                              help="score a classifier, captioner or detector; the last line is the metrics as JSON")
    _add_model_source(evaluate)
    _add_device(evaluate)
    evaluate.add_argument("--dataset", required=True,
                          help="classifiers: fashion-mnist, imagefolder:DIR, or fashion-scenes / fashion-mnist-canvas "
                               "(single items on a 64 px canvas, adding the pointing game) / fashion-mnist-pairs "
                               "(two items: each class's Grad-CAM must find its own); "
                               "captioners and detectors: fashion-scenes or coco:ANN.json:IMAGES; captioners also "
                               "karpathy:SPLITS.json:IMAGES")
    evaluate.add_argument("--split", default=None,
                          help="test (default) or train; val too for fashion-scenes, fashion-mnist-pairs/canvas, "
                               "karpathy: and an imagefolder:DIR with split folders (none for an imagefolder without "
                               "them, which is scored whole, or for coco:, whose file is the split); karpathy: also "
                               "restval, which fit trains on beside train")
    evaluate.add_argument("--json", action="store_true", help="print only the JSON line")
    evaluate.add_argument("--batch-size", type=positive_int, default=256,
                          help="images per forward pass (at most 64 for captioners and the pointing scenes, 16 for "
                               "detectors)")
    evaluate.add_argument("--num-workers", type=worker_count, default=0,
                          help=f"DataLoader worker processes (at most {MAX_WORKERS_PER_CPU} per CPU)")
    evaluate.add_argument("--limit", type=positive_int, default=None,
                          help="score N samples drawn across the dataset with a fixed seed; scenes: the first N "
                               "(default: all of fashion-mnist, imagefolder:, coco: and karpathy:; 1000 scenes, or "
                               "as many as a captioner's or detector's training run scored)")
    evaluate.add_argument("--beam-size", type=positive_int, default=None,
                          help=f"captioners: beam width (1: greedy; default {DEFAULT_BEAM_SIZE})")
    evaluate.add_argument("--max-len", type=positive_int, default=None,
                          help=f"captioners: longest caption in words (default: the checkpoint's max_len, else "
                               f"{DEFAULT_MAX_LEN})")
    evaluate.add_argument("--length-penalty", type=finite_float, default=None,
                          help="captioners: rank hypotheses by log p / length ** this (0: unnormalised; default 1)")
    evaluate.add_argument("--meteor", action="store_true", default=None,
                          help="captioners: add METEOR (pycocoevalcap's; it runs Java)")
    evaluate.add_argument("--img-size", type=int, default=None,
                          help="classifiers: score at this square input size (ViT position embeddings are resampled; "
                               "default: the size it was trained at)")
    evaluate.add_argument("--per-class", action="store_true", default=None,
                          help="classifiers: add each class's accuracy, sample count and the class it was most often "
                               "mistaken for, and the mean over classes (mean_class_accuracy); not on the pointing "
                               "scenes")
    _add_max_pixels(evaluate, applies="classifiers on an imagefolder: dataset: ")
    evaluate.add_argument("--pointing-target", choices=["label", "prediction"], default=None,
                          help="classifiers on fashion-scenes / fashion-mnist-canvas: score the Grad-CAM map of the "
                               "item's class (label, the default, as Zhang et al.'s pointing game does) or of the "
                               "predicted class; not for ViTs scored with rollout, their default")
    evaluate.add_argument("--pointing-method", choices=["gradcam", "gradcam++", "gradrollout"], default=None,
                          help="classifiers on the pointing scenes: the map scored (default: gradcam, and rollout for "
                               "ViTs on the one-item scenes; gradrollout: ViTs only)")
    evaluate.add_argument("--faithfulness", default=None,
                          choices=EXPLAIN_METHODS,
                          help="classifiers on fashion-mnist or an imagefolder: dataset: also score this explain "
                               "method's maps of the predicted class by deletion and insertion (RISE's areas; "
                               "deletion: lower is better), beside random maps'; each image runs 68 more times "
                               "(17 points on each of two curves, for its map and a random one), so --limit it on "
                               "large images")
    evaluate.add_argument("--faithfulness-fill", default=None, choices=("black", "mean", "blur", "imputed"),
                          help="what --faithfulness's deleted pixels become (default: black; imputed: each from its "
                               "neighbours, ROAD's noisy linear imputation, which hides the deleted pixels' shape but "
                               "solves a sparse system per image and step)")
    evaluate.add_argument("--randomization", default=None,
                          choices=EXPLAIN_METHODS,
                          help="classifiers on fashion-mnist or an imagefolder: dataset: also run Adebayo et al.'s "
                               "model parameter randomization test of this explain method: each image's map of the "
                               "predicted class against the maps of copies of the model re-drawn from the output "
                               "down, one more stage at a time (Spearman and SSIM; a method that reads the model "
                               "falls towards 0); one more explanation per stage")
    evaluate.add_argument("--randomization-mode", default=None, choices=("cascading", "independent"),
                          help="--randomization's re-drawing: cascading, from the output down to each stage in turn "
                               "(the default), or independent, each stage alone with the others trained")
    evaluate.set_defaults(func=cmd_evaluate)


def _add_classify_command(sub: argparse._SubParsersAction) -> None:
    classify = sub.add_parser("classify", help="classify image files and folders (recursively)")
    classify.add_argument("paths", type=user_path, nargs="+", metavar="PATH", help=IMAGE_PATHS_HELP)
    _add_model_source(classify)
    _add_device(classify)
    _add_max_pixels(classify)
    _add_progress(classify)
    classify.add_argument("--topk", type=positive_int, default=1, help="labels per file, most likely first")
    classify.add_argument("--json", action="store_true", help="one JSON object per file")
    classify.add_argument("--batch-size", type=positive_int, default=32, help="images per forward pass")
    classify.set_defaults(func=cmd_classify)


def _add_caption_command(sub: argparse._SubParsersAction) -> None:
    caption = sub.add_parser("caption", help="caption image files and folders (recursively)")
    caption.add_argument("paths", type=user_path, nargs="+", metavar="PATH", help=IMAGE_PATHS_HELP)
    _add_model_source(caption)
    _add_device(caption)
    _add_max_pixels(caption)
    _add_progress(caption)
    caption.add_argument("--beam-size", type=positive_int, default=DEFAULT_BEAM_SIZE, help="beam width (1: greedy)")
    caption.add_argument("--max-len", type=positive_int, default=None,
                         help=f"longest caption in words (default: the checkpoint's max_len, else {DEFAULT_MAX_LEN})")
    caption.add_argument("--length-penalty", type=finite_float, default=1.0,
                         help="rank hypotheses by log p / length ** this (0: unnormalised)")
    caption.add_argument("--attention-out", "--out", type=user_path, dest="attention_out", default=None,
                         metavar="DIR",
                         help="write one PNG per image, a panel per word, named after the image (SUB/STEM.png: "
                              "the folders below the inputs' common folder mirrored); "
                              "files of an earlier run are replaced, input images never")
    caption.add_argument("--json", action="store_true", help="one JSON object per file")
    caption.add_argument("--batch-size", type=positive_int, default=32, help="images per beam search")
    caption.set_defaults(func=cmd_caption)


def _add_detect_command(sub: argparse._SubParsersAction) -> None:
    detect = sub.add_parser("detect", help="detect objects in image files and folders (recursively)")
    detect.add_argument("paths", type=user_path, nargs="+", metavar="PATH", help=IMAGE_PATHS_HELP)
    _add_model_source(detect)
    _add_device(detect)
    _add_max_pixels(detect)
    _add_progress(detect)
    detect.add_argument("--score-threshold", type=unit_interval, default=0.5,
                        help="keep detections scoring at least this (0 to 1)")
    detect.add_argument("--out", type=user_path, default=None, metavar="DIR",
                        help="write one PNG per image with the boxes drawn, named after the image (SUB/STEM.png: "
                             "the folders below the inputs' common folder mirrored); "
                             "files of an earlier run are replaced, input images never")
    detect.add_argument("--attention-out", type=user_path, default=None, metavar="DIR",
                        help="one PNG per image, a panel per detection showing where it looked "
                             "(DETR: its query's attention; FCOS: gradient x input of its score); "
                             "named STEM.png, or STEM-attention.png in the --out folder")
    detect.add_argument("--json", action="store_true", help="one JSON object per file")
    detect.add_argument("--batch-size", type=positive_int, default=8, help="images per forward pass")
    detect.set_defaults(func=cmd_detect)


def _add_explain_command(sub: argparse._SubParsersAction) -> None:
    explain = sub.add_parser("explain", help="draw where a classifier looks in an image (map and label, PNG by default)")
    explain.add_argument("paths", type=user_path, nargs="+", metavar="PATH",
                         help="image file (with --out), or image files and folders, searched recursively (--out-dir)")
    _add_model_source(explain)
    _add_device(explain)
    _add_max_pixels(explain)
    _add_progress(explain)
    explain.add_argument("--method", default="gradcam",
                         choices=EXPLAIN_METHODS,
                         help="rollout/attention/gradrollout (ViTs), gradcam/gradcam++ (all), gates (CBAM/BAM/coord/"
                              "NL/GC ResNets)")
    explain.add_argument("--layer", default=None,
                         help="attention: block index (default: the last); gradcam(++): module name, e.g. layer3, or a "
                              "ViT's block index (default: the last stage); gates: module name or index among the "
                              "spatial gates (default: the mean of all); rollout and gradrollout take none")
    explain.add_argument("--head", type=non_negative_int, default=None,
                         help="attention head 0..N-1 (method attention; default: mean)")
    explain.add_argument("--class", dest="target_class", default=None,
                         help="class index or name (gradcam, gradcam++, gradrollout; default: the predicted class)")
    explain.add_argument("--out", type=user_path, default=None,
                         help="the map of one image: .png, .jpg, .jpeg, .svg or .pdf, the format its suffix names "
                              "(PNG without one); a map visattn wrote there is replaced, any other file never (give --out or --out-dir)")
    explain.add_argument("--out-dir", type=user_path, default=None,
                         help="a map of each image, DIR/SUB/STEM.png (the folders below the inputs' common folder "
                              "mirrored; give --out or --out-dir)")
    explain.add_argument("--json", action="store_true",
                         help="one JSON record per file: label, prob, the class explained and the map's path")
    explain.set_defaults(func=cmd_explain)


def _add_save_weights_command(sub: argparse._SubParsersAction) -> None:
    save = sub.add_parser("save-weights", help="turn a training checkpoint (classifier, captioner or detector) "
                          "into ARCH.TAG.safetensors + index entry in the weights folder (see --out-dir)")
    save.add_argument("--checkpoint", type=user_path, required=True, help="training checkpoint (.ckpt) to convert")
    save.add_argument("--tag", required=True, type=weights_tag, help="weights tag, e.g. fmnist")
    save.add_argument("--out-dir", type=user_path, default=None,
                      help="weights folder (default: the first VISATTN_WEIGHTS folder, else ~/.local/share/visattn/"
                           "weights when installed, or weights/ in a source checkout)")
    save.add_argument("--dataset", default=None, help="measure test metrics on this dataset and record them")
    save.add_argument("--limit", type=positive_int, default=None,
                      help="measure on N test samples drawn with a fixed seed, or fashion-scenes' first N (the "
                           "count is recorded as test/n)")
    save.add_argument("--config", type=user_path, default=None,
                      help="the config that trained it, recorded in the index")
    save.add_argument("--default", action="store_true", help="make it the architecture's default weights (an "
                      "--overwrite keeps the mark of the entry it replaces)")
    save.add_argument("--overwrite", action="store_true",
                      help="replace existing weights of the same ARCH.TAG in --out-dir, or hide those of a later "
                           "VISATTN_WEIGHTS folder or the shipped ones")
    _add_device(save)
    save.set_defaults(func=cmd_save_weights)


def _add_export_command(sub: argparse._SubParsersAction) -> None:
    export = sub.add_parser("export", help="export a classifier to ONNX (dynamic batch axis), with labels as metadata")
    _add_model_source(export)
    export.add_argument("--format", choices=["onnx"], default="onnx", help="file format")
    export.add_argument("--out", type=user_path, required=True,
                        help="the file to write, e.g. model.onnx; an earlier export is replaced, any other file never")
    export.add_argument("--opset", type=int, default=17, help="ONNX opset version, 9 to 20 (ViTs: 14 or later)")
    export.add_argument("--dynamic-size", action="store_true",
                        help="the file takes images of any height and width (ResNets; a ViT takes its own size only)")
    export.set_defaults(func=cmd_export)


@contextlib.contextmanager
def one_line_warnings() -> Iterator[None]:
    """Print the warnings visattn issues as ``warning: MESSAGE``, one line, instead of Python's two
    (``FILE:LINE: Category: MESSAGE`` and the source line ``warnings.warn(...)``); other libraries'
    warnings print as they did. Only for the command: the Python API keeps Python's warnings.
    DataLoader workers forked inside inherit it, and spawned ones install it as they import visattn."""
    previous, show = warnings.showwarning, one_line_showwarning(warnings.showwarning)
    previous_env = os.environ.get(ONE_LINE_WARNINGS_ENV)
    warnings.showwarning, os.environ[ONE_LINE_WARNINGS_ENV] = show, "1"
    try:
        yield
    finally:
        if warnings.showwarning is show:  # unless someone replaced it in between: theirs stays
            warnings.showwarning = previous
        if previous_env is None:
            os.environ.pop(ONE_LINE_WARNINGS_ENV, None)
        else:
            os.environ[ONE_LINE_WARNINGS_ENV] = previous_env


def main(argv: Optional[Sequence[str]] = None) -> int:
    if argv is None and _kernel_arguments(sys.argv[1:]):
        print("visattn: error: main() without arguments reads sys.argv, which in a Jupyter kernel are the kernel's "
              "own (-f KERNEL.json); give the command as a list, e.g. main([\"classify\", \"photo.png\"])",
              file=sys.stderr)
        return 2
    argv = list(sys.argv[1:] if argv is None else argv)
    if sys.stdout is None:  # started with `>&-`: print() would drop every result, and the exit code say 0
        print("visattn: error: standard output is closed, and visattn writes its results there; give it a file "
              "(> FILE) or /dev/null", file=sys.stderr)
        return 2
    with _process_settings_restored(), _stderr_or_devnull(), one_line_warnings(), _interrupts_kept() as interrupts:
        for stream in (sys.stdout, sys.stderr):
            # A character the console's encoding lacks (a cp1252 console, a C locale) prints, not as a crash.
            if hasattr(stream, "reconfigure"):
                stream.reconfigure(errors=OUTPUT_ERRORS)
        return interrupts.settled(_run(argv))


def _kernel_arguments(args: Sequence[str]) -> bool:
    """Whether ``args`` are a Jupyter kernel's (its connection file, ``-f FILE`` or VS Code's ``--f=FILE``), not a
    command: ``%run -m visattn ...`` in the kernel sets ``sys.argv`` to the command's."""
    return "ipykernel" in sys.modules and any(arg == "-f" or arg.startswith("--f=") for arg in args)


# What Rich (a table cell cut with an ellipsis) and visattn's lines use, where the output's encoding lacks them: one
# character each, so that Rich's table keeps its columns ("CrossEnt." for a cut "CrossEntropyLoss").
_ASCII_LOOKALIKES = {"\u2026": ".", "\u00d7": "x", "\u2192": ">", "\u2013": "-", "\u2014": "-", "\u2018": "'",
                     "\u2019": "'", "\u201c": '"', "\u201d": '"'}
OUTPUT_ERRORS = "visattn-output"


def _unencodable_output(err: UnicodeEncodeError) -> tuple[Any, int]:
    """How a character the output's encoding lacks is written: a file name's byte that the locale could not decode
    (U+DC80 to U+DCFF, Python's surrogateescape) as that byte, as Python writes it under a C locale and ``ls`` shows
    the name; a typographic one as its ASCII look-alike; any other escaped (``\\xe9``)."""
    char = err.object[err.start]
    if "\udc80" <= char <= "\udcff":
        return bytes([ord(char) - 0xDC00]), err.start + 1
    return _ASCII_LOOKALIKES.get(char) or char.encode("ascii", "backslashreplace").decode("ascii"), err.start + 1


codecs.register_error(OUTPUT_ERRORS, _unencodable_output)


@contextlib.contextmanager
def _stderr_or_devnull() -> Iterator[None]:
    """Standard error closed (``2>&-``): its lines go nowhere, not among the results on standard output, where
    ``print(file=sys.stderr)`` wrote them once ``sys.stderr`` was None."""
    if sys.stderr is not None:
        yield
        return
    with open(os.devnull, "w") as devnull:
        sys.stderr = devnull
        try:
            yield
        finally:
            if sys.stderr is devnull:  # unless someone replaced it in between: theirs stays
                sys.stderr = None


_commands_running, _settings_outside, _SETTINGS = [0], [], threading.Lock()


@contextlib.contextmanager
def _process_settings_restored() -> Iterator[None]:
    """What a command sets for its whole process, put back when it returns to a program that called :func:`main` in
    its own process (a notebook, a script), once no other command of the program still runs: the output streams'
    error handling and Pillow's pixel limit that ``--max-pixels`` raised (else the guard against decompression bombs
    stays raised for the program's own images); and the run folders this command's ``fit`` claimed (else a later
    run there from another process is refused while the program lives)."""
    from .fileio import claims_released

    with _SETTINGS:
        if _commands_running[0] == 0:
            image = sys.modules.get("PIL.Image")
            _settings_outside[:] = [[(stream, stream.errors) for stream in (sys.stdout, sys.stderr)
                                     if hasattr(stream, "reconfigure")], image and image.MAX_IMAGE_PIXELS]
        _commands_running[0] += 1
    try:
        with claims_released():
            yield
    finally:
        with _SETTINGS:
            _commands_running[0] -= 1
            if _commands_running[0] == 0:
                _put_back(*_settings_outside)


def _put_back(streams: list[tuple[Any, str]], pixels: Optional[int]) -> None:
    for stream, errors in streams:
        with contextlib.suppress(ValueError, OSError):  # a stream closed meanwhile
            stream.reconfigure(errors=errors)
    image_io = sys.modules.get("visattn.data.image_io")
    if pixels is not None:  # Pillow was already loaded before the first command, with this limit
        sys.modules["PIL.Image"].MAX_IMAGE_PIXELS = pixels
    elif image_io is not None:  # Pillow was loaded by a command: its limit before --max-pixels raised it
        image_io.restore_pixel_limit()


class _KeptInterrupts:
    """Ctrl-C that lands while Python runs a weakref callback or ``__del__`` (garbage collection, often mid-batch)
    raises KeyboardInterrupt where Python can only print it and go on: the command would run to its end. As
    ``sys.unraisablehook`` this raises such an interrupt in the main thread again, where the command stops as it
    does for any other; :meth:`settled` keeps one still on its way inside the command."""

    def __init__(self, previous_hook: Callable[[Any], None]) -> None:
        self.previous_hook, self.in_flight = previous_hook, False

    def __call__(self, unraisable: Any) -> None:
        if _stopped_workers_failure(unraisable.exc_value):  # a loader's __del__ after a stop: said by the command
            return None
        if not isinstance(unraisable.exc_value, KeyboardInterrupt):
            return self.previous_hook(unraisable)
        self.in_flight = True
        # From a thread of its own, which runs once this one lets go of the GIL: after the hook has returned.
        # (threading.Thread.start would wait for the thread, which would raise the interrupt inside the hook again.)
        try:
            _thread.start_new_thread(_thread.interrupt_main, ())
        except KeyboardInterrupt:  # it can still land at once, inside the hook: send it again
            _thread.start_new_thread(_thread.interrupt_main, ())

    def settled(self, code: int) -> int:
        """``code``, or 130 after the interrupt raised again when the command ended before it arrived."""
        if not self.in_flight or code == 130:
            return code
        try:
            # Wait at most 1 s for it: it arrives within a thread switch, or never if it landed in the hook's last
            # steps (raised there, it is lost); either way the command reports the interrupt.
            for _ in range(100):
                time.sleep(0.01)
        except KeyboardInterrupt:
            pass
        print("visattn: interrupted", file=sys.stderr)
        return 130


@contextlib.contextmanager
def _interrupts_kept() -> Iterator[_KeptInterrupts]:
    hook = _KeptInterrupts(sys.unraisablehook)
    if threading.current_thread() is not threading.main_thread():  # Ctrl-C is the main thread's, not this command's
        yield hook
        return
    sys.unraisablehook = hook
    try:
        yield hook
    finally:
        if sys.unraisablehook is hook:  # unless someone replaced it in between: theirs stays
            sys.unraisablehook = hook.previous_hook


class _Terminated(BaseException):
    """SIGTERM (``kill``, ``timeout``, ``docker stop``, a batch scheduler) or SIGHUP (the terminal closed), raised
    where the command is, so that its ``finally`` blocks run: Python's default ends the process at once, leaving a
    temp file in the output folder."""

    def __init__(self, signum: int) -> None:
        super().__init__(signum)
        self.signum = signum

    def line(self) -> str:
        return "visattn: terminated" + (" (hangup: the terminal closed)" if self.signum == _SIGHUP else "")


_SIGHUP = getattr(signal, "SIGHUP", None)  # not on Windows
_STOP_SIGNALS = tuple(s for s in (signal.SIGTERM, _SIGHUP) if s is not None)
# The stop signals the command received. A SIGTERM sent to the whole process group (slurm's scancel, kill -- -PGID)
# ends torch's DataLoader workers too, and what torch then raises ("DataLoader worker (pid N) is killed by signal:
# Terminated"), in the command or in a loader's __del__, is the stop's: one line, as the stop itself.
_STOPS_RECEIVED: list[int] = []


def _stopped_workers_failure(err: BaseException) -> bool:
    return isinstance(err, RuntimeError) and bool(_STOPS_RECEIVED) and WORKERS_STOPPED.search(str(err)) is not None


@contextlib.contextmanager
def _stop_signals_as_exception() -> Iterator[None]:
    """SIGTERM and SIGHUP raise :class:`_Terminated` in the command, once: a second one while the command cleans up
    is ignored. While a Lightning run is under way, Lightning's SIGTERM handler, which calls this one too, stops it
    at its next step instead (see run_lightning), and SIGHUP is sent on as SIGTERM (Lightning leaves SIGHUP, whose
    exception would leave DDP's other processes waiting). A signal ignored when the command started (``nohup``) stays
    ignored."""
    def terminate(signum: int, frame: Any) -> None:
        if os.getpid() == installed_by:
            _STOPS_RECEIVED.append(signum)
        else:
            # A forked DataLoader worker. A hangup of the whole process group (a closed terminal) is left to the
            # command, which ends its workers with its run (one that died at once failed the command's next batch
            # with "DataLoader worker is killed by signal", a traceback and exit 1); a second ends it by default.
            # A SIGTERM ends it as by default (torch's own handler does so in its loader workers): its parent's
            # terminate() at exit must, and a group's is said by the command (_stopped_workers_failure).
            signal.signal(signum, signal.SIG_DFL)
            if signum != _SIGHUP:
                os.kill(os.getpid(), signum)
            return
        if signal.getsignal(signum) is not terminate:  # Lightning's, which composes it: Lightning stops the run
            return
        if signal.getsignal(signal.SIGTERM) is not terminate:  # SIGHUP in a Lightning run: stopped as by SIGTERM
            os.kill(os.getpid(), signal.SIGTERM)
            return
        for stop in handled:
            signal.signal(stop, signal.SIG_IGN)
        raise _Terminated(signum)

    installed_by = os.getpid()
    try:
        handled = [signum for signum in _STOP_SIGNALS if signal.getsignal(signum) is not signal.SIG_IGN]
        previous = {signum: signal.signal(signum, terminate) for signum in handled}
    except ValueError:  # not the main thread: only it may set handlers
        yield
        return
    try:
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, signal.SIG_DFL if handler is None else handler)  # None: set from C, not Python


def _run(argv: list[str]) -> int:
    try:
        if argv and argv[0] in LIGHTNING_COMMANDS:
            return run_lightning(argv)
        args = build_parser().parse_args(argv)
        func: Callable[[argparse.Namespace], int] = args.func
        with _stop_signals_as_exception():
            code = func(args)
        sys.stdout.flush()  # here, where a full disk is one line, not at the exit's flush
        return code
    except _Terminated as terminated:
        print(terminated.line(), file=sys.stderr)
        return 128 + terminated.signum  # what a shell reports for a command the signal ended (143 for SIGTERM)
    except VisattnError as err:
        print(f"visattn: error: {error_line(err)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("visattn: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # the reader went away, as `visattn classify photos/ | head` does: stop quietly
        if not stdout_closed():  # a pipe or socket of other code's: a failure to show, not an exit 141 saying nothing
            raise
        _stdout_to_devnull()
        return 141  # 128 + SIGPIPE, what a shell reports for a command killed by a closed pipe
    except OSError as err:
        if err.filename is None and err.errno in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG, errno.EIO):
            _stdout_to_devnull()
            print(f"visattn: error: writing standard output: {err.strerror}; send it where there is room",
                  file=sys.stderr)
            return 1
        if err.filename is None:
            raise
        # The last safety net: commands name the option and the fix first (visattn.fileio.output_errors).
        print(f"visattn: error: {one_line(f'{err.filename}: {err.strerror or err}')}", file=sys.stderr)
        return 2
    except (MemoryError, RuntimeError) as err:  # torch's allocators raise RuntimeError (OutOfMemoryError on CUDA)
        if _stopped_workers_failure(err):
            print(_Terminated(_STOPS_RECEIVED[0]).line(), file=sys.stderr)
            return 128 + _STOPS_RECEIVED[0]
        if not _out_of_memory(err):
            raise
        print("visattn: error: out of memory; give fewer or smaller images at once (--batch-size 1, or photos "
              "resized first), a higher --score-threshold for --attention-out, or --device cpu", file=sys.stderr)
        return 1


def _out_of_memory(err: BaseException) -> bool:
    import torch

    return (isinstance(err, (MemoryError, torch.OutOfMemoryError))
            or "can't allocate memory" in str(err) or "out of memory" in str(err).lower())


def _stdout_to_devnull() -> None:
    """After a failed write to standard output: the exit's flush would fail again, and print Python's own error."""
    os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())


if __name__ == "__main__":
    sys.exit(main())
