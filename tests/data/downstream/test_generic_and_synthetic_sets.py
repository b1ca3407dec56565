"""The generic CSV / JSON dataset, the synthetic downstream sets and the registry."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from facerep.data.downstream import DATASETS, FaceDataset, GenericDataset, build_dataset
from facerep.data.sources import DataError
from facerep.data.synthetic import ATTRIBUTES, LAPA_CLASSES, render_face


def write_image(path: Path, size: tuple[int, int] = (32, 40), seed: int = 0) -> np.ndarray:
    path.parent.mkdir(parents=True, exist_ok=True)
    arr = np.random.default_rng(seed).integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
    Image.fromarray(arr).save(path, format="PNG")
    return arr


# ------------------------------------------------------------------------------------------- registry


def test_registry_and_unknown_name() -> None:
    assert set(DATASETS) == {
        "aflw19", "wflw", "300w", "lapa", "celebamask_hq", "celeba_attr", "rafdb", "affectnet", "generic",
        "synthetic_alignment", "synthetic_parsing", "synthetic_attributes",
        "oulu_npu", "casia_fasd", "replay_attack", "msu_mfsd", "synthetic_antispoof", "ocim",
    }  # fmt: skip
    with pytest.raises(DataError, match=r"unknown downstream dataset 'nope'; available: aflw19, wflw, 300w"):
        build_dataset("nope", None, "train")
    with pytest.raises(DataError, match=r"synthetic_alignment: bad arguments \['colour'\]"):
        build_dataset("synthetic_alignment", None, "train", colour=1)
    with pytest.raises(DataError, match=r"lapa: a dataset root directory is required"):
        build_dataset("lapa", None, "train")


# ------------------------------------------------------------------------------------------ synthetic


def test_synthetic_sets_are_deterministic_and_disjoint() -> None:
    train = build_dataset("synthetic_alignment", None, "train", length=3, size=48)
    test = build_dataset("synthetic_alignment", None, "test", length=2, size=48)
    assert isinstance(train, FaceDataset) and len(train) == 3 and len(test) == 2
    assert train.num_points == 68 and train.nme_unit == "inter_ocular" and train.ocular_indices == (36, 45)
    a, b = train[1], build_dataset("synthetic_alignment", None, "train", length=3, size=48)[1]
    np.testing.assert_array_equal(a["image"], b["image"])
    np.testing.assert_array_equal(a["landmarks"], b["landmarks"])
    assert (
        a["image"].shape == (48, 48, 3)
        and a["landmarks"].shape == (68, 2)
        and a["landmarks"].dtype == np.float32
    )
    np.testing.assert_allclose(a["box"], [*a["landmarks"].min(0), *a["landmarks"].max(0)])  # landmarks' box
    assert a["visible"].all() and a["name"] == "synthetic/train/000001"
    # train, test and pre-training (seed 0) are different draws
    assert train.seed != test.seed and 0 not in (train.seed, test.seed)
    for i in range(2):
        assert not np.array_equal(train[i]["landmarks"], test[i]["landmarks"])
        assert not np.array_equal(train[i]["landmarks"], render_face(0, i, 48).landmarks)
    # defaults
    assert len(build_dataset("synthetic_alignment", None, "train")) == 2000
    assert len(build_dataset("synthetic_parsing", None, "test")) == 500
    assert train.subsets()["full"].tolist() == [0, 1, 2]


def test_synthetic_parsing_and_attributes_match_renderer() -> None:
    parsing = build_dataset("synthetic_parsing", None, "val", length=2, size=40)
    attrs = build_dataset("synthetic_attributes", None, "val", length=2, size=40)
    face = render_face(parsing.seed, 1, 40)
    p, c = parsing[1], attrs[-1]
    assert parsing.task == "parsing" and parsing.class_names == LAPA_CLASSES
    np.testing.assert_array_equal(p["mask"], face.mask)
    np.testing.assert_array_equal(p["image"], face.image)
    assert attrs.task == "classification" and attrs.attribute_names == ATTRIBUTES and attrs.multi_label
    np.testing.assert_array_equal(c["label"], face.attributes)
    assert c["label"].dtype == np.uint8
    with pytest.raises(IndexError):
        attrs[2]
    with pytest.raises(DataError, match=r"unknown split 'dev'; expected one of train, val, test"):
        build_dataset("synthetic_parsing", None, "dev")


# -------------------------------------------------------------------------------------------- generic


def test_generic_csv_alignment_with_split(tmp_path: Path) -> None:
    for i in range(3):
        write_image(tmp_path / "imgs" / f"{i}.png", seed=i)
    (tmp_path / "labels.csv").write_text(
        "image,split,x0,y0,x1,y1,x2,y2\n"
        "imgs/0.png,train,1,2,3,4,5,6\n"
        "imgs/1.png,test,10,11,12,13,14,15.5\n"
        "imgs/2.png,train,0,0,8,8,4,4\n"
    )
    train = build_dataset("generic", tmp_path, "train", task="alignment", annotations="labels.csv")
    assert train.task == "alignment" and train.num_points == 3 and train.nme_unit == "diag"
    assert [train.sample_name(i) for i in range(len(train))] == ["imgs/0.png", "imgs/2.png"]
    s = train[0]
    np.testing.assert_array_equal(s["landmarks"], [[1, 2], [3, 4], [5, 6]])
    np.testing.assert_array_equal(s["box"], [1, 2, 5, 6])
    assert s["image"].shape == (40, 32, 3)
    test = GenericDataset(tmp_path, "test")  # task inferred, labels.csv found by default
    assert len(test) == 1 and test[0]["landmarks"][2, 1] == np.float32(15.5)
    with pytest.raises(DataError, match=r"no rows with split 'val'; splits present: test, train"):
        GenericDataset(tmp_path, "val")


def test_generic_json_alignment_box_and_68_points(tmp_path: Path) -> None:
    write_image(tmp_path / "a.png")
    pts = np.random.default_rng(0).uniform(0, 30, (68, 2)).tolist()
    data = [{"image": "a.png", "landmarks": pts, "box": [1, 2, 30, 31], "visible": [True] * 67 + [False]}]
    (tmp_path / "annotations.json").write_text(json.dumps(data))
    ds = GenericDataset(tmp_path, "test")
    assert ds.task == "alignment" and ds.nme_unit == "inter_ocular" and ds.ocular_indices == (36, 45)
    s = ds[0]
    np.testing.assert_allclose(s["landmarks"], pts, rtol=1e-6)
    np.testing.assert_array_equal(s["box"], [1, 2, 30, 31])
    assert not s["visible"][67] and s["visible"][:67].all()


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        ("[" * 200_000 + "]" * 200_000, "nested 200000 deep, more than max_json_depth=100"),
        ('{"samples": [', "not valid JSON"),
        (None, "missing annotation file"),
    ],
)
def test_generic_json_that_cannot_be_read_is_one_line(
    tmp_path: Path, content: str | None, expected: str
) -> None:
    path = tmp_path / "annotations.json"
    if content is None:
        os.mkfifo(path)  # opening it would block: not taken for a file, never opened
    else:
        path.write_text(content)
    with pytest.raises(DataError, match=expected) as err:
        GenericDataset(tmp_path, "test", annotations=path)
    assert str(path) in str(err.value) and "\n" not in str(err.value)


def test_generic_parsing_csv_class_scan_and_json_classes(tmp_path: Path) -> None:
    for i in range(2):
        write_image(tmp_path / f"{i}.png", seed=i)
        mask = np.full((40, 32), i, np.uint8)
        mask[0, 0] = 3 * i
        Image.fromarray(mask, mode="L").save(tmp_path / f"{i}_mask.png")
    (tmp_path / "parts.csv").write_text("image,mask\n0.png,0_mask.png\n1.png,1_mask.png\n")
    ds = build_dataset("generic", tmp_path, "train", task="parsing", annotations="parts.csv")
    assert ds.class_names == ("background", "class_1", "class_2", "class_3")  # scanned up to the largest id
    s = ds[1]
    assert s["mask"].dtype == np.uint8 and s["mask"][0, 0] == 3 and s["mask"][5, 5] == 1
    (tmp_path / "parts.json").write_text(
        json.dumps({"classes": ["bg", "a", "b", "c"], "samples": [{"image": "0.png", "mask": "0_mask.png"}]})
    )
    ds = build_dataset("generic", tmp_path, "train", annotations="parts.json")
    assert ds.task == "parsing" and ds.class_names == ("bg", "a", "b", "c")


def test_generic_classification_single_and_multi_label(tmp_path: Path) -> None:
    for i in range(3):
        write_image(tmp_path / f"{i}.png", seed=i)
    (tmp_path / "single.csv").write_text("image,label\n0.png,2\n1.png,0\n2.png,1\n")
    ds = build_dataset("generic", tmp_path, "train", annotations="single.csv", classes=["cat", "dog", "owl"])
    assert ds.class_names == ("cat", "dog", "owl") and not ds.multi_label
    assert [ds[i]["label"] for i in range(3)] == [2, 0, 1] and isinstance(ds[0]["label"], int)
    assert build_dataset("generic", tmp_path, "x", annotations="single.csv").class_names == ("0", "1", "2")
    (tmp_path / "multi.csv").write_text("image,smiling,glasses\n0.png,1,-1\n1.png,0,1\n")
    ds = build_dataset("generic", tmp_path, "train", task="classification", annotations="multi.csv")
    assert ds.multi_label and ds.attribute_names == ("smiling", "glasses")
    np.testing.assert_array_equal(ds[0]["label"], [1, 0])
    np.testing.assert_array_equal(ds[1]["label"], [0, 1])
    assert ds[0]["label"].dtype == np.uint8
    data = {
        "samples": [
            {"image": "0.png", "attributes": {"hat": 1, "beard": 0}},
            {"image": "1.png", "attributes": {"beard": 1, "hat": 0}},
        ]
    }
    (tmp_path / "multi.json").write_text(json.dumps(data))
    ds = build_dataset("generic", tmp_path, "train", annotations="multi.json")
    assert ds.attribute_names == ("hat", "beard")
    np.testing.assert_array_equal(ds[1]["label"], [0, 1])


def test_generic_errors(tmp_path: Path) -> None:
    write_image(tmp_path / "0.png")
    (tmp_path / "a.csv").write_text("file,label\n0.png,1\n")
    with pytest.raises(DataError, match=r"a\.csv:1: expected a header with an 'image' column"):
        build_dataset("generic", tmp_path, "train", annotations="a.csv")
    (tmp_path / "b.csv").write_text("image,x0,y0\n0.png,1,2\n0.png,1\n")
    with pytest.raises(DataError, match=r"b\.csv:3: expected 3 columns like the header, got 2"):
        build_dataset("generic", tmp_path, "train", annotations="b.csv")
    (tmp_path / "c.csv").write_text("image,x0,y0\n0.png,1,two\n")
    with pytest.raises(DataError, match=r"c\.csv:2: expected numbers in the landmark / box columns"):
        build_dataset("generic", tmp_path, "train", annotations="c.csv")
    (tmp_path / "d.csv").write_text("image,label\n0.png,1.5\n")
    with pytest.raises(DataError, match=r"d\.csv: line 2: label must be an integer"):
        build_dataset("generic", tmp_path, "train", annotations="d.csv")
    (tmp_path / "e.json").write_text("[{'image': 1}]")
    with pytest.raises(DataError, match=r"e\.json: not valid JSON"):
        build_dataset("generic", tmp_path, "train", annotations="e.json")
    with pytest.raises(DataError, match=r"missing annotation file: .*absent\.csv"):
        build_dataset("generic", tmp_path, "train", annotations="absent.csv")
    with pytest.raises(DataError, match=r"pass annotations=\.\.\. or keep exactly one of"):
        build_dataset("generic", tmp_path, "train")
    (tmp_path / "f.csv").write_text("image,label\nmissing.png,1\n")
    ds = build_dataset("generic", tmp_path, "train", annotations="f.csv")
    with pytest.raises(DataError, match=r"missing image: .*missing\.png"):
        ds[0]
    with pytest.raises(DataError, match=r"unknown task 'detection'"):
        build_dataset("generic", tmp_path, "train", annotations="f.csv", task="detection")
