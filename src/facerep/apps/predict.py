"""Running a fine-tuned model on whole photos: detect the faces, crop each as its task was trained, run the
model on batches of faces and map its landmarks and masks back to the photo (:class:`Predictor`).

The model comes from a fine-tuning run (its directory or ``finetune.pt``; EMA weights when present) or from
a ``facerep export`` (``model.onnx``, ``model.torchscript.pt`` or ``model.safetensors`` beside the sidecar
``<file>.json`` holding :func:`model_spec`), or is one of facer's released TorchScript parsers and aligners
(cropped, run and read as facer does: :mod:`facerep.apps.facer`). ONNX runs with onnxruntime alone: the
crop and the mapping back are facerep's geometry (:mod:`facerep.geometry`,
:mod:`facerep.data.downstream.transforms`), never the model classes.

How a detected face (box, five points: image-left eye, image-right eye, nose tip, image-left and
image-right mouth corner) becomes the model's input -- the same crop the task's eval transform made of the
training samples:

alignment
    The transform's box crop (``crop_scale``, ``keep_aspect``) around the box the training data had. Every
    alignment set here uses a face box close to the landmarks' tight box (synthetic_alignment and generic
    sets without a box column exactly; 300W/WFLW squares and AFLW-19's boxes approximately), and a
    detector's box is not that box, so the box is estimated from the five points: the similarity taking
    FaRL's five-point template onto the detected points carries :data:`MEAN_SHAPE_68` (the mean 68-point
    synthetic face in template units) into the photo, and the tight box of those 68 points, scaled by
    ``box_scale`` about its centre, is the box. Without five points the detector box is used.
parsing
    ``augment.align`` ``five_point`` (or ``auto`` on sets whose samples carry landmarks: LaPa,
    synthetic_parsing): the transform's five-point similarity + tanh warp from the detected points;
    ``box``: the estimated box as above; ``image`` (``auto`` on CelebAMask-HQ and generic sets): a canvas
    first (see classification), then the transform's whole-image crop of it.
classification
    The transform resizes the whole training image, so the face is first warped onto a canvas framed as
    the dataset frames its faces (:class:`Framing`): synthetic sets -- the five-point similarity onto
    :data:`SYNTHETIC_FIVE_POINTS` (the mean five points of the rendered faces) at the dataset's render size;
    other sets -- a square of the detector box's longer side times ``expand`` (AffectNet ``crop=box``:
    ``1 + margin``, as its reader cuts; otherwise :data:`DEFAULT_EXPAND`, a guess not measured on the
    real sets; override with ``framing``).
antispoof
    As classification (softmax over ``("spoof", "live")``, plus ``liveness`` = the live probability); the
    video sets crop a square of the face box times ``crop_expand`` (1.3), so their canvas is that box square.

Where the crop would shrink the photo by 2x or more, the photo is first box-filtered down by that integer
factor (area averaging; a bilinear crop of a much larger face aliases). Every step is an affine map of the
photo, so predictions go back exactly: landmarks through the transform's ``crop_to_image`` and the inverse
of the photo -> fed-image map; masks by :func:`~facerep.data.downstream.transforms.logits_to_image` with the
composed photo -> crop matrix, argmax per face, and one combined label map in which a face with a higher
detection score wins overlapping pixels.

Images given as arrays become the ``[H, W, 3]`` uint8 RGB the detector and crops take by these rules
(anything else is a one-line :class:`~facerep.data.transforms.BadImage`): ``[H, W]`` and ``[H, W, 1]`` are
grey, replicated to RGB; ``[H, W, 4]`` is RGBA, whose alpha is dropped (the colour channels as they are);
uint16 is scaled to 8 bits (``round(v / 257)``); float (any precision) must hold finite values in [0, 1]
(``round(v * 255)``) -- a [0, 255] float image is refused rather than guessed at; other pixel types and
empty images (a side of 0) are refused. Image files go through :func:`~facerep.data.transforms.decode_image`
(grey, 16-bit and float modes scaled, transparency composited over white).

The preprocessing contract -- what an exported model's input ``image`` ``[N, 3, S, S]`` holds for a face --
is :func:`preprocess` (this crop of one face, RGB, NCHW, pixel values / 255 normalised with the spec's mean
and std); :func:`preprocess_contract` spells it for the sidecar and the ONNX ``metadata_props``.

A pre-training run (its directory, ``checkpoint.pt``) or a bare backbone file has no task head: loading one
is a one-line :class:`~facerep.runtime.checkpoint.CheckpointError` naming the ``facerep finetune`` to run
(:func:`pretrained_backbone`).

A model output with a NaN or an infinity gives that face ``None`` predictions (``landmarks``, ``mask``, or
``probabilities`` and the labels) and ``"error":`` :data:`NON_FINITE`, never NaN numbers.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime
import torch
import torch.nn.functional as nnf
from omegaconf import OmegaConf
from PIL import Image, ImageDraw
from safetensors import safe_open
from safetensors.torch import load_file
from torch import Tensor, nn

from facerep.apps.facer import CROP as FACER_CROP
from facerep.apps.facer import FACER_MODELS, facer_crop, load_facer, setting_by_file_name
from facerep.backbones import backbone_from_record
from facerep.backbones.base import load_strict
from facerep.backbones.io import is_torchscript
from facerep.config import ConfigError, FinetuneConfig
from facerep.data.crop import skip_reason
from facerep.data.detect import Detection, build_detector
from facerep.data.downstream import DATASETS, build_dataset
from facerep.data.downstream.base import DEFAULT_EXPAND, Framing
from facerep.data.downstream.synthetic import SYNTHETIC_FIVE_POINTS
from facerep.data.transforms import BadImage, decode_image
from facerep.geometry import (
    MEAN_SHAPE_68,
    apply_transform,
    box_corners,
    box_matrix,
    estimate_box,
    five_point_matrix,
    landmarks_box,
    mean_shape_landmarks,
    reduction_matrix,
    scale_box,
    similarity,
    transform_scale,
)
from facerep.runtime.checkpoint import CheckpointError, load_checkpoint
from facerep.runtime.distributed import resolve_device
from facerep.runtime.errors import FacerepError
from facerep.tasks import TASKS, Task, build_task
from facerep.tasks.base import FaceCrop, Layout
from facerep.train.state import FinetuneState, PretrainState
from facerep.viz import palette

__all__ = [
    "DEFAULT_EXPAND",
    "MEAN_SHAPE_68",
    "NON_FINITE",
    "SYNTHETIC_FIVE_POINTS",
    "ExportModel",
    "Framing",
    "Predictor",
    "draw_result",
    "estimate_box",
    "load_finetuned",
    "mean_shape_landmarks",
    "model_spec",
    "preprocess",
    "preprocess_contract",
    "pretrained_backbone",
    "read_sidecar",
    "sidecar_path",
]

SPEC_VERSION = 1
INPUT_NAME = "image"
NO_FACE = "no face found"
NON_FINITE = "non-finite model output (NaN or inf)"

RULES = ("box", "five_point", "canvas", FACER_CROP)


# ------------------------------------------------------------------------------------------------- pixels


def _warp(image: Tensor, photo_to_out: np.ndarray, size: tuple[int, int]) -> Tensor:
    """Float ``[3, H, W]`` -> ``[3, h, w]`` (``size`` = (w, h)) by the affine ``photo_to_out`` (pixel centres;
    bilinear, outside the photo black)."""
    w, h = size
    ys, xs = torch.meshgrid(torch.arange(h, dtype=torch.float64), torch.arange(w, dtype=torch.float64),
                            indexing="ij")  # fmt: skip
    src = apply_transform(np.linalg.inv(photo_to_out), torch.stack([xs, ys], -1).reshape(-1, 2).numpy())
    ph, pw = image.shape[-2:]
    grid = np.stack([(2 * src[:, 0] + 1) / pw - 1, (2 * src[:, 1] + 1) / ph - 1], -1).reshape(1, h, w, 2)
    out = nnf.grid_sample(image[None], torch.from_numpy(grid).to(image.dtype), mode="bilinear",
                          padding_mode="zeros", align_corners=False)  # fmt: skip
    return out[0]


def _to_uint8(image: Tensor) -> np.ndarray:
    """Float ``[3, H, W]`` in [0, 1] -> ``[H, W, 3]`` uint8 (what the transforms take)."""
    return (image.clamp(0, 1) * 255).round().to(torch.uint8).permute(1, 2, 0).contiguous().numpy()


def _as_float(image: np.ndarray) -> Tensor:
    """``[H, W, 3]`` uint8 -> float ``[3, H, W]`` in [0, 1] (a copy: decoded images may be read-only)."""
    return torch.tensor(np.asarray(image)).permute(2, 0, 1).to(torch.float32) / 255.0


# ------------------------------------------------------------------------------------------------ the model


def output_layout(
    ft: FinetuneConfig, task: Task, weights: dict[str, Tensor], saved: dict[str, Any] | None = None
) -> Layout:
    """What the model's outputs mean: as the checkpoint saved it (``saved``, the ``"outputs"`` entry of
    runs fine-tuned since it was added); else without reading the dataset where its reader's class says
    it (synthetic sets, LaPa, CelebAMask-HQ, RAF-DB, AffectNet, CelebA attributes, the alignment sets);
    else the dataset at ``data.root`` when it can be read (generic sets); else what the head's weights tell
    (:meth:`~facerep.tasks.base.Task.layout_from_weights`: ``class_<i>`` names, taken as single-label)."""
    if saved:
        layout = Layout.from_record(saved)
        if task.layout_complete(layout):
            return layout
    options = {**ft.data.options, **ft.data.test_options}
    layout = task.layout(DATASETS.get(ft.dataset).describe(options))
    if not task.layout_complete(layout) and ft.data.root is not None and Path(ft.data.root).exists():
        with contextlib.suppress(FacerepError):  # else fall back to the head's size below
            layout = task.layout(build_dataset(ft.dataset, ft.data.root, ft.data.test_split, **options))
    if task.layout_complete(layout):
        return layout
    guess = task.layout_from_weights(weights)
    if guess is None:
        raise CheckpointError(f"{ft.dataset}: cannot tell the model's outputs (no head weights)")
    return guess


def _finetune_config(config: dict[str, Any]) -> FinetuneConfig:
    return OmegaConf.to_object(OmegaConf.merge(OmegaConf.structured(FinetuneConfig), config))


def spec_task(spec: dict[str, Any]) -> Task:
    """The task a spec's model was fine-tuned for, built from its config (a facer spec has none: its task
    at its crop size)."""
    if "config" in spec:
        return build_task(_finetune_config(spec["config"]))
    config = FinetuneConfig(task=spec["task"])
    config.data.image_size = int(spec["image_size"])
    return TASKS.get(spec["task"])(config)


def model_spec(
    config: dict[str, Any],
    arch: dict[str, Any],
    weights: dict[str, Tensor],
    outputs: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Everything needed to crop faces for, run and read a fine-tuned model, JSON-ready: task, dataset,
    names, input size and normalisation, the transform settings, the crop rule and framing, the backbone's
    arch record and the fine-tuning config (so a state dict can be rebuilt)."""
    ft = _finetune_config(config)
    task = build_task(ft)
    layout = output_layout(ft, task, weights, outputs)
    augment_config = task.augment_config()
    augment = dataclasses.asdict(augment_config)
    info = DATASETS.get(ft.dataset).describe({**ft.data.options, **ft.data.test_options})
    rule = task.crop_rule(info, augment_config)
    framing = info.framing.at_size(ft.data.image_size) if rule == "canvas" else None
    return {
        "version": SPEC_VERSION,
        "task": ft.task,
        "dataset": ft.dataset,
        "image_size": ft.data.image_size,
        "mean": list(augment["mean"]),
        "std": list(augment["std"]),
        "augment": augment,
        "num_points": layout.num_points,
        "class_names": list(layout.class_names) if layout.class_names is not None else None,
        "attribute_names": list(layout.attribute_names) if layout.attribute_names is not None else None,
        "multilabel": bool(layout.attribute_names),
        "crop": {"rule": rule, "box_scale": 1.0, "framing": dataclasses.asdict(framing) if framing else None},
        "input_name": INPUT_NAME,
        "output_name": task.export_output(layout).name,
        "arch": dict(arch),
        "config": config,
    }


