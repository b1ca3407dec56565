"""Users' own data: a folder of images plus one CSV or JSON file describing them (``generic``).

``build_dataset("generic", root, split, task=..., annotations="labels.csv")``; image, mask paths are
relative to ``root / image_dir`` (``image_dir`` defaults to the root itself). Without ``annotations`` the
root must hold exactly one of ``annotations.csv``, ``annotations.json``, ``labels.csv``, ``labels.json``.
Without ``task`` it is inferred from the columns / keys (landmarks -> alignment, mask -> parsing, else
classification).

CSV (header line required; one image per row)
    ``image`` plus, by task:
    alignment: ``x0,y0,x1,y1,...`` (any column order; K points need ``x0..x{K-1}`` and ``y0..y{K-1}``),
    optional ``box_x1,box_y1,box_x2,box_y2`` (else the landmarks' bounding box);
    parsing: ``mask`` (a PNG of class ids);
    classification: ``label`` (int, single-label) or any number of other columns = attributes (0/1, or
    -1/1 as in CelebA; the header gives ``attribute_names``).
    An optional ``split`` column selects the rows of a split; without it every split is all rows.
JSON
    A list of objects, or ``{"classes": [...], "attributes": [...], "samples": [...]}``. Objects have
    ``image``, optional ``split``, and ``landmarks`` ``[[x, y], ...]`` (+ optional ``box`` [4] and
    ``visible`` [K]) / ``mask`` / ``label`` (int) / ``attributes`` (list of 0/1, or a ``{name: 0/1}``
    dict).

Names: ``classes`` (kwarg, or the JSON key) names the single-label classes or the parsing classes
(background first); without it single-label classes are ``"0" .. str(max label)`` and parsing classes
``"background", "class_1", ..`` up to the largest id found by reading every mask once at build time.
For multi-label data ``classes`` overrides the attribute names. Alignment NME unit: ``nme_unit`` kwarg,
else "inter_ocular" for 68 points (36/45) and 98 points (60/72), else "diag".
"""

from __future__ import annotations

import csv
import dataclasses
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from facerep.data.downstream.base import (
    DatasetInfo,
    FaceDataset,
    load_image,
    load_label_map,
    require_file,
    require_root,
)
from facerep.data.sources import DataError
from facerep.geometry import landmarks_box
from facerep.runtime.errors import one_line
from facerep.runtime.untrusted import NotRegularFile, loads_json, read_regular

DEFAULT_ANNOTATION_FILES = ("annotations.csv", "annotations.json", "labels.csv", "labels.json")
_OCULAR = {68: (36, 45), 98: (60, 72)}
_XY = re.compile(r"^([xy])(\d+)$")
_BOX_COLUMNS = ("box_x1", "box_y1", "box_x2", "box_y2")
_RESERVED = {"image", "split", "label", "mask", *_BOX_COLUMNS}


