"""``facerep predict``: a fine-tuned model (or one of facer's released TorchScript parsers and aligners,
:mod:`facerep.apps.facer`) on photos, folders of photos or videos -> JSON + overlays.

For every image ``<output_dir>/<stem>.json`` (``{"image", "width", "height", "task", "faces": [...]}``, see
:meth:`facerep.apps.predict.Predictor.predict`; ``"message": "no face found"`` when there is none),
parsing label maps as PNGs of class ids (``<stem>_face<i>_mask.png`` per face, ``<stem>_mask.png`` for all)
and ``<stem>_overlay.png``. A folder is searched recursively (images and videos, sorted; outputs mirror its
sub-folders). A video gives one ``<stem>.json`` with the faces of every ``frame_step``-th frame and, with
overlays, ``<stem>_overlay.mp4`` of those frames. Files that cannot be read are reported and skipped;
``summary.json`` counts images, frames, faces, the images without a prediction by reason (``skipped_images``:
``unreadable``, ``no_face``, ``low_score`` below ``min_score``, listed in ``skipped`` with the best score)
and lists the failures and the inputs with faces whose model
output was not finite (their predictions are ``null`` with an ``"error"``). The JSON is strict (never NaN).

Every file is written atomically, so a failed write (a full disk, a read-only folder: an :class:`OSError`,
one line from the command line) stops the run and leaves the previous outputs as they were.
"""

from __future__ import annotations

import json
import re
import sys
from collections import Counter
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import av
import numpy as np
from PIL import Image
from tqdm import tqdm

from facerep.apps.predict import Predictor
from facerep.config import ConfigError
from facerep.data.detect import with_weights
from facerep.data.sources import IMAGE_EXTENSIONS
from facerep.data.transforms import decode_image
from facerep.data.video import VideoError
from facerep.runtime.atomic import atomic_save, atomic_write_bytes
from facerep.runtime.errors import FacerepError, one_line

_NUMBERS = re.compile(r"\[\s*(-?[\d.eE+-]+(?:,\s*-?[\d.eE+-]+)*)\s*\]")
VIDEO_EXTENSIONS = frozenset({"mp4", "avi", "mov", "mkv", "webm", "m4v", "mpg", "mpeg"})


@dataclass
class PredictConfig:
    checkpoint: str | None = None  # RUN_DIR | finetune.pt | an export (model.onnx, ...) with its <file>.json
    # | a facer TorchScript model (face_parsing.farl.lapa.*.pt, face_alignment.farl.ibug300w.*.pt, ...)
    facer: str | None = None  # that facer model's name when its file name does not tell: lapa/448, ...
    input: str | None = None  # a photo, a folder (searched recursively) or a video
    output_dir: str = "runs/predict"
    output: str | None = None  # the same as output_dir (takes precedence when given)
    detector: str = "mtcnn"  # facerep.data.detect.build_detector name
    detector_options: dict[str, Any] = field(default_factory=dict)  # e.g. {min_face: 20, max_side: 1280}
    detector_weights: str | None = None  # the detector's weights file (detector=retinaface: required)
    min_score: float = 0.0  # faces the detector scores lower are not predicted (the photo: low_score)
    device: str = "cpu"  # cpu | cuda | auto
    batch_size: int = 16  # faces per model call (gathered across images and frames)
    overlays: bool = True  # <stem>_overlay.png (and _overlay.mp4 for videos)
    frame_step: int = 1  # videos: every frame_step-th frame (0, step, 2 step, ...)
    max_frames: int | None = None  # videos: stop after this many predicted frames
    box_scale: float | None = None  # alignment: the estimated face box x this (default: the export's, 1.0)
    framing: dict[str, Any] = field(default_factory=dict)  # whole-image tasks: kind, size, points, expand
    progress: bool = True  # tqdm bars (on a terminal)


def find_inputs(path: Path) -> list[Path]:
    """``path`` itself, or every image and video under the folder ``path`` (sorted)."""
    if not path.exists():
        raise ConfigError(f"input={path}: no such file or directory")
    if path.is_file():
        return [path]
    suffixes = IMAGE_EXTENSIONS | VIDEO_EXTENSIONS
    return sorted(p for p in path.rglob("*") if p.is_file() and p.suffix.lower().lstrip(".") in suffixes)