class ExportModel(nn.Module):
    """A fine-tuned model with one tensor out, as exported: ``[N, 3, S, S]`` -> the task's ``output``
    (:meth:`~facerep.tasks.base.Task.export_output`), e.g. landmarks ``[N, K, 2]`` in [0, 1] crop
    coordinates (alignment), class logits ``[N, C, S, S]`` (parsing) or logits ``[N, A]`` (classification)."""

    def __init__(self, model: nn.Module, task: Task, layout: Layout) -> None:
        super().__init__()
        self.model = model
        self.task = task
        self.output = task.export_output(layout)

    def forward(self, image: Tensor) -> Tensor:
        return self.task.export_forward(self.model(image))


def build_model(spec: dict[str, Any], weights: dict[str, Tensor], source: str) -> ExportModel:
    """The spec's task model on its backbone with ``weights`` (read from ``source``) loaded strictly, wrapped,
    in eval mode; weights that do not fit are one line naming the key and both shapes."""
    task, layout = spec_task(spec), Layout.from_record(spec)
    model = task.build_model(backbone_from_record(spec["arch"]), layout)
    load_strict(model, weights, source, f"a {spec['task']} model")
    return ExportModel(model, task, layout).eval()


def sidecar_path(model_file: str | Path) -> Path:
    """Where ``facerep export`` writes the spec of ``model_file``: ``<file>.json``."""
    return Path(f"{model_file}.json")


