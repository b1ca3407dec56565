"""The ``facerep prepare`` job: raw images -> face-crop WebDataset shards, on a process pool or on Ray.

Work units. An input is img2dataset / LAION-Face WebDataset shards (a brace pattern, ``::`` between
several), a folder (every image under it, recursively, sorted) or a ``.txt`` list of image files (one a
line, relative to the list's folder). A shard is one unit; folder and list inputs are cut, in their
sorted or listed order, into units of ``shard_size`` files. Unit ``i`` writes ``crops-{i:05d}.tar`` and
then ``crops-{i:05d}_stats.json`` into the output folder, so units never overlap and the shard list is
the same on every machine and every rerun (a folder's listing is saved as ``files.txt`` on the first run
and reused, :func:`save_listing`).

Output. Per kept face, members ``<key>_<face index>.jpg`` (the crop), ``.json`` (source key and location,
``SAMPLE_ID``, url, box, five points, score, the crop transform, see :mod:`facerep.data.crop`) and ``.txt``
(the source caption, when it has one). A shard sample's ``<key>`` is its tar key through
:func:`facerep.data.sources.safe_key` (``%XX`` for every byte but ``A-Za-z0-9_-``, so a ``../`` or
``/abs`` key cannot become a path; the JSON keeps the original as ``source_key``); folder and list images
are keyed by their 9-digit position in the listing. Tar headers carry no time, owner or host, so a unit's
shard is the same bytes on every run. The stats JSON counts images read, corrupt images and damaged-shard
read errors, faces, crops (also as img2dataset's ``successes``, so ``facerep pretrain`` knows the epoch
length), rejections by reason, every image that gave no crop with its reason (``skipped``: ``{source,
reason, score}``, the reasons of :data:`facerep.data.crop.SKIP_REASONS` or :data:`IMAGE_REASONS`; counted
in ``skipped_images``), with the first problem inputs named (``corrupt_examples``); ``summary.json`` adds
them up over all units.

Untrusted input is skipped and counted, never fatal: an image whose header says more than ``max_pixels``
pixels is not decoded (rejected ``too_large``), an input path that is no regular file (a named pipe, a
link to a device) is not opened (``not_a_file``), a sample whose JSON cannot be read or whose
``SAMPLE_ID`` is no int64 integer has no usable id (``no_sample_id``, the cause in the examples).

Resumable. A shard is written under a hidden temporary name and renamed when complete (then its stats
JSON, the "done" mark), so a crash loses at most the shards in flight and never leaves a partial shard
under a final name; a rerun deletes leftover temporaries and runs only the units without a stats JSON.
Crops are a pure function of the input, the detections and the crop rule, so resumed output equals an
uninterrupted run's. One run at a time: :func:`output_lock` holds an exclusive ``flock`` on
``<output>/.prepare.lock`` (which names the holder's pid and host) for the whole run, so a second run into
the same folder stops with one line instead of deleting the first's temporaries; the kernel releases it
when the holder exits or is killed. Pool workers die with the process that started them
(:func:`init_worker`), so a killed run leaves no orphan writing into the folder of the rerun.

Faces come from precomputed detections (LAION-Face's ``sample2detect`` ``.pth`` files, looked up by
``int(SAMPLE_ID)``; converted once into a memory-mapped index under ``<output>/detections/`` that every
worker shares) or from a detector run on each image (:func:`facerep.data.detect.build_detector`).
"""

from __future__ import annotations

import contextlib
import ctypes
import fcntl
import io
import json
import os
import signal
import socket
import sys
import tarfile
import threading
import time
from collections import Counter
from collections.abc import Iterator, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, field
from multiprocessing import get_context
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import torch
from tqdm import tqdm

from facerep.data.crop import (
    MAX_PIXELS,
    CropConfig,
    ImageTooLarge,
    apply_transform,
    crop_transform,
    decode_bgr,
    encode_jpeg,
    on_reduced,
    reduction_for,
    select_faces,
    skip_reason,
    warp_face,
)
from facerep.data.detect import Detection, build_detector, load_laion_face_detections
from facerep.data.sources import (
    DataError,
    NotAnImageFile,
    WebDatasetSource,
    list_image_files,
    read_caption,
    read_caption_file,
    read_image_file,
    safe_key,
)
from facerep.data.transforms import BadImage
from facerep.runtime.atomic import atomic_save, atomic_write_bytes, atomic_write_json
from facerep.runtime.errors import FacerepError, one_line
from facerep.runtime.untrusted import MAX_JSON_DEPTH, as_int, loads_json, read_json

