"""facer's released FaRL task models (github.com/FacePerceiver/facer, ``models-v1``), run as facer runs them.

facer publishes its face parsers and aligners as TorchScript files; ``facerep predict checkpoint=FILE``
loads them with ``torch.jit.load`` (never a plain pickle), crops each detected face as facer does and maps
the outputs back with facerep's geometry (:mod:`facerep.data.downstream.transforms`).

The models (:data:`FACER_MODELS`, facer's ``pretrain_settings``):

parsing (``facer/face_parsing/farl.py``)
    ``lapa/448``: the five points onto FaRL's template (:data:`FIVE_POINT_TEMPLATE`, face scale 1) in a
    448 crop, tanh-warped with factor 0.8; ``celebm/448``: an FFHQ-style square from the eyes and mouth
    (:func:`celebm_quad`) onto the 448 crop, no warp. The file is the whole network: ``[N, 3, 448, 448]``
    in [0, 1] (it normalises itself) -> ``(logits [N, C, 448, 448], aux)``.
alignment (``facer/face_alignment/farl.py``)
    ``ibug300w/448`` (68 points), ``aflw19/448`` (19), ``wflw/448`` (98): the five points onto the template
    at face scale 0.8, no warp. The file is only the traced UPerNet heatmap head (four maps -> heatmaps
    ``[N, K, h, w]``); FaRL's ViT-B/16 (448 px input, blocks 3, 5, 7, 11, FPN adapters) is stored beside
    it in the archive as the extra file ``backbone``, a ``torch.save`` state dict read here with
    ``weights_only=True`` into facerep's ViT and :class:`~facerep.models.dense.FPNAdapters`. Landmarks are
    the soft-argmax of the sigmoid heatmaps resized to the crop (facer's ``heatmap2points``).

facer's matrices map pixel-edge coordinates (pixel ``i`` spans ``[i, i + 1]``) and take the detector's
points as they are; facerep's geometry puts pixel centres at integers, so :func:`facer_matrix` is facer's
matrix conjugated by the half-pixel shift, and sampling is then exactly facer's. facer's template target is
``(T * scale + 1) * (S - 1) / 2`` (edge coordinates), facerep's own five-point crop puts it at
``(T + 1) * S / 2`` (edge coordinates): up to one pixel apart at ``S = 448``, so the facer crop is rebuilt
here rather than taken from :func:`~facerep.geometry.five_point_matrix`.
"""

from __future__ import annotations

import io
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as nnf
from torch import Tensor, nn

from facerep.backbones import FAMILIES
from facerep.backbones.base import LoadOptions, load_strict
from facerep.backbones.clip_layout import clip_records, clip_to_vit
from facerep.backbones.io import is_torchscript
from facerep.config import ConfigError
from facerep.data.downstream.transforms import FIVE_POINT_TEMPLATE, sampling_grid, similarity, warp_image
from facerep.models.dense import FPNAdapters
from facerep.runtime.checkpoint import CheckpointError
from facerep.runtime.errors import one_line
from facerep.tasks.alignment import heatmap_points

__all__ = [
    "FACER_MODELS",
    "FacerAligner",
    "FacerParser",
    "FacerSetting",
    "FarlFeatures",
    "celebm_quad",
    "facer_crop",
    "facer_matrix",
    "facer_spec",
    "load_facer",
    "setting_by_file_name",
]

CROP = "facer"  # the Predictor's crop rule for these models
SIZE = 448  # the crop side of every released model
BACKBONE_FILE = "backbone"  # the aligners' extra file holding FaRL's ViT + FPN state dict
LAPA_CLASSES = ("background", "face", "rb", "lb", "re", "le", "nose", "ulip", "imouth", "llip", "hair")
CELEBM_CLASSES = (
    "background", "neck", "face", "cloth", "rr", "lr", "rb", "lb", "re", "le", "nose", "imouth", "llip",
    "ulip", "hair", "eyeg", "hat", "earr", "neck_l",
)  # fmt: skip
# FaRLVisualFeatures.get_default_output_indices by ViT depth (base, large, huge)
FARL_LEVELS = {12: (3, 5, 7, 11), 24: (7, 11, 15, 23), 32: (8, 14, 20, 31)}


