"""The four face anti-spoofing datasets of the OCIM cross-domain protocols, in their official layouts.

Each reader is a :class:`~facerep.data.downstream.antispoof.VideoFaceDataset` whose :meth:`_videos` lists
the split's videos as :class:`~facerep.data.downstream.antispoof.VideoItem` s (label 1 = live, 0 = spoof).
Paths are relative to the dataset root; ``video_id`` is ``<short name>/<path without extension>``.

OULU-NPU (``oulu_npu``, domain O)
    ``Train_files/``, ``Dev_files/``, ``Test_files/`` with ``P_S_U_F.avi`` (phone 1-6, session 1-3, user,
    file 1 = live, 2-3 = print, 4-5 = video replay) and per-video ``P_S_U_F.txt``: one line per frame,
    ``frame, a, b, c, d`` (comma-separated). The release documents eye positions (``frame, left eye x, y,
    right eye x, y``; ``annotation="eyes"``, the default), turned into a square box of side 2.5 x the eye
    distance centred on the eyes' midpoint, which sits at 40 % of the box height; ``annotation="box"``
    reads the four numbers as ``x1, y1, x2, y2``; ``"none"`` leaves the face to the detector. Splits are the
    whole split folder (what the OCIM code uses) unless ``protocol`` (1-4, with ``fold`` 1-6 for 3 and 4)
    names ``Protocols/Protocol_N/{Train,Dev,Test}[_fold].txt``, lines ``+1,1_1_01_1`` (+1 live, -1 print,
    -2 replay).
CASIA-FASD (``casia_fasd``, domain C)
    ``train_release/<1-20>/`` and ``test_release/<1-30>/`` with ``1.avi 2.avi HR_1.avi`` (live), ``3 4 HR_2``
    (warped print, attack ``print``), ``5 6 HR_3`` (cut photo, ``cut``), ``7 8 HR_4`` (video, ``replay``).
    No face boxes (detector). No official dev split: ``dev`` = the last quarter of the train subjects
    (16-20; :func:`dev_holdout`), which stay in ``train``. Subjects are
    ``train_release/N`` / ``test_release/N`` (the two folders number different people from 1).
Idiap Replay-Attack (``replay_attack``, domain I)
    ``train/``, ``devel/`` (split ``dev``), ``test/`` with ``real/*.mov`` and ``attack/{fixed,hand}/*.mov``
    (``enroll/`` is not read); attack from the name: ``attack_print_...`` -> ``print``, ``..._photo_...``
    -> ``photo`` (photo shown on a screen), ``..._video_...`` -> ``replay``. Face boxes from
    ``face-locations/<split>/<...>.face``, one line per frame ``frame x y w h`` (all zero when no face);
    a missing ``face-locations/`` folder leaves every face to the detector.
MSU-MFSD (``msu_mfsd``, domain M)
    ``scene01/real/*.{mov,mp4}``, ``scene01/attack/*.{mov,mp4}`` (``printed_photo`` -> ``print``,
    ``ipad_video`` / ``iphone_video`` -> ``replay``), ``train_sub_list.txt`` / ``test_sub_list.txt`` (one
    client id a line, ``02``; matched by number with ``client002`` in the file names; videos of clients
    in neither list are left out). Face boxes from a ``.face`` file beside the video, one line per frame
    ``frame,x1,y1,x2,y2`` (the corners, as bob.db.msu_mfsd reads them; ``face_format="xywh"`` reads
    ``frame,x,y,w,h``), else the detector. No official dev split: ``dev`` = the last quarter of the
    train list's clients in number order (34, 53, 54, 55 of the official list), which stay in ``train``.

Annotation frame numbers are used as given (taken as 0-based frame indices). A box with zero width or
height ("no face") is left out of ``boxes``. Missing folders/files and malformed lines are one-line
:class:`~facerep.data.sources.DataError` s naming the file and line.
"""

from __future__ import annotations

