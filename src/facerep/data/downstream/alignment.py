"""Face alignment benchmarks in their official layouts: AFLW-19, WFLW and 300W.

Coordinates are returned 0-based (centre of pixel ``(i, j)`` at ``x = i, y = j``); boxes are
(x1, y1, x2, y2). The per-format conventions (checked against FaRL's ``farl/datasets/{aflw,wflw,
ibug300w}.py`` and HRNet-Facial-Landmark-Detection's ``lib/datasets/*.py`` / ``lib/core/evaluation.py``):

AFLW-19 (``AFLWinfo_release.mat``)
    ``bbox`` is (left, right, top, bottom) = (x1, x2, y1, y2); ``data`` is x1..x19 then y1..y19;
    ``mask_new`` the visibility; ``ra`` a 1-based permutation whose first 20000 entries are train and
    the rest test (as FaRL). "frontal" = test faces with all 19 points visible (FaRL: ``np.all(mask_new
    == 1)``). MATLAB values are 1-based, so we subtract ``1`` from ``data`` and ``bbox`` (FaRL uses the
    raw values; the shift is common to points and box, so NME is unchanged). NME unit "diag" (the box
    diagonal).
WFLW
    Official ``list_98pt_rect_attr_{train,test}.txt`` (196 coords, box x_min y_min x_max y_max, 6 flags
    pose expression illumination make-up occlusion blur, image path under ``WFLW_images/``); or the
    HRNet/FaRL lists ``face_landmarks_wflw_{train,test}.csv`` (+ ``..._test_{subset}.csv``), which FaRL
    reads, with images under ``WFLW_images/`` (FaRL) or ``images/`` (HRNet). Coordinates are used as
    given (FaRL applies no offset). Either way the box is the HRNet lists' square ``center ± 100 * scale``
    (FaRL ``farl/datasets/wflw.py``: ``box_half_size = 100 * scale``); from the official rectangle,
    ``center`` is its centre and ``scale = max(w, h) / 200``, as HRNet derived its lists.
    NME unit "inter_ocular" = points 60 / 72 (HRNet ``compute_nme``).
300W
    HRNet lists ``face_landmarks_300w_{train,valid,valid_common,valid_challenge,test}.csv`` (columns
    ``image_name, scale, center_w, center_h, original_0_x, ... original_67_y``), images relative to
    ``images/`` (HRNet ``DATASET.ROOT``) or to the root itself (FaRL). FaRL subtracts 2.0 from every
    coordinate and from the centre; we do the same (``coord_offset=2.0``). The "test" split is common +
    challenging (689 faces, subsets "common" / "challenging"); "private_test" is the 600-face 300W test
    list. NME unit "inter_ocular" = outer eye corners 36 / 45.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import scipy.io

from facerep.data.downstream.base import (
    FaceDataset,
    line_error,
    load_image,
    parse_floats,
    read_lines,
    require_dir,
    require_file,
    require_root,
)
from facerep.data.sources import DataError
from facerep.geometry import box_from_center_scale, square_box

# ------------------------------------------------------------------------------------------ AFLW-19

AFLW_NUM_TRAIN = 20000


class AFLW19(FaceDataset):
    """AFLW-19 from ``AFLWinfo_release.mat``; images under ``flickr/`` (or FaRL's ``data/flickr/``).

    ``num_train``: how many leading entries of ``ra`` form the train split (20000 officially).
    ``one_based``: subtract 1 from ``data`` and ``bbox`` (default True, see the module docstring).
    Samples carry ``"visible"`` (``mask_new == 1``).
    """

    dataset_name = "aflw19"
    task = "alignment"
    num_points = 19
    nme_unit = "diag"

    def __init__(
        self,
        root: str | Path | None,
        split: str = "train",
        num_train: int = AFLW_NUM_TRAIN,
        one_based: bool = True,
    ) -> None:
        super().__init__(root, split)
        root = self.root = require_root(self.dataset_name, root)
        mat_path = require_file(self.dataset_name, root / "AFLWinfo_release.mat", "annotation file")
        info = _load_mat(self.dataset_name, mat_path, ("bbox", "data", "mask_new", "nameList", "ra"))
        bbox = np.asarray(info["bbox"], dtype=np.float64)
        data = np.asarray(info["data"], dtype=np.float64)
        mask = np.asarray(info["mask_new"])
        n = bbox.shape[0] if bbox.ndim == 2 else -1
        for key, arr, cols in (("bbox", bbox, 4), ("data", data, 38), ("mask_new", mask, 19)):
            if arr.ndim != 2 or arr.shape != (n, cols):
                raise DataError(
                    f"{self.dataset_name}: {mat_path}: field {key!r} has shape {arr.shape}; "
                    f"expected [N, {cols}]"
                )
        names = _mat_strings(self.dataset_name, mat_path, info["nameList"], n)
        ra = np.asarray(info["ra"]).reshape(-1)
        if ra.size != n or not np.array_equal(np.sort(ra.astype(np.int64)), np.arange(1, n + 1)):
            raise DataError(
                f"{self.dataset_name}: {mat_path}: field 'ra' is not a 1-based permutation of 1..{n}"
            )
        ra = ra.astype(np.int64) - 1
        if not 0 <= num_train <= n:
            raise DataError(f"{self.dataset_name}: num_train={num_train} outside 0..{n} ({mat_path})")
        self.indices = ra[:num_train] if self.split == "train" else ra[num_train:]

        offset = 1.0 if one_based else 0.0
        self._landmarks = (
            np.stack([data[:, :19], data[:, 19:]], axis=-1).astype(np.float32) - offset
        )  # [N,19,2]
        x1, x2, y1, y2 = bbox.T
        self._boxes = (np.stack([x1, y1, x2, y2], axis=-1) - offset).astype(np.float32)
        self._visible = mask == 1
        flickr = root / "flickr"
        if not flickr.is_dir() and (root / "data" / "flickr").is_dir():
            flickr = root / "data" / "flickr"
        self.images_dir = require_dir(self.dataset_name, flickr, "image folder (flickr/ or data/flickr/)")
        prefix = self.images_dir.relative_to(root).as_posix()
        self._all_names = [f"{prefix}/{s}" for s in names]
        self._names = [self._all_names[i] for i in self.indices]

    def _load(self, index: int) -> dict[str, Any]:
        k = int(self.indices[index])
        name = self._all_names[k]
        return {
            "image": load_image(self.dataset_name, self.root / name, name),
            "landmarks": self._landmarks[k].copy(),
            "box": self._boxes[k].copy(),
            "visible": self._visible[k].copy(),
        }

    def _extra_subsets(self) -> dict[str, Any]:
        frontal = np.all(self._visible[self.indices], axis=1)
        return {"frontal": np.flatnonzero(frontal)}


def _load_mat(dataset: str, path: Path, keys: tuple[str, ...]) -> dict[str, Any]:
    try:
        info = scipy.io.loadmat(str(path))
    except Exception as err:
        raise DataError(f"{dataset}: cannot read MATLAB file {path}: {type(err).__name__}: {err}") from err
    missing = [k for k in keys if k not in info]
    if missing:
        raise DataError(f"{dataset}: {path} lacks field(s) {', '.join(missing)}; expected {', '.join(keys)}")
    return info


def _mat_strings(dataset: str, path: Path, cell: Any, n: int) -> list[str]:
    """A MATLAB ``[N, 1]`` cell array of strings as a list of ``n`` str."""
    arr = np.asarray(cell, dtype=object).reshape(-1)
    if arr.size != n:
        raise DataError(f"{dataset}: {path}: field 'nameList' has {arr.size} entries; expected {n}")
    out = []
    for i, item in enumerate(arr):
        value = item
        while isinstance(value, np.ndarray):
            if value.size != 1 and value.dtype.kind != "U":
                break
            value = value.reshape(-1)[0] if value.size else ""
        if not isinstance(value, str) or not value:
            raise DataError(f"{dataset}: {path}: nameList entry {i + 1} is not a file name")
        out.append(value.replace("\\", "/"))
    return out


# ----------------------------------------------------------------------------------- HRNet csv lists


def read_hrnet_csv(
    dataset: str, path: Path, num_points: int
) -> list[tuple[str, float, float, float, np.ndarray, int]]:
    """Rows ``(image_name, scale, center_w, center_h, landmarks [K, 2] float64, line number)`` of an HRNet
    list (``image_name, scale, center_w, center_h, original_0_x, original_0_y, ...``; header line first).
    Blank and ``#`` lines are skipped, as FaRL does."""
    rows = []
    lines = read_lines(dataset, path, "landmark list")
    if not lines:
        raise DataError(f"{dataset}: {path} is empty; expected a header line then one face per line")
    expected = f"image_name, scale, center_w, center_h and {2 * num_points} landmark coordinates"
    for lineno, line in lines[1:]:
        text = line.strip()
        if text.startswith("#"):
            continue
        fields = [f.strip() for f in text.split(",")]
        if len(fields) != 4 + 2 * num_points or not fields[0]:
            raise line_error(
                dataset, path, lineno, f"{4 + 2 * num_points} comma-separated fields ({expected})", line
            )
        values = parse_floats(dataset, path, lineno, fields[1:], line, expected)
        rows.append((fields[0], values[0], values[1], values[2], values[3:].reshape(num_points, 2), lineno))
    return rows


class _ListAlignment(FaceDataset):
    """Alignment dataset held as per-face lists (name, landmarks, box)."""

    task = "alignment"

    def _set_faces(self, names: list[str], landmarks: list[np.ndarray], boxes: list[np.ndarray]) -> None:
        self._names = names
        k = self.num_points
        self._landmarks = (
            np.stack(landmarks).astype(np.float32) if landmarks else np.zeros((0, k, 2), np.float32)
        )
        self._boxes = np.stack(boxes).astype(np.float32) if boxes else np.zeros((0, 4), np.float32)

    def _load(self, index: int) -> dict[str, Any]:
        name = self._names[index]
        return {
            "image": load_image(self.dataset_name, self.root / name, name),
            "landmarks": self._landmarks[index].copy(),
            "box": self._boxes[index].copy(),
        }


# --------------------------------------------------------------------------------------------- WFLW

WFLW_ATTRIBUTES = ("largepose", "expression", "illumination", "makeup", "occlusion", "blur")


class WFLW(_ListAlignment):
    """WFLW (98 points). ``layout``: "auto" (official txt if present, else HRNet csv), "official", "hrnet".

    Test subsets: ``largepose, expression, illumination, makeup, occlusion, blur`` (official: the
    attribute flags; csv layout: the faces listed in ``face_landmarks_wflw_test_{subset}.csv``, matched
    to the test list by image name and landmarks; a missing subset file leaves that subset out).
    Official-layout samples also carry ``"attributes"`` (uint8 [6], order of ``WFLW_ATTRIBUTES``).
    """

    dataset_name = "wflw"
    num_points = 98
    nme_unit = "inter_ocular"
    ocular_indices = (60, 72)

    def __init__(self, root: str | Path | None, split: str = "train", layout: str = "auto") -> None:
        super().__init__(root, split)
        root = self.root = require_root(self.dataset_name, root)
        txt = (
            root / "WFLW_annotations" / "list_98pt_rect_attr_train_test" / f"list_98pt_rect_attr_{split}.txt"
        )
        csv = root / f"face_landmarks_wflw_{split}.csv"
        if layout == "auto":
            if txt.is_file():
                layout = "official"
            elif csv.is_file():
                layout = "hrnet"
            else:
                raise DataError(
                    f"{self.dataset_name}: missing annotation list: neither {txt} nor {csv} exists"
                )
        if layout not in ("official", "hrnet"):
            raise DataError(
                f"{self.dataset_name}: unknown layout {layout!r}; expected auto, official or hrnet"
            )
        self.layout = layout
        self._attributes = np.zeros((0, 6), np.uint8)
        self._subset_idx: dict[str, np.ndarray] = {}
        if layout == "official":
            self._read_official(txt)
        else:
            self._read_hrnet(csv)

    def _read_official(self, path: Path) -> None:
        images = require_dir(self.dataset_name, self.root / "WFLW_images", "image folder")
        prefix = images.relative_to(self.root).as_posix()
        names, lms, boxes, attrs = [], [], [], []
        expected = "196 landmark coordinates, 4 box coordinates, 6 attribute flags and an image path"
        for lineno, line in read_lines(self.dataset_name, path, "annotation list"):
            fields = line.split()
            if len(fields) != 207:
                raise line_error(self.dataset_name, path, lineno, f"207 fields ({expected})", line)
            values = parse_floats(self.dataset_name, path, lineno, fields[:206], line, expected)
            flags = values[200:206]
            if not np.all(np.isin(flags, (0, 1))):
                raise line_error(
                    self.dataset_name, path, lineno, "attribute flags 0 or 1 in fields 201-206", line
                )
            names.append(f"{prefix}/{fields[206]}")
            lms.append(values[:196].reshape(98, 2))
            boxes.append(square_box(values[196:200]))
            attrs.append(flags.astype(np.uint8))
        self._set_faces(names, lms, boxes)
        self._attributes = np.stack(attrs) if attrs else np.zeros((0, 6), np.uint8)
        if self.split == "test":
            self._subset_idx = {
                a: np.flatnonzero(self._attributes[:, j]) for j, a in enumerate(WFLW_ATTRIBUTES)
            }

    def _read_hrnet(self, path: Path) -> None:
        images = self.root / "WFLW_images"
        if not images.is_dir() and (self.root / "images").is_dir():
            images = self.root / "images"
        images = require_dir(self.dataset_name, images, "image folder (WFLW_images/ or images/)")
        prefix = images.relative_to(self.root).as_posix()
        rows = read_hrnet_csv(self.dataset_name, path, 98)
        self._set_faces(
            [f"{prefix}/{r[0]}" for r in rows],
            [r[4] for r in rows],
            [box_from_center_scale(r[2], r[3], r[1]) for r in rows],
        )
        if self.split != "test":
            return
        keys: dict[tuple[str, bytes], list[int]] = {}
        for i, r in enumerate(rows):
            keys.setdefault(_face_key(r[0], r[4]), []).append(i)
        for attr in WFLW_ATTRIBUTES:
            sub = self.root / f"face_landmarks_wflw_test_{attr}.csv"
            if not sub.is_file():
                continue
            idx = []
            for r in read_hrnet_csv(self.dataset_name, sub, 98):
                found = keys.get(_face_key(r[0], r[4]))
                if not found:
                    raise DataError(
                        f"{self.dataset_name}: {sub}:{r[5]}: face {r[0]} is not in the test list {path}"
                    )
                idx.extend(found)
            self._subset_idx[attr] = np.unique(np.asarray(idx, dtype=np.int64))

    def _load(self, index: int) -> dict[str, Any]:
        sample = super()._load(index)
        if self.layout == "official":
            sample["attributes"] = self._attributes[index].copy()
        return sample

    def _extra_subsets(self) -> dict[str, Any]:
        return dict(self._subset_idx)


def _face_key(name: str, landmarks: np.ndarray) -> tuple[str, bytes]:
    return name, np.round(np.asarray(landmarks, np.float64), 2).tobytes()


# --------------------------------------------------------------------------------------------- 300W

IBUG300W_FILES = {
    "train": "face_landmarks_300w_train.csv",
    "valid": "face_landmarks_300w_valid.csv",
    "common": "face_landmarks_300w_valid_common.csv",
    "challenging": "face_landmarks_300w_valid_challenge.csv",
    "private_test": "face_landmarks_300w_test.csv",
}
# A file name in the HRNet lists that differs from the name in the 300W distribution (as in FaRL).
_300W_RENAMES = {"ibug/image_092_01.jpg": "ibug/image_092 _01.jpg"}


class IBUG300W(_ListAlignment):
    """300W from HRNet's csv lists. Splits: train, test (common + challenging), private_test.

    ``coord_offset`` is subtracted from the coordinates and the box centre (2.0, as FaRL).
    """

    dataset_name = "300w"
    num_points = 68
    nme_unit = "inter_ocular"
    ocular_indices = (36, 45)
    splits = ("train", "test", "private_test")

    def __init__(self, root: str | Path | None, split: str = "train", coord_offset: float = 2.0) -> None:
        super().__init__(root, split)
        root = self.root = require_root(self.dataset_name, root)
        images = root / "images" if (root / "images").is_dir() else root
        self.images_dir = images
        self._subset_idx: dict[str, np.ndarray] = {}
        if split == "test":
            common, challenging = root / IBUG300W_FILES["common"], root / IBUG300W_FILES["challenging"]
            if common.is_file() or challenging.is_file() or not (root / IBUG300W_FILES["valid"]).is_file():
                rows_c = read_hrnet_csv(
                    self.dataset_name, require_file(self.dataset_name, common, "list"), 68
                )
                rows_h = read_hrnet_csv(
                    self.dataset_name, require_file(self.dataset_name, challenging, "list"), 68
                )
                rows = rows_c + rows_h
                self._subset_idx = {
                    "common": np.arange(len(rows_c)),
                    "challenging": np.arange(len(rows_c), len(rows)),
                }
            else:  # only the combined list: no subsets
                rows = read_hrnet_csv(self.dataset_name, root / IBUG300W_FILES["valid"], 68)
        else:
            rows = read_hrnet_csv(
                self.dataset_name, require_file(self.dataset_name, root / IBUG300W_FILES[split], "list"), 68
            )
        names = []
        prefix = images.relative_to(root).as_posix()
        for r in rows:
            name = r[0]
            if (
                name in _300W_RENAMES
                and not (images / name).exists()
                and (images / _300W_RENAMES[name]).exists()
            ):
                name = _300W_RENAMES[name]
            names.append(name if prefix == "." else f"{prefix}/{name}")
        off = float(coord_offset)
        self._set_faces(
            names,
            [r[4] - off for r in rows],
            [box_from_center_scale(r[2] - off, r[3] - off, r[1]) for r in rows],
        )

    def _extra_subsets(self) -> dict[str, Any]:
        return dict(self._subset_idx)