ENGINES = ("pool", "ray")
CROPS_NAME = "crops-{:05d}.tar"
STATS_NAME = "crops-{:05d}_stats.json"
FILES_NAME = "files.txt"  # a folder input's listing, saved on the first run
LOCK_NAME = ".prepare.lock"  # flock-ed by the run that owns the output folder; holds its pid and host
INDEX_DIR = "detections"  # the detections index under the output folder
EXAMPLES = 10  # corrupt input names kept per unit (and in the summary)
LIST_SUFFIXES = (".txt", ".lst")
# Test hook: "N" or "N:MARKER" -- the process exits abruptly (os._exit) after writing its N-th crop, with the
# current shard half-written; with MARKER only while that file does not exist (it is created first).
CRASH_ENV = "FACEREP_PREPARE_CRASH_AFTER"
# Image-level rejection reasons (face-level ones are facerep.data.crop.FACE_REASONS).
IMAGE_REASONS = ("not_a_file", "too_large", "no_sample_id", "no_detection", "no_face")
# Inputs skipped for what they are rather than counted corrupt: exception -> rejection reason.
SKIPPED = ((NotAnImageFile, "not_a_file"), (ImageTooLarge, "too_large"))
PARENT_POLL_S = 0.5  # how often a pool worker checks that its parent lives (where prctl cannot tell it)
PR_SET_PDEATHSIG = 1  # linux/prctl.h: the signal a process gets when its parent ends


@dataclass(frozen=True)
class Unit:
    """One work unit: a shard of the input, or a run of ``files`` whose first has listing position
    ``first_key``."""

    index: int
    shard: str | None = None
    files: tuple[str, ...] = ()
    first_key: int = 0

    def describe(self) -> str:
        if self.shard is not None:
            return self.shard
        return f"{self.files[0]} .. {self.files[-1]} ({len(self.files)} files)" if self.files else "(empty)"


@dataclass(frozen=True)
class Job:
    """What every worker needs besides its unit (picklable)."""

    output_dir: str
    crop: CropConfig
    detections: str | None = None  # a detections index folder (build_detection_index); None: run the detector
    detector: str = "mtcnn"
    detector_options: dict[str, Any] = field(default_factory=dict)
    max_pixels: int = MAX_PIXELS  # images with more pixels (from the header) are not decoded; 0: no limit
    max_json_depth: int = MAX_JSON_DEPTH  # deeper metadata is rejected unparsed; 0: Python's limit only


def crops_path(output_dir: str | os.PathLike, index: int) -> Path:
    return Path(output_dir) / CROPS_NAME.format(index)


def stats_path(output_dir: str | os.PathLike, index: int) -> Path:
    return Path(output_dir) / STATS_NAME.format(index)


# ------------------------------------------------------------------------------------------------ planning


def input_kind(spec: str) -> str:
    """``"folder"``, ``"list"`` or ``"webdataset"``: what the ``input`` string names."""
    path = Path(spec)
    if path.is_dir():
        return "folder"
    if path.suffix.lower() in LIST_SUFFIXES and path.is_file():
        return "list"
    return "webdataset"


def _read_list(path: Path) -> list[str]:
    """The files of a list input: one a line (blank lines and ``#`` comments skipped), made absolute
    against the list's folder."""
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as err:
        raise DataError(f"input list {path}: cannot read it ({one_line(err)})") from err
    base = path.resolve().parent
    files = [str(base / line.strip()) for line in lines if line.strip() and not line.lstrip().startswith("#")]
    if not files:
        raise DataError(f"input list {path}: no file names in it (expected one image path a line)")
    return files


def _folder_files(root: Path, output_dir: Path) -> list[str]:
    """A folder's images (absolute paths), from ``files.txt`` of an earlier run when there is one."""
    saved = output_dir / FILES_NAME
    if saved.is_file():
        return saved.read_text(encoding="utf-8").splitlines()
    files = [str(root.resolve() / rel) for rel in list_image_files(root)]
    if not files:
        raise DataError(f"input folder {root}: no image files under it")
    return files