@dataclass(frozen=True)
class FacerSetting:
    """One of facer's ``pretrain_settings``: ``align`` ``points`` (five-point template x ``face_scale``) or
    ``celebm`` (:func:`celebm_quad`), the tanh ``warp_factor`` and the outputs."""

    name: str
    task: str  # parsing | alignment
    file: str  # the released file name
    align: str
    face_scale: float
    warp_factor: float
    class_names: tuple[str, ...] | None = None
    num_points: int | None = None
    size: int = SIZE

    @property
    def dataset(self) -> str:
        return self.name.split("/")[0]


_RELEASE = "face_{}.farl.{}.main_ema_{}.pt"
FACER_MODELS = {
    s.name: s
    for s in (
        FacerSetting("lapa/448", "parsing", _RELEASE.format("parsing", "lapa", "136500_jit191"), "points",
                     1.0, 0.8, class_names=LAPA_CLASSES),
        FacerSetting("celebm/448", "parsing", _RELEASE.format("parsing", "celebm", "181500_jit"), "celebm",
                     1.0, 0.0, class_names=CELEBM_CLASSES),
        FacerSetting("ibug300w/448", "alignment", _RELEASE.format("alignment", "ibug300w", "jit"), "points",
                     0.8, 0.0, num_points=68),
        FacerSetting("aflw19/448", "alignment", _RELEASE.format("alignment", "aflw19", "jit"), "points",
                     0.8, 0.0, num_points=19),
        FacerSetting("wflw/448", "alignment", _RELEASE.format("alignment", "wflw", "jit"), "points",
                     0.8, 0.0, num_points=98),
    )
}  # fmt: skip
KNOWN = ", ".join(FACER_MODELS)


# ----------------------------------------------------------------------------------------------- geometry


def _rot90(v: np.ndarray) -> np.ndarray:
    return np.array([-v[1], v[0]])


def celebm_quad(points5: np.ndarray) -> np.ndarray:
    """facer's ``get_quad`` (FFHQ's oriented square from the eye and mouth centres): five points ``[5, 2]``
    -> the square's corners ``[4, 2]`` (top-left, top-right, bottom-right, bottom-left)."""
    p = np.asarray(points5, dtype=np.float64)
    eye, mouth = (p[0] + p[1]) / 2 + 0.5, (p[3] + p[4]) / 2 + 0.5
    eye_to_eye, eye_to_mouth = p[1] - p[0], mouth - eye
    x = eye_to_eye - _rot90(eye_to_mouth)
    x *= max(np.hypot(*eye_to_eye) * 2.0, np.hypot(*eye_to_mouth) * 1.8) / np.hypot(*x)
    y, c = _rot90(x), eye + eye_to_mouth * 0.1
    return np.stack([c - x - y, c + x - y, c + x + y, c - x + y])


def facer_matrix(setting: FacerSetting, points5: np.ndarray) -> np.ndarray:
    """Photo -> aligned crop (3x3, pixel centres) of facer's ``get_matrix_fn`` for five points ``[5, 2]``."""
    s = setting.size
    pts = np.asarray(points5, dtype=np.float64)
    if setting.align == "celebm":
        edge = similarity(celebm_quad(pts), np.array([[0.0, 0.0], [s, 0.0], [s, s], [0.0, s]]))
    else:
        edge = similarity(pts, (FIVE_POINT_TEMPLATE * setting.face_scale + 1.0) * (s - 1) / 2.0)
    half = np.array([[1.0, 0.0, 0.5], [0.0, 1.0, 0.5], [0.0, 0.0, 1.0]])  # centre -> edge coordinates
    return np.linalg.inv(half) @ edge @ half


def facer_crop(setting: FacerSetting, photo: Tensor, points5: np.ndarray) -> tuple[Tensor, np.ndarray]:
    """Float photo ``[3, H, W]`` in [0, 1] -> the crop facer feeds its model ``[3, S, S]`` (bilinear, outside
    black, tanh-warped) and the photo -> aligned-crop matrix (3x3)."""
    matrix = facer_matrix(setting, points5)
    grid = sampling_grid(matrix, photo.shape[-2:], setting.size, setting.warp_factor)
    return warp_image(photo, grid), matrix


# ------------------------------------------------------------------------------------------------- models


