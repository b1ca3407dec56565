"""Face classification benchmarks in their official layouts: CelebA attributes and RAF-DB (basic).

CelebA (``celeba_attr``)
    ``img_align_celeba/{file}``; ``list_attr_celeba.txt``: line 1 the image count, line 2 the 40
    attribute names, then ``file v1 .. v40`` with -1 / 1 (-> 0 / 1); ``list_eval_partition.txt``:
    ``file 0|1|2`` = train / val / test. Multi-label: ``"label"`` is uint8 [40] in the order of
    ``attribute_names`` (the header's names).
RAF-DB basic (``rafdb``)
    ``EmoLabel/list_patition_label.txt`` (sic): ``train_00001.jpg 5`` / ``test_0001.jpg 1`` with labels
    1..7 = Surprise, Fear, Disgust, Happiness, Sadness, Anger, Neutral (-> 0..6); images
    ``Image/aligned/{stem}_aligned.jpg``; the split is the file-name prefix (train / test).

Every classification set here is a :class:`ClassificationDataset`: its labels are parsed when it is built,
so :meth:`~ClassificationDataset.labels` gives them all without decoding an image (the class-balanced
fine-tuning sampler weighs samples by them). Single-label sets (RAF-DB, AffectNet in
:mod:`facerep.data.downstream.affectnet`) share :class:`SingleLabelDataset`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from facerep.data.downstream.base import (
    CELEBA_PARTITION,
    DatasetInfo,
    FaceDataset,
    Prompts,
    line_error,
    load_image,
    read_lines,
    require_dir,
    require_root,
)
from facerep.data.sources import DataError


class ClassificationDataset(FaceDataset):
    """A classification split whose labels are read with its annotations (``self._labels``)."""

    task = "classification"

    def labels(self) -> np.ndarray:
        """Every sample's label, without decoding images: single-label int64 ``[N]`` (indices into
        ``class_names``), multi-label uint8 ``[N, A]`` (0/1 in the order of ``attribute_names``)."""
        if self.multi_label:
            return np.asarray(self._labels, dtype=np.uint8).reshape(len(self), -1).copy()
        return np.asarray(self._labels, dtype=np.int64).reshape(len(self)).copy()


class SingleLabelDataset(ClassificationDataset):
    """One class per image: ``self._names`` (paths relative to the root) and ``self._labels`` (indices into
    ``class_names``); :meth:`_image` reads the image (a subclass may crop it)."""

    def _image(self, index: int) -> np.ndarray:
        name = self._names[index]
        return load_image(self.dataset_name, self.root / name, name)

    def _load(self, index: int) -> dict[str, Any]:
        return {"image": self._image(index), "label": int(self._labels[index])}


# ---------------------------------------------------------------------------------------------- CelebA

# The 40 attributes of CelebA in the order of list_attr_celeba.txt's header (the reader takes the file's own)
CELEBA_ATTRIBUTES = (
    "5_o_Clock_Shadow", "Arched_Eyebrows", "Attractive", "Bags_Under_Eyes", "Bald", "Bangs", "Big_Lips",
    "Big_Nose", "Black_Hair", "Blond_Hair", "Blurry", "Brown_Hair", "Bushy_Eyebrows", "Chubby", "Double_Chin",
    "Eyeglasses", "Goatee", "Gray_Hair", "Heavy_Makeup", "High_Cheekbones", "Male", "Mouth_Slightly_Open",
    "Mustache", "Narrow_Eyes", "No_Beard", "Oval_Face", "Pale_Skin", "Pointy_Nose", "Receding_Hairline",
    "Rosy_Cheeks", "Sideburns", "Smiling", "Straight_Hair", "Wavy_Hair", "Wearing_Earrings", "Wearing_Hat",
    "Wearing_Lipstick", "Wearing_Necklace", "Wearing_Necktie", "Young",
)  # fmt: skip
CELEBA_NUM_ATTRIBUTES = len(CELEBA_ATTRIBUTES)


class CelebAAttributes(ClassificationDataset):
    """CelebA 40-attribute multi-label classification on the aligned 178 x 218 images."""

    dataset_name = "celeba_attr"
    attribute_names = CELEBA_ATTRIBUTES
    splits = ("train", "val", "test")

    def __init__(self, root: str | Path | None, split: str = "train") -> None:
        super().__init__(root, split)
        root = self.root = require_root(self.dataset_name, root)
        require_dir(self.dataset_name, root / "img_align_celeba", "image folder")
        attr_path = root / "list_attr_celeba.txt"
        lines = read_lines(self.dataset_name, attr_path, "attribute list")
        if len(lines) < 2:
            raise DataError(
                f"{self.dataset_name}: {attr_path}: expected a count line and a line of attribute names"
            )
        lineno, line = lines[0]
        if not line.strip().isdigit():
            raise line_error(self.dataset_name, attr_path, lineno, "the number of images", line)
        count = int(line.strip())
        lineno, line = lines[1]
        names = tuple(line.split())
        if len(names) != CELEBA_NUM_ATTRIBUTES:
            raise line_error(
                self.dataset_name, attr_path, lineno, f"{CELEBA_NUM_ATTRIBUTES} attribute names", line
            )
        self.attribute_names = names
        if len(lines) - 2 != count:
            raise DataError(
                f"{self.dataset_name}: {attr_path}: line 1 announces {count} images, "
                f"the file lists {len(lines) - 2}"
            )
        part_path = root / "list_eval_partition.txt"
        partition: dict[str, int] = {}
        for pno, pline in read_lines(self.dataset_name, part_path, "partition file"):
            fields = pline.split()
            if len(fields) != 2 or fields[1] not in ("0", "1", "2"):
                raise line_error(self.dataset_name, part_path, pno, "'<file> 0|1|2'", pline)
            partition[fields[0]] = int(fields[1])
        group = CELEBA_PARTITION[split]
        files, labels = [], []
        for lineno, line in lines[2:]:
            fields = line.split()
            if len(fields) != 1 + CELEBA_NUM_ATTRIBUTES or any(v not in ("-1", "1") for v in fields[1:]):
                raise line_error(
                    self.dataset_name,
                    attr_path,
                    lineno,
                    f"a file name then {CELEBA_NUM_ATTRIBUTES} values -1 or 1",
                    line,
                )
            if fields[0] not in partition:
                raise DataError(
                    f"{self.dataset_name}: {attr_path}:{lineno}: {fields[0]} is not in {part_path}"
                )
            if partition[fields[0]] == group:
                files.append(fields[0])
                labels.append([v == "1" for v in fields[1:]])
        self._names = [f"img_align_celeba/{f}" for f in files]
        self._labels = np.asarray(labels, dtype=np.uint8).reshape(-1, CELEBA_NUM_ATTRIBUTES)

    def _load(self, index: int) -> dict[str, Any]:
        name = self._names[index]
        return {
            "image": load_image(self.dataset_name, self.root / name, name),
            "label": self._labels[index].copy(),
        }


# ---------------------------------------------------------------------------------------------- RAF-DB

RAFDB_CLASSES: tuple[str, ...] = ("Surprise", "Fear", "Disgust", "Happiness", "Sadness", "Anger", "Neutral")
# zero-shot templates of single-label classes: "{}" takes each of a class's names (nouns and adjectives
# alike, averaged anyway)
CLASS_TEMPLATES = (
    "a photo of a {} face.",
    "a photo of a face showing {}.",
    "a close-up photo of a {} person.",
    "a face with an expression of {}.",
)
RAFDB_PROMPTS: dict[str, tuple[str, ...]] = {
    "Surprise": ("surprise", "surprised"),
    "Fear": ("fear", "fearful", "scared"),
    "Disgust": ("disgust", "disgusted"),
    "Happiness": ("happiness", "happy", "smiling"),
    "Sadness": ("sadness", "sad"),
    "Anger": ("anger", "angry"),
    "Neutral": ("neutral",),
}


class RAFDB(SingleLabelDataset):
    """RAF-DB basic emotion (7 classes) on the aligned 100 x 100 images."""

    dataset_name = "rafdb"
    class_names = RAFDB_CLASSES
    splits = ("train", "test")

    @classmethod
    def describe(cls, options: Mapping[str, Any] | None = None) -> DatasetInfo:
        """Prompted by :data:`RAFDB_PROMPTS`."""
        return dataclasses.replace(super().describe(options), prompts=Prompts(CLASS_TEMPLATES, RAFDB_PROMPTS))

    def __init__(self, root: str | Path | None, split: str = "train") -> None:
        super().__init__(root, split)
        root = self.root = require_root(self.dataset_name, root)
        require_dir(self.dataset_name, root / "Image" / "aligned", "image folder")
        path = root / "EmoLabel" / "list_patition_label.txt"
        names, labels = [], []
        for lineno, line in read_lines(self.dataset_name, path, "label list"):
            fields = line.split()
            if (
                len(fields) != 2
                or not fields[1].isdigit()
                or not 1 <= int(fields[1]) <= len(RAFDB_CLASSES)
                or not fields[0].startswith(("train_", "test_"))
            ):
                raise line_error(
                    self.dataset_name, path, lineno, "'train_XXXXX.jpg|test_XXXX.jpg <label 1..7>'", line
                )
            if fields[0].split("_", 1)[0] != split:
                continue
            stem = fields[0].rsplit(".", 1)[0]
            names.append(f"Image/aligned/{stem}_aligned.jpg")
            labels.append(int(fields[1]) - 1)
        self._names = names
        self._labels = labels