def plan_units(spec: str, shard_size: int, output_dir: str | os.PathLike) -> list[Unit]:
    """The work units of input ``spec`` (see the module docstring), in output-shard order; writes nothing
    (a folder's listing is frozen by :func:`save_listing`)."""
    kind = input_kind(spec)
    if kind == "webdataset":
        shards = WebDatasetSource(spec).shards
        return [Unit(i, shard=s) for i, s in enumerate(shards)]
    files = _folder_files(Path(spec), Path(output_dir)) if kind == "folder" else _read_list(Path(spec))
    return [
        Unit(i, files=tuple(files[start : start + shard_size]), first_key=start)
        for i, start in enumerate(range(0, len(files), shard_size))
    ]


def save_listing(spec: str, shard_size: int, output_dir: str | os.PathLike, units: list[Unit]) -> list[Unit]:
    """Freeze a folder input's listing as ``files.txt`` on the first run (under :func:`output_lock`);
    returns the units to run: ``units``, or those of the saved listing when another run saved a different
    one since ``units`` were planned."""
    if input_kind(spec) != "folder":
        return units
    saved = Path(output_dir) / FILES_NAME
    files = [f for unit in units for f in unit.files]
    if not saved.is_file():
        atomic_write_bytes(saved, "".join(f + "\n" for f in files).encode())
        return units
    if saved.read_text(encoding="utf-8").splitlines() == files:
        return units
    return plan_units(spec, shard_size, output_dir)


@contextlib.contextmanager
def output_lock(output_dir: str | os.PathLike) -> Iterator[None]:
    """Hold the exclusive lock of ``output_dir`` (created if missing) while the block runs.

    The lock is a ``flock`` on :data:`LOCK_NAME`, so it ends with the process however it ends; the file
    names the holder (pid and host) for the one-line :class:`FacerepError` a second run gets.
    """
    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    path = out / LOCK_NAME
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 200, 0).decode("utf-8", "replace").strip() or "a process that just started"
            raise FacerepError(
                f"output_dir {out} is in use by another facerep prepare ({holder}; lock {path}); "
                "wait for it to end or use another output_dir"
            ) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"pid {os.getpid()} on {socket.gethostname()}\n".encode(), 0)
        yield
    finally:
        os.close(fd)  # releases the lock


# -------------------------------------------------------------------------------------- detections index


def _fingerprint(paths: Sequence[str]) -> list[list[Any]]:
    out = []
    for p in paths:
        st = Path(p).stat()
        out.append([str(Path(p).resolve()), st.st_size, st.st_mtime_ns])
    return out


def _save_npy(path: Path, array: np.ndarray) -> None:
    with open(path, "wb") as f:  # a file object: np.save would append ".npy" to a path
        np.save(f, array, allow_pickle=False)


def build_detection_index(paths: Sequence[str], output_dir: str | os.PathLike) -> str:
    """Convert LAION-Face ``sample2detect`` files into ``<output_dir>/detections/`` (sorted ids, offsets,
    boxes, points, scores as ``.npy``), unless an index of the same files is there; returns its folder.

    Workers memory-map it, so one copy serves every process on a machine. A ``SAMPLE_ID`` in two files
    keeps the later file's detections.
    """
    folder = Path(output_dir) / INDEX_DIR
    missing = [p for p in paths if not Path(p).is_file()]
    if missing:
        raise DataError(f"detections file not found: {missing[0]} (expected LAION-Face sample2detect .pth)")
    source = {"files": _fingerprint(paths)}
    manifest = folder / "source.json"
    with contextlib.suppress(DataError):
        if read_json(manifest, DataError) == source:
            return str(folder)
    merged: dict[int, list[Detection]] = {}
    for p in paths:
        merged.update(load_laion_face_detections(p))
    ids = np.array(sorted(merged), dtype=np.int64)
    counts = np.array([len(merged[int(i)]) for i in ids], dtype=np.int64)
    offsets = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
    dets = [d for i in ids for d in merged[int(i)]]
    boxes = np.array([d.box for d in dets], dtype=np.float32).reshape(-1, 4)
    points = np.full((len(dets), 5, 2), np.nan, dtype=np.float32)
    for k, d in enumerate(dets):
        if d.points is not None:
            points[k] = d.points
    scores = np.array([d.score for d in dets], dtype=np.float32)
    arrays = {"ids": ids, "offsets": offsets, "boxes": boxes, "points": points, "scores": scores}
    for name, arr in arrays.items():
        atomic_save(lambda tmp, arr=arr: _save_npy(tmp, arr), folder / f"{name}.npy")
    atomic_write_json(manifest, source)
    return str(folder)