def output_bases(inputs: list[Path], root: Path, out: Path) -> dict[Path, Path]:
    """Each input's output prefix: ``out/<relative folder>/<stem>`` (``<name>`` where two share a stem)."""
    rel = {p: (p.relative_to(root) if root.is_dir() else Path(p.name)) for p in inputs}
    stems: dict[Path, int] = {}
    for r in rel.values():
        key = r.parent / r.stem
        stems[key] = stems.get(key, 0) + 1
    return {p: out / r.parent / (r.stem if stems[r.parent / r.stem] == 1 else r.name) for p, r in rel.items()}


def is_video(path: Path) -> bool:
    return path.suffix.lower().lstrip(".") in VIDEO_EXTENSIONS


def write_json(path: Path, doc: dict[str, Any]) -> None:
    """Indented JSON with every innermost list of numbers (a box, a point) on one line; a NaN or an
    infinity is a ``ValueError`` (a bug: the predictor writes ``null`` for those)."""
    text = json.dumps(doc, indent=2, allow_nan=False)
    text = _NUMBERS.sub(lambda m: "[" + re.sub(r",\s*", ", ", m.group(1)) + "]", text)
    atomic_write_bytes(path, text.encode())


def _save_png(array: np.ndarray, path: Path) -> None:
    image = Image.fromarray(array)
    atomic_save(lambda tmp: image.save(tmp, format="PNG"), path)


def _faces_json(result: dict[str, Any], base: Path, prefix: str, save_masks: bool) -> list[dict[str, Any]]:
    """The faces of a result with masks written as PNGs (``<prefix>_face<i>_mask.png``) and named."""
    faces = []
    for i, face in enumerate(result["faces"]):
        entry = {k: v for k, v in face.items() if k != "mask"}
        if "mask" in face and save_masks:
            entry["mask"] = None  # a non-finite output
            if face["mask"] is not None:
                entry["mask"] = f"{prefix}_face{i}_mask.png"
                _save_png(face["mask"], base.parent / entry["mask"])
        faces.append(entry)
    return faces


def write_image(
    predictor: Predictor, source: Path, base: Path, image: np.ndarray, result: dict, overlays: bool
) -> dict[str, Any]:
    """``<base>.json`` (+ mask PNGs and the overlay) for one photo; returns the JSON document."""
    doc: dict[str, Any] = {"image": str(source), **{k: result[k] for k in ("width", "height", "task")}}
    doc["faces"] = _faces_json(result, base, base.name, save_masks=True)
    if "mask" in result:
        doc["mask"] = f"{base.name}_mask.png"
        doc["classes"] = predictor.spec["class_names"]
        _save_png(result["mask"], base.parent / doc["mask"])
    if "message" in result:
        doc["message"] = result["message"]
    if overlays:
        doc["overlay"] = f"{base.name}_overlay.png"
        overlay = predictor.draw(image, result)
        atomic_save(lambda tmp: overlay.save(tmp, format="PNG"), base.parent / doc["overlay"])
    write_json(base.parent / f"{base.name}.json", doc)
    return doc


def _even(image: Image.Image) -> np.ndarray:
    """RGB array padded to even sides (yuv420p video)."""
    arr = np.asarray(image.convert("RGB"))
    h, w = arr.shape[:2]
    return np.pad(arr, ((0, h % 2), (0, w % 2), (0, 0)))


class _VideoWriter:
    """Overlay frames -> an MP4 (H.264 where PyAV has it, else MPEG-4 Part 2)."""

    def __init__(self, path: Path, fps: float) -> None:
        self.container = av.open(str(path), "w", format="mp4")
        self.codec = "libx264" if "libx264" in av.codecs_available else "mpeg4"
        self.fps = fps
        self.stream: Any = None

    def write(self, frame: np.ndarray) -> None:
        if self.stream is None:
            self.stream = self.container.add_stream(self.codec, rate=max(1, round(self.fps)))
            self.stream.height, self.stream.width = frame.shape[:2]
            self.stream.pix_fmt = "yuv420p"
        for packet in self.stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")):
            self.container.mux(packet)

    def close(self) -> None:
        if self.stream is not None:
            for packet in self.stream.encode():
                self.container.mux(packet)
        self.container.close()


