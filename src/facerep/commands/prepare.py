"""``facerep prepare``: raw web images -> face-crop WebDataset shards that ``facerep pretrain`` reads.

``facerep prepare input=SHARDS|DIR|LIST.txt output_dir=DIR [detections=sample2detect_*.pth | detector=mtcnn]
[crop.size=224 ...] [engine=pool|ray workers=N ray_address=auto]``. Faces come from LAION-Face's released
detections when ``detections`` is given, else from the detector; the crop rule is
:class:`facerep.data.crop.CropConfig`; the job, its outputs and its resumability are
:mod:`facerep.apps.prepare`. The resolved config is saved as ``output_dir/config.yaml``; a rerun into the
same folder resumes, and refuses a config that would change the crops. A run holds ``output_dir``'s lock
from planning to the summary (:func:`facerep.apps.prepare.output_lock`): a second run into the same
folder at the same time stops with one line naming the first's pid. Nothing is written before the input is
checked.
"""

from __future__ import annotations

import inspect
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from webdataset.shardlists import expand_urls

from facerep.apps.prepare import (
    ENGINES,
    Job,
    Unit,
    build_detection_index,
    input_kind,
    output_lock,
    plan_units,
    run_job,
    save_listing,
)
from facerep.config import ConfigError, check_choice, load_config, to_dict, to_yaml
from facerep.data.crop import MAX_PIXELS, CropConfig
from facerep.data.detect import DETECTORS, build_detector, with_weights
from facerep.data.sources import DataError
from facerep.runtime.atomic import atomic_write_bytes
from facerep.runtime.untrusted import MAX_JSON_DEPTH

CONFIG_NAME = "config.yaml"
# Keys that decide what the crops are: a resumed run must agree with the first on them.
CROP_KEYS = ("input", "detections", "detector", "detector_options", "detector_weights", "crop", "shard_size",
             "max_pixels", "max_json_depth")  # fmt: skip


@dataclass
class PrepareConfig:
    """``facerep prepare`` keys."""

    input: str | None = None  # img2dataset shards (brace pattern, '::' for several), a folder, a .txt list
    output_dir: str | None = None
    detections: str | None = None  # LAION-Face sample2detect .pth (brace pattern, '::'); none: the detector
    detector: str = "mtcnn"  # facerep.data.detect.build_detector name, used without detections
    # build_detector options, e.g. {max_side: 640, threshold: 0.9}; min_face defaults to crop.min_face
    detector_options: dict[str, Any] = field(default_factory=dict)
    detector_weights: str | None = None  # the detector's weights file (detector=retinaface: required)
    crop: CropConfig = field(default_factory=CropConfig)
    engine: str = "pool"  # pool (processes on this machine) | ray (a Ray cluster, or a local Ray)
    workers: int = 0  # processes (pool) or CPUs of a local Ray; 0: every core this process may use
    ray_address: str | None = None  # engine=ray: a running cluster ("auto", "ray://host:10001"); none: local
    retries: int = 3  # engine=ray: retries of a failed or lost unit
    shard_size: int = 1000  # folder / list inputs: images per unit (output shard)
    # images whose header says more pixels are skipped undecoded (rejected too_large); 0: no limit
    max_pixels: int = MAX_PIXELS
    # a sample whose JSON metadata nests deeper is rejected unparsed (no_sample_id); 0: Python's own limit
    max_json_depth: int = MAX_JSON_DEPTH
    progress: bool = True  # a progress bar over shards

    def __post_init__(self) -> None:
        check_choice("engine", self.engine, ENGINES)
        if self.workers < 0 or self.retries < 0:
            raise ConfigError(f"workers and retries must be >= 0, got {self.workers} and {self.retries}")
        if self.shard_size < 1:
            raise ConfigError(f"shard_size must be >= 1, got {self.shard_size}")
        for key in ("max_pixels", "max_json_depth"):
            if getattr(self, key) < 0:
                raise ConfigError(f"{key} must be >= 0 (0: no limit), got {getattr(self, key)}")
        if self.ray_address and self.engine != "ray":
            raise ConfigError(f"ray_address={self.ray_address} needs engine=ray (got engine={self.engine})")


def _crop_keys(cfg: PrepareConfig) -> dict[str, Any]:
    values = to_dict(cfg)
    keys = {k: values[k] for k in CROP_KEYS}
    if cfg.detections:  # the detector is not used
        keys.pop("detector"), keys.pop("detector_options"), keys.pop("detector_weights")
    return keys