import math
import re
from pathlib import Path
from typing import Any

import numpy as np

from facerep.data.downstream.antispoof import VideoFaceDataset, VideoItem
from facerep.data.downstream.base import line_error, read_lines, require_dir, require_root
from facerep.data.sources import DataError
from facerep.geometry import eyes_box

BoxMap = dict[int, np.ndarray]


# ------------------------------------------------------------------------------------------- helpers


def read_face_file(dataset: str, path: Path, fmt: str, sep: str | None) -> BoxMap:
    """Per-frame face boxes ``{frame: float32 [x1, y1, x2, y2]}`` from a text file of 5 numbers a line.

    ``fmt``: ``"xywh"`` (x, y, width, height), ``"corners"`` (x1, y1, x2, y2) or ``"eyes"`` (left eye x, y,
    right eye x, y -> :func:`eyes_box`); ``sep``: the field separator (None = whitespace). Frames whose box
    is empty (zero width or height, e.g. all zeros) are left out.
    """
    layout = {
        "xywh": "frame x y w h",
        "corners": "frame x1 y1 x2 y2",
        "eyes": "frame, left eye x y, right eye x y",
    }[fmt]
    expected = f"5 {'comma' if sep == ',' else 'whitespace'}-separated numbers '{layout}'"
    boxes: BoxMap = {}
    for lineno, line in read_lines(dataset, path, "face-location file"):
        fields = [f.strip() for f in (line.split(sep) if sep else line.split())]
        try:
            if len(fields) != 5:
                raise ValueError
            frame_f = float(fields[0])
            if not frame_f.is_integer() or frame_f < 0:
                raise ValueError
            a, b, c, d = (float(v) for v in fields[1:])
            if not all(math.isfinite(v) for v in (a, b, c, d)):
                raise ValueError
        except ValueError:
            raise line_error(dataset, path, lineno, expected, line) from None
        if fmt == "xywh":
            box = np.array([a, b, a + c, b + d], dtype=np.float32)
        elif fmt == "corners":
            box = np.array([a, b, c, d], dtype=np.float32)
        else:
            box = eyes_box(np.array([a, b]), np.array([c, d]))
        if box[2] > box[0] and box[3] > box[1]:
            boxes[int(frame_f)] = box
    return boxes


def _video_item(short: str, rel: str, attack: str, subject: str, boxes: BoxMap | None) -> VideoItem:
    """The video at ``rel`` (relative to the root), id ``<short>/<rel without extension>``, label 1 (live)
    when ``attack`` is ``"live"``."""
    return VideoItem(
        path=rel,
        video_id=f"{short}/{rel.rsplit('.', 1)[0]}",
        label=int(attack == "live"),
        attack=attack,
        subject=subject,
        boxes=boxes,
    )


def _videos_in(folder: Path, suffixes: tuple[str, ...]) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in suffixes)


def dev_holdout(subjects: list[int]) -> set[int]:
    """The ``dev`` subjects of a dataset without an official dev split: the last quarter (at least one) of
    its train subjects in number order. They stay in ``train`` too (the official train split is kept whole),
    so ``dev`` is for monitoring, not an unbiased estimate."""
    ordered = sorted(set(subjects))
    return set(ordered[len(ordered) - max(1, math.ceil(len(ordered) / 4)) :]) if ordered else set()


def _nonempty(dataset: str, items: list[VideoItem], where: Path) -> list[VideoItem]:
    if not items:
        raise DataError(f"{dataset}: no videos found under {where}")
    return items


# ------------------------------------------------------------------------------------------- OULU-NPU

OULU_FOLDERS = {"train": "Train_files", "dev": "Dev_files", "test": "Test_files"}
OULU_NAME = re.compile(r"^([1-6])_([1-3])_(\d{2})_([1-5])$")
OULU_ATTACKS = {1: "live", 2: "print", 3: "print", 4: "replay", 5: "replay"}
OULU_PROTOCOL_LABELS = {"+1": 1, "1": 1, "-1": 0, "-2": 0}


