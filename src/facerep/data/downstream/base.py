"""Base class and helpers shared by the downstream (transfer) datasets.

Every dataset is a map-style :class:`FaceDataset`; ``ds[i]`` is a dict:

``"image"``
    ``np.ndarray [H, W, 3] uint8`` RGB, decoded with :func:`facerep.data.transforms.decode_image`
    (original resolution unless a dataset documents otherwise).
``"name"``
    the image path relative to the dataset root (POSIX separators).
alignment
    ``"landmarks"`` ``float32 [K, 2]`` (x, y) pixels, 0-based (the centre of pixel ``(i, j)`` is at
    ``x = i, y = j``); ``"box"`` ``float32 [4]`` (x1, y1, x2, y2) face box in pixels; optional
    ``"visible"`` ``bool [K]``.
parsing
    ``"mask"`` ``uint8 [H, W]`` class ids (indices into ``class_names``, background = 0).
classification
    ``"label"``: ``int`` (single-label, index into ``class_names``) or ``uint8 [A]`` 0/1
    (multi-label, in the order of ``attribute_names``).

Annotations are parsed (and validated) when the dataset is built; images are read on access. Problems
with the annotation files (missing root or file, malformed line) are one-line
:class:`~facerep.data.sources.DataError` s naming the file and, where it applies, the line number.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from facerep.config import ConfigError
from facerep.data.sources import DataError
from facerep.data.transforms import decode_image
from facerep.geometry import landmarks_box as landmarks_box  # data/scenes.py imports it from here

# CelebA's list_eval_partition.txt: split -> partition id (CelebA attributes and CelebAMask-HQ share it)
CELEBA_PARTITION = {"train": 0, "val": 1, "test": 2}
DEFAULT_EXPAND = 1.5  # box framing of the real whole-image sets: canvas side = detector box side x this
FRAMING_KINDS = ("points", "box")


@dataclass
class Framing:
    """How a whole-image set frames its faces: the canvas a detected face is warped onto before the task's
    whole-image transform. ``kind`` ``points``: the five-point similarity onto ``points`` ([5, 2] canvas
    pixels, pixel centres) in a ``size`` = [width, height] canvas; ``box``: a square of the detector box's
    longer side times ``expand``, centred on the box, resized to ``size`` (None in a dataset's
    :class:`DatasetInfo`: the crop size, ``data.image_size``)."""

    kind: str = "box"
    size: list[int] | None = field(default_factory=lambda: [224, 224])
    points: list[list[float]] | None = None
    expand: float = DEFAULT_EXPAND

    def at_size(self, image_size: int) -> Framing:
        """This framing with a ``size`` of None made the ``image_size`` square."""
        return self if self.size is not None else dataclasses.replace(self, size=[image_size, image_size])

    def check(self) -> Framing:
        if self.kind not in FRAMING_KINDS:
            raise ConfigError(f"framing.kind must be one of {', '.join(FRAMING_KINDS)}, got {self.kind!r}")
        if self.size is None or len(self.size) != 2 or min(int(v) for v in self.size) < 1:
            raise ConfigError(f"framing.size must be [width, height] >= 1, got {self.size}")
        if self.kind == "points" and np.asarray(self.points, dtype=np.float64).shape != (5, 2):
            raise ConfigError(f"framing.points must be five [x, y] canvas points, got {self.points}")
        if not self.expand > 0:
            raise ConfigError(f"framing.expand must be > 0, got {self.expand}")
        return self


@dataclass(frozen=True)
class Prompts:
    """Zero-shot wording of a dataset's names: each template's ``{}`` takes each phrase of a name;
    ``negative`` words an attribute's absence (None: single-label classes)."""

    templates: tuple[str, ...]
    positive: Mapping[str, tuple[str, ...]]
    negative: Mapping[str, tuple[str, ...]] | None = None


