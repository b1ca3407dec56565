"""LaPa and CelebAMask-HQ read from tiny fixtures in their official layouts."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from facerep.data.downstream import CELEBAMASK_CLASSES, CELEBAMASK_PARTS, CelebAMaskHQ, LaPa, build_dataset
from facerep.data.downstream.parsing import resize_bilinear, resize_nearest
from facerep.data.sources import DataError
from facerep.data.synthetic import LAPA_CLASSES


def write_image(path: Path, size: tuple[int, int], seed: int, fmt: str = "PNG") -> np.ndarray:
    path.parent.mkdir(parents=True, exist_ok=True)
    arr = np.random.default_rng(seed).integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
    Image.fromarray(arr).save(path, format=fmt)
    return arr


# ------------------------------------------------------------------------------------------------ LaPa


def make_lapa(root: Path) -> dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]]:
    truth = {}
    for split, stems in (("train", ["b_2", "a_1"]), ("test", ["c_3"])):
        for stem in stems:
            seed = len(truth)
            image = write_image(
                root / split / "images" / f"{stem}.jpg", (40, 32), seed
            )  # PNG bytes: lossless
            label = np.random.default_rng(seed).integers(0, 11, (32, 40), dtype=np.uint8)
            (root / split / "labels").mkdir(parents=True, exist_ok=True)
            Image.fromarray(label, mode="L").save(root / split / "labels" / f"{stem}.png")
            pts = np.random.default_rng(seed).uniform(0, 32, (106, 2)).round(4)
            (root / split / "landmarks").mkdir(parents=True, exist_ok=True)
            text = "106\n" + "".join(f"{x} {y}\n" for x, y in pts)
            (root / split / "landmarks" / f"{stem}.txt").write_text(text)
            truth[f"{split}/{stem}"] = (image, label, pts)
    # a non-jpg file in images/ is not a sample (as FaRL)
    write_image(root / "train" / "images" / "ignored.png", (8, 8), 9)
    return truth


def test_lapa_reads_images_labels_landmarks(tmp_path: Path) -> None:
    truth = make_lapa(tmp_path)
    train = build_dataset("lapa", tmp_path, "train")
    assert train.task == "parsing" and train.class_names == LAPA_CLASSES and len(train.class_names) == 11
    assert [train.sample_name(i) for i in range(len(train))] == [
        "train/images/a_1.jpg",
        "train/images/b_2.jpg",
    ]
    s = train[1]
    image, label, pts = truth["train/b_2"]
    assert s["name"] == "train/images/b_2.jpg"
    np.testing.assert_array_equal(s["image"], image)
    assert s["mask"].dtype == np.uint8 and s["mask"].shape == (32, 40)
    np.testing.assert_array_equal(s["mask"], label)
    assert s["landmarks"].shape == (106, 2) and s["landmarks"].dtype == np.float32
    np.testing.assert_allclose(s["landmarks"], pts, rtol=1e-6)
    test = LaPa(tmp_path, "test")
    assert len(test) == 1 and test.subsets()["full"].tolist() == [0]
    with pytest.raises(DataError, match=r"missing image folder: .*val/images"):
        LaPa(tmp_path, "val")


def test_lapa_errors(tmp_path: Path) -> None:
    make_lapa(tmp_path)
    lm = tmp_path / "test" / "landmarks" / "c_3.txt"
    lm.write_text("98\n" + "1 2\n" * 98)
    with pytest.raises(DataError, match=r"c_3\.txt: expected the point count 106"):
        LaPa(tmp_path, "test")
    lm.write_text("106\n" + "1 2\n" * 50 + "1 oops\n" + "1 2\n" * 55)
    with pytest.raises(DataError, match=r"c_3\.txt:52: expected the point count 106"):
        LaPa(tmp_path, "test")
    (tmp_path / "train" / "labels" / "a_1.png").unlink()
    with pytest.raises(DataError, match=r"missing label map: .*train/labels/a_1\.png"):
        LaPa(tmp_path, "train")
    with pytest.raises(DataError, match=r"lapa: root .* is not a directory"):
        LaPa(tmp_path / "nope", "train")


# --------------------------------------------------------------------------------------- CelebAMask-HQ

PARTS = {part: i + 1 for i, part in enumerate(CELEBAMASK_PARTS)}


def part_mask(rows: slice, cols: slice) -> np.ndarray:
    m = np.zeros((512, 512), np.uint8)
    m[rows, cols] = 255
    return m


def make_celebamask(root: Path) -> None:
    # CelebA-HQ ids 0, 1, 2 <- CelebA files 000005.jpg, 000002.jpg, 000009.jpg
    (root / "CelebA-HQ-to-CelebA-mapping.txt").write_text(
        "idx         orig_idx    orig_file\n0  4  000005.jpg\n1  1  000002.jpg\n2  8  000009.jpg\n"
    )
    (root / "list_eval_partition.txt").write_text("000001.jpg 1\n000002.jpg 0\n000005.jpg 0\n000009.jpg 2\n")
    for hq in range(3):
        write_image(root / "CelebA-HQ-img" / f"{hq}.jpg", (64, 64), hq)
    anno = root / "CelebAMask-HQ-mask-anno" / "0"
    anno.mkdir(parents=True)
    parts = {
        "neck": part_mask(slice(400, 512), slice(150, 350)),
        "skin": part_mask(slice(100, 450), slice(100, 400)),  # overlaps neck: skin is painted later
        "hair": part_mask(slice(0, 200), slice(0, 512)),  # overlaps skin: hair wins
        "l_eye": part_mask(slice(220, 240), slice(150, 200)),
        "eye_g": part_mask(slice(210, 250), slice(140, 210)),  # glasses over the eye: eye_g wins
        "u_lip": part_mask(slice(330, 340), slice(200, 300)),
        "l_lip": part_mask(slice(335, 350), slice(200, 300)),  # u_lip is painted after l_lip
    }
    for part, m in parts.items():
        Image.fromarray(m, mode="L").save(anno / f"00001_{part}.png")
    # id 0 has only a colour-saved (RGB) skin mask
    rgb = np.stack([part_mask(slice(0, 256), slice(0, 512))] * 3, axis=-1)
    Image.fromarray(rgb, mode="RGB").save(anno / "00000_skin.png")


def test_celebamask_hq_composition_order_and_splits(tmp_path: Path) -> None:
    make_celebamask(tmp_path)
    train = build_dataset("celebamask_hq", tmp_path, "train")
    assert train.class_names == CELEBAMASK_CLASSES and len(train.class_names) == 19
    assert train.class_names[:4] == ("background", "neck", "skin", "cloth")
    # order of list_eval_partition.txt, mapped to CelebA-HQ ids
    assert [train.sample_name(i) for i in range(len(train))] == ["CelebA-HQ-img/1.jpg", "CelebA-HQ-img/0.jpg"]
    assert [CelebAMaskHQ(tmp_path, s).sample_name(0) for s in ("test",)] == ["CelebA-HQ-img/2.jpg"]
    assert len(CelebAMaskHQ(tmp_path, "val")) == 0  # 000001.jpg is not in CelebA-HQ
    s = train[0]
    assert s["image"].shape == (512, 512, 3) and s["mask"].shape == (
        512,
        512,
    )  # FaRL resizes the image to 512
    m = s["mask"]
    assert m[450, 200] == PARTS["neck"] == 1  # neck only
    assert m[420, 200] == PARTS["skin"] == 2  # neck + skin -> skin
    assert m[150, 200] == PARTS["hair"] == 14  # skin + hair -> hair
    assert m[230, 160] == PARTS["eye_g"] == 15  # skin + l_eye + eye_g -> eye_g
    assert m[212, 145] == PARTS["eye_g"]
    assert m[337, 250] == PARTS["u_lip"] == 13  # l_lip (12) painted first, u_lip (13) over it
    assert m[345, 250] == PARTS["l_lip"] == 12
    assert m[500, 10] == 0
    assert set(np.unique(m)) == {0, 1, 2, 12, 13, 14, 15}
    m0 = train[1]["mask"]  # RGB-saved part mask is read as grey
    assert m0[:256].min() == 2 and m0[256:].max() == 0
    # keep the image size: the mask is upsampled (nearest) to it instead
    small = CelebAMaskHQ(tmp_path, "train", image_size=None)[0]
    assert small["image"].shape == (64, 64, 3) and small["mask"].shape == (64, 64)
    assert small["mask"][18, 25] == PARTS["hair"] and small["mask"][56, 25] == PARTS["neck"]


def test_celebamask_hq_errors(tmp_path: Path) -> None:
    make_celebamask(tmp_path)
    (tmp_path / "list_eval_partition.txt").write_text("000002.jpg 0\n000005.jpg train\n")
    with pytest.raises(DataError, match=r"list_eval_partition\.txt:2: expected '<file>\.jpg 0\|1\|2'"):
        CelebAMaskHQ(tmp_path, "train")
    (tmp_path / "CelebA-HQ-to-CelebA-mapping.txt").unlink()
    with pytest.raises(DataError, match=r"missing mapping file: .*CelebA-HQ-to-CelebA-mapping\.txt"):
        CelebAMaskHQ(tmp_path, "train")


def test_resize_helpers() -> None:
    img = np.full((64, 64, 3), 77, np.uint8)
    assert np.all(resize_bilinear(img, 512, 512) == 77)
    ramp = np.tile(np.arange(0, 256, 2, dtype=np.uint8)[None, :, None], (2, 1, 3))  # 2 x 128
    half = resize_bilinear(ramp, 1, 64)
    np.testing.assert_array_equal(half[0, :, 0], (np.arange(0, 256, 4) + 1).astype(np.uint8))  # 2-pixel means
    lab = np.arange(16, dtype=np.uint8).reshape(4, 4)
    np.testing.assert_array_equal(resize_nearest(lab, 8, 8)[::2, ::2], lab)
    np.testing.assert_array_equal(resize_nearest(resize_nearest(lab, 8, 8), 4, 4), lab)