class FacerParser(nn.Module):
    """A facer parsing file: ``[N, 3, S, S]`` in [0, 1] -> its logits ``[N, C, S, S]`` (the aux output
    dropped); another number of classes than the setting's is a one-line :class:`CheckpointError`."""

    def __init__(self, net: nn.Module, num_classes: int, source: str) -> None:
        super().__init__()
        self.net, self.num_classes, self.source = net, num_classes, source

    def forward(self, image: Tensor) -> Tensor:
        out = self.net(image)
        logits = out[0] if isinstance(out, tuple | list) else out
        if logits.ndim != 4 or logits.shape[1] != self.num_classes:
            raise CheckpointError(f"{self.source}: the parser gave {list(logits.shape)}; expected logits "
                                  f"[N, {self.num_classes}, h, w]")  # fmt: skip
        return logits


class FarlFeatures(nn.Module):
    """facer's ``FaRLVisualFeatures``: ``[N, 3, S, S]`` in [0, 1] -> CLIP-normalised -> the raw outputs of the
    ViT blocks ``levels`` through FaRL's FPN adapters -> four maps ``[N, D, 4G | 2G | G | G/2]``."""

    def __init__(self, vit: nn.Module, fpn: FPNAdapters, levels: tuple[int, ...], mean: Tensor, std: Tensor):
        super().__init__()
        self.vit, self.fpn, self.levels = vit, fpn, levels
        self.register_buffer("mean", mean.reshape(1, 3, 1, 1).float())
        self.register_buffer("std", std.reshape(1, 3, 1, 1).float())

    def forward(self, image: Tensor) -> list[Tensor]:
        return self.fpn(self.vit.forward_pyramid((image - self.mean) / self.std, self.levels))

    @classmethod
    def from_state(cls, state: dict[str, Any], source: str) -> FarlFeatures:
        """Built from the aligners' ``backbone`` state dict (``visual.*`` CLIP tower, ``fpns.*``,
        ``image_mean``, ``image_std``); what does not fit is a one-line :class:`CheckpointError`."""
        tower, _ = clip_to_vit(state, source)
        vit = FAMILIES.get("vit").from_state(
            tower, clip_records(tower, None, source)[0], source, LoadOptions()
        )
        levels = FARL_LEVELS.get(len(vit.blocks))
        if levels is None:
            raise CheckpointError(f"{source}: a {len(vit.blocks)}-block FaRL ViT (facer's are 12, 24 or 32)")
        names = {"fpns.0.": "up4.", "fpns.1.": "up2."}
        fpn_state = {names[k[:7]] + k[7:]: v for k, v in state.items() if k[:7] in names}
        fpn = load_strict(FPNAdapters(vit.embed_dim), fpn_state, source, "FaRL's FPN adapters")
        if not all(isinstance(state.get(k), Tensor) for k in ("image_mean", "image_std")):
            raise CheckpointError(f"{source}: the backbone state lacks image_mean / image_std")
        return cls(vit, fpn, levels, state["image_mean"], state["image_std"]).eval()


class FacerAligner(nn.Module):
    """A facer aligner: features -> the traced heatmap ``head`` -> sigmoid -> resized to the input (bilinear)
    -> their weighted mean pixel (:func:`~facerep.tasks.alignment.heatmap_points`, facer's
    ``heatmap2points``): ``[N, 3, S, S]`` in [0, 1] -> landmarks ``[N, K, 2]`` in [0, 1] crop units."""

    def __init__(self, features: nn.Module, head: nn.Module) -> None:
        super().__init__()
        self.features, self.head = features, head

    def forward(self, image: Tensor) -> Tensor:
        heat = torch.sigmoid(self.head(self.features(image)))
        heat = nnf.interpolate(heat, size=image.shape[-2:], mode="bilinear", align_corners=False)
        return heatmap_points(heat)


# ------------------------------------------------------------------------------------------------ loading


def setting_by_file_name(path: Path) -> FacerSetting | None:
    """The one setting whose dataset is a word of the file name (``face_parsing.farl.lapa...`` -> lapa)."""
    words = set(re.split(r"[._\-/]", path.name.lower()))
    found = [s for s in FACER_MODELS.values() if s.dataset in words]
    return found[0] if len(found) == 1 else None