class GenericDataset(FaceDataset):
    """A folder of images described by one CSV / JSON file (see the module docstring)."""

    dataset_name = "generic"

    @classmethod
    def describe(cls, options: Mapping[str, Any] | None = None) -> DatasetInfo:
        """The ``task`` option (None: read from the annotations); the names are the annotations'."""
        return dataclasses.replace(super().describe(options), task=(options or {}).get("task"))

    def __init__(
        self,
        root: str | Path | None,
        split: str = "train",
        task: str | None = None,
        annotations: str | Path | None = None,
        image_dir: str = "",
        classes: list[str] | tuple[str, ...] | None = None,
        nme_unit: str | None = None,
        ocular_indices: tuple[int, int] | None = None,
    ) -> None:
        if not isinstance(split, str) or not split:
            raise DataError(f"generic: split must be a non-empty string, got {split!r}")
        self.split = split
        root = self.root = require_root(self.dataset_name, root)
        self._names = []
        path = self._find_annotations(root, annotations)
        self.annotation_file = path
        self.image_root = root / image_dir if image_dir else root
        if task is not None and not hasattr(self, f"_setup_{task}"):
            readable = ", ".join(
                name.removeprefix("_setup_") for name in dir(self) if name.startswith("_setup_")
            )
            raise DataError(f"generic: unknown task {task!r}; annotations are read for {readable}")
        if path.suffix.lower() == ".json":
            records, meta = _read_json(path)
        elif path.suffix.lower() == ".csv":
            records, meta = _read_csv(path)
        else:
            raise DataError(f"generic: annotation file {path} must end in .csv or .json")
        task = task or _infer_task(records)
        self.task = task
        has_split = any(r.get("split") is not None for _, r in records)
        if has_split:
            found = sorted({str(r.get("split")) for _, r in records if r.get("split") is not None})
            records = [(where, r) for where, r in records if str(r.get("split")) == split]
            if not records:
                raise DataError(
                    f"generic: {path} has no rows with split {split!r}; splits present: {', '.join(found)}"
                )
        self._records = records
        self._names = [_image_of(path, where, r) for where, r in records]
        if classes is not None:
            classes = tuple(str(c) for c in classes)
        elif meta.get("classes") is not None:
            classes = tuple(str(c) for c in meta["classes"])
        getattr(self, f"_setup_{task}")(path, classes, meta, nme_unit, ocular_indices)

    # -- annotation parsing --------------------------------------------------------------------------
    @staticmethod
    def _find_annotations(root: Path, annotations: str | Path | None) -> Path:
        if annotations is not None:
            path = Path(annotations)
            return require_file("generic", path if path.is_absolute() else root / path, "annotation file")
        found = [root / n for n in DEFAULT_ANNOTATION_FILES if (root / n).is_file()]
        if len(found) != 1:
            raise DataError(
                f"generic: {root}: pass annotations=... or keep exactly one of "
                f"{', '.join(DEFAULT_ANNOTATION_FILES)} "
                f"in the root (found {len(found)})"
            )
        return found[0]

    def _setup_alignment(
        self, path: Path, classes: Any, meta: dict, nme_unit: str | None, ocular: Any
    ) -> None:
        lms, boxes, vis = [], [], []
        for where, r in self._records:
            pts = r.get("landmarks")
            if pts is None:
                raise DataError(
                    f"generic: {path}: {where}: expected landmarks (x0,y0,... columns or 'landmarks')"
                )
            try:
                pts = np.asarray(pts, dtype=np.float64)
            except (TypeError, ValueError):
                raise DataError(
                    f"generic: {path}: {where}: landmarks must be numbers [[x, y], ...]"
                ) from None
            if pts.ndim != 2 or pts.shape[1] != 2 or not len(pts) or not np.all(np.isfinite(pts)):
                raise DataError(f"generic: {path}: {where}: landmarks must be a non-empty [[x, y], ...] list")
            if lms and len(pts) != len(lms[0]):
                raise DataError(
                    f"generic: {path}: {where}: {len(pts)} landmarks; earlier rows have {len(lms[0])}"
                )
            box = r.get("box")
            if box is None:
                box = landmarks_box(pts)
            else:
                try:
                    box = np.asarray(box, dtype=np.float64)
                except (TypeError, ValueError):
                    raise DataError(
                        f"generic: {path}: {where}: box must be 4 numbers x1, y1, x2, y2"
                    ) from None
                if box.shape != (4,) or not np.all(np.isfinite(box)):
                    raise DataError(f"generic: {path}: {where}: box must be 4 numbers x1, y1, x2, y2")
            visible = r.get("visible")
            visible = (
                np.ones(len(pts), bool) if visible is None else np.asarray(visible, dtype=bool).reshape(-1)
            )
            if visible.shape != (len(pts),):
                raise DataError(f"generic: {path}: {where}: visible must have one flag per landmark")
            lms.append(pts)
            boxes.append(box)
            vis.append(visible)
        k = len(lms[0]) if lms else 0
        self.num_points = k
        self._landmarks = np.stack(lms).astype(np.float32) if lms else np.zeros((0, 0, 2), np.float32)
        self._boxes = np.stack(boxes).astype(np.float32) if boxes else np.zeros((0, 4), np.float32)
        self._visible = np.stack(vis) if vis else np.zeros((0, 0), bool)
        self.ocular_indices = tuple(ocular) if ocular is not None else _OCULAR.get(k)
        self.nme_unit = nme_unit or ("inter_ocular" if self.ocular_indices is not None else "diag")

    def _setup_parsing(self, path: Path, classes: Any, meta: dict, nme_unit: Any, ocular: Any) -> None:
        masks = []
        for where, r in self._records:
            if not r.get("mask"):
                raise DataError(f"generic: {path}: {where}: expected a 'mask' (path of a PNG of class ids)")
            masks.append(str(r["mask"]))
        self._masks = masks
        if classes is None:
            top = 0
            for m in masks:
                arr = load_label_map(self.dataset_name, self.image_root / m)
                top = max(top, int(arr.max()) if arr.size else 0)
            classes = ("background", *(f"class_{i}" for i in range(1, top + 1)))
        self.class_names = tuple(classes)

    def _setup_classification(self, path: Path, classes: Any, meta: dict, nme_unit: Any, ocular: Any) -> None:
        single = [
            r.get("label") is not None and not isinstance(r.get("label"), list) for _, r in self._records
        ]
        if all(single) and self._records:
            labels = []
            for where, r in self._records:
                try:
                    value = r["label"]
                    label = int(value)
                    if isinstance(value, float) and value != label:
                        raise ValueError
                except (TypeError, ValueError):
                    raise DataError(
                        f"generic: {path}: {where}: label must be an integer, got {r['label']!r}"
                    ) from None
                if label < 0:
                    raise DataError(f"generic: {path}: {where}: label must be >= 0, got {label}")
                labels.append(label)
            top = max(labels)
            if classes is None:
                classes = tuple(str(i) for i in range(top + 1))
            elif top >= len(classes):
                raise DataError(
                    f"generic: {path}: label {top} but only {len(classes)} classes {list(classes)}"
                )
            self.class_names = tuple(classes)
            self._labels: Any = labels
            return
        names = meta.get("attributes")
        rows = []
        for where, r in self._records:
            attrs = r.get("attributes", r.get("label"))
            if isinstance(attrs, dict):
                if names is None:
                    names = tuple(attrs)
                try:
                    attrs = [attrs[n] for n in names]
                except KeyError as err:
                    raise DataError(f"generic: {path}: {where}: attribute {err.args[0]!r} missing") from None
            if not isinstance(attrs, (list, tuple)) or not attrs:
                raise DataError(f"generic: {path}: {where}: expected a 'label' or attribute values")
            try:
                values = [int(float(v)) for v in attrs]
            except (TypeError, ValueError):
                raise DataError(f"generic: {path}: {where}: attribute values must be 0/1 (or -1/1)") from None
            if any(v not in (-1, 0, 1) for v in values):
                raise DataError(
                    f"generic: {path}: {where}: attribute values must be 0/1 (or -1/1), got {values}"
                )
            if rows and len(values) != len(rows[0]):
                raise DataError(
                    f"generic: {path}: {where}: {len(values)} attributes; earlier rows have {len(rows[0])}"
                )
            rows.append([v == 1 for v in values])
        n = len(rows[0]) if rows else 0
        if classes is not None:
            names = classes
        names = tuple(names) if names is not None else tuple(f"attr_{i}" for i in range(n))
        if rows and len(names) != n:
            raise DataError(
                f"generic: {path}: {n} attribute values per row but {len(names)} names {list(names)}"
            )
        self.attribute_names = tuple(str(a) for a in names)
        self._labels = np.asarray(rows, dtype=np.uint8).reshape(-1, n)

    # -- samples -----------------------------------------------------------------------------------
    def _load(self, index: int) -> dict[str, Any]:
        name = self._names[index]
        sample: dict[str, Any] = {"image": load_image(self.dataset_name, self.image_root / name, name)}
        if self.task == "alignment":
            sample["landmarks"] = self._landmarks[index].copy()
            sample["box"] = self._boxes[index].copy()
            sample["visible"] = self._visible[index].copy()
        elif self.task == "parsing":
            mask = load_label_map(self.dataset_name, self.image_root / self._masks[index])
            if mask.shape != sample["image"].shape[:2]:
                raise DataError(
                    f"generic: mask {self._masks[index]} is {mask.shape[1]}x{mask.shape[0]}, image {name} is "
                    f"{sample['image'].shape[1]}x{sample['image'].shape[0]}"
                )
            sample["mask"] = mask
        elif self.attribute_names is not None:
            sample["label"] = self._labels[index].copy()
        else:
            sample["label"] = int(self._labels[index])
        return sample


