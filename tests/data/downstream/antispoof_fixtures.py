"""Tiny OULU-NPU, CASIA-FASD, Replay-Attack and MSU-MFSD trees in their official layouts (for the tests)."""

from __future__ import annotations

from pathlib import Path

import av
import numpy as np

WIDTH, HEIGHT, FRAMES = 64, 48, 5


def write_video(
    path: Path, seed: int = 0, frames: int = FRAMES, size: tuple[int, int] = (WIDTH, HEIGHT)
) -> None:
    """A ``frames``-frame MPEG-4 video of ``size`` (W, H): a bright square on a noisy background."""
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    fmt = {".avi": "avi", ".mov": "mov", ".mp4": "mp4"}[path.suffix.lower()]
    with av.open(str(path), "w", format=fmt) as container:
        stream = container.add_stream("mpeg4", rate=25)
        stream.width, stream.height, stream.pix_fmt = size[0], size[1], "yuv420p"
        for _ in range(frames):
            img = rng.integers(0, 60, (size[1], size[0], 3), dtype=np.uint8)
            img[12:36, 20:44] = 200
            for packet in stream.encode(av.VideoFrame.from_ndarray(img, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)


def write_lines(path: Path, lines: list[str]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(line + "\n" for line in lines))
    return path


# OULU-NPU: eye positions "frame, lx, ly, rx, ry" (eyes 10 px apart at y = 20 -> 25 px square box)
OULU_EYES = ["0, 27, 20, 37, 20", "1, 27, 20, 37, 20", "2, 0, 0, 0, 0", "3, 28, 21, 38, 21"]


def make_oulu(root: Path) -> None:
    """Train: 1_1_01_1 (live), 1_1_01_2 (print), 1_1_01_4 (replay); Dev: 1_1_21_1; Test: 1_1_36_5;
    eye files for all but 1_1_01_4; Protocol_1 and Protocol_3 fold 2 lists."""
    for seed, (folder, stem) in enumerate(
        [
            ("Train_files", "1_1_01_1"),
            ("Train_files", "1_1_01_2"),
            ("Train_files", "1_1_01_4"),
            ("Dev_files", "1_1_21_1"),
            ("Test_files", "1_1_36_5"),
        ]
    ):
        write_video(root / folder / f"{stem}.avi", seed)
        if stem != "1_1_01_4":
            write_lines(root / folder / f"{stem}.txt", OULU_EYES)
    proto = root / "Protocols"
    write_lines(proto / "Protocol_1" / "Train.txt", ["+1,1_1_01_1", "-1,1_1_01_2"])
    write_lines(proto / "Protocol_1" / "Dev.txt", ["+1,1_1_21_1"])
    write_lines(proto / "Protocol_1" / "Test.txt", ["-2,1_1_36_5"])
    write_lines(proto / "Protocol_3" / "Train_2.txt", ["-2,1_1_01_4"])


CASIA_TRAIN = {"1": ["1.avi", "3.avi"], "2": ["HR_1.avi", "HR_3.avi"]}
CASIA_TEST = {"1": ["8.avi"], "12": ["HR_4.avi", "6.avi"]}


def make_casia(root: Path) -> None:
    """``train_release`` subjects 1, 2 and ``test_release`` subjects 1, 12 (no annotations)."""
    seed = 0
    for folder, subjects in (("train_release", CASIA_TRAIN), ("test_release", CASIA_TEST)):
        for sub, names in subjects.items():
            for name in names:
                write_video(root / folder / sub / name, seed)
                seed += 1


REPLAY_FACE = ["0 10 8 30 24", "1 11 9 30 24", "2 0 0 0 0", "3 12 9 30 25"]
REPLAY_VIDEOS = {
    "train": [
        "real/client001_session01_webcam_authenticate_controlled_1.mov",
        "attack/fixed/attack_print_client001_session01_highdef_photo_adverse.mov",
        "attack/hand/attack_highdef_client001_session01_highdef_video_controlled.mov",
    ],
    "devel": [
        "real/client003_session01_webcam_authenticate_adverse_2.mov",
        "attack/hand/attack_mobile_client003_session01_mobile_photo_adverse.mov",
    ],
    "test": ["real/client009_session01_webcam_authenticate_controlled_1.mov"],
}


def make_replay(root: Path) -> None:
    """``train`` / ``devel`` / ``test`` with ``real`` and ``attack/{fixed,hand}`` and ``face-locations``."""
    seed = 0
    for split, rels in REPLAY_VIDEOS.items():
        (root / split / "enroll").mkdir(parents=True, exist_ok=True)
        for rel in rels:
            write_video(root / split / rel, seed)
            write_lines(root / "face-locations" / split / rel.replace(".mov", ".face"), REPLAY_FACE)
            seed += 1
        (root / split / "attack").mkdir(parents=True, exist_ok=True)


MSU_FACE = ["0,10,8,40,32", "1,11,8,41,33", "3,0,0,0,0"]
MSU_VIDEOS = [
    "real/real_client002_android_SD_scene01.mp4",
    "real/real_client002_laptop_SD_scene01.mov",
    "attack/attack_client002_android_SD_printed_photo_scene01.mp4",
    "attack/attack_client021_laptop_SD_ipad_video_scene01.mov",
    "attack/attack_client021_android_SD_iphone_video_scene01.mp4",
    "real/real_client030_laptop_SD_scene01.mov",
    "real/real_client003_laptop_SD_scene01.mov",
]


def make_msu(root: Path) -> None:
    """``scene01/{real,attack}`` for clients 2, 3 (train), 21 (test) and 30 (in neither list); ``.face`` files
    beside the first two videos."""
    for seed, rel in enumerate(MSU_VIDEOS):
        write_video(root / "scene01" / rel, seed)
        if seed < 2:
            write_lines((root / "scene01" / rel).with_suffix(".face"), MSU_FACE)
    write_lines(root / "train_sub_list.txt", ["02", "03"])
    write_lines(root / "test_sub_list.txt", ["21", "22"])
