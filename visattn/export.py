"""Export classifiers to ONNX, and run the exported file with onnxruntime.

The export traces ``model(images)`` with the TorchScript-based exporter (the torch.export-based
one needs ``onnxscript``, which visattn does not depend on). The batch axis stays dynamic; the
image size is fixed unless ``dynamic_size`` asks for any (a ResNet's: the position embeddings of a
ViT are laid out for one grid). The ViT's
default attention path (``F.scaled_dot_product_attention``) exports as plain MatMul/Softmax
nodes from opset 14 on, so the file runs on any onnxruntime build.
"""
from __future__ import annotations

import contextlib
import copy
import importlib
import json
import os
import sys
import warnings
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, NamedTuple, Optional

import numpy as np
import torch
from torch import nn

from .errors import (ArgumentError, ConfigError, ExportMismatchError, VisattnError, WeightsError, caught_warnings,
                     is_count, is_many)
from .modes import eval_mode
from .fileio import atomic_path, output_errors, prepare_output_file
from .layers.patch_embed import fixed_input_size
from .wrapped_models import as_module

__all__ = ["DEFAULT_OPSET", "export_classifier", "export_onnx", "onnx_max_difference", "onnx_session"]

DEFAULT_OPSET = 17  # LayerNormalization is a native op from 17 on
# What the TorchScript-based exporter writes in torch 2.x; outside it, it dumps its graph and fails.
SUPPORTED_OPSETS = range(9, 21)
INPUT_NAME, OUTPUT_NAME = "images", "logits"
# onnxruntime's logits must be within this of PyTorch's, absolute and relative (np.allclose's atol and rtol):
# timm's exporter asserts 3 decimals; float32 kernels in another order differ by about 1e-6.
MATCH_TOLERANCE = 1e-3


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
    dynamic_size: bool = False,
) -> Path:
    """Write ``model`` as an ONNX graph from ``images (batch, C, H, W)`` to ``logits (batch, classes)``.

    Args:
        model: a classifier taking normalised images; it is exported in eval mode and left in
            the mode it was in.
        path: the ``.onnx`` file to write; missing parent folders are created.
        input_size: ``(C, H, W)`` of one image; default: the size its weights were trained at
            (``pretrained_cfg["input_size"]``, as timm's exporter takes it), else its ``input_size``.
        opset: ONNX opset version, 9 to 20; ViTs need 14 or later.
        metadata: stored as string ``metadata_props`` in the file (e.g. labels, preprocessing).
        dynamic_size: the graph takes images of any height and width, as timm's ``--dynamic-size``
            (a ResNet's; a ViT takes the size its position embeddings are laid out for only).

    Returns:
        The path written.
    """
    path = Path(path)
    if path.is_dir():  # else an IsADirectoryError naming the temp file, once the export was done
        raise ArgumentError("path", str(path), "is a folder; give the .onnx file to write")
    # A failed export leaves an existing file as it was, even when the metadata fails after the graph is written.
    with atomic_path(path) as written:
        _write_onnx(model, written, input_size=input_size, opset=opset, metadata=metadata, dynamic_size=dynamic_size)
    return path


def _write_onnx(model: nn.Module, path: Path, *, input_size: Optional[Sequence[int]], opset: int,
                metadata: Optional[Mapping[str, Any]], dynamic_size: bool = False) -> None:
    """:func:`export_onnx`'s graph and metadata, written straight to ``path`` (a caller's temporary file)."""
    _require_onnx()
    model = _eager(model)
    check_opset(opset)
    _require_float32_classifier(model)
    fixed = fixed_input_size(model)
    if dynamic_size and fixed is not None:
        raise ArgumentError("dynamic_size", True, f"{type(model).__name__} takes {fixed[0]}x{fixed[1]} images only (its "
                                                  "position embeddings are laid out for one grid); export it at that "
                                                  "size")
    if dynamic_size and getattr(model, "dynamic_img_size", False):  # visattn's ViTs and timm's
        raise ArgumentError("dynamic_size", True, f"{type(model).__name__} resamples its position embeddings to each "
                                                  "image size in Python, which the traced graph would fix at one; "
                                                  "export it at one size")
    image_axes = {0: "batch", 2: "height", 3: "width"} if dynamic_size else {0: "batch"}
    size = _input_size(model, input_size)
    properties = _metadata_props(metadata or {})
    example = torch.zeros(2, *size)  # batch 2, so the tracer cannot specialise on a batch of one
    with eval_mode(model), caught_warnings(), torch.no_grad(), _graph_dump_silenced():
        # Expected while tracing: the exporter's own deprecation notice, and the shape checks
        # (PatchEmbed's image-size test) that become constants for this fixed input size.
        warnings.simplefilter("ignore", DeprecationWarning)
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        with _opset_refusals(opset):
            torch.onnx.export(
                _Logits(_at_traced_size(model, size)), (example,), str(path), dynamo=False, opset_version=opset,
                input_names=[INPUT_NAME], output_names=[OUTPUT_NAME],
                dynamic_axes={INPUT_NAME: image_axes, OUTPUT_NAME: {0: "batch"}},
            )
    if properties:
        _add_metadata(path, properties)