class DetectionIndex:
    """Memory-mapped detections by ``SAMPLE_ID`` (see :func:`build_detection_index`)."""

    def __init__(self, folder: str | os.PathLike) -> None:
        def load(name: str) -> np.ndarray:
            # np.load opens the file itself ("<name>.npy" inside the folder); mmap shares the pages
            return np.load(Path(folder) / f"{name}.npy", mmap_mode="r", allow_pickle=False)

        self.ids, self.offsets = load("ids"), load("offsets")
        self.boxes, self.points, self.scores = load("boxes"), load("points"), load("scores")

    def __len__(self) -> int:
        return int(self.ids.shape[0])

    def lookup(self, sample_id: int) -> list[Detection] | None:
        """The detections of ``sample_id`` in file order; ``None`` when it has no entry."""
        i = int(np.searchsorted(self.ids, sample_id))
        if i >= len(self) or int(self.ids[i]) != sample_id:
            return None
        lo, hi = int(self.offsets[i]), int(self.offsets[i + 1])
        out = []
        for k in range(lo, hi):
            pts = np.array(self.points[k])
            out.append(
                Detection(
                    box=np.array(self.boxes[k]),
                    points=pts if np.isfinite(pts).all() else None,
                    score=float(self.scores[k]),
                )
            )
        return out


# ---------------------------------------------------------------------------------------------- a worker


_WORKER_STATE: dict[Any, Any] = {}  # per process: detection indexes and detectors, built once


def init_worker(parent: int | None = None) -> None:
    """One thread per worker process (the job is parallel over processes); a pool worker (``parent``: the
    pid of the process that started it) also dies with its parent, so a killed run leaves no orphans.

    On Linux the kernel kills the worker when its parent ends (``prctl(PR_SET_PDEATHSIG, SIGKILL)``;
    strictly, when the parent's thread that started it ends: the pool lives in one thread); everywhere a
    daemon thread also checks every :data:`PARENT_POLL_S` seconds that the parent is alive.
    """
    cv2.setNumThreads(1)
    torch.set_num_threads(1)
    if parent is None:
        return
    if sys.platform.startswith("linux"):
        with contextlib.suppress(OSError, AttributeError):
            ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    threading.Thread(target=_exit_with_parent, args=(parent,), name="parent-watch", daemon=True).start()


def _exit_with_parent(parent: int) -> None:
    """End this process as soon as its parent ``parent`` has ended (it is then re-parented)."""
    while os.getppid() == parent:
        time.sleep(PARENT_POLL_S)
    os._exit(1)


def _index(folder: str) -> DetectionIndex:
    key = ("index", folder, (Path(folder) / "source.json").stat().st_mtime_ns)  # a rebuilt index is new
    if key not in _WORKER_STATE:
        _WORKER_STATE[key] = DetectionIndex(folder)
    return _WORKER_STATE[key]


def _detector(name: str, options: dict[str, Any]) -> Any:
    key = ("detector", name, json.dumps(options, sort_keys=True, default=str))
    if key not in _WORKER_STATE:
        _WORKER_STATE[key] = build_detector(name, **options)
    return _WORKER_STATE[key]


class _CrashHook:
    """The :data:`CRASH_ENV` test hook (inactive unless the variable is set); counts this process's crops."""

    written = 0  # crops this process has written, over all its units

    def __init__(self) -> None:
        spec = os.environ.get(CRASH_ENV, "")
        after, _, marker = spec.partition(":")
        self.after = int(after) if after.strip() else 0
        self.marker = Path(marker) if marker else None

    def tick(self, tar: tarfile.TarFile) -> None:
        if not self.after:
            return
        _CrashHook.written += 1
        if _CrashHook.written >= self.after and not (self.marker and self.marker.exists()):
            if self.marker:
                self.marker.touch()
            tar.fileobj.flush()  # leave a half-written shard behind, as a kill would
            os._exit(3)


