"""Face anti-spoofing datasets: videos of live faces and presentation attacks, one sample per sampled frame.

Convention (SSDG, FSFM; ``shared/README.md`` 4b): label ``1`` = live, ``0`` = spoof, so
``class_names = ("spoof", "live")``. A sample is one sampled frame of one video::

    {"image": [crop_size, crop_size, 3] uint8 face crop, "label": int, "video": video_id,
     "attack": attack name ("live", "print", "replay", ...), "domain": "O" | "C" | "I" | "M" | "synthetic",
     "frame": int, "name": f"{video_id}#{frame}"}

:class:`VideoFaceDataset` is the base of the real readers: a subclass lists its split's videos
(:meth:`VideoFaceDataset._videos`, from the official layout and protocol files); the base samples
``frames`` evenly spaced frames per video (or every ``frame_step``-th), crops the face (the dataset's own box
nearest the frame when it has annotation files, else the detector's best face; a square box side x
``crop_expand``; a frame without a face gets the centre square, counted in ``no_face_frames``) and caches
the crops per video in ``cache`` (default ``<root>/.facerep_frames``), so epochs do not decode again. Videos
that cannot be decoded are reported once (one printed line each, in ``unreadable``) and skipped.

:class:`SyntheticAntispoof` renders live and attack "videos" in memory (no root); :class:`OCIM` concatenates
datasets for the cross-domain protocols (O = OULU-NPU, C = CASIA-FASD, I = Idiap Replay-Attack, M = MSU-MFSD):
train = the source domains' train splits, dev = their dev splits, test = the target domain's test split.
"""

from __future__ import annotations

import dataclasses
import hashlib
import importlib
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from facerep.data.crop import CropConfig, crop_transform, warp_face
from facerep.data.detect import Detection, FaceDetector, build_detector
from facerep.data.downstream.base import DatasetInfo, FaceDataset, Framing, check_split, require_root
from facerep.data.downstream.synthetic import synthetic_framing
from facerep.data.sources import DataError
from facerep.data.synthetic import pixel_grid, render_face
from facerep.data.video import FrameCache, VideoError, frame_count, read_frames, sample_indices
from facerep.geometry import centre_box
from facerep.runtime.untrusted import as_int

__all__ = [
    "ANTISPOOF_CLASSES",
    "DEFAULT_CROP_EXPAND",
    "OCIM",
    "OCIM_DATASETS",
    "OCIM_PROTOCOLS",
    "SyntheticAntispoof",
    "VideoFaceDataset",
    "VideoItem",
]

ANTISPOOF_CLASSES = ("spoof", "live")  # label 1 = live, 0 = spoof
CACHE_DIRNAME = ".facerep_frames"
_CACHE_VERSION = 1


DEFAULT_CROP_EXPAND = 1.3  # face crop side / face box side (square box)


@dataclass(frozen=True)
class VideoItem:
    """One video of a split: where it is, what it shows, and (optionally) the dataset's own face boxes."""

    path: str  # relative to the dataset root (POSIX), "" for in-memory videos
    video_id: str  # unique in the dataset, e.g. "oulu/Train_files/1_1_01_1"
    label: int  # 1 live, 0 spoof
    attack: str  # "live", "print", "replay", ... (the dataset's own names)
    subject: str
    boxes: dict[int, np.ndarray] | None = None  # frame index -> [4] (x1, y1, x2, y2); None: use the detector


def _sorted_attacks(names: set[str]) -> tuple[str, ...]:
    return tuple(sorted(names, key=lambda a: (a != "live", a)))


def video_info(info: DatasetInfo, options: Mapping[str, Any]) -> DatasetInfo:
    """``info`` of a video set whose frames are cropped as a square of the face box x ``crop_expand``."""
    expand = float(options.get("crop_expand", DEFAULT_CROP_EXPAND))
    return dataclasses.replace(info, framing=Framing(size=None, expand=expand), video=True)