def read_sidecar(model_file: str | Path) -> dict[str, Any]:
    path = sidecar_path(model_file)
    try:
        spec = json.loads(path.read_text())
    except (OSError, ValueError) as err:
        raise CheckpointError(
            f"{path}: cannot read the export's spec (JSON beside the model): {err}"
        ) from err
    if not isinstance(spec, dict) or spec.get("version") != SPEC_VERSION or "format" not in spec:
        raise CheckpointError(f"{path}: not a facerep export spec (version {SPEC_VERSION} with a format)")
    return spec


BACKBONE_FILE = "backbone.safetensors"  # what a pre-training run exports (beside backbone.json)


def pretrained_backbone(path: str | Path) -> Path | None:
    """The backbone to fine-tune when ``path`` is a pre-trained model without a task head -- a pre-training
    run's directory (no ``finetune.pt``; its ``backbone.safetensors``, else its ``checkpoint.pt``) or a
    backbone ``.safetensors`` (facerep's ``arch`` metadata or ``<stem>.json`` beside it, and no export spec
    ``<file>.json``) -- else ``None``."""
    path = Path(path)
    if path.is_dir():
        if FinetuneState.path(path).exists():
            return None
        found = [p for p in (path / BACKBONE_FILE, PretrainState.path(path)) if p.is_file()]
        return found[0] if found else None
    if path.suffix != ".safetensors" or not path.is_file() or sidecar_path(path).is_file():
        return None
    try:
        with safe_open(str(path), framework="pt") as handle:
            metadata = handle.metadata() or {}
    except Exception:  # not a readable safetensors file: the loaders below say so
        return None
    if metadata.get("format") == "facerep-finetune":
        return None
    return path if "arch" in metadata or path.with_suffix(".json").is_file() else None


