"""Exporting a fine-tuned model (backbone + head) for inference without facerep's model code.

``onnx``: the legacy TorchScript-based ``torch.onnx.export`` (``dynamo=False``: the dynamo exporter needs
``onnxscript``) at an opset from :data:`MIN_OPSET` (the ViTs' fused attention) to the newest torch writes,
one input ``image`` ``[N, 3, S, S]`` (normalised as the spec says) with a dynamic batch axis,
one output (:class:`~facerep.apps.predict.ExportModel`: the task's ``export_output``, e.g. ``landmarks``
or ``logits``). ``torchscript``:
``torch.jit.trace`` of the same module. ``safetensors``: the task model's state dict (rebuilt from the spec's
arch record and fine-tuning config by :class:`~facerep.apps.predict.Predictor`). Each file gets the
sidecar ``<file>.json``: :func:`~facerep.apps.predict.model_spec` plus the format, the parity check and the
preprocessing ``contract`` (:func:`~facerep.apps.predict.preprocess_contract`: crop rule, size, mean, std,
RGB, NCHW, box_scale, framing; :func:`facerep.preprocess` makes that input). An ONNX file also carries the
contract in its ``metadata_props`` (``facerep.<field>``, non-string values as JSON), so it is
self-describing without the sidecar (:func:`onnx_contract` reads it back).

Parity: random normalised batches (one per size in ``batches``) run through PyTorch, whose output must have
the shape the task declares, and through the export (onnxruntime, the loaded TorchScript file, the rebuilt
model); the largest absolute difference is reported
and must be at most ``tolerance x max(1, max |PyTorch output|)``, else the export is not written and an
:class:`ExportError` says by how much it missed.
"""

from __future__ import annotations

import copy
import io
import json
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import safetensors.torch
import torch
from safetensors.torch import load_file
from torch import nn
from torch.onnx._constants import ONNX_MAX_OPSET

from facerep.apps.predict import (
    INPUT_NAME,
    ExportModel,
    build_model,
    load_finetuned,
    preprocess_contract,
    sidecar_path,
)
from facerep.config import check_range
from facerep.runtime.atomic import atomic_save, atomic_write_json
from facerep.runtime.errors import FacerepError

EXPORT_FORMATS = ("onnx", "torchscript", "safetensors")
DEFAULT_FILES = {
    "onnx": "model.onnx",
    "torchscript": "model.torchscript.pt",
    "safetensors": "model.safetensors",
}
DEFAULT_OPSET = 17
MIN_OPSET = 14  # scaled_dot_product_attention (every ViT block) exports from opset 14 on
MAX_OPSET = ONNX_MAX_OPSET  # the newest opset the installed torch writes


def check_opset(opset: int) -> None:
    """A one-line :class:`~facerep.config.ConfigError` unless ``opset`` is one the ViTs export at."""
    check_range("opset", opset, MIN_OPSET, MAX_OPSET)


class ExportError(FacerepError):
    """An export that does not reproduce the PyTorch model (or cannot be written)."""


def _inputs(spec: dict[str, Any], batch: int, seed: int) -> torch.Tensor:
    """``[batch, 3, S, S]`` uniform random images normalised with the spec's mean and std."""
    g = torch.Generator().manual_seed(seed)
    size = int(spec["image_size"])
    x = torch.rand(batch, 3, size, size, generator=g)
    mean, std = (torch.tensor(spec[k], dtype=torch.float32).view(1, 3, 1, 1) for k in ("mean", "std"))
    return (x - mean) / std