def _image_of(path: Path, where: str, record: dict) -> str:
    image = record.get("image")
    if not isinstance(image, str) or not image:
        raise DataError(f"generic: {path}: {where}: expected an 'image' path")
    return image


def _infer_task(records: list[tuple[str, dict]]) -> str:
    if not records:
        raise DataError("generic: the annotation file lists no images; pass task=... explicitly")
    first = records[0][1]
    if first.get("landmarks") is not None:
        return "alignment"
    if first.get("mask") is not None:
        return "parsing"
    return "classification"


def _read_json(path: Path) -> tuple[list[tuple[str, dict]], dict]:
    try:
        raw = read_regular(path).decode("utf-8-sig")
    except (OSError, UnicodeDecodeError, NotRegularFile) as err:
        raise DataError(f"generic: cannot read JSON {path}: {one_line(err)}") from err
    data = loads_json(raw, f"generic: {path}", DataError)
    meta: dict[str, Any] = {}
    if isinstance(data, dict):
        meta = {k: data.get(k) for k in ("classes", "attributes")}
        data = data.get("samples")
    if not isinstance(data, list):
        raise DataError(f"generic: {path}: expected a list of objects or {{'samples': [...]}}")
    records = []
    for i, item in enumerate(data):
        if not isinstance(item, dict):
            raise DataError(f"generic: {path}: record {i}: expected an object, got {type(item).__name__}")
        records.append((f"record {i}", item))
    return records, meta