def not_finetuned(checkpoint: str | Path, backbone: str | Path, then: str = "predict") -> CheckpointError:
    """The one line for a pre-trained backbone given where a fine-tuned model is needed: what to run."""
    return CheckpointError(
        f"checkpoint={checkpoint} is a pre-trained backbone without a task head; fine-tune it first: "
        f"facerep finetune backbone={backbone} task=alignment|parsing|classification dataset=NAME "
        f"output_dir=RUN_DIR, then facerep {then} checkpoint=RUN_DIR"
    )


def load_finetuned(checkpoint: str | Path, then: str = "predict") -> tuple[ExportModel, dict[str, Any]]:
    """A fine-tuning run's model (``RUN_DIR`` or ``finetune.pt``; EMA weights when present) and its spec; a
    pre-training run is a one-line error saying how to fine-tune it (``then``: the command to run after)."""
    path = Path(checkpoint)
    backbone = pretrained_backbone(path)
    if backbone is not None:
        raise not_finetuned(checkpoint, backbone, then)
    if path.is_dir():
        path = FinetuneState.path(path)
    state = load_checkpoint(path)
    if state.get("kind") != "finetune":
        if "method" in state:  # a pre-training checkpoint.pt
            beside = path.parent / BACKBONE_FILE
            raise not_finetuned(checkpoint, beside if beside.is_file() else path, then)
        raise CheckpointError(f"{path}: not a facerep fine-tuning checkpoint ({FinetuneState.FILE})")
    weights = state["ema"] if state.get("ema") is not None else state["model"]
    spec = model_spec(state["config"], state["arch"], weights, state.get("outputs"))
    return build_model(spec, weights, str(path)), spec


class _TorchRunner:
    """``[N, 3, S, S]`` -> the model's one output as float32 numpy (a module or a TorchScript file)."""

    def __init__(self, module: nn.Module, device: torch.device) -> None:
        self.module = module.to(device).eval()
        self.device = device

    @torch.no_grad()
    def __call__(self, images: Tensor) -> np.ndarray:
        return self.module(images.to(self.device)).float().cpu().numpy()


class _OnnxRunner:
    def __init__(self, path: Path, spec: dict[str, Any], device: torch.device) -> None:
        providers = ["CPUExecutionProvider"]
        if device.type == "cuda" and "CUDAExecutionProvider" in onnxruntime.get_available_providers():
            providers.insert(0, "CUDAExecutionProvider")
        try:
            self.session = onnxruntime.InferenceSession(str(path), providers=providers)
        except Exception as err:  # onnxruntime raises its own (non-facerep) errors for unreadable graphs
            raise CheckpointError(f"{path}: onnxruntime cannot load it: {str(err).splitlines()[0]}") from err
        self.input, self.output = spec["input_name"], spec["output_name"]

    def __call__(self, images: Tensor) -> np.ndarray:
        return self.session.run([self.output], {self.input: images.numpy().astype(np.float32)})[0]


def load_runner(
    checkpoint: str | Path, device: torch.device, facer: str | None = None
) -> tuple[Callable[[Tensor], np.ndarray], dict]:
    """A callable ``[N, 3, S, S] -> numpy output`` and the spec, for a run dir, ``finetune.pt``, export, or
    one of facer's TorchScript models (``facer`` names it; a file named as facer's releases, or a TorchScript
    file without an export spec, is taken for one: see :func:`~facerep.apps.facer.load_facer`)."""
    path = Path(checkpoint)
    if not path.exists():
        raise ConfigError(f"checkpoint={checkpoint}: no such file or directory")
    plain = path.is_file() and not sidecar_path(path).is_file()
    if facer is not None or (plain and (is_torchscript(path) or setting_by_file_name(path) is not None)):
        model, spec = load_facer(path, facer)
        return _TorchRunner(model, device), spec
    if path.is_file() and sidecar_path(path).is_file():
        spec = read_sidecar(path)
        fmt = spec["format"]
        if fmt == "onnx":
            return _OnnxRunner(path, spec, device), spec
        if fmt == "torchscript":
            try:
                module = torch.jit.load(str(path), map_location="cpu")
            except RuntimeError as err:
                raise CheckpointError(f"{path}: not a TorchScript file: {str(err).splitlines()[0]}") from err
            return _TorchRunner(module, device), spec
        if fmt == "safetensors":
            return _TorchRunner(build_model(spec, load_file(str(path)), str(path)), device), spec
        raise CheckpointError(
            f"{sidecar_path(path)}: unknown format {fmt!r} (onnx, torchscript, safetensors)"
        )
    backbone = pretrained_backbone(path)
    if backbone is not None:
        raise not_finetuned(checkpoint, backbone)
    if path.suffix in (".onnx", ".safetensors"):
        raise CheckpointError(f"{path}: an exported model needs its spec {sidecar_path(path).name} beside it")
    model, spec = load_finetuned(path)
    return _TorchRunner(model, device), spec