def _eager(model: nn.Module) -> nn.Module:
    """``model`` (or a loaded classifier's network) as it runs without ``torch.compile``, which the exporter's tracer
    refuses (a RuntimeError about FX): the module inside the wrapper, or a copy of one with modules compiled in place
    (``nn.Module.compile``), which a copy does not keep."""
    model = as_module(model)
    compiled_in_place = any(module._compiled_call_impl is not None for module in model.modules())
    return copy.deepcopy(model) if compiled_in_place else model


def _at_traced_size(model: nn.Module, size: Sequence[int]) -> nn.Module:
    """``model``, or for a ViT of any size traced at another than it was built for, a copy built for that size: it
    resamples its position embeddings in Python with antialiased bicubic interpolation, which ONNX has no operator
    for; the copy holds them resampled the same way, as constants."""
    if not getattr(model, "dynamic_img_size", False) or tuple(size[1:]) == tuple(model.patch_embed.img_size):
        return model
    resized = copy.deepcopy(model)
    resized.set_input_size(img_size=tuple(size[1:]))
    return resized


def check_opset(opset: int) -> None:
    """One line for an opset outside what the exporter writes (it dumps its graph and fails)."""
    if opset not in SUPPORTED_OPSETS:
        raise ArgumentError("opset", opset, f"the exporter writes opsets {SUPPORTED_OPSETS.start} to "
                                            f"{SUPPORTED_OPSETS.stop - 1}; use the default, {DEFAULT_OPSET}")


@contextlib.contextmanager
def _opset_refusals(opset: int) -> Iterator[None]:
    """The exporter or onnxruntime refusing an operator at a chosen ``opset`` as one line naming it: their
    reason when it names the operator (a ViT's attention before 14, onnxruntime's missing kernel), not the
    graph node the exporter quotes otherwise (coordinate attention's pooling at 9). At the default, which every visattn classifier exports
    at, a failure is a bug to report and goes on as it is; so do visattn's and file errors."""
    try:
        yield
    except (VisattnError, OSError):
        raise
    except Exception as err:
        if opset == DEFAULT_OPSET:
            raise
        reason = (str(err).strip().splitlines() or [""])[0]
        if not reason.startswith(("Exporting the operator", "[ONNXRuntimeError]")):
            reason = f"the exporter cannot write this model's graph at opset {opset}"
        raise ArgumentError("opset", opset, f"{reason[:200]}; use the default, {DEFAULT_OPSET}") from None


def _require_float32_classifier(model: nn.Module) -> None:
    """One line for what the exporter cannot trace as a classifier: a captioner or detector (a raw TypeError
    or a message about lists of images) and 16-bit weights (a dtype RuntimeError on the float32 example)."""
    from .inference.checkpoints import require_task

    name = getattr(model, "visattn_name", None)  # set by create_model; a model built elsewhere is taken as it is
    if name:
        require_task(name, "classification")
    dtypes = {p.dtype for p in model.parameters() if p.is_floating_point()} - {torch.float32}
    if dtypes:
        raise ConfigError(f"the model's weights are {', '.join(sorted(map(str, dtypes)))}: ONNX export writes float32 "
                          "graphs; export model.float() (onnxruntime runs them on any CPU)")


def _require_onnx() -> None:
    """One line before the export when the onnx package is missing (an optional dependency): torch's exporter
    would fail deep inside with a traceback."""
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
    # Idle workers sleep instead of spinning: spinning after each run takes a core from whatever runs next
    # in the process (PyTorch's rounds in benchmarks/onnx_speed.py run 1.5x slower on 2 cores).
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
    trained_at = (getattr(model, "pretrained_cfg", None) or {}).get("input_size")
    size = input_size if input_size is not None else trained_at or getattr(model, "input_size", ())
    # a bare 224 (timm's img_size) or a float side was a TypeError, or silently truncated by int()
    sides = tuple(size) if is_many(size) else ()  # a list, torch.Size or numpy array
    if len(sides) != 3 or not all(map(is_count, sides)):
        raise ConfigError(
            f"input_size={input_size!r}: give the (C, H, W) of one image, e.g. input_size=(3, 224, 224)"
        )
    return tuple(int(s) for s in sides)