@dataclass(frozen=True)
class DatasetInfo:
    """What applications know of a dataset without reading it (:meth:`FaceDataset.describe`): its task
    (None: any, read from the annotations), what its labels mean, how it frames its faces, whether its
    samples carry the five points (LaPa-style landmarks), whether it is video, whether it is rendered
    (no root; ``length`` / ``size`` options) and its zero-shot prompts."""

    name: str
    task: str | None
    num_points: int | None = None
    class_names: tuple[str, ...] | None = None
    attribute_names: tuple[str, ...] | None = None
    framing: Framing = field(default_factory=lambda: Framing(size=None))
    five_points: bool = False
    video: bool = False
    rendered: bool = False
    prompts: Prompts | None = None


class FaceDataset(torch.utils.data.Dataset):
    """A split of a downstream face dataset (see the module docstring for the sample dict).

    Subclasses set the class attributes below, fill ``self._names`` (one entry per sample, the image
    path relative to ``root``) and implement :meth:`_load`.
    """

    dataset_name: str = "?"  # registry name, for messages
    task: str = "?"  # "alignment" | "parsing" | "classification"
    num_points: int | None = None  # alignment: K
    class_names: tuple[str, ...] | None = None  # parsing (background at 0) / single-label classification
    attribute_names: tuple[str, ...] | None = None  # multi-label classification
    nme_unit: str | None = None  # alignment: "inter_ocular" | "diag" | ...
    # alignment: the two landmark indices whose distance is the "inter_ocular" NME unit
    ocular_indices: tuple[int, int] | None = None
    splits: tuple[str, ...] = ("train", "test")

    @classmethod
    def describe(cls, options: Mapping[str, Any] | None = None) -> DatasetInfo:
        """The dataset's facts for the reader options ``options`` (no file is read): here its class
        attributes, framed by the detector box x :data:`DEFAULT_EXPAND`."""
        return DatasetInfo(cls.dataset_name, cls.task, cls.num_points, cls.class_names, cls.attribute_names)

    def __init__(self, root: str | Path | None, split: str) -> None:
        self.split = check_split(self.dataset_name, split, self.splits)
        self.root = Path(root) if root is not None else None
        self._names: list[str] = []

    # -- map-style dataset -------------------------------------------------------------------------
    def __len__(self) -> int:
        return len(self._names)

    def __getitem__(self, index: int) -> dict[str, Any]:
        n = len(self)
        if index < 0:
            index += n
        if not 0 <= index < n:
            raise IndexError(f"{self.dataset_name}: index {index} out of range for {n} samples")
        sample = self._load(int(index))
        sample.setdefault("name", self._names[index])
        return sample

    def _load(self, index: int) -> dict[str, Any]:
        raise NotImplementedError

    def sample_name(self, index: int) -> str:
        """Path of sample ``index`` relative to the root (unique per image, not per face)."""
        return self._names[index]

    @property
    def multi_label(self) -> bool:
        """Classification: whether ``"label"`` is a 0/1 vector over ``attribute_names``."""
        return self.attribute_names is not None

    # -- evaluation subsets ------------------------------------------------------------------------
    def subsets(self) -> dict[str, np.ndarray]:
        """Named index subsets of this split (int64 arrays); always has ``"full"`` = all samples."""
        out = {"full": np.arange(len(self), dtype=np.int64)}
        for key, idx in self._extra_subsets().items():
            out[key] = np.asarray(idx, dtype=np.int64)
        return out

    def _extra_subsets(self) -> dict[str, Iterable[int]]:
        return {}

    def __repr__(self) -> str:
        return f"{type(self).__name__}(root={self.root}, split={self.split!r}, len={len(self)})"


# ------------------------------------------------------------------------------------------- helpers


def check_split(dataset: str, split: str, allowed: Sequence[str]) -> str:
    """``split`` if it is one of ``allowed``, else a one-line :class:`DataError`."""
    if split not in allowed:
        raise DataError(f"{dataset}: unknown split {split!r}; expected one of {', '.join(allowed)}")
    return split