# ------------------------------------------------------------------------------------------------ predictor


class Predictor:
    """Faces in photos -> a fine-tuned model's predictions in photo coordinates.

    ``checkpoint``: a fine-tuning run directory, its ``finetune.pt``, or a ``facerep export`` file
    (``.onnx``, TorchScript, ``.safetensors``) with its ``<file>.json`` spec, or a facer TorchScript model
    (``facer``: its name, see :data:`~facerep.apps.facer.FACER_MODELS`). ``detector``: a name for
    :func:`~facerep.data.detect.build_detector` (with ``detector_options``) or a callable
    ``image [H, W, 3] uint8 -> list[Detection]``, built on first use. ``box_scale`` / ``framing`` override
    the spec's crop (see the module docstring). Faces the detector scores below ``min_score`` are not
    predicted. Results are plain dicts (see :meth:`predict`).
    """

    def __init__(
        self,
        checkpoint: str | Path,
        *,
        detector: str | Callable[[np.ndarray], list[Detection]] = "mtcnn",
        detector_options: dict[str, Any] | None = None,
        device: str = "cpu",
        batch_size: int = 16,
        box_scale: float | None = None,
        framing: dict[str, Any] | None = None,
        facer: str | None = None,
        min_score: float = 0.0,
    ) -> None:
        if batch_size < 1:
            raise ConfigError(f"batch_size must be >= 1, got {batch_size}")
        if not 0 <= min_score <= 1:
            raise ConfigError(f"min_score must lie in [0, 1], got {min_score}")
        self.min_score = float(min_score)
        self.device = resolve_device(device)
        self._model, self.spec = load_runner(checkpoint, self.device, facer)
        self.task = self.spec["task"]
        self._task, self.layout = spec_task(self.spec), Layout.from_record(self.spec)
        self.batch_size = int(batch_size)
        self._detector_spec, self._detector_options = detector, dict(detector_options or {})
        self._detector: Callable[[np.ndarray], list[Detection]] | None = (
            None if isinstance(detector, str) else detector
        )
        crop = self.spec["crop"]
        self.rule = crop["rule"]
        if self.rule not in RULES:
            raise CheckpointError(f"{checkpoint}: unknown crop rule {self.rule!r} ({', '.join(RULES)})")
        self.box_scale = float(crop["box_scale"] if box_scale is None else box_scale)
        if not self.box_scale > 0:
            raise ConfigError(f"box_scale must be > 0, got {self.box_scale}")
        base = dict(crop["framing"] or dataclasses.asdict(Framing()))
        unknown = set(framing or {}) - {f.name for f in dataclasses.fields(Framing)}
        if unknown:
            raise ConfigError(
                f"unknown framing option(s): {', '.join(sorted(unknown))} (kind, size, points, expand)"
            )
        self.framing = Framing(**{**base, **(framing or {})}).check()
        self.size = int(self.spec["image_size"])
        self.transform = None if self.rule == FACER_CROP else self._task.transform(False)

    # -- detection ---------------------------------------------------------------------------------------
    def detect(self, image: np.ndarray) -> list[Detection]:
        """The detector's faces in ``image`` (highest score first)."""
        if self._detector is None:
            self._detector = build_detector(self._detector_spec, **self._detector_options)
        return list(self._detector(image))

    # -- the crop ----------------------------------------------------------------------------------------
    def _fed(self, photo: Tensor, cache: dict[int, Tensor], scale: float) -> tuple[Tensor, np.ndarray]:
        """The photo as the transform should get it, box-filtered down by ``k`` where the crop shrinks it
        ``scale`` (< 1/2) times, and the photo -> fed-image matrix."""
        k = max(1, int(1.0 / max(scale, 1e-9))) if scale < 0.5 else 1
        if k == 1:
            return photo, np.eye(3)
        if k not in cache:
            cache[k] = nnf.avg_pool2d(photo[None], k)[0]
        return cache[k], reduction_matrix(k)

    def _canvas_matrix(self, det: Detection) -> np.ndarray:
        """Photo -> canvas (3x3) by the framing: five-point similarity, or the box square (also the fallback
        for a detection without points)."""
        fr = self.framing
        w, h = (int(v) for v in fr.size)
        if fr.kind == "points" and det.points is not None:
            return similarity(
                np.asarray(det.points, dtype=np.float64), np.asarray(fr.points, dtype=np.float64)
            )
        x1, y1, x2, y2 = (float(v) for v in det.box)
        half = max(x2 - x1, y2 - y1) * fr.expand / 2
        cx, cy = (x1 + x2) / 2, (y1 + y2) / 2
        square = box_matrix(np.array([cx - half, cy - half, cx + half, cy + half]), max(w, h), True)
        return np.diag([w / max(w, h), h / max(w, h), 1.0]) @ square

    def _crop_box(self, det: Detection) -> np.ndarray:
        """The alignment box: estimated from the five points, else the detector's box; x ``box_scale``."""
        if det.points is not None:
            return estimate_box(np.asarray(det.points, dtype=np.float64), self.box_scale)
        return scale_box(np.asarray(det.box, dtype=np.float64), self.box_scale)

    def prepare(self, image: np.ndarray, detections: Sequence[Detection]) -> list[FaceCrop]:
        """Each detection of ``image`` [H, W, 3] uint8 cropped as the model's task expects."""
        photo = _as_float(image)
        if self.transform is None:
            return [self._facer_face(photo, det) for det in detections]
        cache: dict[int, Tensor] = {}
        faces = []
        cfg, s = self._task.augment_config(), self.size
        for det in detections:
            rule = "box" if self.rule == "five_point" and det.points is None else self.rule
            crop_box = None
            if rule == "canvas":
                to_fed = self._canvas_matrix(det)  # the canvas is the fed image
                fed, shrink = self._fed(photo, cache, transform_scale(to_fed))
                size = (int(self.framing.size[0]), int(self.framing.size[1]))
                sample: dict[str, Any] = {
                    "image": _to_uint8(_warp(fed, to_fed @ np.linalg.inv(shrink), size))
                }
            else:
                if rule == "box":
                    crop_box = self._crop_box(det)
                    base = box_matrix(crop_box, s, cfg.keep_aspect)
                else:
                    base = five_point_matrix(np.asarray(det.points, dtype=np.float64), s)
                fed, to_fed = self._fed(photo, cache, transform_scale(base) / float(cfg.crop_scale))
                sample = {"image": _to_uint8(fed)}
                if rule == "box":
                    sample["box"] = landmarks_box(apply_transform(to_fed, box_corners(crop_box)))
                else:
                    sample["landmarks"] = apply_transform(to_fed, det.points).astype(np.float32)
            sample.update(self._task.blank_target(sample["image"]))
            out = self.transform(sample)
            faces.append(FaceCrop(det, out["image"], to_fed, self._task.crop_map(out),
                                  float(out.get("warp_factor", 0.0)), crop_box))  # fmt: skip
        return faces

    def _facer_face(self, photo: Tensor, det: Detection) -> FaceCrop:
        """facer's crop of ``det`` (:func:`~facerep.apps.facer.facer_crop`), with ``back`` the task's pick
        (:meth:`~facerep.tasks.base.Task.crop_map`) of its photo -> crop matrix (``warp``) and inverse
        (``crop_to_image``)."""
        if det.points is None:
            raise ConfigError(f"facer's models align faces by five points; detector {self._detector_spec!r} "
                              "gave a face without them (use detector=mtcnn)")  # fmt: skip
        setting = FACER_MODELS[self.spec["facer"]]
        crop, matrix = facer_crop(setting, photo, det.points)
        maps = {"warp": matrix, "crop_to_image": np.linalg.inv(matrix)}
        back = self._task.crop_map({k: torch.from_numpy(m[:2]).float() for k, m in maps.items()})
        return FaceCrop(det, crop, np.eye(3), back, setting.warp_factor)

    # -- the model and the mapping back -------------------------------------------------------------------
    def _run(self, faces: list[FaceCrop]) -> list[np.ndarray]:
        outputs: list[np.ndarray] = []
        for start in range(0, len(faces), self.batch_size):
            batch = torch.stack([f.input for f in faces[start : start + self.batch_size]])
            outputs += list(self._model(batch))
        return outputs

    def _read(self, face: FaceCrop, output: np.ndarray, hw: tuple[int, int]) -> dict[str, Any]:
        """One face: its detection and the task's reading of its output (None values and ``error`` when
        the output is not finite)."""
        det = face.detection
        result: dict[str, Any] = {
            "box": [round(float(v), 2) for v in det.box],
            "points": None
            if det.points is None
            else np.round(np.asarray(det.points, dtype=np.float64), 2).tolist(),
            "score": round(float(det.score), 4),
        }
        if np.isfinite(output).all():
            return {**result, **self._task.read_face(output, face, self.layout, hw)}
        return {**result, **self._task.null_face(face, self.layout), "error": NON_FINITE}

    def _result(
        self, image: np.ndarray, faces: list[dict[str, Any]], found: list[Detection]
    ) -> dict[str, Any]:
        """The result of one image from its faces' readings; ``found``: all the detector's faces."""
        h, w = image.shape[:2]
        out: dict[str, Any] = {"width": int(w), "height": int(h), "task": self.task, "faces": faces}
        out.update(self._task.combine(faces, (h, w)))
        if not faces:  # why, by prepare's rule: nothing found, or all below min_score (the best score)
            out["message"] = NO_FACE
            out.update(skip_reason(found, [], Counter()))
        return out

    def draw(self, image: np.ndarray, result: dict[str, Any]) -> Image.Image:
        """``result``'s overlay on ``image`` (see :func:`draw_result`)."""
        return _draw(self._task, self.layout, image, result)

    # -- public entry points ------------------------------------------------------------------------------
    def predict_stream(
        self,
        items: Iterable[tuple[Any, np.ndarray]],
        detections: Callable[[Any, np.ndarray], list] | None = None,
    ) -> Iterator[tuple[Any, np.ndarray, dict[str, Any]]]:
        """``(key, image)`` pairs -> ``(key, image, result)`` in order, faces of several images batched
        together (at least ``batch_size`` faces per model call where the images have them).
        ``detections(key, image)`` replaces the detector when given."""
        pending: list[tuple[Any, np.ndarray, list[FaceCrop], list[Detection]]] = []
        count = 0
        for key, image in items:
            image = _rgb(image, str(key) if isinstance(key, str | Path) else f"image {key}")
            dets = detections(key, image) if detections is not None else self.detect(image)
            faces = self.prepare(image, [d for d in dets if d.score >= self.min_score])
            pending.append((key, image, faces, dets))
            count += len(faces)
            if count >= self.batch_size:
                yield from self._flush(pending)
                pending, count = [], 0
        yield from self._flush(pending)

    def _flush(
        self, pending: list[tuple[Any, np.ndarray, list[FaceCrop], list[Detection]]]
    ) -> Iterator[tuple[Any, np.ndarray, dict]]:
        faces = [f for _, _, fs, _ in pending for f in fs]
        outputs = iter(self._run(faces))
        for key, image, fs, found in pending:
            read = [self._read(f, next(outputs), image.shape[:2]) for f in fs]
            yield key, image, self._result(image, read, found)

    def predict(
        self,
        images: Sequence[np.ndarray | str | Path],
        detections: Sequence[Sequence[Detection]] | None = None,
    ) -> list[dict[str, Any]]:
        """Images (arrays, see the module docstring's rules, or paths) -> one result per image: ``{"width",
        "height", "task", "faces": [{"box", "points", "score", "landmarks" [K, 2] | "mask" [H, W] uint8 |
        "probabilities", "label" / "labels", "error" (a non-finite output: the predictions are None)}],
        "mask" (parsing: all faces), "message", "reason" (no face: ``no_face`` when the detector found none,
        ``low_score`` with the best ``score`` when all were below ``min_score``)}``. ``detections`` (one
        list per image) replaces
        the detector."""
        arrays = [
            np.asarray(decode_image(im, str(im))) if isinstance(im, str | Path) else im for im in images
        ]
        if detections is not None and len(detections) != len(arrays):
            raise ConfigError(f"{len(detections)} detection lists for {len(arrays)} images")
        given = None if detections is None else (lambda key, _image: list(detections[key]))
        return [r for _, _, r in self.predict_stream(enumerate(arrays), given)]

    def __call__(self, image: np.ndarray | str | Path, detections: Sequence[Detection] | None = None) -> dict:
        """One image -> its result (see :meth:`predict`)."""
        return self.predict([image], None if detections is None else [detections])[0]