def _check_resume(cfg: PrepareConfig, out: Path) -> None:
    """Refuse to resume into ``out`` with a config that would make different crops."""
    saved = out / CONFIG_NAME
    if not saved.is_file():
        return
    before = _crop_keys(load_config(PrepareConfig, saved))
    now = _crop_keys(cfg)
    for key in CROP_KEYS:
        if before.get(key) != now.get(key):
            raise ConfigError(
                f"{saved} was written with {key}={before.get(key)!r}, this run has {key}={now.get(key)!r}; "
                "its shards would mix two crop rules (use a new output_dir)"
            )


def run_prepare(cfg: PrepareConfig) -> dict:
    """Crop every input image's faces into ``output_dir`` (resuming a run there); returns the summary."""
    if not cfg.input or not cfg.output_dir:
        raise ConfigError("facerep prepare needs input=SHARDS|DIR|LIST.txt and output_dir=DIR")
    out = Path(cfg.output_dir)
    detections = [p for p in expand_urls(cfg.detections) if p] if cfg.detections else []
    kind = input_kind(cfg.input)
    if detections and kind != "webdataset":
        raise ConfigError(
            f"detections are looked up by the SAMPLE_ID of img2dataset shards; input={cfg.input} is a {kind}"
        )
    options = with_weights(cfg.detector_options, cfg.detector_weights)
    if not detections:
        takes_min_face = "min_face" in inspect.signature(DETECTORS.get(cfg.detector)).parameters
        if cfg.crop.min_face > 0 and takes_min_face:
            options.setdefault("min_face", cfg.crop.min_face)  # smaller faces would be rejected: do not look
        build_detector(cfg.detector, **options)  # a bad name or option fails here, once
    missing = [p for p in detections if not Path(p).is_file()]
    if missing:
        raise DataError(f"detections file not found: {missing[0]} (expected LAION-Face sample2detect .pth)")
    units = plan_units(cfg.input, cfg.shard_size, out)  # checks the input before anything is written
    if not units:
        raise DataError(f"input={cfg.input}: nothing to prepare")
    with output_lock(out):
        _check_resume(cfg, out)
        return _run_locked(cfg, out, save_listing(cfg.input, cfg.shard_size, out, units), detections, options)


def _run_locked(
    cfg: PrepareConfig, out: Path, units: list[Unit], detections: list[str], options: dict[str, Any]
) -> dict:
    """:func:`run_prepare` once it holds ``out``'s lock: write the config, run, report."""
    atomic_write_bytes(out / CONFIG_NAME, to_yaml(cfg).encode())
    job = Job(
        output_dir=str(out),
        crop=cfg.crop,
        detections=build_detection_index(detections, out) if detections else None,
        detector=cfg.detector,
        detector_options=options,
        max_pixels=cfg.max_pixels,
        max_json_depth=cfg.max_json_depth,
    )
    workers = cfg.workers or len(os.sched_getaffinity(0))
    source = f"{len(detections)} detections file(s)" if detections else f"detector={cfg.detector}"
    print(f"[facerep] prepare: {len(units)} shard(s) from {cfg.input} ({source}) -> {out} "
          f"(engine={cfg.engine}, workers={workers})", flush=True)  # fmt: skip
    summary = run_job(
        units, job, engine=cfg.engine, workers=workers, ray_address=cfg.ray_address, retries=cfg.retries,
        progress=cfg.progress,
    )  # fmt: skip
    run = summary["this_run"]
    rejected = ", ".join(f"{k} {v}" for k, v in summary["rejected"].items()) or "none"
    skipped = ", ".join(f"{k} {v}" for k, v in summary["skipped_images"].items()) or "none"
    s = summary
    print(f"[facerep] prepare: {s['images']} images, {s['faces']} faces, {s['crops']} crops in {s['units']} "
          f"shard(s) ({s['units_skipped']} done before); corrupt images {s['corrupt']}, damaged-shard reads "
          f"{s['read_errors']}; images skipped: {skipped}; faces rejected: {rejected}",
          flush=True)  # fmt: skip
    print(f"[facerep] prepare: this run {run['images']} images in {run['seconds']:.1f} s "
          f"({run['images_per_second']} images/s; {run['images_per_worker_second']} per worker-second); "
          f"summary in {out / 'summary.json'}", flush=True)  # fmt: skip
    return summary
