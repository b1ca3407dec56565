"""AffectNet expression classification (``affectnet``) in the layout its authors release.

Layout
    ``Manually_Annotated_file_lists/training.csv`` and ``.../validation.csv`` (one header row, then one
    face per row: ``subDirectory_filePath,face_x,face_y,face_width,face_height,facial_landmarks,
    expression,valence,arousal``) and the images ``Manually_Annotated_Images/<subDirectory_filePath>``
    (e.g. ``689/737db2...ca.jpg``). The test set was never released, so as in the literature the
    ``test`` split is ``validation.csv`` (``train`` is ``training.csv``).
Labels
    ``expression`` codes 0 Neutral, 1 Happiness, 2 Sadness, 3 Surprise, 4 Fear, 5 Disgust, 6 Anger,
    7 Contempt, 8 None, 9 Uncertain, 10 Non-Face. ``num_classes=7`` keeps codes 0-6, ``num_classes=8``
    codes 0-7; the code is the class index (``class_names`` is :data:`AFFECTNET_CLASSES` in this order).
    Rows with other codes are dropped when the split is built and counted (one log line per split;
    ``dataset.dropped`` maps code -> rows). Only the columns above up to ``expression`` are required;
    ``facial_landmarks`` is not read (68 ``x;y`` values the classification protocol does not use),
    ``valence`` / ``arousal`` are kept (``sample["valence"]``, ``sample["arousal"]``) when present.
Crop
    ``crop="box"`` (default): the face is cut out with the CSV's box ``(face_x, face_y, face_width,
    face_height)``, grown by ``margin`` (a fraction of its width and height, split evenly between the two
    sides; default 0: the box as annotated, which is how the AffectNet authors' baselines and most public
    loaders crop it) and clipped to the image; the classification transform then resizes it to the input
    size as for RAF-DB. ``crop="image"`` uses the whole image (for releases that are already face crops).

A malformed CSV (missing column, a box or expression that is not a number, a code outside 0..10) is a
one-line :class:`~facerep.data.sources.DataError` naming the file and line; a missing image is one when it
is read, naming the file, the CSV and the row's line (as for every other downstream dataset).
"""

from __future__ import annotations

import csv
import dataclasses
import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from facerep.data.downstream.base import (
    DatasetInfo,
    Framing,
    line_error,
    require_dir,
    require_file,
    require_root,
)
from facerep.data.downstream.classification import SingleLabelDataset
from facerep.data.sources import DataError
from facerep.runtime.distributed import rank
from facerep.runtime.errors import one_line

AFFECTNET_CLASSES: tuple[str, ...] = (
    "Neutral", "Happiness", "Sadness", "Surprise", "Fear", "Disgust", "Anger", "Contempt",
)  # fmt: skip
AFFECTNET_OTHER_CODES = {8: "None", 9: "Uncertain", 10: "Non-Face"}
AFFECTNET_SPLIT_FILES = {"train": "training.csv", "test": "validation.csv"}
AFFECTNET_COLUMNS = ("subDirectory_filePath", "face_x", "face_y", "face_width", "face_height", "expression")
AFFECTNET_CROPS = ("box", "image")
_BOX_COLUMNS = AFFECTNET_COLUMNS[1:5]


def code_name(code: int) -> str:
    """``"7 Contempt"``: an expression code and its name."""
    names = dict(enumerate(AFFECTNET_CLASSES)) | AFFECTNET_OTHER_CODES
    return f"{code} {names[code]}"


def header_columns(dataset: str, path: Path, lineno: int, row: list[str]) -> tuple[dict[str, int], int]:
    """Column name -> index from the header row, and its number of fields; a DataError naming the
    required columns it lacks."""
    header = [v.strip() for v in row]
    missing = [c for c in AFFECTNET_COLUMNS if c not in header]
    if missing:
        expected = f"a header row naming {', '.join(AFFECTNET_COLUMNS)} (no {', '.join(missing)})"
        raise line_error(dataset, path, lineno, expected, ",".join(row))
    return {c: i for i, c in reversed(list(enumerate(header)))}, len(header)  # first of repeated names


def parse_row(
    dataset: str, path: Path, lineno: int, row: list[str], col: dict[str, int], width: int
) -> tuple[int, tuple[float, ...], tuple[float, float], str]:
    """One face: ``(expression code, (face_x, face_y, face_width, face_height), (valence, arousal), image
    path)``; valence / arousal NaN when the CSV lacks them. A malformed field is a DataError naming the
    line."""
    if len(row) != width:
        raise line_error(
            dataset, path, lineno, f"{width} comma-separated fields as in the header", ",".join(row)
        )
    text = row[col["expression"]].strip()
    code = int(text) if text.isdigit() else -1
    if not 0 <= code <= 10:
        raise line_error(dataset, path, lineno, "an expression code 0..10", f"expression={text}")
    numbers = [c for c in (*_BOX_COLUMNS, "valence", "arousal") if c in col]
    try:
        values = [float(row[col[c]]) for c in numbers]
    except ValueError:
        values = [math.nan]
    if not all(math.isfinite(v) for v in values):
        got = ",".join(f"{c}={row[col[c]].strip()}" for c in numbers)
        raise line_error(dataset, path, lineno, f"numbers in {', '.join(numbers)}", got)
    file = row[col["subDirectory_filePath"]].strip()
    if not file:
        raise line_error(dataset, path, lineno, "an image path in subDirectory_filePath", ",".join(row))
    affect = (values[4], values[5]) if len(values) == 6 else (math.nan, math.nan)
    return code, tuple(values[:4]), affect, file