class OuluNPU(VideoFaceDataset):
    """OULU-NPU (domain O): the split folder, or an official protocol's list (``protocol``, ``fold``)."""

    dataset_name = "oulu_npu"
    domain = "O"
    splits = ("train", "dev", "test")

    def __init__(
        self,
        root: str | Path | None,
        split: str = "train",
        *,
        protocol: int | None = None,
        fold: int | None = None,
        annotation: str = "eyes",
        **kwargs: Any,
    ) -> None:
        if protocol is not None and protocol not in (1, 2, 3, 4):
            raise DataError(f"{self.dataset_name}: protocol must be 1, 2, 3 or 4, got {protocol!r}")
        if protocol in (3, 4) and fold not in (1, 2, 3, 4, 5, 6):
            raise DataError(f"{self.dataset_name}: protocol {protocol} needs fold 1..6, got {fold!r}")
        if protocol in (1, 2, None) and fold is not None:
            raise DataError(f"{self.dataset_name}: fold applies to protocols 3 and 4 only")
        if annotation not in ("eyes", "box", "none"):
            raise DataError(f"{self.dataset_name}: annotation must be eyes, box or none, got {annotation!r}")
        self.protocol, self.fold, self.annotation = protocol, fold, annotation
        super().__init__(root, split, **kwargs)

    def protocol_file(self, root: Path) -> Path:
        """``Protocols/Protocol_N/{Train,Dev,Test}[_fold].txt`` for this split."""
        stem = self.split.capitalize() + (f"_{self.fold}" if self.fold is not None else "")
        return root / "Protocols" / f"Protocol_{self.protocol}" / f"{stem}.txt"

    def _videos(self) -> list[VideoItem]:
        root = require_root(self.dataset_name, self.root)
        folder_name = OULU_FOLDERS[self.split]
        folder = require_dir(self.dataset_name, root / folder_name, "split folder")
        if self.protocol is None:
            stems = [(p.stem, None) for p in _videos_in(folder, (".avi",))]
            for stem, _ in stems:
                if not OULU_NAME.match(stem):
                    raise DataError(
                        f"{self.dataset_name}: {folder / stem}.avi: expected a name P_S_UU_F "
                        "(phone 1-6, session 1-3, user, file 1-5)"
                    )
        else:
            stems = self._protocol_stems(root)
            missing = [s for s, _ in stems if not (folder / f"{s}.avi").is_file()]
            if missing:
                raise DataError(
                    f"{self.dataset_name}: {len(missing)} video(s) of {self.protocol_file(root)} are missing "
                    f"from {folder}, the first {missing[0]}.avi"
                )
        items = []
        for stem, _ in stems:
            m = OULU_NAME.match(stem)
            assert m is not None
            kind = int(m.group(4))
            rel = f"{folder_name}/{stem}.avi"
            boxes = None
            face = folder / f"{stem}.txt"
            if self.annotation != "none" and face.is_file():
                fmt = "eyes" if self.annotation == "eyes" else "corners"
                boxes = read_face_file(self.dataset_name, face, fmt, ",")
            items.append(_video_item("oulu", rel, OULU_ATTACKS[kind], m.group(3), boxes))
        return _nonempty(self.dataset_name, items, folder)

    def _protocol_stems(self, root: Path) -> list[tuple[str, int]]:
        path = self.protocol_file(root)
        out = []
        for lineno, line in read_lines(self.dataset_name, path, "protocol file"):
            fields = [f.strip() for f in line.split(",")]
            expected = "'<+1|-1|-2>,P_S_UU_F'"
            if len(fields) != 2 or fields[0] not in OULU_PROTOCOL_LABELS:
                raise line_error(self.dataset_name, path, lineno, expected, line)
            m = OULU_NAME.match(fields[1])
            if m is None:
                raise line_error(self.dataset_name, path, lineno, expected, line)
            label = OULU_PROTOCOL_LABELS[fields[0]]
            if label != int(int(m.group(4)) == 1):
                raise line_error(self.dataset_name, path, lineno, "+1 exactly for file type 1 (live)", line)
            out.append((fields[1], label))
        return out


