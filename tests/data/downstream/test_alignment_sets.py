"""AFLW-19, WFLW and 300W read from tiny fixtures in their official layouts."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import scipy.io
from PIL import Image

from facerep.data.downstream import AFLW19, IBUG300W, WFLW, WFLW_ATTRIBUTES, build_dataset
from facerep.data.sources import DataError


def write_image(path: Path, size: tuple[int, int] = (48, 40), seed: int = 0) -> np.ndarray:
    """A random RGB image of ``size`` (W, H) saved losslessly (PNG data whatever the suffix says is
    fine for PIL); returns the pixels."""
    path.parent.mkdir(parents=True, exist_ok=True)
    arr = np.random.default_rng(seed).integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
    Image.fromarray(arr).save(path, format="PNG")
    return arr


# ------------------------------------------------------------------------------------------ AFLW-19

AFLW_N = 6
AFLW_RA = np.array([3, 1, 6, 2, 5, 4])  # 1-based permutation: train = faces 2, 0, 5, 1; test = 4, 3


def make_aflw(root: Path, images_dir: str = "flickr") -> dict[str, np.ndarray]:
    rng = np.random.default_rng(1)
    xs = rng.uniform(5, 40, (AFLW_N, 19))
    ys = rng.uniform(5, 35, (AFLW_N, 19))
    data = np.concatenate([xs, ys], axis=1)  # x1..x19 then y1..y19
    bbox = np.stack([xs.min(1), xs.max(1), ys.min(1), ys.max(1)], axis=1)  # left, right, top, bottom
    bbox[:, 1] += 3.0  # make x2 distinguishable from the landmarks' bounding box
    mask = np.ones((AFLW_N, 19))
    mask[3, 7] = 0  # test face 3 has an invisible point -> not frontal
    mask[0, 0] = 0
    names = np.empty((AFLW_N, 1), dtype=object)
    for i in range(AFLW_N):
        names[i, 0] = f"{i % 2}/image{i:05d}.jpg"
        write_image(root / images_dir / names[i, 0], seed=i)
    scipy.io.savemat(
        root / "AFLWinfo_release.mat",
        {
            "bbox": bbox,
            "data": data,
            "mask_new": mask,
            "nameList": names,
            "ra": AFLW_RA[None, :].astype(float),
        },
    )
    return {"data": data, "bbox": bbox, "mask": mask}


def test_aflw19_splits_coordinates_box_and_frontal(tmp_path: Path) -> None:
    info = make_aflw(tmp_path)
    train = AFLW19(tmp_path, "train", num_train=4)
    test = build_dataset("aflw19", tmp_path, "test", num_train=4)
    assert len(train) == 4 and len(test) == 2
    assert train.task == "alignment" and train.num_points == 19 and train.nme_unit == "diag"
    assert [train.sample_name(i) for i in range(4)] == [
        f"flickr/{k % 2}/image{k:05d}.jpg" for k in (2, 0, 5, 1)
    ]
    s = test[0]  # face 4
    assert s["name"] == "flickr/0/image00004.jpg"
    assert s["image"].shape == (40, 48, 3) and s["image"].dtype == np.uint8
    assert s["landmarks"].shape == (19, 2) and s["landmarks"].dtype == np.float32
    # x1..x19 / y1..y19 columns, 1-based -> 0-based
    np.testing.assert_allclose(s["landmarks"][:, 0], info["data"][4, :19] - 1, rtol=1e-6)
    np.testing.assert_allclose(s["landmarks"][:, 1], info["data"][4, 19:] - 1, rtol=1e-6)
    # bbox stored as (x1, x2, y1, y2) -> box (x1, y1, x2, y2)
    x1, x2, y1, y2 = info["bbox"][4]
    np.testing.assert_allclose(s["box"], np.array([x1, y1, x2, y2]) - 1, rtol=1e-6)
    assert s["visible"].dtype == bool and s["visible"].all()
    assert not train[1]["visible"][0]  # face 0, point 0 invisible
    subsets = test.subsets()
    assert set(subsets) == {"full", "frontal"}
    np.testing.assert_array_equal(subsets["full"], [0, 1])
    np.testing.assert_array_equal(subsets["frontal"], [0])  # test face 3 (index 1) has a hidden point
    raw = AFLW19(tmp_path, "test", num_train=4, one_based=False)[0]
    np.testing.assert_allclose(raw["landmarks"][:, 0], info["data"][4, :19], rtol=1e-6)


def test_aflw19_farl_image_folder_and_errors(tmp_path: Path) -> None:
    make_aflw(tmp_path, images_dir="data/flickr")  # FaRL keeps the images under data/flickr
    ds = AFLW19(tmp_path, "test", num_train=4)
    assert ds[1]["name"] == "data/flickr/1/image00003.jpg"
    with pytest.raises(DataError, match=r"num_train=99"):
        AFLW19(tmp_path, "train", num_train=99)
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(DataError, match=r"missing annotation file: .*AFLWinfo_release\.mat"):
        AFLW19(empty, "train")
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "flickr").mkdir()
    scipy.io.savemat(
        bad / "AFLWinfo_release.mat",
        {"bbox": np.zeros((2, 4)), "data": np.zeros((2, 30)), "mask_new": np.ones((2, 19)),
         "nameList": np.array([["a.jpg"], ["b.jpg"]], dtype=object), "ra": np.array([[1.0, 2.0]])},
    )  # fmt: skip
    with pytest.raises(DataError, match=r"field 'data' has shape \(2, 30\); expected \[N, 38\]"):
        AFLW19(bad, "train", num_train=1)
    with pytest.raises(DataError, match=r"unknown split 'val'"):
        AFLW19(tmp_path, "val")


# --------------------------------------------------------------------------------------------- WFLW


def wflw_line(rng: np.random.Generator, path: str, attrs: list[int]) -> tuple[str, np.ndarray, np.ndarray]:
    pts = rng.uniform(2, 40, (98, 2)).round(3)
    box = np.array([pts[:, 0].min() - 1, pts[:, 1].min() - 1, pts[:, 0].max() + 1, pts[:, 1].max() + 1])
    fields = (
        [f"{v:.3f}" for v in pts.reshape(-1)] + [str(int(v)) for v in box] + [str(a) for a in attrs] + [path]
    )
    return " ".join(fields), pts, np.floor(box)


def test_wflw_official_layout(tmp_path: Path) -> None:
    rng = np.random.default_rng(2)
    ann = tmp_path / "WFLW_annotations" / "list_98pt_rect_attr_train_test"
    ann.mkdir(parents=True)
    flags = {0: [1, 0, 0, 0, 1, 0], 1: [0, 1, 0, 0, 0, 0], 2: [1, 0, 0, 1, 0, 1]}
    lines, truth = [], []
    for i in range(3):
        path = f"{i}--Parade/{i}_Parade_{i}.jpg"
        write_image(tmp_path / "WFLW_images" / path, seed=i)
        line, pts, box = wflw_line(rng, path, flags[i])
        lines.append(line)
        truth.append((pts, box))
    (ann / "list_98pt_rect_attr_test.txt").write_text("\n".join(lines) + "\n")
    (ann / "list_98pt_rect_attr_train.txt").write_text(lines[0] + "\n")
    ds = build_dataset("wflw", tmp_path, "test")
    assert (
        ds.layout == "official"
        and len(ds) == 3
        and ds.nme_unit == "inter_ocular"
        and ds.ocular_indices == (60, 72)
    )
    s = ds[2]
    assert s["name"] == "WFLW_images/2--Parade/2_Parade_2.jpg"
    np.testing.assert_allclose(s["landmarks"], truth[2][0], atol=1e-4)
    x1, y1, x2, y2 = truth[2][1]  # the official rectangle becomes HRNet's square box around its centre
    half = max(x2 - x1, y2 - y1) / 2
    cx, cy = (x1 + x2) / 2, (y1 + y2) / 2
    np.testing.assert_allclose(s["box"], [cx - half, cy - half, cx + half, cy + half], rtol=1e-6)
    np.testing.assert_array_equal(s["attributes"], flags[2])
    subsets = ds.subsets()
    assert set(subsets) == {"full", *WFLW_ATTRIBUTES}
    np.testing.assert_array_equal(subsets["largepose"], [0, 2])
    np.testing.assert_array_equal(subsets["expression"], [1])
    np.testing.assert_array_equal(subsets["illumination"], [])
    np.testing.assert_array_equal(subsets["makeup"], [2])
    np.testing.assert_array_equal(subsets["occlusion"], [0])
    np.testing.assert_array_equal(subsets["blur"], [2])
    assert len(WFLW(tmp_path, "train")) == 1
    # malformed line: a missing field
    (ann / "list_98pt_rect_attr_test.txt").write_text(
        lines[0] + "\n" + lines[1].rsplit(" ", 2)[0] + " x.jpg\n"
    )
    with pytest.raises(DataError, match=r"list_98pt_rect_attr_test\.txt:2: expected 207 fields"):
        WFLW(tmp_path, "test")


def hrnet_row(name: str, scale: float, cx: float, cy: float, pts: np.ndarray) -> str:
    return ",".join([name, f"{scale}", f"{cx}", f"{cy}", *(f"{v:.6f}" for v in pts.reshape(-1))])


def hrnet_header(k: int) -> str:
    cols = [c for i in range(k) for c in (f"original_{i}_x", f"original_{i}_y")]
    return ",".join(["image_name", "scale", "center_w", "center_h", *cols])


def test_wflw_hrnet_csv_layout(tmp_path: Path) -> None:
    rng = np.random.default_rng(3)
    rows, pts_all = [], []
    for i in range(3):
        name = f"1--Handshaking/{i}.jpg"
        write_image(tmp_path / "WFLW_images" / name, seed=i)
        pts = rng.uniform(2, 40, (98, 2))
        pts_all.append(pts)
        rows.append(hrnet_row(name, 0.1 + 0.01 * i, 20.0 + i, 18.5, pts))
    (tmp_path / "face_landmarks_wflw_test.csv").write_text("\n".join([hrnet_header(98), *rows]) + "\n")
    (tmp_path / "face_landmarks_wflw_test_blur.csv").write_text("\n".join([hrnet_header(98), rows[1]]) + "\n")
    ds = WFLW(tmp_path, "test")
    assert ds.layout == "hrnet" and len(ds) == 3
    s = ds[1]
    np.testing.assert_allclose(s["landmarks"], pts_all[1], atol=1e-4)  # no offset for WFLW
    half = 100 * 0.11  # HRNet: box side = 200 * scale
    np.testing.assert_allclose(s["box"], [21.0 - half, 18.5 - half, 21.0 + half, 18.5 + half], rtol=1e-6)
    assert "attributes" not in s
    subsets = ds.subsets()
    assert set(subsets) == {"full", "blur"}  # only the subset lists that exist
    np.testing.assert_array_equal(subsets["blur"], [1])
    with pytest.raises(
        DataError, match=r"neither .*list_98pt_rect_attr_train\.txt nor .*face_landmarks_wflw_train\.csv"
    ):
        WFLW(tmp_path, "train")


# --------------------------------------------------------------------------------------------- 300W


def test_300w_hrnet_lists_offset_box_and_subsets(tmp_path: Path) -> None:
    rng = np.random.default_rng(4)
    files = {
        "train": ["lfpw/trainset/image_0001.png", "afw/1.jpg"],
        "common": ["helen/testset/a.jpg", "lfpw/testset/b.png"],
        "challenge": ["ibug/image_092_01.jpg"],
    }
    truth = {}
    for key, names in files.items():
        rows = []
        for j, name in enumerate(names):
            disk = (
                "ibug/image_092 _01.jpg" if name == "ibug/image_092_01.jpg" else name
            )  # as in the 300W download
            write_image(tmp_path / "images" / disk, seed=j)
            pts = rng.uniform(5, 40, (68, 2))
            truth[name] = (pts, 0.2 + j * 0.05, 25.0 + j, 22.0)
            rows.append(hrnet_row(name, 0.2 + j * 0.05, 25.0 + j, 22.0, pts))
        suffix = {"train": "train", "common": "valid_common", "challenge": "valid_challenge"}[key]
        (tmp_path / f"face_landmarks_300w_{suffix}.csv").write_text(
            "\n".join([hrnet_header(68), *rows]) + "\n"
        )
    train = IBUG300W(tmp_path, "train")
    assert len(train) == 2 and train.ocular_indices == (36, 45) and train.nme_unit == "inter_ocular"
    test = build_dataset("300w", tmp_path, "test")
    assert [test.sample_name(i) for i in range(3)] == [
        "images/helen/testset/a.jpg", "images/lfpw/testset/b.png", "images/ibug/image_092 _01.jpg"
    ]  # fmt: skip
    s = test[1]
    pts, scale, cx, cy = truth["lfpw/testset/b.png"]
    np.testing.assert_allclose(s["landmarks"], pts - 2.0, atol=1e-4)  # FaRL: HRNet coordinates - 2
    half = 100 * scale
    np.testing.assert_allclose(
        s["box"], [cx - 2 - half, cy - 2 - half, cx - 2 + half, cy - 2 + half], rtol=1e-6
    )
    assert test[2]["image"].shape == (40, 48, 3)
    subsets = test.subsets()
    np.testing.assert_array_equal(subsets["full"], [0, 1, 2])
    np.testing.assert_array_equal(subsets["common"], [0, 1])
    np.testing.assert_array_equal(subsets["challenging"], [2])
    raw = IBUG300W(tmp_path, "train", coord_offset=0.0)[0]
    np.testing.assert_allclose(raw["landmarks"], truth["lfpw/trainset/image_0001.png"][0], atol=1e-4)


def test_300w_errors(tmp_path: Path) -> None:
    with pytest.raises(DataError, match=r"missing list: .*face_landmarks_300w_train\.csv"):
        IBUG300W(tmp_path, "train")
    with pytest.raises(DataError, match=r"root .* is not a directory"):
        IBUG300W(tmp_path / "absent", "train")
    good = hrnet_row("afw/1.jpg", 1.0, 10, 10, np.zeros((68, 2)))
    bad = hrnet_row("afw/2.jpg", 1.0, 10, 10, np.zeros((68, 2))).replace(",0.000000", ",abc", 1)
    (tmp_path / "face_landmarks_300w_train.csv").write_text("\n".join([hrnet_header(68), good, bad]) + "\n")
    with pytest.raises(DataError, match=r"face_landmarks_300w_train\.csv:3: expected image_name, scale"):
        IBUG300W(tmp_path, "train")
    short = ",".join(good.split(",")[:-1])
    (tmp_path / "face_landmarks_300w_train.csv").write_text("\n".join([hrnet_header(68), short]) + "\n")
    with pytest.raises(
        DataError, match=r"face_landmarks_300w_train\.csv:2: expected 140 comma-separated fields"
    ):
        IBUG300W(tmp_path, "train")
    (tmp_path / "face_landmarks_300w_train.csv").write_text("\n".join([hrnet_header(68), good]) + "\n")
    ds = IBUG300W(tmp_path, "train")  # images/ absent: names are relative to the root (FaRL layout)
    with pytest.raises(DataError, match=r"missing image: .*afw/1\.jpg"):
        ds[0]
