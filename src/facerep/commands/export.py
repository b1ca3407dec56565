"""``facerep export``: a fine-tuned model (backbone + head) as ONNX, TorchScript or safetensors, with the
spec beside it (``<file>.json``) that ``facerep predict checkpoint=<file>`` reads; see
:mod:`facerep.apps.export` for the formats and the parity check against PyTorch."""

from __future__ import annotations

from dataclasses import dataclass, field

from facerep.apps.export import DEFAULT_OPSET, EXPORT_FORMATS, check_opset, export_model
from facerep.config import ConfigError, check_choice


@dataclass
class ExportConfig:
    checkpoint: str | None = None  # a fine-tuning run directory or its finetune.pt
    format: str = "onnx"  # onnx | torchscript | safetensors
    output: str | None = (
        None  # default: <run dir>/export/model.onnx | model.torchscript.pt | model.safetensors
    )
    opset: int = DEFAULT_OPSET  # ONNX opset, from facerep.apps.export.MIN_OPSET (14) to MAX_OPSET
    tolerance: float = 1e-3  # max abs diff allowed, x max(1, max |PyTorch output|)
    batches: list[int] = field(default_factory=lambda: [1, 3])  # batch sizes the parity check runs

    def __post_init__(self) -> None:
        check_choice("format", self.format, EXPORT_FORMATS)
        check_opset(self.opset)


def run_export(cfg: ExportConfig) -> dict:
    """Export, check against PyTorch, print the max abs difference; returns the report."""
    if not cfg.checkpoint:
        raise ConfigError("facerep export needs checkpoint=RUN_DIR|finetune.pt (a fine-tuning run)")
    report = export_model(
        cfg.checkpoint, cfg.format, cfg.output, opset=cfg.opset, tolerance=cfg.tolerance, batches=cfg.batches
    )
    checked = "onnxruntime" if cfg.format == "onnx" else f"the reloaded {cfg.format} model"
    print(
        f"[facerep] exported {cfg.checkpoint} as {cfg.format} to {report['path']} "
        f"(spec: {report['sidecar']}); "
        f"{checked} vs PyTorch: max abs diff {report['max_abs_diff']:.3g} over batches "
        f"{', '.join(str(n) for n in report['batches'])} (tolerance {cfg.tolerance:g})",
        flush=True,
    )
    return report
