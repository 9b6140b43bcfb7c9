"""Registered architectures. Importing a module here registers its entrypoints."""
from . import vit
from . import resnet
