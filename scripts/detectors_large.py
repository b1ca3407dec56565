"""Large photos: 1920 x 1080 composites of many LFW faces (40-200 px), faces found and time per photo on one
core, for mtcnn, blazeface and centerface, with facenet-pytorch's MTCNN as an independent reference
(docs/prepare.md, "Face detector").

    OMP_NUM_THREADS=1 .venv/bin/python scripts/detectors_large.py [--cpu 1] [--out runs/detectors_large.json]

A pasted face counts as found when a detection's centre lies inside its square (each square once); every
other detection is a false positive.  Times: best of two passes over the in-memory RGB photos."""

import argparse
import importlib.util
import json
import os
import sys
import time
from pathlib import Path

import cv2
import numpy as np
import torch
from skimage import data as skdata

from facerep.data.detect import build_detector

parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
parser.add_argument("--cpu", type=int, default=min(os.sched_getaffinity(0)), help="CPU to pin to")
parser.add_argument("--out", type=Path, default=Path("runs/detectors_large.json"))
args = parser.parse_args()
os.sched_setaffinity(0, {args.cpu})
cv2.setNumThreads(1)
torch.set_num_threads(1)
sys.path.insert(0, str(Path(__file__).parents[1] / "tests"))  # the tests' shared helpers (faces.py)
spec = importlib.util.spec_from_file_location(
    "parity", Path(__file__).parents[1] / "tests/data/test_mtcnn_parity.py"
)
parity = importlib.util.module_from_spec(spec)
spec.loader.exec_module(parity)

SIZES = (40, 48, 56, 64, 80, 96, 112, 128, 160, 200)
MIN_FACE = 32


def composite(background: np.ndarray, seed: int) -> tuple[np.ndarray, list[tuple[int, int, int]]]:
    """LFW faces (100 of lfw_subset's face crops, upsampled bicubic) on ``background`` at 1920 x 1080, rows
    filled left to right at sizes cycling through SIZES; -> photo, squares (x, y, side)."""
    out = cv2.resize(background, (1920, 1080), interpolation=cv2.INTER_CUBIC)
    lfw = skdata.lfw_subset()[:100]
    rng = np.random.default_rng(seed)
    squares, x, y, row, k = [], 20, 20, 0, 0
    while True:
        s = SIZES[(k + seed) % len(SIZES)]
        if x + s > 1900:
            x, y, row = 20, y + row + 30, 0
        if y + s + 20 > 1080:
            return out, squares
        face = cv2.resize(
            (lfw[(7 * k + seed) % 100] * 255).astype(np.uint8), (s, s), interpolation=cv2.INTER_CUBIC
        )
        dy = int(rng.integers(0, 15))
        out[y + dy : y + dy + s, x : x + s] = face[..., None]
        squares.append((x, y + dy, s))
        x, row, k = x + s + int(rng.integers(25, 50)), max(row, s + dy), k + 1


def tally(boxes: np.ndarray, squares: list[tuple[int, int, int]]) -> tuple[dict[int, list[int]], int]:
    """Found [found, total] per face size and false positives, for boxes [N, 4] (facerep frame)."""
    centres = (boxes[:, :2] + boxes[:, 2:]) / 2 + 0.5  # frame where pixel i spans [i, i + 1]
    used = np.zeros(len(centres), bool)
    by_size: dict[int, list[int]] = {}
    for x, y, s in squares:
        inside = (
            (~used)
            & (centres[:, 0] > x)
            & (centres[:, 0] < x + s)
            & (centres[:, 1] > y)
            & (centres[:, 1] < y + s)
        )
        hit = bool(inside.any())
        if hit:
            used[np.flatnonzero(inside)[0]] = True
        by_size.setdefault(s, [0, 0])
        by_size[s][0] += hit
        by_size[s][1] += 1
    return by_size, int((~used).sum())


photos = [composite(skdata.coffee(), 0), composite(skdata.chelsea(), 1), composite(skdata.rocket(), 2)]
CONFIGS = [
    ("mtcnn", {}), ("blazeface", {}),
    ("centerface", {}), ("centerface", {"max_side": 1280}),
    ("centerface", {"max_side": 640}), ("centerface", {"threshold": 0.3}),
]  # fmt: skip
rows = []


def boxes_of(detector):
    """A runner: photo -> boxes [N, 4] of ``detector``."""
    return lambda im: np.array([d.box for d in detector(im)]).reshape(-1, 4)


runners = [(f"{n} {o}", boxes_of(build_detector(n, min_face=MIN_FACE, **o))) for n, o in CONFIGS]
runners.append(("facenet-pytorch MTCNN (min 20)", lambda im: parity.reference(im, 20)[0]))
for label, run in runners:
    found, fp, best = {}, 0, float("inf")
    for image, squares in photos:
        by_size, f = tally(run(image), squares)
        fp += f
        for s, (a, b) in by_size.items():
            found.setdefault(s, [0, 0])
            found[s][0] += a
            found[s][1] += b
    for _ in range(2):
        t = time.perf_counter()
        for image, _ in photos:
            run(image)
        best = min(best, (time.perf_counter() - t) / len(photos))
    total = sum(v[0] for v in found.values()), sum(v[1] for v in found.values())
    row = {
        "detector": label,
        "found": total[0],
        "faces": total[1],
        "false_positives": fp,
        "s_per_photo": round(best, 3),
        "found_by_size": {s: f"{a}/{b}" for s, (a, b) in sorted(found.items())},
    }
    rows.append(row)
    print(json.dumps(row), flush=True)
args.out.parent.mkdir(parents=True, exist_ok=True)
args.out.write_text(json.dumps(rows, indent=1))