def _detection(face: Detection | Sequence[Any] | np.ndarray) -> Detection:
    """A :class:`Detection` from a detection, a box ``[4]``, five points ``[5, 2]`` (the box estimated from
    them: :func:`~facerep.geometry.estimate_box`) or a ``(box, five points)`` pair."""
    if isinstance(face, Detection):
        return face
    if isinstance(face, tuple | list) and len(face) == 2 and np.asarray(face[0]).size == 4:
        return Detection(np.asarray(face[0], dtype=np.float32), np.asarray(face[1], dtype=np.float32), 1.0)
    arr = np.asarray(face, dtype=np.float64)
    if arr.size == 4:
        return Detection(arr.reshape(4).astype(np.float32), None, 1.0)
    if arr.shape == (5, 2):
        return Detection(estimate_box(arr, 1.0).astype(np.float32), arr.astype(np.float32), 1.0)
    raise ConfigError(
        f"a face is a Detection, a box [4], five points [5, 2] or (box, points), got shape {arr.shape}"
    )


def preprocess(
    image: np.ndarray | str | Path,
    box_or_landmarks: Detection | Sequence[Any] | np.ndarray,
    model: Predictor | str | Path,
) -> Tensor:
    """The tensor ``[1, 3, S, S]`` float32 that ``model`` takes for one face of ``image``: exactly what
    :class:`Predictor` feeds it (its crop rule, size, mean/std; RGB, NCHW), so an exported model -- the
    ONNX's input ``image`` -- can be run without facerep's model code: ``session.run(None, {"image":
    preprocess(photo, box, "model.onnx").numpy()})``.

    ``image``: an array (the module docstring's rules) or a file. ``box_or_landmarks``: a
    :class:`~facerep.data.detect.Detection`, a box ``(x1, y1, x2, y2)``, five points ``[5, 2]`` (image-left
    eye, image-right eye, nose tip, image-left and image-right mouth corner) or a ``(box, points)`` pair; a
    detector's box and points together give exactly what ``facerep predict`` crops. ``model``: a fine-tuning
    run directory, its ``finetune.pt``, an export with its sidecar ``<file>.json``, or a :class:`Predictor`
    (reused: no model is loaded again)."""
    predictor = model if isinstance(model, Predictor) else Predictor(model)
    name = str(image) if isinstance(image, str | Path) else "image"
    array = np.asarray(decode_image(image, name)) if isinstance(image, str | Path) else image
    (face,) = predictor.prepare(_rgb(array, name), [_detection(box_or_landmarks)])
    return face.input[None].to(torch.float32)