class VideoFaceDataset(FaceDataset):
    """Base of the anti-spoofing video datasets (module docstring): subclasses set ``dataset_name`` and
    ``domain`` and implement :meth:`_videos` (called by this ``__init__``, so a subclass sets its own
    attributes before calling ``super().__init__``).

    Args:
        root: the dataset folder (in-memory subclasses pass None).
        split: ``train`` | ``dev`` | ``test``.
        frames: frames sampled per video, evenly spaced (ignored when ``frame_step`` is set).
        frame_step: sample every ``frame_step``-th frame instead.
        crop_size: side of the face crop in pixels.
        crop_expand: crop side / face box side (the box made square first).
        cache: folder of the per-video crop cache (default ``<root>/.facerep_frames``).
        detector: a :func:`facerep.data.detect.build_detector` name, or ``"none"`` (centre squares) for
            videos without the dataset's own boxes.
    """

    task = "antispoof"
    class_names = ANTISPOOF_CLASSES
    splits = ("train", "dev", "test")
    domain: str = "?"  # the dataset's short name ("O", "C", "I", "M", "synthetic")

    @classmethod
    def describe(cls, options: Mapping[str, Any] | None = None) -> DatasetInfo:
        return video_info(super().describe(options), options or {})

    def __init__(
        self,
        root: str | Path | None,
        split: str,
        frames: int = 8,
        frame_step: int | None = None,
        crop_size: int = 224,
        crop_expand: float = DEFAULT_CROP_EXPAND,
        cache: str | None = None,
        detector: str = "mtcnn",
    ) -> None:
        super().__init__(root, split)
        if frame_step is None and int(frames) < 1:
            raise DataError(f"{self.dataset_name}: frames must be >= 1, got {frames}")
        if int(crop_size) < 8 or not float(crop_expand) > 0:
            raise DataError(
                f"{self.dataset_name}: need crop_size >= 8, crop_expand > 0, got {crop_size}, {crop_expand}"
            )
        self.frames, self.frame_step = int(frames), None if frame_step is None else int(frame_step)
        self.crop = CropConfig(
            size=int(crop_size), expand=float(crop_expand), square=True, min_face=0, min_score=0
        )
        self.detector_name = str(detector)
        self._detector: FaceDetector | None = None
        self.unreadable: list[str] = []
        self.no_face_frames = 0
        self._memo: tuple[int, dict[int, np.ndarray]] | None = None
        items = self._videos()
        self._cache: FrameCache | None = None
        if any(item.path for item in items):
            folder = Path(cache) if cache is not None else Path(self.root or ".") / CACHE_DIRNAME
            hint = "; set cache=DIR (data.options.cache=DIR) to a writable folder"
            try:
                self._cache = FrameCache(folder, hint)
            except DataError as err:
                raise DataError(f"{self.dataset_name}: {err}") from None
        counts = self._cache.load_json("frame_counts.json") if self._cache is not None else {}
        n_counts = len(counts)
        self._items: list[VideoItem] = []
        self._indices: list[list[int]] = []
        sample_video: list[int] = []
        sample_frame: list[int] = []
        for item in items:
            try:
                n = self._count(item, counts)
                idx = sample_indices(n, step=self.frame_step, count=None if self.frame_step else self.frames)
                if not idx:
                    raise VideoError(f"{self.dataset_name}: video {item.path} has no frames")
            except VideoError as err:
                self._report(item, err)
                continue
            v = len(self._items)
            self._items.append(item)
            self._indices.append(idx)
            sample_video += [v] * len(idx)
            sample_frame += idx
        if self._cache is not None and len(counts) != n_counts:
            self._cache.save_json("frame_counts.json", counts)
        self._sample_video = np.asarray(sample_video, np.int64)
        self._sample_frame = np.asarray(sample_frame, np.int64)
        self._names = [
            f"{self._items[v].video_id}#{f}" for v, f in zip(sample_video, sample_frame, strict=True)
        ]
        self.attack_types: tuple[str, ...] = _sorted_attacks({it.attack for it in self._items})

    # -- subclasses --------------------------------------------------------------------------------
    def _videos(self) -> list[VideoItem]:
        """The videos of ``self.split`` (subclasses: parse the official layout / protocol files)."""
        raise NotImplementedError

    def _num_frames(self, item: VideoItem) -> int:
        """Frames in ``item`` (files: PyAV; in-memory subclasses override)."""
        return frame_count(self._path(item))

    def _read(self, item: VideoItem, indices: list[int]) -> dict[int, np.ndarray]:
        """Full frames ``indices`` of ``item`` as ``[H, W, 3] uint8`` RGB (in-memory subclasses override)."""
        return read_frames(self._path(item), indices)

    # -- public ------------------------------------------------------------------------------------
    @property
    def videos(self) -> list[VideoItem]:
        """The readable videos of this split, in sample order."""
        return list(self._items)

    def video_ids(self) -> np.ndarray:
        """``[N]`` str: the video of each sample (for video-level scores)."""
        return np.asarray([self._items[v].video_id for v in self._sample_video], dtype=str)

    def labels(self) -> np.ndarray:
        """``[N]`` int64: 1 live, 0 spoof per sample (for the balanced sampler)."""
        video_labels = np.asarray([it.label for it in self._items], np.int64)
        return video_labels[self._sample_video] if len(self._sample_video) else np.zeros(0, np.int64)

    def attacks(self) -> np.ndarray:
        """``[N]`` str: the attack name of each sample."""
        return np.asarray([self._items[v].attack for v in self._sample_video], dtype=str)

    def domains(self) -> np.ndarray:
        """``[N]`` str: ``self.domain`` for every sample."""
        return np.full(len(self), self.domain, dtype=object).astype(str)

    # -- internals ---------------------------------------------------------------------------------
    def _path(self, item: VideoItem) -> Path:
        return Path(self.root or ".") / item.path

    def _report(self, item: VideoItem, err: BaseException) -> None:
        name = item.path or item.video_id
        if name not in self.unreadable:
            self.unreadable.append(name)
            print(f"{self.dataset_name}: skipping unreadable video {name} ({err})", flush=True)

    def _count(self, item: VideoItem, counts: dict[str, Any]) -> int:
        if not item.path:
            return self._num_frames(item)
        path = self._path(item)
        try:
            st = path.stat()
        except OSError as err:
            raise VideoError(f"cannot read video {path}: {err.strerror or err}") from None
        key = f"{path.resolve()}|{st.st_size}|{st.st_mtime_ns}"
        if key not in counts:
            counts[key] = self._num_frames(item)
        return as_int(counts[key], f"frame_counts.json of the frame cache: {key}", DataError)

    def _load(self, index: int) -> dict[str, Any]:
        v, f = int(self._sample_video[index]), int(self._sample_frame[index])
        item = self._items[v]
        crops = self._video_crops(v)
        return {
            "image": crops[f],
            "label": int(item.label),
            "video": item.video_id,
            "attack": item.attack,
            "domain": self.domain,
            "frame": f,
        }

    def _video_crops(self, v: int) -> dict[int, np.ndarray]:
        """Face crops of video ``v``'s sampled frames (memoised for the last video, cached on disk)."""
        if self._memo is not None and self._memo[0] == v:
            return self._memo[1]
        item, idx = self._items[v], self._indices[v]

        def make() -> dict[int, np.ndarray]:
            try:
                frames = self._read(item, idx)
            except VideoError as err:  # decodes at build time opened fine: report once, grey frames
                self._report(item, err)
                grey = np.full((self.crop.size, self.crop.size, 3), 127, np.uint8)
                return {i: grey for i in idx}
            return {i: self._crop(item, i, frames[i]) for i in idx}

        path = self._path(item)
        try:
            st = path.stat() if item.path else None
        except OSError:  # vanished since the build: make() reports it
            st = None
        if self._cache is None or st is None:
            crops = make()
        else:
            boxes = None
            if item.boxes is not None:
                h = hashlib.sha1()
                for k in sorted(item.boxes):
                    h.update(np.asarray([k, *np.asarray(item.boxes[k], np.float64).ravel()]).tobytes())
                boxes = h.hexdigest()
            key = {
                "v": _CACHE_VERSION,
                "path": str(path.resolve()),
                "size": st.st_size,
                "mtime": st.st_mtime_ns,
                "indices": idx,
                "crop_size": self.crop.size,
                "crop_expand": self.crop.expand,
                "detector": self.detector_name if item.boxes is None else "dataset",
                "boxes": boxes,
            }
            crops = self._cache.get(key, make)
        self._memo = (v, crops)
        return crops

    def _face_box(self, item: VideoItem, frame_index: int, image: np.ndarray) -> np.ndarray | None:
        """The face box of one frame: the dataset's nearest annotated box, else the detector's best face."""
        if item.boxes:
            nearest = min(item.boxes, key=lambda k: (abs(k - frame_index), k))
            box = np.asarray(item.boxes[nearest], np.float32).reshape(4)
            return box if np.isfinite(box).all() and box[2] > box[0] and box[3] > box[1] else None
        if self.detector_name == "none":
            return None
        if self._detector is None:
            self._detector = build_detector(self.detector_name)
        faces = self._detector(image)
        return np.asarray(faces[0].box, np.float32) if faces else None

    def _crop(self, item: VideoItem, frame_index: int, image: np.ndarray) -> np.ndarray:
        box = self._face_box(item, frame_index, image)
        if box is None:
            self.no_face_frames += 1
            box = centre_box(*image.shape[:2])
            matrix, _ = crop_transform(Detection(box, None, 1.0), CropConfig(size=self.crop.size, expand=1.0))
        else:
            matrix, _ = crop_transform(Detection(box, None, 1.0), self.crop)
        return np.ascontiguousarray(warp_face(image, matrix, self.crop))