def _round(values: Any, digits: int) -> Any:
    return np.round(np.asarray(values, dtype=np.float64), digits).tolist()


class _ShardWriter:
    """Appends the crops of one image after another to an open tar; counts what happens."""

    def __init__(self, tar: tarfile.TarFile, unit: Unit, job: Job) -> None:
        self.tar, self.unit, self.job, self.cfg = tar, unit, job, job.crop
        self.index = _index(job.detections) if job.detections else None
        self.detector = None if job.detections else _detector(job.detector, dict(job.detector_options))
        self.counts: Counter[str] = Counter()
        self.rejected: Counter[str] = Counter()
        self.skipped: list[dict[str, Any]] = []  # one record per image that gave no crop, with its reason
        self.reductions: Counter[int] = Counter()
        self.corrupt: list[str] = []
        self.crash = _CrashHook()

    def _add(self, name: str, data: bytes) -> None:
        info = tarfile.TarInfo(name)
        info.size, info.mode, info.mtime = len(data), 0o644, 0
        self.tar.addfile(info, io.BytesIO(data))

    def example(self, message: str) -> None:
        """Name a problem input (the first :data:`EXAMPLES` of a unit are kept)."""
        if len(self.corrupt) < EXAMPLES:
            self.corrupt.append(message)

    def skip(self, name: str, reason: str, **detail: Any) -> None:
        """Record why image ``name`` gave no crop (:data:`SKIP_REASONS` or :data:`IMAGE_REASONS`)."""
        self.skipped.append({"source": name, "reason": reason, **detail})

    def bad_image(self, err: BadImage) -> None:
        """An image that cannot be read or decoded (corrupt: skipped ``unreadable``), or is skipped for what
        it is (:data:`SKIPPED`)."""
        reason = next((reason for kind, reason in SKIPPED if isinstance(err, kind)), None)
        if reason is None:
            self.counts["corrupt"] += 1
        else:
            self.rejected[reason] += 1
        self.skip(err.name, reason or "unreadable")
        self.example(f"{err.name}: {err.reason}")

    def read_error(self, message: str) -> None:
        """A damaged shard (bad tar header, cut short): what follows the damage is lost, the job goes on."""
        self.counts["read_errors"] += 1
        self.example(message)

    def _sample_id(self, name: str, meta: dict[str, Any]) -> int | None:
        """The int64 ``SAMPLE_ID`` of ``meta``; ``None`` (named in the examples if it is there but bad)."""
        if meta.get("SAMPLE_ID") is None:
            return None
        try:
            return as_int(meta["SAMPLE_ID"], f"{name}.json: SAMPLE_ID", DataError)
        except DataError as err:
            self.example(str(err))
            return None

    def image(
        self, key: str, name: str, data: bytes | None, meta: dict[str, Any], caption: str | None
    ) -> None:
        """Crop the faces of one input image (``data`` None: unreadable, counted corrupt)."""
        self.counts["images"] += 1
        if data is None:
            return
        image: np.ndarray | None = None
        sample_id = self._sample_id(name, meta)
        if self.index is not None:
            if sample_id is None:
                self.rejected["no_sample_id"] += 1
                self.skip(name, "no_sample_id")
                return
            faces = self.index.lookup(sample_id)
            if faces is None:
                self.rejected["no_detection"] += 1
                self.skip(name, "no_detection")
                return
        else:
            try:
                image, _ = decode_bgr(data, name, max_pixels=self.job.max_pixels)
            except BadImage as err:
                self.bad_image(err)
                return
            faces = self.detector(np.ascontiguousarray(image[:, :, ::-1]))
        self.counts["faces"] += len(faces)
        if not faces:
            self.rejected["no_face"] += 1
        kept, rejected = select_faces(faces, self.cfg)
        self.rejected.update(rejected)
        why = skip_reason(faces, kept, rejected)
        if why is not None:
            self.skip(name, **why)
            return
        rules = [crop_transform(faces[i], self.cfg) for i in kept]
        reduction = 1
        if image is None:  # precomputed faces: decode now, as small as the crops allow
            wanted = reduction_for([m for m, _ in rules]) if self.cfg.reduced_decode else 1
            try:
                image, reduction = decode_bgr(data, name, wanted, self.job.max_pixels)
            except BadImage as err:
                self.bad_image(err)
                return
        self.reductions[reduction] += 1
        self.counts["images_with_crops"] += 1
        member = safe_key(key)  # the output's key: the source key can be any string
        # the full-size image's (width, height); after a reduced decode only img2dataset's json knows it
        full_size = (
            [image.shape[1], image.shape[0]] if reduction == 1 else [meta.get("width"), meta.get("height")]
        )
        common = {
            "source_key": key,
            "source": name,
            "sample_id": sample_id,
            "url": meta.get("url"),
            "faces_in_image": len(faces),
            "size": self.cfg.size,
            "source_size": full_size,
            "decode_reduction": reduction,
        }
        for i, (matrix, rule) in zip(kept, rules, strict=True):
            face = faces[i]
            points = face.points
            record = {
                "key": f"{member}_{i}",
                **common,
                "face_index": i,
                "box": _round(face.box, 2),
                "points": _round(points, 2) if points is not None else None,
                "score": round(float(face.score), 5),
                "align": rule,
                "transform": _round(matrix, 6),
                "crop_points": _round(apply_transform(matrix, points), 2) if points is not None else None,
            }
            crop = warp_face(image, on_reduced(matrix, reduction), self.cfg)
            self._add(f"{member}_{i}.jpg", encode_jpeg(crop, self.cfg.jpeg_quality))
            self._add(f"{member}_{i}.json", json.dumps(record).encode())
            if caption is not None:
                self._add(f"{member}_{i}.txt", caption.encode())
            self.counts["crops"] += 1
            self.crash.tick(self.tar)

    def stats(self) -> dict[str, Any]:
        return {
            "images": self.counts["images"],
            "corrupt": self.counts["corrupt"],
            "read_errors": self.counts["read_errors"],
            "faces": self.counts["faces"],
            "images_with_crops": self.counts["images_with_crops"],
            "crops": self.counts["crops"],
            "successes": self.counts["crops"],  # img2dataset's name: pretrain's epoch length comes from it
            "rejected": {k: self.rejected[k] for k in sorted(self.rejected)},
            "skipped_images": dict(sorted(Counter(r["reason"] for r in self.skipped).items())),
            "skipped": list(self.skipped),
            "decode_reduction": {str(k): self.reductions[k] for k in sorted(self.reductions)},
            "corrupt_examples": list(self.corrupt),
        }


