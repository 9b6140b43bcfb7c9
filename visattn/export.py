"""Export classifiers to ONNX, and run the exported file with onnxruntime.

The export traces ``model(images)`` with the TorchScript-based exporter (the torch.export-based
one needs ``onnxscript``, which visattn does not depend on). The batch axis stays dynamic; the
image size is fixed, as the position embeddings of a ViT are laid out for one grid. The ViT's
default attention path (``F.scaled_dot_product_attention``) exports as plain MatMul/Softmax
nodes, so the file runs on any onnxruntime build.
"""
from __future__ import annotations

import contextlib
import importlib
import json
import os
import sys
import warnings
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, Optional

import numpy as np
import torch
from torch import nn

from .errors import ConfigError, VisattnError, WeightsError
from .modes import eval_mode
from .fileio import atomic_path, output_errors, prepare_output_file

__all__ = ["DEFAULT_OPSET", "export_classifier", "export_onnx", "onnx_max_difference", "onnx_session"]

DEFAULT_OPSET = 17  # LayerNormalization is a native op from 17 on
# What the TorchScript-based exporter writes in torch 2.x; outside it, it dumps its graph and fails.
SUPPORTED_OPSETS = range(9, 21)
INPUT_NAME, OUTPUT_NAME = "images", "logits"


@contextlib.contextmanager
def _graph_dump_silenced() -> Iterator[None]:
    """File descriptor 1 to /dev/null: on an operator it cannot write at the opset asked for, the
    exporter's C++ logger prints the whole traced graph (tens of kB) to stdout before it raises."""
    sys.stdout.flush()
    saved = os.dup(1)
    try:
        with open(os.devnull, "w") as null:
            os.dup2(null.fileno(), 1)
        yield
    finally:
        os.dup2(saved, 1)
        os.close(saved)


class _Logits(nn.Module):
    """``model(images)`` alone, so optional arguments such as ``return_attention`` are never traced."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.model(images)


def export_onnx(
    model: nn.Module,
    path: str | os.PathLike,
    *,
    input_size: Optional[Sequence[int]] = None,
    opset: int = DEFAULT_OPSET,
    metadata: Optional[Mapping[str, Any]] = None,
) -> Path:
    """Write ``model`` as an ONNX graph from ``images (batch, C, H, W)`` to ``logits (batch, classes)``.

    Args:
        model: a classifier taking normalised images; it is exported in eval mode and left in
            the mode it was in.
        path: the ``.onnx`` file to write; missing parent folders are created.
        input_size: ``(C, H, W)`` of one image; default: the model's ``input_size`` attribute.
        opset: ONNX opset version.
        metadata: stored as string ``metadata_props`` in the file (e.g. labels, preprocessing).

    Returns:
        The path written.
    """
    path = Path(path)
    # A failed export leaves an existing file as it was (it had been replaced before the metadata failed).
    with atomic_path(path) as written:
        _write_onnx(model, written, input_size=input_size, opset=opset, metadata=metadata)
    return path


def _write_onnx(model: nn.Module, path: Path, *, input_size: Optional[Sequence[int]], opset: int,
                metadata: Optional[Mapping[str, Any]]) -> None:
    """:func:`export_onnx`'s graph and metadata, written straight to ``path`` (a caller's temporary file)."""
    _require_onnx()
    size = _input_size(model, input_size)
    properties = _metadata_props(metadata or {})
    example = torch.zeros(2, *size)  # batch 2, so the tracer cannot specialise on a batch of one
    with eval_mode(model), warnings.catch_warnings(), torch.no_grad(), _graph_dump_silenced():
        # Expected while tracing: the exporter's own deprecation notice, and the shape checks
        # (PatchEmbed's image-size test) that become constants for this fixed input size.
        warnings.simplefilter("ignore", DeprecationWarning)
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        torch.onnx.export(
            _Logits(model), (example,), str(path), dynamo=False, opset_version=opset,
            input_names=[INPUT_NAME], output_names=[OUTPUT_NAME],
            dynamic_axes={INPUT_NAME: {0: "batch"}, OUTPUT_NAME: {0: "batch"}},
        )
    if properties:
        _add_metadata(path, properties)


def _require_onnx() -> None:
    """One line before the export when the onnx package is missing (an optional dependency): torch's exporter
    failed deep inside with a traceback."""
    try:
        importlib.import_module("onnx")
    except ImportError:
        raise ConfigError("exporting to ONNX needs the onnx package; run `pip install 'visattn[export]'`") from None


def onnx_session(path: str | os.PathLike, *, threads: Optional[int] = None) -> Any:
    """An onnxruntime CPU ``InferenceSession`` for ``path`` (``threads``: intra-op threads, default: all)."""
    try:
        import onnxruntime as ort
    except ImportError:
        raise ConfigError("onnxruntime is not installed; run `pip install 'visattn[export]'` to run ONNX files") from None
    if not Path(path).is_file():
        raise WeightsError(f"{path}: ONNX file not found; write it with `visattn export`")
    options = ort.SessionOptions()
    if threads is not None:
        options.intra_op_num_threads = threads
    # Idle workers sleep instead of spinning: spinning after each run took a core from whatever ran next
    # in the process (PyTorch's rounds in benchmarks/onnx_speed.py ran 1.5x slower on 2 cores).
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


@torch.no_grad()
def onnx_max_difference(model: nn.Module, session: Any, images: torch.Tensor) -> float:
    """Largest absolute difference between the ONNX session's logits and the model's (eval mode)."""
    with eval_mode(model):
        expected = model(images).numpy()
    actual = session.run([OUTPUT_NAME], {INPUT_NAME: images.numpy()})[0]
    return float(np.abs(actual - expected).max())


def _input_size(model: nn.Module, input_size: Optional[Sequence[int]]) -> tuple[int, ...]:
    size = tuple(input_size if input_size is not None else getattr(model, "input_size", ()))
    if len(size) != 3 or min(size) < 1:
        raise ConfigError(
            f"input_size={input_size!r}: give the (C, H, W) of one image, e.g. input_size=(3, 224, 224)"
        )
    return tuple(int(s) for s in size)


def _exported_here(path: Path) -> bool:
    """Whether ``path`` is an ONNX model this exporter wrote (its metadata names the source weights and labels)."""
    import onnx

    try:
        keys = {prop.key for prop in onnx.load(str(path), load_external_data=False).metadata_props}
    except Exception:  # onnx raises protobuf's DecodeError and others on a file that is no ONNX model
        return False
    return {"source", "arch", "labels", "preprocessing"} <= keys


def _metadata_props(metadata: Mapping[str, Any]) -> dict[str, str]:
    """``metadata`` as ONNX's string properties: strings as they are, anything else as JSON."""
    try:
        return {str(key): value if isinstance(value, str) else json.dumps(value) for key, value in metadata.items()}
    except (TypeError, ValueError) as err:
        raise ConfigError(f"metadata: {err}; give strings, numbers, lists and dicts of them") from None


