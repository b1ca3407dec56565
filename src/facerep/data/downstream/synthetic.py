"""Downstream benchmarks on procedurally rendered faces (:func:`facerep.data.synthetic.render_face`).

Three datasets share one renderer: ``synthetic_alignment`` (68 iBUG points, NME unit "inter_ocular" =
outer eye corners 36/45), ``synthetic_parsing`` (LaPa's 11 classes, ``LAPA_CLASSES``) and
``synthetic_attributes`` (multi-label over ``ATTRIBUTES``). They need no root (pass ``None``).

Split ``s`` is the fixed set of faces ``render_face(SPLIT_SEEDS[s], i, size)`` for ``i < length``:
every split has its own seed, so train / val / test are disjoint draws, and none of them uses the
pre-training seed (:data:`facerep.data.sources.SYNTHETIC_DATASET_SEED` = 0). The three tasks render the
same faces for the same ``(split, index, size)``. The alignment ``"box"`` is the landmarks' bounding box
(the renderer has no separate face detector box); ``"visible"`` is all True (points are given even where
occluded, as in the real datasets).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from facerep.data.captions import attribute_prompt
from facerep.data.downstream.base import DatasetInfo, FaceDataset, Framing, Prompts
from facerep.data.sources import SYNTHETIC_DATASET_SEED, DataError
from facerep.data.synthetic import ATTRIBUTES, LAPA_CLASSES, SyntheticFace, render_face
from facerep.geometry import landmarks_box

# One renderer seed per split (all different from the pre-training seed).
SPLIT_SEEDS: dict[str, int] = {"train": 1000, "val": 1001, "test": 1002}
DEFAULT_LENGTHS: dict[str, int] = {"train": 2000, "val": 500, "test": 500}
DEFAULT_SIZE = 128

assert SYNTHETIC_DATASET_SEED not in SPLIT_SEEDS.values()

# Where the synthetic renderer puts the five points, as (x + 0.5) / size (the geometry does not depend on the
# render size): the mean over the 2000 faces of synthetic_alignment's train split at 128 px, rounded to 4
# decimals (tests/apps/test_predict.py recomputes it).
SYNTHETIC_FIVE_POINTS = np.array(
    [[0.3969, 0.4092], [0.5991, 0.4093], [0.4971, 0.5188], [0.4126, 0.5998], [0.5823, 0.6000]]
)
# zero-shot: noun phrases in the captions' own wording (data.captions), in the captions' templates
SYNTHETIC_TEMPLATES = ("a photo of {}.", "a portrait of {}.", "close-up of {}.", "a picture of {}.")
# The synthetic captions state the attributes present and leave absent ones unsaid, so an attribute's
# negative is the captions' bare subject ("without glasses" still says "glasses"; it scored worse).
SYNTHETIC_NEGATIVE = ("a person",)


def synthetic_framing(options: Mapping[str, Any]) -> Framing:
    """Rendered faces are framed by their five points (:data:`SYNTHETIC_FIVE_POINTS`) at the render size
    (option ``size``)."""
    size = int(options.get("size", DEFAULT_SIZE))
    return Framing("points", [size, size], (SYNTHETIC_FIVE_POINTS * size - 0.5).round(3).tolist())


class _SyntheticBase(FaceDataset):
    splits = ("train", "val", "test")

    @classmethod
    def describe(cls, options: Mapping[str, Any] | None = None) -> DatasetInfo:
        """Rendered (no root), framed by the five points at the render size."""
        info = super().describe(options)
        return dataclasses.replace(info, framing=synthetic_framing(options or {}), rendered=True)

    def __init__(
        self,
        root: str | Path | None = None,
        split: str = "train",
        length: int | None = None,
        size: int = DEFAULT_SIZE,
    ) -> None:
        super().__init__(None, split)
        length = DEFAULT_LENGTHS[self.split] if length is None else int(length)
        if length < 0:
            raise DataError(f"{self.dataset_name}: length must be >= 0, got {length}")
        if int(size) < 16:
            raise DataError(f"{self.dataset_name}: size must be >= 16, got {size}")
        self.length, self.size, self.seed = length, int(size), SPLIT_SEEDS[self.split]
        self._names = [f"synthetic/{self.split}/{i:06d}" for i in range(length)]

    def render(self, index: int) -> SyntheticFace:
        return render_face(self.seed, index, self.size)


class SyntheticAlignment(_SyntheticBase):
    """68-point alignment on synthetic faces; box = landmarks' bounding box."""

    dataset_name = "synthetic_alignment"
    task = "alignment"
    num_points = 68
    nme_unit = "inter_ocular"
    ocular_indices = (36, 45)

    def _load(self, index: int) -> dict[str, Any]:
        face = self.render(index)
        lm = face.landmarks.astype(np.float32)
        return {
            "image": face.image,
            "landmarks": lm,
            "box": landmarks_box(lm),
            "visible": np.ones(len(lm), dtype=bool),
        }


class SyntheticParsing(_SyntheticBase):
    """11-class LaPa-style parsing on synthetic faces; also returns the 68 landmarks."""

    dataset_name = "synthetic_parsing"
    task = "parsing"
    class_names = LAPA_CLASSES

    @classmethod
    def describe(cls, options: Mapping[str, Any] | None = None) -> DatasetInfo:
        """Its samples carry the landmarks, so ``align=auto`` aligns them by five points."""
        return dataclasses.replace(super().describe(options), five_points=True)

    def _load(self, index: int) -> dict[str, Any]:
        face = self.render(index)
        return {"image": face.image, "mask": face.mask, "landmarks": face.landmarks.astype(np.float32)}


class SyntheticAttributes(_SyntheticBase):
    """Multi-label attribute classification over ``ATTRIBUTES`` on synthetic faces."""

    dataset_name = "synthetic_attributes"
    task = "classification"
    attribute_names = ATTRIBUTES

    @classmethod
    def describe(cls, options: Mapping[str, Any] | None = None) -> DatasetInfo:
        """Prompted in the captions' wording (:func:`~facerep.data.captions.attribute_prompt`) against
        :data:`SYNTHETIC_NEGATIVE`."""
        names = cls.attribute_names or ()
        positive = {n: (attribute_prompt(n).removeprefix("a photo of "),) for n in names}
        prompts = Prompts(SYNTHETIC_TEMPLATES, positive, dict.fromkeys(names, SYNTHETIC_NEGATIVE))
        return dataclasses.replace(super().describe(options), prompts=prompts)

    def _load(self, index: int) -> dict[str, Any]:
        face = self.render(index)
        return {"image": face.image, "label": face.attributes.astype(np.uint8)}
