"""Face parsing benchmarks in their official layouts: LaPa and CelebAMask-HQ.

Conventions checked against FaRL's ``farl/datasets/lapa.py`` and ``farl/datasets/celebamask_hq.py``:

LaPa
    ``{root}/{split}/images/{name}.jpg`` (only ``.jpg`` files are listed), ``labels/{name}.png`` (class
    ids 0..10 in LaPa order = ``LAPA_CLASSES``), ``landmarks/{name}.txt`` (whitespace-separated numbers:
    ``106`` then 106 ``x y`` pairs, used as given). Splits train / val / test. Samples also carry
    ``"landmarks"`` [106, 2]; FaRL aligns LaPa faces with points ``LAPA_ALIGN_POINTS`` (eye centres
    104 / 105, nose tip 54, mouth corners 84 / 90).
CelebAMask-HQ
    ``CelebA-HQ-img/{id}.jpg`` (1024 x 1024), per-part binary masks
    ``CelebAMask-HQ-mask-anno/{id // 2000}/{id:05d}_{part}.png`` (512 x 512, any non-zero pixel is
    the part; a missing file means the part is absent). The parts are painted in the order of
    ``CELEBAMASK_PARTS`` with label ``i + 1`` (a later part overwrites an earlier one where they overlap,
    e.g. ``hair`` over ``skin``, ``eye_g`` over ``l_eye``), giving 19 classes (background + 18) exactly as
    FaRL's ``label_type='all'``. Splits come from ``CelebA-HQ-to-CelebA-mapping.txt`` (lines with
    ``idx orig_idx orig_file``) and CelebA's ``list_eval_partition.txt`` (0 / 1 / 2 = train / val /
    test), in the partition file's order. Like FaRL, the image is resized to 512 x 512 (bilinear, the
    half-pixel convention of OpenCV's ``INTER_LINEAR``, no antialiasing) so it matches the mask:
    ``image_size=None`` keeps the 1024 image and instead upsamples the mask (nearest) to its size.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from facerep.data.downstream.base import (
    CELEBA_PARTITION,
    DatasetInfo,
    FaceDataset,
    line_error,
    load_image,
    load_label_map,
    read_lines,
    require_dir,
    require_file,
    require_root,
)
from facerep.data.sources import DataError
from facerep.data.synthetic import LAPA_CLASSES

# ------------------------------------------------------------------------------------------------ LaPa

LAPA_NUM_LANDMARKS = 106
LAPA_ALIGN_POINTS = (104, 105, 54, 84, 90)


class LaPa(FaceDataset):
    """LaPa (11 classes + 106 landmarks per face)."""

    dataset_name = "lapa"
    task = "parsing"
    class_names = LAPA_CLASSES
    splits = ("train", "val", "test")

    @classmethod
    def describe(cls, options: Mapping[str, Any] | None = None) -> DatasetInfo:
        """Its samples carry the landmarks, so ``align=auto`` aligns them by five points."""
        return dataclasses.replace(super().describe(options), five_points=True)

    def __init__(self, root: str | Path | None, split: str = "train") -> None:
        super().__init__(root, split)
        root = self.root = require_root(self.dataset_name, root)
        images = require_dir(self.dataset_name, root / split / "images", "image folder")
        stems = sorted(
            p.name[: -len(".jpg")] for p in images.iterdir() if p.name.endswith(".jpg") and p.is_file()
        )
        self._stems = stems
        self._names = [f"{split}/images/{s}.jpg" for s in stems]
        self._landmarks = np.zeros((len(stems), LAPA_NUM_LANDMARKS, 2), np.float32)
        for i, stem in enumerate(stems):
            require_file(self.dataset_name, root / split / "labels" / f"{stem}.png", "label map")
            self._landmarks[i] = read_lapa_landmarks(root / split / "landmarks" / f"{stem}.txt")

    def _load(self, index: int) -> dict[str, Any]:
        stem, name = self._stems[index], self._names[index]
        mask = load_label_map(self.dataset_name, self.root / self.split / "labels" / f"{stem}.png")
        image = load_image(self.dataset_name, self.root / name, name)
        if mask.shape != image.shape[:2]:
            raise DataError(
                f"{self.dataset_name}: label map of {name} is {mask.shape[1]}x{mask.shape[0]}, "
                f"image is {image.shape[1]}x{image.shape[0]}"
            )
        if mask.size and mask.max() >= len(LAPA_CLASSES):
            raise DataError(f"{self.dataset_name}: label map of {name} has class id {mask.max()} > 10")
        return {"image": image, "mask": mask, "landmarks": self._landmarks[index].copy()}


def read_lapa_landmarks(path: Path) -> np.ndarray:
    """A LaPa landmark file (``106`` then 106 ``x y`` pairs) as float32 [106, 2]."""
    lines = read_lines("lapa", path, "landmark file")
    tokens = [t for _, line in lines for t in line.split()]
    expected = f"the point count {LAPA_NUM_LANDMARKS} then {LAPA_NUM_LANDMARKS} 'x y' lines"
    try:
        values = [float(t) for t in tokens]
    except ValueError:
        bad = next(t for t in tokens if not _is_float(t))
        lineno, line = next((n, ln) for n, ln in lines if bad in ln.split())
        raise line_error("lapa", path, lineno, expected, line) from None
    if not values or values[0] != LAPA_NUM_LANDMARKS or len(values) != 1 + 2 * LAPA_NUM_LANDMARKS:
        first = lines[0] if lines else (1, "")
        raise DataError(
            f"lapa: {path}: expected {expected}, got {len(tokens)} numbers starting with {first[1].strip()!r}"
        )
    return np.asarray(values[1:], np.float32).reshape(LAPA_NUM_LANDMARKS, 2)


def _is_float(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


# --------------------------------------------------------------------------------------- CelebAMask-HQ

# Painting order of the part masks; part i gets label i + 1 (FaRL's label_type="all").
CELEBAMASK_PARTS: tuple[str, ...] = (
    "neck", "skin", "cloth", "l_ear", "r_ear", "l_brow", "r_brow", "l_eye", "r_eye",
    "nose", "mouth", "l_lip", "u_lip", "hair", "eye_g", "hat", "ear_r", "neck_l",
)  # fmt: skip
CELEBAMASK_CLASSES: tuple[str, ...] = ("background", *CELEBAMASK_PARTS)
# FaRL's names for the same 19 labels (its "rr"/"lr" etc. are image-side names of the l_/r_ parts).
FARL_CELEBAMASK_NAMES: tuple[str, ...] = (
    "bg", "neck", "face", "cloth", "rr", "lr", "rb", "lb", "re", "le", "nose", "imouth", "llip", "ulip",
    "hair", "glass", "hat", "earr", "neckl",
)  # fmt: skip
CELEBAMASK_MASK_SIZE = 512


class CelebAMaskHQ(FaceDataset):
    """CelebAMask-HQ (19 classes). ``image_size``: 512 (FaRL, default) or None (keep 1024, upsample mask)."""

    dataset_name = "celebamask_hq"
    task = "parsing"
    class_names = CELEBAMASK_CLASSES
    splits = ("train", "val", "test")

    def __init__(
        self, root: str | Path | None, split: str = "train", image_size: int | None = CELEBAMASK_MASK_SIZE
    ):
        super().__init__(root, split)
        root = self.root = require_root(self.dataset_name, root)
        require_dir(self.dataset_name, root / "CelebA-HQ-img", "image folder")
        self.mask_dir = require_dir(self.dataset_name, root / "CelebAMask-HQ-mask-anno", "mask folder")
        self.image_size = None if image_size is None else int(image_size)
        mapping = root / "CelebA-HQ-to-CelebA-mapping.txt"
        orig_to_hq: dict[str, int] = {}
        for lineno, line in read_lines(self.dataset_name, mapping, "mapping file"):
            fields = line.split()
            if len(fields) == 3 and fields[0] == "idx":  # header
                continue
            if len(fields) != 3 or not fields[0].isdigit():
                raise line_error(self.dataset_name, mapping, lineno, "'idx orig_idx orig_file'", line)
            orig_to_hq[fields[2]] = int(fields[0])
        partition = root / "list_eval_partition.txt"
        group = CELEBA_PARTITION[split]
        ids: list[int] = []
        for lineno, line in read_lines(self.dataset_name, partition, "partition file"):
            fields = line.split()
            if len(fields) != 2 or fields[1] not in ("0", "1", "2"):
                raise line_error(self.dataset_name, partition, lineno, "'<file>.jpg 0|1|2'", line)
            if int(fields[1]) == group and fields[0] in orig_to_hq:
                ids.append(orig_to_hq[fields[0]])
        self._ids = ids
        self._names = [f"CelebA-HQ-img/{i}.jpg" for i in ids]

    def part_path(self, hq_id: int, part: str) -> Path:
        return self.mask_dir / str(hq_id // 2000) / f"{hq_id:05d}_{part}.png"

    def make_mask(self, hq_id: int) -> np.ndarray:
        """The 512 x 512 label map of image ``hq_id`` composed from its part masks."""
        label = np.zeros((CELEBAMASK_MASK_SIZE, CELEBAMASK_MASK_SIZE), np.uint8)
        for i, part in enumerate(CELEBAMASK_PARTS):
            path = self.part_path(hq_id, part)
            if not path.is_file():
                continue
            try:
                with Image.open(path) as img:
                    part_mask = np.asarray(img.convert("L")) > 0
            except Exception as err:
                raise DataError(f"{self.dataset_name}: cannot read part mask {path}: {err}") from err
            if part_mask.shape != label.shape:
                raise DataError(
                    f"{self.dataset_name}: part mask {path} is {part_mask.shape[1]}x{part_mask.shape[0]}; "
                    f"expected {CELEBAMASK_MASK_SIZE}x{CELEBAMASK_MASK_SIZE}"
                )
            label[part_mask] = i + 1
        return label

    def _load(self, index: int) -> dict[str, Any]:
        hq_id, name = self._ids[index], self._names[index]
        image = load_image(self.dataset_name, self.root / name, name)
        mask = self.make_mask(hq_id)
        if self.image_size is not None:
            if image.shape[:2] != (self.image_size, self.image_size):
                image = resize_bilinear(image, self.image_size, self.image_size)
            if mask.shape != (self.image_size, self.image_size):
                mask = resize_nearest(mask, self.image_size, self.image_size)
        elif mask.shape != image.shape[:2]:
            mask = resize_nearest(mask, image.shape[0], image.shape[1])
        return {"image": image, "mask": mask}


def resize_bilinear(image: np.ndarray, height: int, width: int) -> np.ndarray:
    """[H, W, 3] uint8 -> [height, width, 3] uint8, bilinear with half-pixel centres, no antialiasing
    (the sampling of OpenCV's ``cv2.resize(..., INTER_LINEAR)``)."""
    t = torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1)[None].float()
    out = F.interpolate(t, size=(height, width), mode="bilinear", align_corners=False, antialias=False)
    return out[0].permute(1, 2, 0).round().clamp(0, 255).to(torch.uint8).numpy()


def resize_nearest(mask: np.ndarray, height: int, width: int) -> np.ndarray:
    """[H, W] uint8 label map -> [height, width], nearest neighbour (pixel-centre sampling)."""
    h, w = mask.shape
    rows = np.minimum(((np.arange(height) + 0.5) * h / height).astype(np.int64), h - 1)
    cols = np.minimum(((np.arange(width) + 0.5) * w / width).astype(np.int64), w - 1)
    return np.ascontiguousarray(mask[rows[:, None], cols[None, :]])