def _read_meta(raw: bytes | None, name: str, max_depth: int) -> dict[str, Any]:
    """A sample's img2dataset JSON member ``name``: a JSON object; :class:`DataError` if it is not one (or
    nested deeper than ``max_depth``)."""
    if not raw:
        return {}
    meta = loads_json(raw, name, DataError, max_depth)
    if not isinstance(meta, dict):
        raise DataError(f"{name}: a JSON {type(meta).__name__}, expected an object (img2dataset's metadata)")
    return meta


def _fill(writer: _ShardWriter, unit: Unit) -> None:
    """Feed every image of ``unit`` to ``writer``."""
    if unit.shard is not None:
        source = WebDatasetSource(unit.shard)
        for sample in source.shard_samples(unit.shard, writer.read_error):
            key = str(sample.get("__key__", "?"))
            name = f"{unit.shard}:{key}"
            try:
                data: bytes | None = WebDatasetSource.image_bytes(sample)
            except BadImage as err:  # named "<shard>:<key>" like ``name``
                writer.bad_image(err)
                data = None
            try:
                meta = _read_meta(sample.get("json"), f"{name}.json", writer.job.max_json_depth)
            except DataError as err:
                writer.example(str(err))
                meta = {}
            writer.image(key, name, data, meta, read_caption(sample.get("txt")))
        return
    for pos, path in enumerate(unit.files):
        try:
            data = read_image_file(path, path)
        except BadImage as err:
            writer.bad_image(err)
            data = None
        caption = read_caption_file(Path(path).with_suffix(".txt"))
        writer.image(f"{unit.first_key + pos:09d}", path, data, {}, caption)