def require_root(dataset: str, root: str | Path | None) -> Path:
    """``root`` as a ``Path``; DataError if it is None or not a directory."""
    if root is None:
        raise DataError(f"{dataset}: a dataset root directory is required")
    path = Path(root)
    if not path.is_dir():
        raise DataError(f"{dataset}: root {path} is not a directory")
    return path


def require_file(dataset: str, path: Path, what: str) -> Path:
    """``path`` if it is a file, else DataError ``"<dataset>: missing <what>: <path>"``."""
    if not path.is_file():
        raise DataError(f"{dataset}: missing {what}: {path}")
    return path


def require_dir(dataset: str, path: Path, what: str) -> Path:
    """``path`` if it is a directory, else DataError ``"<dataset>: missing <what>: <path>"``."""
    if not path.is_dir():
        raise DataError(f"{dataset}: missing {what}: {path}")
    return path


def line_error(dataset: str, path: Path, lineno: int, expected: str, line: str) -> DataError:
    """A DataError naming the file, the 1-based line number, what was expected and (a cut of) the line."""
    text = line.strip()
    if len(text) > 80:
        text = text[:77] + "..."
    return DataError(f"{dataset}: {path}:{lineno}: expected {expected}, got {text!r}")


def read_lines(dataset: str, path: Path, what: str) -> list[tuple[int, str]]:
    """Non-blank lines of a text file as ``(1-based line number, line without newline)``."""
    require_file(dataset, path, what)
    try:
        text = path.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as err:
        raise DataError(f"{dataset}: cannot read {what} {path}: {err}") from err
    return [(i + 1, line.rstrip("\r\n")) for i, line in enumerate(text.splitlines()) if line.strip()]


def parse_floats(
    dataset: str, path: Path, lineno: int, fields: Sequence[str], line: str, what: str
) -> np.ndarray:
    """``fields`` as a float64 array; a malformed number is a DataError naming file and line."""
    try:
        values = np.array([float(v) for v in fields], dtype=np.float64)
    except ValueError:
        raise line_error(dataset, path, lineno, what, line) from None
    if not np.all(np.isfinite(values)):
        raise line_error(dataset, path, lineno, what + " (finite numbers)", line)
    return values


def load_image(dataset: str, path: Path, name: str) -> np.ndarray:
    """The RGB image at ``path`` as ``[H, W, 3] uint8``.

    A missing file is a DataError; an undecodable one a BadImage.
    """
    if not path.is_file():
        raise DataError(f"{dataset}: missing image: {path}")
    return np.array(decode_image(path, name), dtype=np.uint8)  # writable copy


def load_label_map(dataset: str, path: Path) -> np.ndarray:
    """A PNG (or any lossless image) of class ids as ``[H, W] uint8``.

    Single-channel (``L``/``P``/``I``) images give their values; an RGB(A) image is accepted when its
    three colour channels are equal (a grey label map saved as RGB), else it is a DataError.
    """
    if not path.is_file():
        raise DataError(f"{dataset}: missing label map: {path}")
    try:
        with Image.open(path) as img:
            img.load()
            arr = np.asarray(img)
    except Exception as err:
        raise DataError(f"{dataset}: cannot read label map {path}: {type(err).__name__}: {err}") from err
    if arr.ndim == 3:
        if (
            arr.shape[2] >= 3
            and np.array_equal(arr[..., 0], arr[..., 1])
            and np.array_equal(arr[..., 0], arr[..., 2])
        ) or arr.shape[2] in (1, 2):
            arr = arr[..., 0]
        else:
            raise DataError(
                f"{dataset}: label map {path} has colour channels; expected one channel of class ids"
            )
    if arr.dtype != np.uint8:
        if arr.size and (arr.min() < 0 or arr.max() > 255):
            raise DataError(f"{dataset}: label map {path} has class ids outside 0..255")
        arr = arr.astype(np.uint8)
    return np.ascontiguousarray(arr)
