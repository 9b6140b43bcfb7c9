"""How weights are named: weight files by suffix, the TAG of ``ARCH.TAG`` and the hub's prefixes.

Torch-free, so that the command line checks a name it is given before it imports torch.
"""
import os
import re
from typing import Optional

PICKLE_SUFFIXES = (".pth", ".pt", ".bin", ".ckpt", ".tar")  # .tar: timm's model_best.pth.tar, checkpoint-N.pth.tar
WEIGHTS_SUFFIXES = (".safetensors", *PICKLE_SUFFIXES)
WEIGHTS_TAG = re.compile(r"[\w-]+")  # the TAG of ARCH.TAG: no dots, slashes, spaces or shell characters
# The hub repositories timm builds models from by name (timm:hf-hub:ORG/REPO), spelled either way.
HUB_PREFIXES = ("hf-hub:", "hf_hub:")
# Weights named for timm or the hub to fetch (timm:NAME, hf-hub:ORG/REPO), not a file or ARCH.TAG
FETCHED_PREFIXES = ("timm:", *HUB_PREFIXES)


def names_a_weights_file(text: str) -> bool:
    """Whether a model argument is the path of a weights file visattn saved, rather than a name (``.SAFETENSORS``
    too: a copy's suffix upper-cased was "not a weights file visattn saved")."""
    return text.lower().endswith(".safetensors")


def model_source_problem(text: str, *, model: str, checkpoint: str) -> Optional[str]:
    """Why ``text`` names no model's weights, with the option that takes it (``model`` and ``checkpoint``: the two
    options' names, ``--model`` or ``model=``); None for a registered name, ARCH.TAG or a weights file visattn saved
    (``FILE.safetensors``, checked where it is read)."""
    hub = next((prefix for prefix in FETCHED_PREFIXES if text.startswith(prefix)), None)
    if hub:  # checked before files: a hub name has a slash, so it would pass for a file's path
        return (f"{text!r}: {hub} names go in a `visattn fit` config (a classifier's model_name, a captioner's "
                f"encoder_name, or pretrained), then {checkpoint} takes the trained checkpoint; {model} takes a "
                "registered name or ARCH.TAG (`visattn models`)")
    if names_a_weights_file(text):
        return None
    if text.lower().endswith(".ckpt"):
        return f"{text!r} is a training checkpoint: pass it as {checkpoint}"
    if "/" in text or os.sep in text or text.lower().endswith(WEIGHTS_SUFFIXES):
        return (f"{text!r} is not a weights file visattn saved: {model} takes a registered name, ARCH.TAG "
                f"(`visattn models`) or the ARCH.TAG.safetensors file `visattn save-weights` wrote; {checkpoint} "
                "takes only checkpoints written by `visattn fit`; save another library's weights as ARCH.TAG in "
                "Python with save_weights(create_model(ARCH, pretrained=FILE), 'weights/ARCH.TAG.safetensors')")
    return None