def _unreadable(source: Path, err: BaseException | str) -> VideoError:
    return VideoError(f"cannot decode video {source}: {getattr(err, 'strerror', None) or one_line(err, 160)}")


def _open_video(source: Path) -> av.container.InputContainer:
    """``source`` opened for decoding, with a video stream, else a :class:`VideoError`."""
    try:
        container = av.open(str(source))
    except (av.error.FFmpegError, OSError) as err:
        raise _unreadable(source, err) from err
    if not container.streams.video:
        container.close()
        raise _unreadable(source, "no video stream")
    return container


def predict_video(predictor: Predictor, source: Path, base: Path, cfg: PredictConfig, show: bool) -> dict:
    """``<base>.json`` with the faces of every ``frame_step``-th frame (+ ``<base>_overlay.mp4``); parsing
    label maps of all faces per frame go to ``<base>_frames/<index>_mask.png``. A file FFmpeg cannot open
    or decode is a :class:`VideoError`; a failed write (an ``OSError``) is not caught."""
    doc: dict[str, Any] = {
        "video": str(source),
        "task": predictor.task,
        "frame_step": cfg.frame_step,
        "frames": [],
    }

    def run(overlay_path: Path | None) -> None:
        with _open_video(source) as container:
            stream = container.streams.video[0]
            fps = float(stream.average_rate) if stream.average_rate else 25.0
            doc.update(width=stream.codec_context.width, height=stream.codec_context.height, fps=fps)
            writer = _VideoWriter(overlay_path, fps / cfg.frame_step) if overlay_path is not None else None

            def frames() -> Iterator[tuple[int, np.ndarray]]:
                taken = 0
                try:
                    for index, frame in enumerate(container.decode(stream)):
                        if cfg.max_frames is not None and taken >= cfg.max_frames:
                            return
                        if index % cfg.frame_step == 0:
                            taken += 1
                            yield index, frame.to_ndarray(format="rgb24")
                except (av.error.FFmpegError, OSError) as err:  # decoding only: the consumer's errors
                    raise _unreadable(source, err) from err  # are raised where it runs

            total = stream.frames // cfg.frame_step + 1 if stream.frames else None
            bar = tqdm(total=total, desc=source.name, unit="frame", disable=not show, leave=False)
            try:
                for index, image, result in predictor.predict_stream(frames()):
                    entry: dict[str, Any] = {"index": index, "time": round(index / fps, 4)}
                    entry["faces"] = _faces_json(result, base, base.name, save_masks=False)
                    if "mask" in result:
                        entry["mask"] = f"{base.name}_frames/{index:06d}_mask.png"
                        _save_png(result["mask"], base.parent / entry["mask"])
                    doc["frames"].append(entry)
                    if writer is not None:
                        writer.write(_even(predictor.draw(image, result)))
                    bar.update(1)
            finally:
                bar.close()
                if writer is not None:
                    writer.close()

    if cfg.overlays:
        doc["overlay"] = f"{base.name}_overlay.mp4"
        atomic_save(run, base.parent / doc["overlay"])
    else:
        run(None)
    if any("mask" in entry for entry in doc["frames"]):  # the label maps' class names, as for a photo
        doc["classes"] = predictor.spec["class_names"]
    write_json(base.parent / f"{base.name}.json", doc)
    return doc


def _check(cfg: PredictConfig) -> None:
    if not cfg.checkpoint:
        raise ConfigError(
            "facerep predict needs checkpoint=RUN_DIR|finetune.pt|model.onnx|FACER_MODEL.pt (a fine-tuned "
            "model or one of facer's TorchScript models)"
        )
    if not cfg.input:
        raise ConfigError("facerep predict needs input=PHOTO|FOLDER|VIDEO")
    if cfg.frame_step < 1 or cfg.batch_size < 1 or (cfg.max_frames is not None and cfg.max_frames < 1):
        raise ConfigError(
            f"frame_step, batch_size and max_frames must be >= 1, got {cfg.frame_step}, {cfg.batch_size}, "
            f"{cfg.max_frames}"
        )