def _parity(
    model: ExportModel, run: Callable[[torch.Tensor], np.ndarray], spec: dict, batches: Sequence[int]
) -> tuple[float, float]:
    """Max abs difference between ``model`` and ``run`` over one random batch per size; and the largest
    absolute reference output (the tolerance's scale)."""
    worst, scale = 0.0, 0.0
    for i, n in enumerate(batches):
        x = _inputs(spec, int(n), seed=i)
        with torch.no_grad():
            ref = model(x).float().numpy()
        declared = tuple(int(n) if d == "N" else d for d in model.output.shape)
        if ref.shape != declared:
            raise ExportError(
                f"the {spec['task']} model outputs {list(ref.shape)} for batch {n}, its task declares "
                f"{model.output.name} {list(model.output.shape)}"
            )
        got = np.asarray(run(x), dtype=np.float32)
        if got.shape != ref.shape:
            raise ExportError(
                f"export output has shape {list(got.shape)} for batch {n}, PyTorch {list(ref.shape)}"
            )
        worst = max(worst, float(np.abs(got - ref).max()))
        scale = max(scale, float(np.abs(ref).max()))
    return worst, scale


def _pool_matrix(size: int, out: int) -> torch.Tensor:
    """``[out, size]``: row ``i`` averages bins ``floor(i size / out) .. ceil((i + 1) size / out)``, as
    ``adaptive_avg_pool``."""
    m = torch.zeros(out, size)
    for i in range(out):
        lo, hi = (i * size) // out, -((-(i + 1) * size) // out)
        m[i, lo:hi] = 1.0 / (hi - lo)
    return m


