"""The network inside what wraps it: ``torch.compile``, (Distributed)DataParallel, or a loaded Classifier, Captioner
or Detector, which holds it as ``.model``."""
import reprlib

from torch import nn

from .errors import ConfigError, VisattnError


def as_module(model: object, *, error: type[VisattnError] = ConfigError) -> nn.Module:
    """``model``, or the network a loaded Classifier, Captioner or Detector holds as ``.model``, out of
    ``torch.compile``'s and DataParallel's wrappers (:func:`unwrapped`); ``error``, one line, for anything else."""
    inner = model if isinstance(model, nn.Module) else getattr(model, "model", None)
    if not isinstance(inner, nn.Module):
        raise error(f"model={reprlib.repr(model)}: a {type(model).__name__}, not a torch module; give a model from "
                    "visattn.create_model, or a loaded one (load_classifier)")
    return unwrapped(inner)


def unwrapped(model: nn.Module) -> nn.Module:
    """The model inside ``torch.compile``'s (``_orig_mod``) and (Distributed)DataParallel's (``module``)
    wrappers, nested in any order; ``model`` itself when it is not wrapped."""
    while True:
        if isinstance(model, (nn.DataParallel, nn.parallel.DistributedDataParallel)):
            model = model.module
        elif isinstance(getattr(model, "_orig_mod", None), nn.Module):  # torch._dynamo's OptimizedModule
            model = model._orig_mod
        else:
            return model