def run_predict(cfg: PredictConfig) -> dict:
    """Run ``facerep predict`` (see the module docstring); returns the summary written to ``summary.json``."""
    _check(cfg)
    out = Path(cfg.output or cfg.output_dir)
    predictor = Predictor(
        cfg.checkpoint, detector=cfg.detector, device=cfg.device,
        detector_options=with_weights(cfg.detector_options, cfg.detector_weights),
        batch_size=cfg.batch_size, box_scale=cfg.box_scale, framing=dict(cfg.framing) or None,
        facer=cfg.facer, min_score=cfg.min_score,
    )  # fmt: skip
    root = Path(cfg.input)
    inputs = find_inputs(root)
    bases = output_bases(inputs, root, out)
    out.mkdir(parents=True, exist_ok=True)  # output_dir=<a file>: fail before the model runs
    show = cfg.progress and sys.stderr.isatty()
    summary: dict[str, Any] = {
        "checkpoint": str(cfg.checkpoint), "input": str(root), "output_dir": str(out), "task": predictor.task,
        "images": 0, "videos": 0, "frames": 0, "faces": 0, "non_finite_faces": 0, "skipped": [],
        "non_finite": [], "failures": [],
    }  # fmt: skip

    def skip(path: Path, reason: str, **detail: Any) -> None:
        summary["skipped"].append({"path": str(path), "reason": reason, **detail})

    def count(path: Path, faces: list[dict[str, Any]]) -> None:
        summary["faces"] += len(faces)
        bad = sum("error" in face for face in faces)
        if bad:
            summary["non_finite_faces"] += bad
            summary["non_finite"].append(str(path))

    def fail(path: Path, error: BaseException | str) -> None:
        message = one_line(error, 300)
        summary["failures"].append({"path": str(path), "error": message})
        skip(path, "unreadable")
        print(f"[facerep] skipped {message if str(path) in message else f'{path}: {message}'}", flush=True)

    def readable() -> Iterator[tuple[Path, np.ndarray]]:
        for path in (p for p in inputs if not is_video(p)):
            try:
                image = np.asarray(decode_image(path, str(path)))
            except (FacerepError, OSError) as err:  # BadImage: empty, truncated, not an image
                fail(path, err)
                continue
            yield path, image

    images = [p for p in inputs if not is_video(p)]
    for path, image, result in tqdm(
        predictor.predict_stream(readable()), total=len(images), desc="images", disable=not show
    ):
        write_image(predictor, path, bases[path], image, result, cfg.overlays)
        summary["images"] += 1
        count(path, result["faces"])
        if not result["faces"]:
            skip(path, result["reason"], **({"score": result["score"]} if "score" in result else {}))
    for path in (p for p in inputs if is_video(p)):
        try:
            doc = predict_video(predictor, path, bases[path], cfg, show)
        except VideoError as err:
            fail(path, err)
            continue
        summary["videos"] += 1
        summary["frames"] += len(doc["frames"])
        count(path, [face for frame in doc["frames"] for face in frame["faces"]])
    summary["skipped_images"] = dict(sorted(Counter(r["reason"] for r in summary["skipped"]).items()))
    summary["config"] = asdict(cfg)
    write_json(out / "summary.json", summary)
    skipped = ", ".join(f"{k} {v}" for k, v in summary["skipped_images"].items())
    print(
        f"[facerep] predict ({predictor.task}): {summary['images']} images "
        f"(skipped: {skipped or 'none'}), {summary['videos']} videos ({summary['frames']} "
        f"frames), {summary['faces']} faces ({summary['non_finite_faces']} with a non-finite model output); "
        f"{len(summary['failures'])} unreadable files skipped; wrote {out}",
        flush=True,
    )
    return summary
