"""Two visattn processes over shared files, and writes cut short by SIGKILL: each file a later run reads is whole,
and two runs into one folder are kept apart or refused in one line."""
import os
import signal
import subprocess
import sys
from pathlib import Path

import yaml
from PIL import Image

from test_data import needs_fashion_mnist
from visattn.cli import main

REPO = Path(__file__).resolve().parents[1]
IMAGEFOLDER_CONFIG = REPO / "configs" / "classification" / "imagefolder_template.yaml"
# A fit without logger nor ModelCheckpoint: Lightning's checkpoints and the config go to trainer.default_root_dir.
BARE_FIT = ["fit", "--config", str(IMAGEFOLDER_CONFIG), "--data.init_args.root", "photos",
            "--model.init_args.model_name", "se_resnet20_cifar", "--data.init_args.img_size", "16",
            "--data.init_args.num_workers", "0", "--trainer.max_epochs", "1", "--trainer.enable_progress_bar", "false",
            "--trainer.accelerator", "cpu", "--trainer.logger", "false", "--trainer.callbacks", "[]"]
RUN_FOLDER = Path("outputs") / "imagefolder_template"

# Runs the Python code argv[2] with PIL's Image.save patched: its argv[1]-th call writes half of the image's bytes to
# the file it is given, flushed to disk, and the process is SIGKILLed, as a crash would.
KILLED_MID_IMAGE = """
import io, os, signal, sys
from PIL import Image

real_save, calls = Image.Image.save, []

def save_half_then_die(self, fp, format=None, **params):
    calls.append(fp)
    if len(calls) == int(sys.argv[1]):
        buffer = io.BytesIO()
        real_save(self, buffer, format="PNG")
        with open(fp, "wb") as out:
            out.write(buffer.getvalue()[: buffer.tell() // 2])
            out.flush()
            os.fsync(out.fileno())
        os.kill(os.getpid(), signal.SIGKILL)
    return real_save(self, fp, format, **params)

Image.Image.save = save_half_then_die
exec(sys.argv[2])
"""

# `visattn fit` (argv[1:]) with the config's save cut off half-way through its text and the process SIGKILLed.
KILLED_MID_CONFIG = """
import os, signal, sys
import jsonargparse
from visattn.cli import main

def save_half_then_die(self, cfg, path, *args, **kwargs):
    text = self.dump(cfg)
    with open(path, "w") as out:
        out.write(text[: len(text) // 2])
        out.flush()
        os.fsync(out.fileno())
    os.kill(os.getpid(), signal.SIGKILL)

jsonargparse.ArgumentParser.save = save_half_then_die
sys.exit(main(sys.argv[1:]))
"""


def _killed(script: str, *args: str, cwd: Path) -> None:
    done = subprocess.run([sys.executable, "-c", script, *args], cwd=cwd, capture_output=True, text=True,
                          timeout=300, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert done.returncode == -signal.SIGKILL, done.stderr[-3000:]


def _whole_pngs(folder: Path) -> dict[str, bytes]:
    """Each PNG of ``folder`` by name, every one decoded to its last pixel (a cut-off one raises)."""
    pngs = {}
    for path in sorted(folder.glob("*.png")):
        with Image.open(path) as image:
            image.load()
        pngs[path.name] = path.read_bytes()
    return pngs


@needs_fashion_mnist
def test_demo_images_killed_mid_write_leave_the_earlier_ones_whole(tmp_path):
    """The demo wrote its test images and scenes in place: killed mid-write, one was left cut off."""
    from visattn.demo import write_test_images

    folder = tmp_path / "images"
    write_test_images(folder, count=3)
    before = _whole_pngs(folder)
    _killed(KILLED_MID_IMAGE, "2", "from pathlib import Path; from visattn.demo import write_test_images; "
            f"write_test_images(Path({str(folder)!r}), 3)",
            cwd=tmp_path)
    assert _whole_pngs(folder) == before


@needs_fashion_mnist
def test_a_scenes_export_killed_midway_leaves_no_json_naming_cut_off_or_other_scenes(tmp_path):
    """export_coco wrote its images in place over an earlier export's, whose JSON stayed: killed midway, that JSON named
    a cut-off PNG, and images of other scenes than its boxes and captions describe, which a training read as whole."""
    from visattn.data.scenes import FashionScenes, export_coco

    out = tmp_path / "coco"
    export_coco(FashionScenes("test", num_scenes=3, seed=0), out)
    _killed(KILLED_MID_IMAGE, "2", "from visattn.data.scenes import FashionScenes, export_coco; "
            f"export_coco(FashionScenes('test', num_scenes=3, seed=1), {str(out)!r})", cwd=tmp_path)
    assert len(_whole_pngs(out / "images")) == 3
    assert sorted(path.name for path in out.glob("*.json")) == []


def _photos(root: Path) -> None:
    from fixtures_images import write_image_folder

    write_image_folder(root / "photos", per_class=4)


def test_a_fit_killed_while_saving_its_config_leaves_no_cut_off_config(tmp_path):
    """The run's config.yaml was written in place: killed mid-write, a cut-off config stayed, which a resume given
    it (fit --config it --ckpt_path last) read as complete, with the settings it lost at their defaults."""
    _photos(tmp_path)
    _killed(KILLED_MID_CONFIG, *BARE_FIT, cwd=tmp_path)
    for config in (tmp_path / RUN_FOLDER).glob("config*.yaml"):
        assert {"trainer", "model", "data"} <= set(yaml.safe_load(config.read_text()) or {}), config.read_text()


def test_two_fits_into_one_run_folder_without_logger_or_checkpoint_folder_is_one_line(tmp_path, monkeypatch, capsys):
    """Without a logger and a ModelCheckpoint dirpath, two fits of one default_root_dir at once had written their
    configs and Lightning's checkpoints (epoch=0-step=2.ckpt, epoch=0-step=2-v1.ckpt) side by side into one folder."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "argv", ["visattn"])
    _photos(tmp_path)
    folder = tmp_path / RUN_FOLDER
    holder = subprocess.Popen([sys.executable, "-c", "import sys; from visattn.fileio import claim_folder; "
                               f"claim_folder({str(folder)!r}, setting='x', task='y'); print('held', flush=True); "
                               "sys.stdin.read()"], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline() == "held\n"
        assert main(BARE_FIT) == 2
        assert capsys.readouterr().err.splitlines()[-1] == (
            f"visattn: error: trainer.default_root_dir {folder}: another visattn fit (process {holder.pid}) is "
            "writing there; wait for it to end, or give this run another folder")
        assert not list(folder.iterdir())
    finally:
        holder.communicate("")
    assert main(BARE_FIT) == 0 and len(list(folder.glob("checkpoints/*.ckpt"))) == 1


def test_a_folder_whose_parent_takes_no_lock_file_is_not_checked(tmp_path, monkeypatch):
    """A fit claims its run folder, also one whose parent it cannot write (default_root_dir: the working folder, in a
    read-only home): the lock file that could not be made there was a traceback, not a run."""
    from visattn import fileio

    real_open = os.open

    def refuse_lock_files(path, *args, **kwargs):
        if str(path).endswith(".visattn.lock"):
            raise PermissionError(13, "Permission denied", str(path))
        return real_open(path, *args, **kwargs)

    monkeypatch.setattr(fileio.os, "open", refuse_lock_files)
    fileio.claim_folder(tmp_path / "run", setting="trainer.default_root_dir", task="visattn fit")
    assert (tmp_path / "run").is_dir()