def _read_csv(path: Path) -> tuple[list[tuple[str, dict]], dict]:
    try:
        with path.open(newline="", encoding="utf-8-sig") as fh:
            rows = list(csv.reader(fh))
    except (OSError, UnicodeDecodeError, csv.Error) as err:
        raise DataError(f"generic: cannot read CSV {path}: {err}") from err
    if not rows:
        raise DataError(f"generic: {path} is empty; expected a header line with an 'image' column")
    header = [h.strip() for h in rows[0]]
    if "image" not in header:
        raise DataError(
            f"generic: {path}:1: expected a header with an 'image' column, got {','.join(header)!r}"
        )
    xs = {int(m.group(2)) for h in header if (m := _XY.match(h)) and m.group(1) == "x"}
    ys = {int(m.group(2)) for h in header if (m := _XY.match(h)) and m.group(1) == "y"}
    k = len(xs)
    if (xs or ys) and (xs != ys or xs != set(range(k))):
        raise DataError(
            f"generic: {path}:1: landmark columns must be x0,y0 .. x{{K-1}},y{{K-1}} with no gaps"
        )
    has_box = all(c in header for c in _BOX_COLUMNS)
    attr_cols = [h for h in header if h not in _RESERVED and not _XY.match(h)]
    col = {h: i for i, h in enumerate(header)}
    records = []
    for lineno, row in enumerate(rows[1:], start=2):
        if not any(c.strip() for c in row):
            continue
        if len(row) != len(header):
            raise DataError(
                f"generic: {path}:{lineno}: expected {len(header)} columns like the header, got {len(row)}"
            )
        cells = {h: row[i].strip() for h, i in col.items()}
        rec: dict[str, Any] = {"image": cells["image"], "split": cells.get("split") or None}
        where = f"line {lineno}"
        try:
            if k:
                rec["landmarks"] = [[float(cells[f"x{i}"]), float(cells[f"y{i}"])] for i in range(k)]
            if has_box:
                rec["box"] = [float(cells[c]) for c in _BOX_COLUMNS]
        except ValueError:
            raise DataError(
                f"generic: {path}:{lineno}: expected numbers in the landmark / box columns"
            ) from None
        if "mask" in cells:
            rec["mask"] = cells["mask"] or None
        if "label" in cells:
            rec["label"] = cells["label"]
        elif attr_cols:
            rec["attributes"] = [cells[a] for a in attr_cols]
        records.append((where, rec))
    return records, {"attributes": tuple(attr_cols) if attr_cols and "label" not in col else None}
