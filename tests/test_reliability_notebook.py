"""visattn from a Jupyter notebook, without Jupyter: a kernel's own ``sys.argv``, its SIGINT handler, and what a cell
shows of a returned figure."""
import io
import signal
import sys
import types

import numpy as np
import pytest
from PIL import Image

from visattn.cli import main
from visattn.explain.overlay import overlay_figure, save_overlay, word_panels_figure

KERNEL_ARGV = ["/venv/lib/python3.11/site-packages/ipykernel_launcher.py", "-f", "/tmp/kernel-1a2b.json"]
VSCODE_KERNEL_ARGV = ["/venv/lib/python3.11/site-packages/ipykernel_launcher.py", "--f=/tmp/kernel-v2-1.json"]


@pytest.mark.parametrize("kernel_argv", [KERNEL_ARGV, VSCODE_KERNEL_ARGV])
def test_main_without_arguments_in_a_kernel_is_one_line_not_the_kernels_arguments(kernel_argv, monkeypatch, capsys):
    """In a kernel ``main()`` parsed the kernel's ``-f kernel.json`` ("invalid choice: '/tmp/kernel-1a2b.json'")
    and raised SystemExit."""
    monkeypatch.setitem(sys.modules, "ipykernel", types.ModuleType("ipykernel"))
    monkeypatch.setattr(sys, "argv", kernel_argv)
    assert main() == 2
    out, err = capsys.readouterr()
    assert out == ""
    assert err == ("visattn: error: main() without arguments reads sys.argv, which in a Jupyter kernel are the "
                   "kernel's own (-f KERNEL.json); give the command as a list, e.g. "
                   "main([\"classify\", \"photo.png\"])\n")


def test_a_commands_own_argv_in_a_kernel_is_still_read(monkeypatch, capsys):
    """``%run -m visattn.cli models`` in a kernel sets ``sys.argv`` to the command's: ``main()`` runs it."""
    monkeypatch.setitem(sys.modules, "ipykernel", types.ModuleType("ipykernel"))
    monkeypatch.setattr(sys, "argv", ["/repo/visattn/cli.py", "models", "resnet18*"])
    assert main() == 0
    assert "resnet18" in capsys.readouterr().out


def _png(data: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))


def test_a_figure_visattn_draws_shows_in_a_notebook_as_the_png_it_saves(tmp_path):
    """A figure returned to a cell showed as the text ``<Figure size 750x360 with 3 Axes>``: visattn draws without
    pyplot, whose inline backend alone registers matplotlib's notebook display. IPython shows ``_repr_png_``."""
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (28, 28, 3), dtype=np.uint8)
    heatmap = rng.random((7, 7))
    shown = _png(overlay_figure(image, heatmap, title="Bag (0.83), gradcam")._repr_png_())
    save_overlay(image, heatmap, tmp_path / "map.png", title="Bag (0.83), gradcam")
    assert shown.shape == (360, 750, 3)
    np.testing.assert_array_equal(shown, np.asarray(Image.open(tmp_path / "map.png").convert("RGB")))
    panels = word_panels_figure(image, ["a", "dog"], [rng.random((4, 4)), rng.random((4, 4))])
    assert _png(panels._repr_png_()).shape[:2] == tuple(int(side * 100) for side in panels.get_size_inches()[::-1])


def test_a_command_in_a_kernel_keeps_the_kernels_interrupt_handler_and_is_stopped_by_it(tmp_path, monkeypatch,
                                                                                          capsys):
    """A kernel's interrupt button is a SIGINT to the kernel's handler: a command run in the kernel stops at it with
    its one line and exit code 130, and leaves the kernel's handler and ``sys.unraisablehook`` in place."""
    from visattn.inference.classifier import Classifier

    for i in range(3):
        Image.fromarray(np.full((28, 28, 3), 40 * i, np.uint8)).save(tmp_path / f"{i}.png")
    interrupts = []

    def kernel_handler(signum, frame):  # as ipykernel's: the interrupted cell gets a KeyboardInterrupt
        interrupts.append(signum)
        raise KeyboardInterrupt

    predict = Classifier.predict

    def predict_then_interrupt(self, images):  # the button pressed while the first batch runs
        signal.raise_signal(signal.SIGINT)
        return predict(self, images)

    monkeypatch.setattr(Classifier, "predict", predict_then_interrupt)
    previous, hook = signal.signal(signal.SIGINT, kernel_handler), sys.unraisablehook
    try:
        code = main(["classify", str(tmp_path), "--model", "se_resnet20_cifar.fmnist", "--batch-size", "1"])
        assert (signal.getsignal(signal.SIGINT), sys.unraisablehook) == (kernel_handler, hook)
    finally:
        signal.signal(signal.SIGINT, previous)
    assert code == 130 and interrupts == [signal.SIGINT]
    out, err = capsys.readouterr()
    assert out == "" and err == "visattn: interrupted\n"