# ----------------------------------------------------------------------------------------- CASIA-FASD

CASIA_FOLDERS = {"train": "train_release", "dev": "train_release", "test": "test_release"}
CASIA_VIDEOS = {
    "1": "live", "2": "live", "HR_1": "live",
    "3": "print", "4": "print", "HR_2": "print",
    "5": "cut", "6": "cut", "HR_3": "cut",
    "7": "replay", "8": "replay", "HR_4": "replay",
}  # fmt: skip


class CasiaFASD(VideoFaceDataset):
    """CASIA-FASD (domain C): ``train_release`` / ``test_release`` subject folders; no face boxes."""

    dataset_name = "casia_fasd"
    domain = "C"
    splits = ("train", "dev", "test")

    def _videos(self) -> list[VideoItem]:
        root = require_root(self.dataset_name, self.root)
        folder_name = CASIA_FOLDERS[self.split]
        folder = require_dir(self.dataset_name, root / folder_name, "split folder")
        subjects = sorted(
            (p for p in folder.iterdir() if p.is_dir() and p.name.isdigit()), key=lambda p: int(p.name)
        )
        if self.split == "dev":
            keep = dev_holdout([int(p.name) for p in subjects])
            subjects = [p for p in subjects if int(p.name) in keep]
        items = []
        for sub in subjects:
            for video in _videos_in(sub, (".avi",)):
                attack = CASIA_VIDEOS.get(video.stem)
                if attack is None:
                    raise DataError(
                        f"{self.dataset_name}: {video}: expected one of "
                        f"{', '.join(k + '.avi' for k in CASIA_VIDEOS)}"
                    )
                rel = f"{folder_name}/{sub.name}/{video.name}"
                items.append(_video_item("casia", rel, attack, f"{folder_name}/{sub.name}", None))
        return _nonempty(self.dataset_name, items, folder)


# --------------------------------------------------------------------------------- Idiap Replay-Attack

REPLAY_FOLDERS = {"train": "train", "dev": "devel", "test": "test"}
REPLAY_CLIENT = re.compile(r"client(\d+)")


def replay_attack_type(name: str) -> str | None:
    """``print`` / ``photo`` / ``replay`` from a Replay-Attack attack file name, None if unrecognised."""
    tokens = name.split("_")
    if len(tokens) > 1 and tokens[1] == "print":
        return "print"
    if "photo" in tokens:
        return "photo"
    if "video" in tokens:
        return "replay"
    return None


class ReplayAttack(VideoFaceDataset):
    """Idiap Replay-Attack (domain I): ``train`` / ``devel`` / ``test``, boxes from ``face-locations``."""

    dataset_name = "replay_attack"
    domain = "I"
    splits = ("train", "dev", "test")

    def _videos(self) -> list[VideoItem]:
        root = require_root(self.dataset_name, self.root)
        split_dir = REPLAY_FOLDERS[self.split]
        folder = require_dir(self.dataset_name, root / split_dir, "split folder")
        real = require_dir(self.dataset_name, folder / "real", "folder of live videos")
        attack = require_dir(self.dataset_name, folder / "attack", "folder of attack videos")
        faces = root / "face-locations"
        videos = [(p, "live") for p in _videos_in(real, (".mov",))]
        for sub in ("fixed", "hand"):
            if (attack / sub).is_dir():
                videos += [(p, "") for p in _videos_in(attack / sub, (".mov",))]
        items = []
        for path, kind in videos:
            rel = path.relative_to(root).as_posix()
            if kind != "live":
                found = replay_attack_type(path.stem)
                if found is None or not path.stem.startswith("attack_"):
                    raise DataError(
                        f"{self.dataset_name}: {path}: expected an attack name "
                        "attack_<print|highdef|mobile>_clientNNN_..._<photo|video>_..."
                    )
                kind = found
            m = REPLAY_CLIENT.search(path.stem)
            if m is None:
                raise DataError(f"{self.dataset_name}: {path}: expected clientNNN in the file name")
            boxes = None
            if faces.is_dir():
                face = faces / (rel.rsplit(".", 1)[0] + ".face")
                if not face.is_file():
                    raise DataError(f"{self.dataset_name}: missing face-location file: {face}")
                boxes = read_face_file(self.dataset_name, face, "xywh", None)
            items.append(_video_item("replay", rel, kind, f"client{m.group(1)}", boxes))
        return _nonempty(self.dataset_name, items, folder)


