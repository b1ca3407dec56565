"""Time per photo of ``detector=retinaface`` on one core, for both reference backbones, with random-weight
files written in the reference's layout (the released files cannot be downloaded here; the time does not
depend on the weights, only on the image size): the numbers behind docs/prepare.md "Face detector".

    .venv/bin/python scripts/retinaface_timing.py [--cpu 1] [--runs 3]
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import cv2
import torch
from skimage import data as skdata

from facerep.data.detect import build_detector
from facerep.data.retinaface import BACKBONES, RetinaFace

SIZES = ((640, 480), (1920, 1080))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--cpu", type=int, default=min(os.sched_getaffinity(0)), help="CPU to pin to")
    parser.add_argument("--runs", type=int, default=3, help="timed passes; the best is reported")
    args = parser.parse_args()
    os.sched_setaffinity(0, {args.cpu})
    torch.set_num_threads(1)
    cv2.setNumThreads(1)
    torch.manual_seed(0)
    print("| backbone | image | s per photo, 1 core (best of runs, after one warm-up) |")
    print("|---|---|---|")
    with tempfile.TemporaryDirectory() as tmp:
        for backbone in BACKBONES:
            path = Path(tmp) / f"{backbone}.pth"
            torch.save({f"module.{k}": v for k, v in RetinaFace(backbone).state_dict().items()}, path)
            detector = build_detector("retinaface", weights=str(path))
            for w, h in SIZES:
                image = cv2.resize(skdata.astronaut(), (w, h), interpolation=cv2.INTER_AREA)
                detector(image)  # loads the network
                best = float("inf")
                for _ in range(args.runs):
                    start = time.perf_counter()
                    detector(image)
                    best = min(best, time.perf_counter() - start)
                print(f"| {backbone} | {w} x {h} | {best:.2f} |", flush=True)


if __name__ == "__main__":
    main()