def _probe(net: nn.Module, features: nn.Module | None) -> FacerSetting | None:
    """The setting whose outputs match ``net``'s on a blank input (through ``features`` for an aligner's
    head): classes or points counted."""
    with torch.no_grad():
        blank = torch.zeros(1, 3, SIZE, SIZE)
        out = net(features(blank)) if features is not None else net(blank)
    if features is not None:
        count = int(out.shape[1]) if isinstance(out, Tensor) and out.ndim == 4 else None
        found = [s for s in FACER_MODELS.values() if s.task == "alignment" and s.num_points == count]
    else:
        logits = out[0] if isinstance(out, tuple | list) and out else out
        ok = isinstance(logits, Tensor) and logits.ndim == 4 and tuple(logits.shape[2:]) == (SIZE, SIZE)
        count = int(logits.shape[1]) if ok else None
        found = [s for s in FACER_MODELS.values() if s.class_names and len(s.class_names) == count]
    return found[0] if found else None


def facer_spec(setting: FacerSetting) -> dict[str, Any]:
    """What :class:`~facerep.apps.predict.Predictor` reads of a model's spec, for a facer model."""
    return {
        "task": setting.task,
        "dataset": f"facer:{setting.name}",
        "facer": setting.name,
        "image_size": setting.size,
        "num_points": setting.num_points,
        "class_names": list(setting.class_names) if setting.class_names else None,
        "attribute_names": None,
        "multilabel": False,
        "crop": {"rule": CROP, "box_scale": 1.0, "framing": None},
    }


def load_facer(path: str | Path, name: str | None = None) -> tuple[nn.Module, dict[str, Any]]:
    """A facer TorchScript file as a module ``[N, 3, S, S]`` in [0, 1] -> logits ``[N, C, S, S]`` (parsing)
    or landmarks ``[N, K, 2]`` in [0, 1] (alignment), and its spec. The model is ``name`` (a key of
    :data:`FACER_MODELS`), else told by the file name, else by its outputs on a blank probe; a file that is
    not TorchScript, or whose model cannot be told, is a one-line error."""
    path = Path(path)
    if name is not None and name not in FACER_MODELS:
        raise ConfigError(f"facer={name!r} is not a facer model; known: {KNOWN}")
    if not is_torchscript(path):
        raise CheckpointError(f"{path}: not a TorchScript archive (facer's models are; facerep does not "
                              "unpickle other files)")  # fmt: skip
    extra = {BACKBONE_FILE: ""}
    try:
        net = torch.jit.load(str(path), map_location="cpu", _extra_files=extra).eval()
    except RuntimeError as err:
        raise CheckpointError(f"{path}: torch.jit.load cannot read it: {one_line(err, 200)}") from err
    aligner = bool(extra[BACKBONE_FILE])
    features = None
    if aligner:
        try:
            state = torch.load(io.BytesIO(extra[BACKBONE_FILE]), map_location="cpu", weights_only=True)
        except Exception as err:  # torch raises its own errors for an unreadable or unsafe stream
            raise CheckpointError(f"{path}: its {BACKBONE_FILE} weights are not a plain state dict: "
                                  f"{one_line(err, 160)}") from err  # fmt: skip
        if not isinstance(state, dict):
            raise CheckpointError(f"{path}: its {BACKBONE_FILE} file is not a state dict")
        features = FarlFeatures.from_state(state, f"{path} ({BACKBONE_FILE})")
    setting = FACER_MODELS[name] if name is not None else setting_by_file_name(path)
    if setting is None:
        try:
            setting = _probe(net, features)
        except RuntimeError:  # the probe's forward failed: an unknown contract
            setting = None
    if setting is None:
        raise CheckpointError(
            f"{path}: cannot tell which facer model this TorchScript file is (neither its name nor its "
            f"outputs match one); name it with facer=NAME: {KNOWN}"
        )
    if (setting.task == "alignment") != aligner:
        kind = "an aligner (heatmap head + backbone)" if aligner else "a whole network (a parser)"
        raise CheckpointError(
            f"{path}: facer={setting.name} is a facer {setting.task} model but the file is {kind}"
        )
    if features is not None:
        return FacerAligner(features, net).eval(), facer_spec(setting)
    return FacerParser(net, len(setting.class_names or ()), str(path)).eval(), facer_spec(setting)