def preprocess_contract(spec: dict[str, Any]) -> dict[str, Any]:
    """What an export's input holds, from its spec: crop rule, size, mean, std, channel order, layout,
    box_scale, framing and the transform settings of the crop (see :func:`preprocess`)."""
    crop, augment = spec["crop"], spec.get("augment") or {}
    return {
        "input": spec["input_name"],
        "layout": "NCHW",
        "channel_order": "RGB",
        "dtype": "float32",
        "image_size": int(spec["image_size"]),
        "scale": "1/255",  # uint8 pixels -> [0, 1], then (x - mean) / std per channel
        "mean": [float(v) for v in spec["mean"]],
        "std": [float(v) for v in spec["std"]],
        "crop_rule": crop["rule"],
        "box_scale": float(crop["box_scale"]),
        "framing": crop["framing"],
        "crop_scale": augment.get("crop_scale"),
        "keep_aspect": augment.get("keep_aspect"),
        "warp": augment.get("warp"),
        "warp_factor": augment.get("warp_factor"),
        "task": spec["task"],
        "output": spec["output_name"],
        "python": "facerep.preprocess(image, box_or_landmarks, model)",
    }


def _rgb(image: np.ndarray, name: str) -> np.ndarray:
    """``image`` as ``[H, W, 3]`` uint8 RGB by the module docstring's rules, else a :class:`BadImage`."""
    arr = np.asarray(image)
    if arr.ndim == 3 and arr.shape[2] in (1, 4):
        arr = arr[:, :, 0] if arr.shape[2] == 1 else arr[:, :, :3]  # grey; RGBA without alpha
    if arr.ndim == 2:
        arr = np.repeat(arr[:, :, None], 3, axis=2)
    if arr.ndim != 3 or arr.shape[2] != 3:
        raise BadImage(name, f"expected an image [H, W] or [H, W, 1 | 3 | 4], got shape {tuple(arr.shape)}")
    if arr.size == 0:
        raise BadImage(name, f"empty image (width {arr.shape[1]}, height {arr.shape[0]})")
    if arr.dtype == np.uint8:
        return arr
    if arr.dtype == np.uint16:
        return np.round(arr / 257.0).astype(np.uint8)
    if not np.issubdtype(arr.dtype, np.floating):
        raise BadImage(name, f"pixel type {arr.dtype} is not uint8, uint16 or float in [0, 1]")
    if not np.isfinite(arr).all():
        raise BadImage(name, "a float image with NaN or infinite pixels")
    low, high = float(arr.min()), float(arr.max())
    if low < 0 or high > 1:
        raise BadImage(
            name, f"a float image must hold values in [0, 1], got [{low:.4g}, {high:.4g}] (divide by 255?)"
        )
    return np.round(arr * 255.0).astype(np.uint8)