def process_unit(unit: Unit, job: Job) -> dict[str, Any]:
    """Write unit ``unit``'s crops shard and then its stats JSON (each atomically); returns the stats."""
    start = time.perf_counter()
    remove_leftovers(job.output_dir, unit.index)  # of an earlier attempt that died (a retried Ray task)
    state: dict[str, _ShardWriter] = {}

    def write(tmp: Path) -> None:
        with tarfile.open(tmp, "w", format=tarfile.PAX_FORMAT) as tar:
            state["writer"] = _ShardWriter(tar, unit, job)
            _fill(state["writer"], unit)

    path = atomic_save(write, crops_path(job.output_dir, unit.index))
    stats = {"unit": unit.index, "input": unit.describe(), "output": path.name}
    stats |= state["writer"].stats()
    stats["seconds"] = round(time.perf_counter() - start, 3)
    atomic_write_json(stats_path(job.output_dir, unit.index), stats)
    return stats


def _ray_process_unit(unit: Unit, job: Job) -> dict[str, Any]:
    init_worker()
    return process_unit(unit, job)


# -------------------------------------------------------------------------------------------- the driver


def finished_units(output_dir: str | os.PathLike, units: Sequence[Unit]) -> dict[int, dict[str, Any]]:
    """Stats of the units whose shard and stats JSON both exist (done by an earlier run)."""
    done = {}
    for unit in units:
        spath = stats_path(output_dir, unit.index)
        if spath.is_file() and crops_path(output_dir, unit.index).is_file():
            with contextlib.suppress(DataError):  # a damaged stats file: the unit runs again
                done[unit.index] = read_json(spath, DataError)
    return done


def remove_leftovers(output_dir: str | os.PathLike, index: int | None = None) -> list[str]:
    """Delete the hidden temporaries of shards and stats (of unit ``index``, or all) a killed run left
    behind; returns their names."""
    gone = []
    pattern = ".crops-*.tmp" if index is None else f".{CROPS_NAME.format(index)[:-4]}[._]*.tmp"
    for tmp in Path(output_dir).glob(pattern):
        with contextlib.suppress(OSError):
            tmp.unlink()
            gone.append(tmp.name)
    return gone


def _run_inline(units: Sequence[Unit], job: Job) -> Iterator[dict[str, Any]]:
    threads = (cv2.getNumThreads(), torch.get_num_threads())
    init_worker()
    try:
        for unit in units:
            yield process_unit(unit, job)
    finally:
        cv2.setNumThreads(threads[0])
        torch.set_num_threads(threads[1])


def _run_pool(units: Sequence[Unit], job: Job, workers: int) -> Iterator[dict[str, Any]]:
    ctx = get_context("spawn")
    with ProcessPoolExecutor(
        max_workers=workers, mp_context=ctx, initializer=init_worker, initargs=(os.getpid(),)
    ) as pool:
        futures: dict[Future, Unit] = {pool.submit(process_unit, u, job): u for u in units}
        try:
            while futures:
                done, _ = wait(futures, return_when=FIRST_COMPLETED)
                for fut in done:
                    unit = futures.pop(fut)
                    try:
                        yield fut.result()
                    except BrokenProcessPool as err:
                        raise FacerepError(
                            f"a worker process died while preparing unit {unit.index} ({unit.describe()}); "
                            "finished shards are kept: rerun the same command to resume"
                        ) from err
        finally:
            for fut in futures:
                fut.cancel()


