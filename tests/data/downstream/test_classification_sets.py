"""CelebA attributes and RAF-DB read from tiny fixtures in their official layouts."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from facerep.data.downstream import RAFDB, RAFDB_CLASSES, CelebAAttributes, build_dataset
from facerep.data.sources import DataError


def write_image(path: Path, size: tuple[int, int], seed: int) -> np.ndarray:
    path.parent.mkdir(parents=True, exist_ok=True)
    arr = np.random.default_rng(seed).integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
    Image.fromarray(arr).save(path, format="PNG")
    return arr


ATTR_NAMES = [f"Attr_{i:02d}" for i in range(40)]


def make_celeba(root: Path, files: list[str], parts: list[int]) -> np.ndarray:
    rng = np.random.default_rng(0)
    values = rng.choice([-1, 1], size=(len(files), 40))
    lines = [str(len(files)), " ".join(ATTR_NAMES)]
    for f, v in zip(files, values, strict=True):
        lines.append(
            f + " " + " ".join(f"{x:2d}" for x in v)
        )  # CelebA pads with spaces: "000001.jpg -1  1 ..."
        write_image(root / "img_align_celeba" / f, (36, 44), int(f[:6]))
    (root / "list_attr_celeba.txt").write_text("\n".join(lines) + "\n")
    (root / "list_eval_partition.txt").write_text(
        "".join(f"{f} {p}\n" for f, p in zip(files, parts, strict=True))
    )
    return values


def test_celeba_attr_split_and_labels(tmp_path: Path) -> None:
    files = ["000001.jpg", "000002.jpg", "000003.jpg", "000004.jpg", "000005.jpg"]
    values = make_celeba(tmp_path, files, [0, 2, 0, 1, 2])
    train = build_dataset("celeba_attr", tmp_path, "train")
    assert train.task == "classification" and train.multi_label and train.class_names is None
    assert train.attribute_names == tuple(ATTR_NAMES)
    assert [train.sample_name(i) for i in range(len(train))] == [
        "img_align_celeba/000001.jpg",
        "img_align_celeba/000003.jpg",
    ]
    test = CelebAAttributes(tmp_path, "test")
    assert len(test) == 2 and len(CelebAAttributes(tmp_path, "val")) == 1
    s = test[1]
    assert s["name"] == "img_align_celeba/000005.jpg" and s["image"].shape == (44, 36, 3)
    assert s["label"].dtype == np.uint8 and s["label"].shape == (40,)
    np.testing.assert_array_equal(s["label"], (values[4] == 1).astype(np.uint8))  # -1/1 -> 0/1


def test_celeba_attr_errors(tmp_path: Path) -> None:
    files = ["000001.jpg", "000002.jpg"]
    make_celeba(tmp_path, files, [0, 0])
    path = tmp_path / "list_attr_celeba.txt"
    lines = path.read_text().splitlines()
    path.write_text("\n".join([*lines[:3], lines[3].replace("-1", "0", 1).replace(" 1", " 0", 1)]) + "\n")
    with pytest.raises(
        DataError, match=r"list_attr_celeba\.txt:4: expected a file name then 40 values -1 or 1"
    ):
        CelebAAttributes(tmp_path, "train")
    path.write_text("\n".join(["3", *lines[1:]]) + "\n")
    with pytest.raises(DataError, match=r"line 1 announces 3 images, the file lists 2"):
        CelebAAttributes(tmp_path, "train")
    path.write_text("\n".join([lines[0], " ".join(ATTR_NAMES[:39]), *lines[2:]]) + "\n")
    with pytest.raises(DataError, match=r"list_attr_celeba\.txt:2: expected 40 attribute names"):
        CelebAAttributes(tmp_path, "train")
    path.write_text("\n".join(lines) + "\n")
    (tmp_path / "list_eval_partition.txt").unlink()
    with pytest.raises(DataError, match=r"missing partition file: .*list_eval_partition\.txt"):
        CelebAAttributes(tmp_path, "train")


def make_rafdb(root: Path) -> None:
    entries = [("train_00001.jpg", 5), ("train_00002.jpg", 1), ("test_0001.jpg", 7), ("train_00003.jpg", 4),
               ("test_0002.jpg", 2)]  # fmt: skip
    (root / "EmoLabel").mkdir(parents=True)
    (root / "EmoLabel" / "list_patition_label.txt").write_text("".join(f"{n} {lab}\n" for n, lab in entries))
    for i, (n, _) in enumerate(entries):
        write_image(root / "Image" / "aligned" / n.replace(".jpg", "_aligned.jpg"), (40, 40), i)


def test_rafdb_labels_and_split(tmp_path: Path) -> None:
    make_rafdb(tmp_path)
    train = build_dataset("rafdb", tmp_path, "train")
    assert (
        train.class_names
        == RAFDB_CLASSES
        == ("Surprise", "Fear", "Disgust", "Happiness", "Sadness", "Anger", "Neutral")
    )
    assert not train.multi_label
    assert len(train) == 3
    assert [train[i]["label"] for i in range(3)] == [4, 0, 3]  # 1..7 -> 0..6
    assert train[0]["name"] == "Image/aligned/train_00001_aligned.jpg"
    assert isinstance(train[0]["label"], int) and train[0]["image"].shape == (40, 40, 3)
    test = RAFDB(tmp_path, "test")
    assert [test.sample_name(i) for i in range(2)] == [
        "Image/aligned/test_0001_aligned.jpg",
        "Image/aligned/test_0002_aligned.jpg",
    ]
    assert test[0]["label"] == 6 and RAFDB_CLASSES[test[0]["label"]] == "Neutral"


def test_rafdb_errors(tmp_path: Path) -> None:
    make_rafdb(tmp_path)
    path = tmp_path / "EmoLabel" / "list_patition_label.txt"
    path.write_text("train_00001.jpg 5\ntrain_00002.jpg 8\n")
    with pytest.raises(DataError, match=r"list_patition_label\.txt:2: expected 'train_XXXXX\.jpg"):
        RAFDB(tmp_path, "train")
    path.unlink()
    with pytest.raises(DataError, match=r"missing label list: .*EmoLabel/list_patition_label\.txt"):
        RAFDB(tmp_path, "train")
    with pytest.raises(DataError, match=r"rafdb: unknown split 'val'; expected one of train, test"):
        RAFDB(tmp_path, "val")