# ----------------------------------------------------------------------------------------------- overlays


def draw_result(image: np.ndarray, result: dict[str, Any], spec: dict[str, Any]) -> Image.Image:
    """The photo with every face's box and prediction, drawn by the spec's task: landmarks (green dots),
    the coloured combined mask with a legend, or the label(s) with probabilities."""
    return _draw(spec_task(spec), Layout.from_record(spec), image, result)


def _draw(task: Task, layout: Layout, image: np.ndarray, result: dict[str, Any]) -> Image.Image:
    canvas = task.draw_photo(image, result, layout)
    draw = ImageDraw.Draw(canvas)
    colours = palette(len(result["faces"]) + 2)
    for i, face in enumerate(result["faces"]):
        colour = tuple(int(v) for v in colours[i + 1])
        x1, y1, x2, y2 = face["box"]
        draw.rectangle([x1, y1, x2, y2], outline=colour, width=max(1, int(min(image.shape[:2]) / 240)))
        caption = face["error"] if "error" in face else task.caption(face)
        text = f"{i}: {face['score']:.2f}" + (f" {caption}" if caption else "")
        draw.text((x1 + 2, max(0.0, y1 - 12)), text, fill=colour)
    if not result["faces"]:
        draw.text((4, 4), NO_FACE, fill=(255, 40, 40))
    return canvas
