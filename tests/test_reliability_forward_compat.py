"""visattn's own calls raise no deprecation warning: a deprecated API it calls today breaks its users when they
upgrade torch, Lightning, jsonargparse, albumentations, numpy, Pillow or matplotlib.

A warning counts as visattn's when the code that called into the warning library is visattn's: the file the
warning names (a library's ``stacklevel=2`` points at its caller), or, for a warning naming the library's own
line, the first frame outside that library. Libraries calling each other (Lightning calling torch's deprecated
pytree API, or jsonargparse's renamed arguments) are theirs to fix.
"""
import sys
import traceback
import warnings
from contextlib import contextmanager
from itertools import dropwhile
from pathlib import Path
from typing import Iterator, NamedTuple

import numpy as np
import torch

import visattn
from visattn import create_model, load_captioner, load_classifier, load_detector
from visattn.cli import main
from visattn.explain import explain, explain_image

REPO = Path(__file__).resolve().parents[1]
VISATTN_DIR = Path(visattn.__file__).resolve().parent
DEPRECATIONS = (DeprecationWarning, PendingDeprecationWarning, FutureWarning)
QUICK = ["--data.init_args.num_workers", "0", "--data.init_args.batch_size", "8", "--data.init_args.limit", "16",
         "--trainer.enable_progress_bar", "false", "--trainer.accelerator", "cpu", "--trainer.max_steps", "1",
         "--trainer.limit_val_batches", "1"]


class Deprecation(NamedTuple):
    where: str
    message: str
    caller: str  # the package whose code called into the warning library


def _owner(filename: str) -> str:
    """``visattn``, the top folder of an installed package, or else the file's folder."""
    path = Path(filename).resolve()
    if path.is_relative_to(VISATTN_DIR):
        return "visattn"
    for installed in ("site-packages", "dist-packages"):
        if installed in path.parts:
            return path.parts[path.parts.index(installed) + 1]
    return str(path.parent)


def _caller(filename: str) -> str:
    """The package that called into the one warning: read off the stack while the warning is shown."""
    warned_in = _owner(filename)
    files = [frame.f_code.co_filename for frame, _ in traceback.walk_stack(sys._getframe())]
    # Under warnings' frames: the recorder and any showwarning wrapper (the CLI's, which is visattn's); above: the
    # function that raised the warning, then its callers.
    raised = dropwhile(lambda file: file == warnings.__file__, files[files.index(warnings.__file__):])
    owners = [_owner(file) for file in raised]
    if owners[0] != warned_in:  # the library's stacklevel already named its caller
        return warned_in
    return next((owner for owner in owners if owner != warned_in), warned_in)


@contextmanager
def recorded_deprecations() -> Iterator[list[Deprecation]]:
    """Every deprecation warning inside, each time it is raised, with the package that caused it."""
    recorded: list[Deprecation] = []

    def record(message, category, filename, lineno, file=None, line=None):  # warnings.showwarning's signature
        if issubclass(category, DEPRECATIONS):
            recorded.append(Deprecation(f"{filename}:{lineno}", str(message).strip(), _caller(filename)))

    with warnings.catch_warnings():
        for category in DEPRECATIONS:
            warnings.simplefilter("always", category)
        warnings.showwarning = record
        yield recorded


def _from_visattn(recorded: list[Deprecation]) -> list[str]:
    return [f"{warning.where}: {warning.message}" for warning in recorded if warning.caller == "visattn"]


def test_fit_load_explain_caption_and_detect_call_no_deprecated_api(tmp_path, monkeypatch):
    """jsonargparse's dump deprecation (Lightning 2.6's skip_none) had named visattn's dump override as its caller."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("JSONARGPARSE_DEPRECATION_WARNINGS", "all")  # else one per kind per process: order-dependent
    image = np.random.default_rng(0).integers(0, 256, (40, 48, 3), dtype=np.uint8)
    with recorded_deprecations() as recorded:
        config = REPO / "configs" / "classification" / "cbam_resnet_fmnist.yaml"
        assert main(["fit", "--config", str(config), *QUICK]) == 0
        classifier = load_classifier(checkpoint=tmp_path / "outputs" / config.stem / "checkpoints" / "last.ckpt")
        for method in ("gradcam", "gates"):
            explain_image(classifier, image, method, tmp_path / f"{method}.png")
        vit = create_model("vit_tiny_patch4_28", depth=1, num_classes=3).eval()
        for method in ("rollout", "attention"):
            explain(vit, torch.rand(vit.pretrained_cfg["input_size"]), method)
        captioner = load_captioner("sat_cbam_resnet_scenes.scenes")
        captioner.caption(captioner.transform()(image)[None], beam_size=2)
        detector = load_detector("detr_se_resnet20_cifar.scenes")
        detector.detect([torch.from_numpy(image).permute(2, 0, 1)], attention=True)  # (3, H, W) uint8
    assert _from_visattn(recorded) == []


def test_a_deprecation_is_visattns_when_visattn_called_the_deprecated_api():
    """torch.jit.script's FutureWarning names torch's own line: the caller is found on the stack."""
    cell = torch.nn.Linear(2, 2)
    called_in_visattn = compile("torch.jit.script(cell)", str(VISATTN_DIR / "models" / "vit.py"), "exec")
    with recorded_deprecations() as recorded:
        exec(called_in_visattn, {"torch": torch, "cell": cell})
        torch.jit.script(cell)  # from this test: not visattn's
    assert [warning.caller for warning in recorded] == ["visattn", _owner(__file__)]
    assert len(_from_visattn(recorded)) == 1