# ------------------------------------------------------------------------------------------- synthetic

SYNTHETIC_SPLIT_SEEDS: dict[str, int] = {"train": 3000, "dev": 3001, "test": 3002}
SYNTHETIC_LENGTHS: dict[str, int] = {"train": 64, "dev": 16, "test": 32}
SYNTHETIC_ATTACKS = ("print", "replay", "mask")
SYNTHETIC_VIDEO_FRAMES = 16  # frames of every in-memory video


def _domain_params(shift: int) -> dict[str, Any]:
    """Camera and attack statistics of synthetic domain ``shift`` (0: neutral)."""
    if shift == 0:
        return {"tint": np.ones(3), "gamma": 1.0, "noise": 2.0, "period": 1.0, "strength": 1.0}
    rng = np.random.default_rng([7919, shift])
    return {
        "tint": rng.uniform(0.85, 1.15, 3),
        "gamma": float(rng.uniform(0.75, 1.3)),
        "noise": float(rng.uniform(1.0, 6.0)),
        "period": float(rng.uniform(0.7, 1.5)),
        "strength": float(rng.uniform(0.6, 1.4)),
    }


class SyntheticAntispoof(VideoFaceDataset):
    """Rendered live / attack videos (no root, no decoding); deterministic per ``(split, index)``.

    Video ``i`` shows identity ``i // 2`` of the split's seed; even ``i`` is live, odd ``i`` an attack drawn
    per video from ``print`` (halftone dots, desaturation, a white paper border, blur), ``replay`` (screen
    moire and scanlines, a reflection gradient, a gamma shift) and ``mask`` (smoothed skin, colour cast, low
    contrast). Each video has 16 frames with small per-frame shift / brightness jitter. ``domain_shift`` > 0
    changes the camera (tint, gamma, noise) and the attack statistics, and the seeds, for cross-domain tests.
    """

    dataset_name = "synthetic_antispoof"

    @classmethod
    def describe(cls, options: Mapping[str, Any] | None = None) -> DatasetInfo:
        """Rendered (no root), framed by the five points at the render size."""
        info = super().describe(options)
        return dataclasses.replace(info, framing=synthetic_framing(options or {}), rendered=True)

    def __init__(
        self,
        root: str | Path | None = None,
        split: str = "train",
        length: int | None = None,
        frames: int = 8,
        frame_step: int | None = None,
        size: int = 128,
        domain_shift: int = 0,
    ) -> None:
        split = check_split(self.dataset_name, split, self.splits)
        length = SYNTHETIC_LENGTHS[split] if length is None else int(length)
        if length < 0:
            raise DataError(f"{self.dataset_name}: length must be >= 0, got {length}")
        if int(size) < 16:
            raise DataError(f"{self.dataset_name}: size must be >= 16, got {size}")
        self.length, self.size, self.domain_shift = length, int(size), int(domain_shift)
        self.seed = SYNTHETIC_SPLIT_SEEDS[split] + 100 * self.domain_shift
        self.domain = "synthetic" if self.domain_shift == 0 else f"synthetic{self.domain_shift}"
        self._params = _domain_params(self.domain_shift)
        super().__init__(None, split, frames=frames, frame_step=frame_step, crop_size=size, detector="none")

    def _videos(self) -> list[VideoItem]:
        prefix = "synthetic" if self.domain_shift == 0 else f"synthetic{self.domain_shift}"
        items = []
        for i in range(self.length):
            live = i % 2 == 0
            attack = (
                "live" if live else SYNTHETIC_ATTACKS[int(self._rng(i, 0).integers(len(SYNTHETIC_ATTACKS)))]
            )
            items.append(VideoItem("", f"{prefix}/{self.split}/{i:05d}", int(live), attack, str(i // 2)))
        return items

    def _rng(self, index: int, stream: int) -> np.random.Generator:
        return np.random.default_rng([self.seed, index, stream])

    def _num_frames(self, item: VideoItem) -> int:
        return SYNTHETIC_VIDEO_FRAMES

    def _read(self, item: VideoItem, indices: list[int]) -> dict[int, np.ndarray]:
        index = int(item.video_id.rsplit("/", 1)[1])
        face = render_face(self.seed, int(item.subject), self.size).image.astype(np.float32) / 255.0
        rng = self._rng(index, 1)
        attack = _ATTACKS.get(item.attack)
        base = attack(face, rng, self._params) if attack is not None else face
        out = {}
        for f in indices:
            jr = self._rng(index, 100 + f)
            dx, dy = jr.uniform(-2.0, 2.0, 2)
            m = np.array([[1.0, 0.0, dx], [0.0, 1.0, dy]])
            img = cv2.warpAffine(base, m, (self.size, self.size), borderMode=cv2.BORDER_REPLICATE)
            img = img * float(jr.uniform(0.94, 1.06))
            p = self._params
            img = np.clip(img * p["tint"], 0.0, 1.0) ** p["gamma"]
            img = img * 255.0 + jr.normal(0.0, p["noise"], img.shape)
            out[f] = np.clip(img + 0.5, 0, 255).astype(np.uint8)
        return out


def _print_attack(face: np.ndarray, rng: np.random.Generator, p: dict[str, Any]) -> np.ndarray:
    s = face.shape[0]
    grey = face.mean(axis=2, keepdims=True)
    img = grey + float(rng.uniform(0.35, 0.6)) * (face - grey)  # desaturated ink
    img = cv2.GaussianBlur(img, (0, 0), float(rng.uniform(0.6, 1.0)))
    x, y = pixel_grid(s)
    period = float(rng.uniform(2.5, 3.5)) * p["period"]
    theta = float(rng.uniform(0, math.pi / 2))
    u, v = x * math.cos(theta) + y * math.sin(theta), -x * math.sin(theta) + y * math.cos(theta)
    dots = 0.5 + 0.5 * np.cos(2 * math.pi * u / period) * np.cos(2 * math.pi * v / period)
    img = img * (1.0 - 0.25 * p["strength"] * dots[..., None]) + 0.05
    scale = float(rng.uniform(0.8, 0.9))  # the photo on a sheet of white paper
    inner = max(8, round(s * scale))
    paper = np.full_like(img, float(rng.uniform(0.88, 0.97)))
    o = (s - inner) // 2 + int(rng.integers(-2, 3))
    o = min(max(o, 0), s - inner)
    paper[o : o + inner, o : o + inner] = cv2.resize(img, (inner, inner), interpolation=cv2.INTER_AREA)
    return np.clip(paper, 0.0, 1.0)


def _replay_attack(face: np.ndarray, rng: np.random.Generator, p: dict[str, Any]) -> np.ndarray:
    s = face.shape[0]
    x, y = pixel_grid(s)
    period = float(rng.uniform(2.2, 3.2)) * p["period"]
    theta = float(rng.uniform(-0.4, 0.4))
    moire = np.stack(
        [
            np.sin(2 * math.pi * (x * math.cos(theta) + y * math.sin(theta)) / period + ph)
            for ph in (0.0, 2.1, 4.2)
        ],
        axis=2,
    )
    img = face ** float(rng.uniform(0.6, 0.8)) + 0.08 * p["strength"] * moire
    img[:: int(rng.integers(2, 4))] *= 0.8  # scanlines
    ang = float(rng.uniform(0, 2 * math.pi))
    ramp = (x * math.cos(ang) + y * math.sin(ang)) / s
    ramp = (ramp - ramp.min()) / max(float(np.ptp(ramp)), 1e-6)
    img = img + float(rng.uniform(0.1, 0.25)) * ramp[..., None]  # reflection on the screen
    return np.clip(img, 0.0, 1.0)


def _mask_attack(face: np.ndarray, rng: np.random.Generator, p: dict[str, Any]) -> np.ndarray:
    img = cv2.GaussianBlur(face, (0, 0), float(rng.uniform(1.2, 2.0)) * p["strength"])  # smooth skin
    cast = rng.uniform(0.8, 1.2, 3).astype(np.float32)
    mean = img.mean()
    img = mean + float(rng.uniform(0.6, 0.8)) * (img - mean)  # lower contrast
    return np.clip(img * cast, 0.0, 1.0)


_ATTACKS: dict[str, Callable[[np.ndarray, np.random.Generator, dict[str, Any]], np.ndarray]] = {
    "print": _print_attack,
    "replay": _replay_attack,
    "mask": _mask_attack,
}


# ------------------------------------------------------------------------------------------------ OCIM

OCIM_PROTOCOLS = ("OCI_M", "OMI_C", "OCM_I", "ICM_O", "MI_C", "MI_O")
# each domain's reader (its DATASETS name), which is also its folder under data.root
OCIM_DATASETS = {"O": "oulu_npu", "C": "casia_fasd", "I": "replay_attack", "M": "msu_mfsd"}


def parse_protocol(protocol: str) -> tuple[str, str]:
    """``"OCI_M"`` -> (``"OCI"``, ``"M"``); an unknown name is a one-line DataError listing the six."""
    if protocol not in OCIM_PROTOCOLS:
        raise DataError(f"ocim: unknown protocol {protocol!r}; expected one of {', '.join(OCIM_PROTOCOLS)}")
    sources, target = protocol.split("_")
    return sources, target


class OCIM(FaceDataset):
    """Cross-domain anti-spoofing: several datasets concatenated, each sample tagged with its domain.

    ``OCIM(root, split, protocol="OCI_M", ...)`` reads ``root/oulu_npu``, ``root/casia_fasd``,
    ``root/replay_attack``, ``root/msu_mfsd`` with the readers registered as ``oulu_npu``, ``casia_fasd``,
    ``replay_attack``, ``msu_mfsd``: split ``train`` = the source domains' train splits, ``dev`` = their dev
    splits, ``test`` = the target's test split (SSDG's protocol). The reader options (``frames``, ...) go to
    every reader. :meth:`from_sources` builds one from datasets already made (tests, custom domains).
    Video ids are prefixed with the domain (``"O/..."``) so they never collide.
    """

    dataset_name = "ocim"
    task = "antispoof"
    class_names = ANTISPOOF_CLASSES
    splits = ("train", "dev", "test")

    @classmethod
    def describe(cls, options: Mapping[str, Any] | None = None) -> DatasetInfo:
        return video_info(super().describe(options), options or {})

    def __init__(
        self,
        root: str | Path | None,
        split: str,
        protocol: str = "OCI_M",
        frames: int = 8,
        frame_step: int | None = None,
        crop_size: int = 224,
        crop_expand: float = DEFAULT_CROP_EXPAND,
        cache: str | None = None,
        detector: str = "mtcnn",
        readers: Mapping[str, Callable[..., FaceDataset]] | None = None,
    ) -> None:
        split = check_split(self.dataset_name, split, self.splits)
        sources, target = parse_protocol(protocol)
        base = require_root(self.dataset_name, root)
        if readers is None:  # the package's registry (it imports this module, so it is loaded by now)
            registry = importlib.import_module("facerep.data.downstream").DATASETS
            readers = {d: registry.get(OCIM_DATASETS[d]) for d in "OCIM"}
        options = dict(frames=frames, frame_step=frame_step, crop_size=crop_size, crop_expand=crop_expand,
                       cache=cache, detector=detector)  # fmt: skip
        domains = target if split == "test" else sources
        reader_split = "train" if split == "train" else "dev" if split == "dev" else "test"
        parts = {d: readers[d](base / OCIM_DATASETS[d], reader_split, **options) for d in domains}
        self._setup(split, parts, protocol)
        self.root = base

    @classmethod
    def from_sources(
        cls,
        split: str,
        sources: Mapping[str, FaceDataset],
        targets: Mapping[str, FaceDataset],
        protocol: str | None = None,
    ) -> OCIM:
        """An OCIM over given datasets: ``sources`` (domain -> dataset) for ``train`` / ``dev``, ``targets``
        for ``test``; each dataset is used as is (make it with the split you want)."""
        self = cls.__new__(cls)
        split = check_split(cls.dataset_name, split, cls.splits)
        if set(sources) & set(targets):
            raise DataError(f"ocim: domains {sorted(set(sources) & set(targets))} are both source and target")
        name = protocol or f"{''.join(sources)}_{''.join(targets)}"
        self._setup(split, dict(targets if split == "test" else sources), name)
        return self

    def _setup(self, split: str, parts: dict[str, FaceDataset], protocol: str) -> None:
        FaceDataset.__init__(self, None, split)
        if not parts:
            raise DataError(f"ocim: no datasets for split {split!r} of protocol {protocol}")
        self.protocol = protocol
        self.parts = parts
        self.domain_names = tuple(parts)
        self._offsets = np.cumsum([0] + [len(ds) for ds in parts.values()])
        self._names = [f"{d}/{n}" for d, ds in parts.items() for n in ds._names]
        self.unreadable = [f"{d}/{n}" for d, ds in parts.items() for n in getattr(ds, "unreadable", [])]
        self.attack_types = _sorted_attacks(
            {a for ds in parts.values() for a in getattr(ds, "attack_types", ())}
        )

    def _locate(self, index: int) -> tuple[str, FaceDataset, int]:
        k = int(np.searchsorted(self._offsets, index, side="right") - 1)
        d = self.domain_names[k]
        return d, self.parts[d], index - int(self._offsets[k])

    def _load(self, index: int) -> dict[str, Any]:
        d, ds, i = self._locate(index)
        sample = dict(ds[i])
        sample["domain"] = d
        sample["video"] = f"{d}/{sample['video']}"
        sample["name"] = f"{d}/{sample['name']}"
        return sample

    def video_ids(self) -> np.ndarray:
        """``[N]`` str: ``"<domain>/<video id>"`` of each sample."""
        return np.asarray([f"{d}/{v}" for d, ds in self.parts.items() for v in ds.video_ids()], dtype=str)

    def labels(self) -> np.ndarray:
        """``[N]`` int64: 1 live, 0 spoof."""
        return np.concatenate([np.asarray(ds.labels(), np.int64) for ds in self.parts.values()])

    def attacks(self) -> np.ndarray:
        """``[N]`` str: the attack name of each sample."""
        return np.concatenate([np.asarray(ds.attacks(), dtype=str) for ds in self.parts.values()])

    def domains(self) -> np.ndarray:
        """``[N]`` str: the domain key (``"O"``, ``"C"``, ...) of each sample."""
        return np.asarray([d for d, ds in self.parts.items() for _ in range(len(ds))], dtype=str)

    def _extra_subsets(self) -> dict[str, np.ndarray]:
        if len(self.parts) < 2:
            return {}
        return {d: np.arange(self._offsets[k], self._offsets[k + 1]) for k, d in enumerate(self.domain_names)}

    @property
    def no_face_frames(self) -> int:
        return sum(int(getattr(ds, "no_face_frames", 0)) for ds in self.parts.values())

    def __repr__(self) -> str:
        sizes = ", ".join(f"{d}={len(ds)}" for d, ds in self.parts.items())
        return f"OCIM(protocol={self.protocol}, split={self.split!r}, {sizes})"
