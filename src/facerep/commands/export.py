"""``facerep export``: a fine-tuned model (backbone + head) as ONNX, TorchScript or safetensors, with the
spec beside it (``<file>.json``) that ``facerep predict checkpoint=<file>`` reads (see
:mod:`facerep.apps.export` for the formats and the parity check against PyTorch); or a backbone alone in
the Hugging Face Hub layout (``backbone=PATH format=hf output=DIR``: ``config.json`` + ``model.safetensors``,
:func:`facerep.backbones.hub.save_pretrained`) or timm's (``format=timm``: what
``timm.create_model("local-dir:DIR", pretrained=True)`` builds), reloaded and compared after writing."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from facerep.apps.export import DEFAULT_OPSET, EXPORT_FORMATS, check_opset, export_model
from facerep.config import ConfigError, check_choice

BACKBONE_FORMATS = ("hf", "timm")


@dataclass
class ExportConfig:
    checkpoint: str | None = None  # a fine-tuning run directory or its finetune.pt
    # or a backbone alone: any file / directory load_backbone reads, a Hub directory or repo id, a
    # packaged name; written with format=hf|timm to output=DIR
    backbone: str | None = None
    format: str = "onnx"  # onnx | torchscript | safetensors (checkpoint=); hf | timm (backbone=)
    output: str | None = (
        None  # default: <run dir>/export/model.onnx | model.torchscript.pt | model.safetensors
    )
    opset: int = DEFAULT_OPSET  # ONNX opset, from facerep.apps.export.MIN_OPSET (14) to MAX_OPSET
    tolerance: float = 1e-3  # max abs diff allowed, x max(1, max |PyTorch output|)
    batches: list[int] = field(default_factory=lambda: [1, 3])  # batch sizes the parity check runs

    def __post_init__(self) -> None:
        if self.format not in BACKBONE_FORMATS:  # a fine-tuned model's formats (the message they always had)
            check_choice("format", self.format, EXPORT_FORMATS)
        check_opset(self.opset)
        if self.backbone and self.checkpoint:
            raise ConfigError(
                "facerep export takes checkpoint=RUN_DIR|finetune.pt or backbone=PATH, not both"
            )
        if self.backbone and self.format not in BACKBONE_FORMATS:
            raise ConfigError(
                f"facerep export backbone=... writes format=hf or format=timm, got {self.format}"
            )
        if self.format in BACKBONE_FORMATS and not self.backbone:
            raise ConfigError(
                f"format={self.format} exports a backbone: facerep export backbone=PATH output=DIR"
            )


def run_export(cfg: ExportConfig) -> dict:
    """Export, check against PyTorch, print the max abs difference; returns the report."""
    if cfg.backbone:
        return run_backbone_export(cfg)
    if not cfg.checkpoint:
        raise ConfigError(
            "facerep export needs checkpoint=RUN_DIR|finetune.pt (a fine-tuning run) "
            "or backbone=PATH format=hf|timm output=DIR"
        )
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


def run_backbone_export(cfg: ExportConfig) -> dict:
    """Write ``cfg.backbone`` in the Hub (``hf``) or timm layout to ``cfg.output``, reload it as its readers
    do (facerep's :func:`~facerep.backbones.hub.from_pretrained`; timm's ``local-dir:``) and compare
    ``forward_features`` on a random batch; an :class:`~facerep.apps.export.ExportError` when they differ by
    more than the tolerance."""
    import torch

    from facerep.apps.export import ExportError
    from facerep.backbones.hub import (
        export_timm,
        from_pretrained,
        load_pretrained,
        load_timm,
        save_pretrained,
    )

    if not cfg.output:
        raise ConfigError(f"facerep export backbone=... format={cfg.format} needs output=DIR")
    model = load_pretrained(cfg.backbone).eval()
    out = Path(cfg.output)
    if cfg.format == "hf":
        save_pretrained(model, out)
        reloaded, checked = from_pretrained(out), "facerep.from_pretrained"
    else:
        export_timm(model, out)
        reloaded, checked = load_timm(out), "timm.create_model(local-dir:...)"
    size = int(model.arch.img_size)
    batch = max(cfg.batches or [1])
    x = torch.randn(batch, 3, size, size, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        want, got = model.forward_features(x), reloaded.forward_features(x)
    diff = float((want - got).abs().max()) if want.shape == got.shape else float("inf")
    limit = cfg.tolerance * max(1.0, float(want.abs().max()))
    if diff > limit:
        raise ExportError(f"{out}: {checked} differs from the backbone by {diff:.3g} (allowed {limit:.3g})")
    print(
        f"[facerep] exported backbone {cfg.backbone} as {cfg.format} to {out}; {checked} vs the backbone: "
        f"max abs diff {diff:.3g} on a batch of {batch} (tolerance {cfg.tolerance:g})",
        flush=True,
    )
    return {"path": str(out), "format": cfg.format, "max_abs_diff": diff, "checked": checked}