class AffectNet(SingleLabelDataset):
    """AffectNet (manually annotated part), 7 or 8 expression classes, face cropped with the CSV box."""

    dataset_name = "affectnet"
    splits = ("train", "test")

    @classmethod
    def describe(cls, options: Mapping[str, Any] | None = None) -> DatasetInfo:
        """``num_classes`` names; ``crop=box`` frames the face box x ``1 + margin``, as the reader cuts."""
        options = options or {}
        info = dataclasses.replace(
            super().describe(options), class_names=AFFECTNET_CLASSES[: int(options.get("num_classes", 7))]
        )
        if options.get("crop", "box") != "box":
            return info
        return dataclasses.replace(
            info, framing=Framing(size=None, expand=1.0 + float(options.get("margin", 0.0)))
        )

    def __init__(
        self,
        root: str | Path | None,
        split: str = "train",
        num_classes: int = 7,
        crop: str = "box",
        margin: float = 0.0,
    ) -> None:
        super().__init__(root, split)
        name = self.dataset_name
        if num_classes not in (7, 8):
            raise DataError(
                f"{name}: num_classes must be 7 (codes 0-6) or 8 (codes 0-7), got {num_classes!r}"
            )
        if crop not in AFFECTNET_CROPS:
            raise DataError(f"{name}: crop must be one of {', '.join(AFFECTNET_CROPS)}, got {crop!r}")
        if not (isinstance(margin, int | float) and math.isfinite(margin) and margin >= 0):
            raise DataError(f"{name}: margin must be a number >= 0, got {margin!r}")
        self.num_classes, self.crop, self.margin = int(num_classes), crop, float(margin)
        self.class_names = AFFECTNET_CLASSES[: self.num_classes]
        root = self.root = require_root(name, root)
        self.image_dir = "Manually_Annotated_Images"
        require_dir(name, root / self.image_dir, "image folder")
        self.csv_path = root / "Manually_Annotated_file_lists" / AFFECTNET_SPLIT_FILES[self.split]
        self._read_csv(self.csv_path)
        detail = ", ".join(f"{code_name(c)}: {n}" for c, n in sorted(self.dropped.items()))
        if rank() == 0:
            print(f"[facerep] {name} {self.split} ({self.csv_path.name}): {len(self)} faces of codes "
                  f"0-{self.num_classes - 1}; dropped {sum(self.dropped.values())} rows of other codes"
                  f"{f' ({detail})' if detail else ''}", flush=True)  # fmt: skip

    def _read_csv(self, path: Path) -> None:
        name = self.dataset_name
        require_file(name, path, "annotation list")
        names: list[str] = []
        labels, lines, boxes, affect = [], [], [], []
        dropped: dict[int, int] = {}
        try:
            with path.open(newline="", encoding="utf-8-sig") as f:
                reader = csv.reader(f)
                rows = ((reader.line_num, row) for row in reader if any(v.strip() for v in row))
                first = next(rows, None)
                if first is None:
                    raise DataError(
                        f"{name}: {path}: empty file; expected a header row, then one face per row"
                    )
                col, width = header_columns(name, path, *first)
                for lineno, row in rows:
                    code, box, values, file = parse_row(name, path, lineno, row, col, width)
                    if code >= self.num_classes:
                        dropped[code] = dropped.get(code, 0) + 1
                        continue
                    names.append(f"{self.image_dir}/{file}")
                    labels.append(code)
                    lines.append(lineno)
                    boxes.append(box)
                    affect.append(values)
        except (OSError, UnicodeDecodeError, csv.Error) as err:
            raise DataError(f"{name}: cannot read annotation list {path}: {one_line(err)}") from err
        self._names = names
        self._labels = np.asarray(labels, dtype=np.int64)
        self._lines = np.asarray(lines, dtype=np.int64)  # CSV line of each face, for messages
        self.boxes = np.asarray(boxes, dtype=np.float32).reshape(-1, 4)  # face_x, face_y, width, height
        self.valence_arousal = np.asarray(affect, dtype=np.float32).reshape(-1, 2)  # NaN without the columns
        self.dropped = dropped  # expression code -> rows of that code left out

    def _image(self, index: int) -> np.ndarray:
        rel = self._names[index]
        path = self.root / rel
        if not path.is_file():
            raise DataError(
                f"{self.dataset_name}: missing image: {path} ({self.csv_path.name} line {self._lines[index]})"
            )
        image = super()._image(index)
        if self.crop == "image":
            return image
        x, y, w, h = (float(v) for v in self.boxes[index])
        dx, dy = w * self.margin / 2, h * self.margin / 2
        height, width = image.shape[:2]
        x1, y1 = max(0, round(x - dx)), max(0, round(y - dy))
        x2, y2 = min(width, round(x + w + dx)), min(height, round(y + h + dy))
        if x2 <= x1 or y2 <= y1:
            raise DataError(
                f"{self.dataset_name}: {self.csv_path}:{self._lines[index]}: face box (x={x:g}, y={y:g}, "
                f"w={w:g}, h={h:g}) does not overlap the {width}x{height} image {rel}"
            )
        return np.ascontiguousarray(image[y1:y2, x1:x2])

    def _load(self, index: int) -> dict[str, Any]:
        valence, arousal = (float(v) for v in self.valence_arousal[index])
        return {**super()._load(index), "valence": valence, "arousal": arousal}
