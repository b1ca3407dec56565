"""facerep's MTCNN against facenet-pytorch's (the reference implementation of the same network and weights),
photo by photo: the numbers behind docs/prepare.md, "Face detector", from the photos of
tests/data/test_mtcnn_parity.py.

    .venv/bin/python scripts/mtcnn_parity.py [--min-face 20] [--floors] [--write DIR]

Per photo: faces found by each, the smallest box IoU and the largest box-corner, probability and
five-point differences of matched faces, and the time of each on one thread. Then, for min_face 20, 40
and 64, the faces (box side >= min_face) that a full-resolution pass finds and ``max_side=320`` loses
(``--floors``: also on 20 synthetic scenes, for the shrink floors 12, 24, 36 and 48 px, about 10 min).
"""

from __future__ import annotations

import argparse
import importlib.util
import io
import os
import re
import sys
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")

import cv2
import numpy as np
import torch
from PIL import Image
from skimage import data as skdata

from facerep.data.detect import MTCNNDetector
from facerep.data.scenes import render_scene

TEST = Path(__file__).resolve().parents[1] / "tests" / "data" / "test_mtcnn_parity.py"


def _load_test_module():
    sys.path.insert(0, str(TEST.parents[1]))  # the tests' shared helpers (faces.py)
    spec = importlib.util.spec_from_file_location("test_mtcnn_parity", TEST)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def write_folder(photos: dict[str, np.ndarray], folder: Path) -> None:
    """The photos as PNGs in ``folder``, with six scikit-image pictures without a human face and a JPEG cut
    short: a real folder for ``facerep prepare`` / ``predict`` (docs/prepare.md "Why a photo was skipped")."""
    folder.mkdir(parents=True, exist_ok=True)
    others = {n: getattr(skdata, n)() for n in ("coffee", "chelsea", "rocket", "coins", "horse", "page")}
    for name, image in {**photos, **others}.items():
        image = np.asarray(image)
        image = (image * 255).astype(np.uint8) if image.dtype == bool else image
        Image.fromarray(image).save(folder / f"{re.sub(r'[^A-Za-z0-9]+', '_', name).strip('_')}.png")
    buffer = io.BytesIO()
    Image.fromarray(photos["astronaut"]).save(buffer, "JPEG")
    (folder / "broken.jpg").write_bytes(buffer.getvalue()[:2000])
    print(f"wrote {len(photos) + len(others) + 1} files to {folder}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--min-face", type=int, default=20)
    parser.add_argument("--floors", action="store_true", help="also 20 scenes, shrink floors 12/24/36/48 px")
    parser.add_argument(
        "--write", type=Path, help="only write the photos (+ 6 without a face, 1 broken) here"
    )
    args = parser.parse_args()
    torch.set_num_threads(1)
    cv2.setNumThreads(1)
    t = _load_test_module()
    photos = t.photos()
    if args.write:
        write_folder(photos, args.write)
        return
    ours = MTCNNDetector(min_face=args.min_face, max_side=None)
    print(f"min_face {args.min_face}, full resolution")
    print("| photo | size | faces facerep / facenet-pytorch | min IoU | max box diff (px) | max abs dp | "
          "max point diff (px) | s facerep / facenet |")  # fmt: skip
    print("|---|---|---|---|---|---|---|---|")
    for name, image in photos.items():
        start = time.perf_counter()
        ref_boxes, ref_probs, ref_points = t.reference(image, args.min_face)
        t_ref = time.perf_counter() - start
        start = time.perf_counter()
        found = ours(image)
        t_ours = time.perf_counter() - start
        ious, box, dp, pts = [], [], [], []
        for b, p, q in zip(ref_boxes, ref_probs, ref_points, strict=True):
            best = max(found, key=lambda d, b=b: t.iou(d.box, b)) if found else None
            if best is None:
                continue
            ious.append(t.iou(best.box, b))
            box.append(np.abs(best.box - b).max())
            dp.append(abs(best.score - p))
            pts.append(np.abs(best.points - q).max())
        h, w = image.shape[:2]
        print(f"| {name} | {w} x {h} | {len(found)} / {len(ref_boxes)} | {min(ious, default=1):.3f} | "
              f"{max(box, default=0):.3f} | {max(dp, default=0):.4f} | {max(pts, default=0):.3f} | "
              f"{t_ours:.2f} / {t_ref:.2f} |")  # fmt: skip
    floors = (12.0, 24.0, 36.0, 48.0) if args.floors else (MTCNNDetector.shrink_floor,)
    if args.floors:  # add 20 synthetic scenes of 1280-1920 px with 2-5 faces of 48-160 px
        for w, h, seed, faces in ((1920, 1080, 7, (3, 5)), (1280, 960, 8, (2, 4))):
            for i in range(10):
                scene = render_scene(seed, i, width=w, height=h, faces=faces, face_size=(48, 160))
                photos[f"scene {w} {i}"] = scene.image
    print(f"\nfull-resolution faces (box side >= min_face) that max_side 320 loses, {len(photos)} images")
    for min_face in (20, 40, 64):
        full = MTCNNDetector(min_face=min_face, max_side=None)
        found = {name: full(image) for name, image in photos.items()}
        for floor in floors:
            shrunk = MTCNNDetector(min_face=min_face, max_side=320)
            shrunk.shrink_floor = floor
            total = lost = 0
            for name, image in photos.items():
                kept = shrunk(image)
                for face in found[name]:
                    if max(face.box[2:] - face.box[:2]) >= min_face:
                        total += 1
                        lost += not any(t.iou(d.box, face.box) > 0.5 for d in kept)
            print(f"min_face {min_face}, shrink floor {floor:.0f} px: {lost} of {total} lost")


if __name__ == "__main__":
    main()
