"""How weights are named: weight files by suffix, the TAG of ``ARCH.TAG`` and the hub's prefixes.

Torch-free, so that the command line checks a name it is given before it imports torch.
"""
import re

PICKLE_SUFFIXES = (".pth", ".pt", ".bin", ".ckpt", ".tar")  # .tar: timm's model_best.pth.tar, checkpoint-N.pth.tar
WEIGHTS_SUFFIXES = (".safetensors", *PICKLE_SUFFIXES)
WEIGHTS_TAG = re.compile(r"[\w-]+")  # the TAG of ARCH.TAG: no dots, slashes, spaces or shell characters
# The hub repositories timm builds models from by name (timm:hf-hub:ORG/REPO), spelled either way.
HUB_PREFIXES = ("hf-hub:", "hf_hub:")