def exported_source(path: Path) -> Optional[str]:
    """The weights an ONNX model at ``path`` was exported from, when this exporter wrote it (its metadata
    names them with their labels and preprocessing); None for any other file."""
    import onnx

    try:
        props = {prop.key: prop.value for prop in onnx.load(str(path), load_external_data=False).metadata_props}
    except Exception:  # onnx raises protobuf's DecodeError and others on a file that is no ONNX model
        return None
    return props["source"] if {"source", "arch", "labels", "preprocessing"} <= props.keys() else None


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


class Export(NamedTuple):
    """What :func:`export_classifier` wrote: the file, onnxruntime's largest logit difference from PyTorch, and
    the source of the earlier export it replaced (None when there was none)."""

    path: Path
    difference: float
    replaced: Optional[str]


def export_classifier(
    model: Optional[str] = None, checkpoint: Optional[str] = None, *, out: str | os.PathLike,
    opset: int = DEFAULT_OPSET, dynamic_size: bool = False,
) -> Export:
    """``visattn export``: shipped weights ``ARCH.TAG`` or a training checkpoint to ONNX.

    The file carries the labels and preprocessing as metadata. onnxruntime runs it on random images at
    batches 1 and 3 (the graph is traced at 2; with ``dynamic_size`` also at a larger size), and the file is
    kept only when its logits are PyTorch's within :data:`MATCH_TOLERANCE`. ``out`` is checked before the export: a folder, an unwritable place
    or the weights it exports is one line.
    """
    from .inference.classifier import load_classifier
    from .weights_index import model_files

    check_opset(opset)
    classifier = load_classifier(model, checkpoint)
    earlier: dict[Path, Optional[str]] = {}  # each file's source, read once (an ONNX file holds the weights)

    def ours(path: Path) -> bool:
        earlier[path] = exported_source(path)
        return earlier[path] is not None

    # A .pt or .safetensors name would hide an ONNX file.
    out = prepare_output_file(out, flag="--out", inputs=model_files(model, checkpoint), ours=ours, suffix=".onnx")
    metadata = {"source": classifier.name, "arch": classifier.arch, "labels": classifier.class_names,
                "preprocessing": classifier.preprocessing}
    input_size = classifier.preprocessing["input_size"]
    # a failed export or check leaves no file, and an existing one as it was
    with output_errors(out, flag="--out", kind="file"), atomic_path(out) as written:
        _write_onnx(classifier.model, written, input_size=input_size, opset=opset, metadata=metadata,
                    dynamic_size=dynamic_size)
        with _opset_refusals(opset):  # onnxruntime may refuse an operator at the chosen opset too
            session = onnx_session(written)
        difference = checked_difference(classifier.model, session, input_size, dynamic_size=dynamic_size)
    return Export(out, difference, earlier.get(out))


def checked_difference(model: nn.Module, session: Any, input_size: Sequence[int], *, dynamic_size: bool = False) -> float:
    """onnxruntime's largest logit difference from ``model``'s on random images at batches 1 and 3, where a
    batch size the trace kept would show (``dynamic_size``: and at 1.5 times the height and width, where an
    image size it kept would); ExportMismatchError when it is beyond :data:`MATCH_TOLERANCE`."""
    generator = torch.Generator().manual_seed(0)
    channels, height, width = input_size
    shapes = [(1, channels, height, width), (3, channels, height, width)]
    if dynamic_size:
        shapes.append((2, channels, height * 3 // 2, width * 3 // 2))
    largest = 0.0
    for shape in shapes:
        what = f"a batch of {shape[0]}" + (f" at {shape[2]}x{shape[3]}" if shape[2:] != (height, width) else "")
        images = torch.randn(*shape, generator=generator)
        with eval_mode(model), torch.no_grad():
            expected = model(images).numpy()
        try:
            actual = session.run([OUTPUT_NAME], {INPUT_NAME: images.numpy()})[0]
        except Exception as err:  # onnxruntime's own error types, e.g. a graph that kept the traced batch of 2
            raise ExportMismatchError(f"onnxruntime cannot run the exported graph on {what} "
                                      f"({str(err).strip().splitlines()[0][:160]}); nothing was written") from None
        if actual.shape != expected.shape:
            raise ExportMismatchError(f"onnxruntime's logits for {what} have shape {actual.shape}, PyTorch's "
                                      f"{expected.shape}; nothing was written: try another opset")
        if not np.allclose(actual, expected, rtol=MATCH_TOLERANCE, atol=MATCH_TOLERANCE):
            raise ExportMismatchError(
                f"onnxruntime's logits differ from PyTorch's (largest difference {np.abs(actual - expected).max():.3g}, "
                f"tolerance {MATCH_TOLERANCE} absolute and relative, {what}); nothing was written: try another opset")
        largest = max(largest, float(np.abs(actual - expected).max()))
    return largest