class FixedAdaptiveAvgPool2d(nn.Module):
    """``AdaptiveAvgPool2d`` as two matrix products whose averaging matrices are built from the input's
    spatial size at trace time (fixed: the model's input size is). The legacy ONNX exporter cannot export
    adaptive pooling once a dynamic batch axis makes the shapes symbolic; this exports as MatMul."""

    def __init__(self, output_size: int | tuple[int, int]) -> None:
        super().__init__()
        self.output_size = (output_size, output_size) if isinstance(output_size, int) else tuple(output_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, w = (int(v) for v in x.shape[-2:])
        oh, ow = (v if v is not None else d for v, d in zip(self.output_size, (h, w), strict=True))
        rows, cols = _pool_matrix(h, oh).to(x), _pool_matrix(w, ow).to(x)
        return rows @ x @ cols.T


def onnx_ready(model: nn.Module) -> nn.Module:
    """A copy of ``model`` with every non-global ``AdaptiveAvgPool2d`` a :class:`FixedAdaptiveAvgPool2d`."""
    model = copy.deepcopy(model)
    for name, module in list(model.named_modules()):
        if isinstance(module, nn.AdaptiveAvgPool2d) and module.output_size not in (1, (1, 1)):
            parent, _, leaf = name.rpartition(".")
            setattr(model.get_submodule(parent), leaf, FixedAdaptiveAvgPool2d(module.output_size))
    return model


def _onnx(model: ExportModel, spec: dict, path: Path, opset: int) -> None:
    output = spec["output_name"]
    with warnings.catch_warnings():  # the tracer's notes on shape-derived Python values (fixed input size)
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        torch.onnx.export(
            onnx_ready(model), (_inputs(spec, 2, seed=99),), str(path), dynamo=False, opset_version=opset,
            input_names=[INPUT_NAME], output_names=[output],
            dynamic_axes={INPUT_NAME: {0: "batch"}, output: {0: "batch"}},
        )  # fmt: skip


METADATA_PREFIX = "facerep."


def _set_contract(path: Path, spec: dict) -> None:
    """Write the spec's preprocessing contract into the ONNX file's ``metadata_props``."""
    import onnx

    model = onnx.load(str(path))
    props = {
        f"{METADATA_PREFIX}{key}": value if isinstance(value, str) else json.dumps(value)
        for key, value in preprocess_contract(spec).items()
    }
    onnx.helper.set_model_props(model, props)
    onnx.save(model, str(path))


def onnx_contract(path: str | Path) -> dict[str, Any]:
    """The preprocessing contract an exported ONNX file carries in its ``metadata_props`` (JSON values
    decoded)."""
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    contract: dict[str, Any] = {}
    for prop in model.metadata_props:
        if prop.key.startswith(METADATA_PREFIX):
            key = prop.key[len(METADATA_PREFIX) :]
            try:
                contract[key] = json.loads(prop.value)
            except ValueError:
                contract[key] = prop.value
    return contract


def _onnx_runner(path: Path, spec: dict) -> Callable[[torch.Tensor], np.ndarray]:
    import onnxruntime

    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return lambda x: session.run([spec["output_name"]], {INPUT_NAME: x.numpy()})[0]


def _torch_runner(module: torch.nn.Module) -> Callable[[torch.Tensor], np.ndarray]:
    def run(x: torch.Tensor) -> np.ndarray:
        with torch.no_grad():
            return module(x).float().numpy()

    return run


def export_model(
    checkpoint: str | Path,
    fmt: str = "onnx",
    output: str | Path | None = None,
    *,
    opset: int = DEFAULT_OPSET,
    tolerance: float = 1e-3,
    batches: Sequence[int] = (1, 3),
) -> dict[str, Any]:
    """Export a fine-tuning run (``RUN_DIR`` or ``finetune.pt``; EMA weights when present) as ``fmt`` to
    ``output`` (default ``<run dir>/export/<DEFAULT_FILES[fmt]>``) with its sidecar; returns the report
    (paths, ``max_abs_diff``, the batches checked, the tolerance)."""
    if fmt not in EXPORT_FORMATS:
        raise ExportError(f"format must be one of {', '.join(EXPORT_FORMATS)}, got {fmt!r}")
    if fmt == "onnx":
        check_opset(opset)
    if not batches or min(int(n) for n in batches) < 1 or not tolerance > 0:
        raise ExportError(
            f"batches must be sizes >= 1 and tolerance > 0, got {list(batches)} and {tolerance}"
        )
    model, spec = load_finetuned(checkpoint, then="export")
    run_dir = Path(checkpoint) if Path(checkpoint).is_dir() else Path(checkpoint).parent
    path = Path(output) if output is not None else run_dir / "export" / DEFAULT_FILES[fmt]
    report: dict[str, Any] = {}

    def write(tmp: Path) -> None:
        if fmt == "onnx":
            _onnx(model, spec, tmp, opset)
            _set_contract(tmp, spec)
            run = _onnx_runner(tmp, spec)
        elif fmt == "torchscript":
            with torch.no_grad(), warnings.catch_warnings():
                warnings.simplefilter("ignore", torch.jit.TracerWarning)  # shape-derived values: fixed size
                traced = torch.jit.trace(model, (_inputs(spec, 2, seed=99),), check_trace=False)
            buffer = io.BytesIO()  # torch.jit.save to a path aborts the process on a full disk
            torch.jit.save(traced, buffer)
            tmp.write_bytes(buffer.getvalue())
            run = _torch_runner(torch.jit.load(str(tmp)))
        else:
            state = {k: v.detach().clone().contiguous() for k, v in model.model.state_dict().items()}
            metadata = {"format": "facerep-finetune", "task": spec["task"]}
            tmp.write_bytes(safetensors.torch.save(state, metadata=metadata))  # its OSError names no file
            run = _torch_runner(build_model(spec, load_file(str(tmp)), str(path)))
        diff, scale = _parity(model, run, spec, batches)
        report.update(max_abs_diff=diff, output_scale=scale)
        if diff > tolerance * max(1.0, scale):
            raise ExportError(
                f"{fmt} export of {checkpoint} differs from PyTorch by {diff:.3g} (max abs) > tolerance "
                f"{tolerance:g} x {max(1.0, scale):.3g}; nothing written"
            )

    atomic_save(write, path)
    report = {
        "format": fmt, "path": str(path), "sidecar": str(sidecar_path(path)), "checkpoint": str(checkpoint),
        "batches": [int(n) for n in batches], "tolerance": tolerance, **report,
        **({"opset": opset} if fmt == "onnx" else {}),
    }  # fmt: skip
    parity = {k: v for k, v in report.items() if k not in ("format", "path", "sidecar")}
    sidecar = {
        **spec,
        "format": fmt,
        "file": path.name,
        "parity": parity,
        "contract": preprocess_contract(spec),
    }
    atomic_write_json(sidecar_path(path), sidecar)
    return report