# ------------------------------------------------------------------------------------------- MSU-MFSD

MSU_LISTS = {"train": "train_sub_list.txt", "dev": "train_sub_list.txt", "test": "test_sub_list.txt"}
MSU_CLIENT = re.compile(r"client(\d+)")
MSU_ATTACKS = {"printed_photo": "print", "ipad_video": "replay", "iphone_video": "replay"}


class MsuMFSD(VideoFaceDataset):
    """MSU-MFSD (domain M): ``scene01/{real,attack}`` split by the official subject lists."""

    dataset_name = "msu_mfsd"
    domain = "M"
    splits = ("train", "dev", "test")

    def __init__(
        self, root: str | Path | None, split: str = "train", *, face_format: str = "corners", **kwargs: Any
    ) -> None:
        if face_format not in ("corners", "xywh", "none"):
            raise DataError(
                f"{self.dataset_name}: face_format must be corners, xywh or none, got {face_format!r}"
            )
        self.face_format = face_format
        super().__init__(root, split, **kwargs)

    def subject_list(self, root: Path) -> set[int]:
        """Client numbers of this split's subject list (whitespace-separated integers); dev: the
        :func:`dev_holdout` of the train list."""
        path = root / MSU_LISTS[self.split]
        out: set[int] = set()
        for lineno, line in read_lines(self.dataset_name, path, "subject list"):
            tokens = line.split()
            if not all(t.isdigit() for t in tokens):
                raise line_error(self.dataset_name, path, lineno, "client numbers such as '02'", line)
            out.update(int(t) for t in tokens)
        return dev_holdout(list(out)) if self.split == "dev" else out

    def _videos(self) -> list[VideoItem]:
        root = require_root(self.dataset_name, self.root)
        scene = require_dir(self.dataset_name, root / "scene01", "folder scene01")
        subjects = self.subject_list(root)
        videos = []
        for sub in ("real", "attack"):
            folder = require_dir(self.dataset_name, scene / sub, f"folder of {sub} videos")
            videos += [(p, sub) for p in _videos_in(folder, (".mov", ".mp4"))]
        items = []
        for path, sub in videos:
            m = MSU_CLIENT.search(path.stem)
            if m is None:
                raise DataError(f"{self.dataset_name}: {path}: expected clientNNN in the file name")
            if int(m.group(1)) not in subjects:
                continue
            if sub == "real":
                kind = "live"
            else:
                kinds = [v for k, v in MSU_ATTACKS.items() if k in path.stem]
                if not kinds:
                    raise DataError(
                        f"{self.dataset_name}: {path}: expected printed_photo, ipad_video or iphone_video "
                        "in an attack file name"
                    )
                kind = kinds[0]
            boxes = None
            face = path.with_suffix(".face")
            if self.face_format != "none" and face.is_file():
                boxes = read_face_file(self.dataset_name, face, self.face_format, ",")
            rel = path.relative_to(root).as_posix()
            items.append(_video_item("msu", rel, kind, f"client{m.group(1)}", boxes))
        return _nonempty(self.dataset_name, items, scene)