def _run_ray(
    units: Sequence[Unit], job: Job, workers: int, address: str | None, retries: int
) -> Iterator[dict[str, Any]]:
    try:  # the optional "cluster" extra
        import ray
        import ray.exceptions
    except ImportError as err:  # pragma: no cover - depends on the environment
        raise FacerepError("engine=ray needs Ray: pip install 'facerep[cluster]' (or ray>=2.9)") from err
    started = not ray.is_initialized()
    if started:
        if address:
            ray.init(address=address, include_dashboard=False, logging_level="WARNING")
        else:
            ray.init(num_cpus=workers, include_dashboard=False, logging_level="WARNING")
    try:
        task = ray.remote(num_cpus=1, max_retries=retries, retry_exceptions=True)(_ray_process_unit)
        refs = {task.remote(u, job): u for u in units}
        while refs:
            ready, _ = ray.wait(list(refs), num_returns=1)
            for ref in ready:
                unit = refs.pop(ref)
                try:
                    yield ray.get(ref)
                except ray.exceptions.RayError as err:
                    for other in refs:
                        ray.cancel(other, force=True)
                    raise FacerepError(
                        f"unit {unit.index} ({unit.describe()}) failed after {retries} retries: "
                        f"{one_line(err)}; finished shards are kept: rerun the same command to resume"
                    ) from err
    finally:
        if started:
            ray.shutdown()


def summarize(stats: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Totals over units' stats: images read, corrupt, faces, crops, face rejections and skipped images by
    reason (each unit's stats JSON lists its skipped images, ``skipped``)."""
    keys = ("images", "corrupt", "read_errors", "faces", "images_with_crops", "crops")
    out: dict[str, Any] = {k: 0 for k in keys}
    rejected: Counter[str] = Counter()
    skipped: Counter[str] = Counter()
    reductions: Counter[str] = Counter()
    examples: list[str] = []
    for s in stats:
        for k in list(out):
            out[k] += int(s.get(k, 0))
        rejected.update(s.get("rejected", {}))
        skipped.update(s.get("skipped_images", {}))
        reductions.update(s.get("decode_reduction", {}))
        examples += s.get("corrupt_examples", [])[: max(0, EXAMPLES - len(examples))]
    out["rejected"] = {k: rejected[k] for k in sorted(rejected)}
    out["skipped_images"] = {k: skipped[k] for k in sorted(skipped)}
    out["decode_reduction"] = {k: reductions[k] for k in sorted(reductions, key=int)}
    out["corrupt_examples"] = examples
    return out


def run_job(
    units: Sequence[Unit],
    job: Job,
    *,
    engine: str = "pool",
    workers: int = 1,
    ray_address: str | None = None,
    retries: int = 3,
    progress: bool = True,
) -> dict[str, Any]:
    """Run every unfinished unit of ``units`` and write ``summary.json``; returns the summary.

    ``engine="pool"``: ``workers`` spawned processes (in this process when ``workers == 1``);
    ``"ray"``: one Ray task per unit with ``retries`` retries, on the cluster at ``ray_address`` or on a
    local Ray with ``workers`` CPUs.
    """
    out = Path(job.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    leftovers = remove_leftovers(out)
    before = finished_units(out, units)
    pending = [u for u in units if u.index not in before]
    start = time.perf_counter()
    new: list[dict[str, Any]] = []
    bar = tqdm(total=len(units), initial=len(before), unit="shard", desc="prepare", disable=not progress)
    if engine == "ray":
        results = _run_ray(pending, job, workers, ray_address, retries)
    elif workers == 1:
        results = _run_inline(pending, job)
    else:
        results = _run_pool(pending, job, workers)
    try:
        for stats in results:
            new.append(stats)
            bar.update(1)
            bar.set_postfix(images=sum(s["images"] for s in new), crops=sum(s["crops"] for s in new))
    finally:
        bar.close()
    wall = time.perf_counter() - start
    everything = sorted([*before.values(), *new], key=lambda s: int(s["unit"]))
    run_images = sum(s["images"] for s in new)
    busy = sum(float(s.get("seconds", 0.0)) for s in new)
    summary = {
        "units": len(units),
        "units_run": len(new),
        "units_skipped": len(before),
        **summarize(everything),
        "this_run": {
            "images": run_images,
            "crops": sum(s["crops"] for s in new),
            "seconds": round(wall, 3),
            "images_per_second": round(run_images / wall, 1) if wall > 0 else None,
            "worker_seconds": round(busy, 3),
            "images_per_worker_second": round(run_images / busy, 1) if busy > 0 else None,
            "engine": engine,
            "workers": workers,
            "removed_leftovers": leftovers,
        },
        "shards": [s["output"] for s in everything],
    }
    atomic_write_json(out / "summary.json", summary)
    return summary
