"""Registered architectures. Importing a module here registers its entrypoints."""
from . import vit
from . import resnet
from . import show_attend_tell
from . import detection