def _add_metadata(path: Path, properties: Mapping[str, str]) -> None:
    import onnx

    proto = onnx.load(str(path))
    for key, value in properties.items():
        proto.metadata_props.add(key=key, value=value)
    onnx.save(proto, str(path))


def export_classifier(
    model: Optional[str] = None, checkpoint: Optional[str] = None, *, out: str | os.PathLike,
    opset: int = DEFAULT_OPSET,
) -> tuple[Path, float]:
    """``visattn export``: shipped weights ``ARCH.TAG`` or a training checkpoint to ONNX.

    The file carries the labels and preprocessing as metadata. Returns the path and the largest
    logit difference between onnxruntime and PyTorch on a random batch of two images. ``out`` is
    checked before the export: a folder, an unwritable place or the weights it exports is one line.
    """
    from .pretrained import model_files
    from .tasks.classification import load_classifier

    if opset not in SUPPORTED_OPSETS:
        raise ConfigError(f"--opset {opset}: the exporter writes opsets {SUPPORTED_OPSETS.start} to "
                          f"{SUPPORTED_OPSETS.stop - 1}; use the default --opset {DEFAULT_OPSET}")
    classifier = load_classifier(model, checkpoint)
    # A .pt or .safetensors name would hide an ONNX file.
    out = prepare_output_file(out, flag="--out", inputs=model_files(model, checkpoint), ours=_exported_here,
                              suffix=".onnx")
    metadata = {"source": classifier.name, "arch": classifier.arch, "labels": classifier.class_names,
                "preprocessing": classifier.preprocessing}
    input_size = classifier.preprocessing["input_size"]
    images = torch.randn(2, *input_size, generator=torch.Generator().manual_seed(0))
    # a failed export leaves no file, and an existing one as it was
    with output_errors(out, flag="--out", kind="file"), atomic_path(out) as written:
        session = _export_at_opset(classifier.model, written, input_size=input_size, opset=opset, metadata=metadata)
        difference = onnx_max_difference(classifier.model, session, images)
    return out, difference


def _export_at_opset(model: nn.Module, path: Path, *, input_size: Sequence[int], opset: int,
                     metadata: Mapping[str, Any]) -> Any:
    """Export and open the file in onnxruntime; the exporter or onnxruntime refusing a chosen opset
    for some operator is one line (file errors go on to the caller)."""
    try:
        _write_onnx(model, path, input_size=input_size, opset=opset, metadata=metadata)  # inside its atomic_path
        return onnx_session(path)
    except (VisattnError, OSError):
        raise
    except Exception as err:
        if opset == DEFAULT_OPSET:
            raise  # every visattn classifier exports at the default: a failure there is a bug to report
        reason = (str(err).strip().splitlines() or [type(err).__name__])[0]
        raise ConfigError(f"--opset {opset}: {reason[:200]}; use the default --opset {DEFAULT_OPSET}") from None
