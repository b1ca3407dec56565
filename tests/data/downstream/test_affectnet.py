"""AffectNet read from a tiny fixture in the layout its authors release."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from facerep.data.downstream import AFFECTNET_CLASSES, AffectNet, build_dataset
from facerep.data.sources import DataError
from facerep.tasks.classification import classification_scores

HEADER = (
    "subDirectory_filePath,face_x,face_y,face_width,face_height,facial_landmarks,expression,valence,arousal"
)
LANDMARKS = ";".join(f"{20 + i % 30:.2f};{10 + i % 40:.2f}" for i in range(68))  # 68 x;y values
BOX = (20, 10, 30, 40)  # face_x, face_y, face_width, face_height in the 80 x 60 images
BACKGROUND, FACE = (0, 0, 255), (255, 0, 0)
# training.csv rows: (expression code, valence, arousal); codes 7, 8, 10 test what is dropped
TRAIN = [(1, 0.8, 0.3), (0, 0.0, -0.1), (6, -0.6, 0.7), (7, -0.3, 0.2), (8, -2, -2), (1, 0.5, 0.1),
         (10, -2, -2), (3, 0.2, 0.9)]  # fmt: skip
VALIDATION = [(2, -0.5, -0.2), (7, -0.4, 0.3), (9, -2, -2), (5, -0.7, 0.4)]


def write_face(path: Path, box: tuple[int, int, int, int] = BOX) -> None:
    """An 80 x 60 JPEG: blue, with the face box painted red."""
    arr = np.zeros((60, 80, 3), dtype=np.uint8)
    arr[:] = BACKGROUND
    x, y, w, h = box
    arr[y : y + h, x : x + w] = FACE
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(arr).save(path, format="JPEG", quality=95)


def make_affectnet(root: Path, train=TRAIN, validation=VALIDATION, images: bool = True) -> Path:
    """The official layout: ``Manually_Annotated_file_lists/{training,validation}.csv`` (header row, one
    face per row) and ``Manually_Annotated_Images/<subdir>/<hash>.jpg``; returns ``root``."""
    lists = root / "Manually_Annotated_file_lists"
    lists.mkdir(parents=True, exist_ok=True)
    (root / "Manually_Annotated_Images").mkdir(exist_ok=True)
    for csv_name, rows, prefix in (("training.csv", train, "tr"), ("validation.csv", validation, "va")):
        lines = [HEADER]
        for i, (code, valence, arousal) in enumerate(rows):
            rel = f"{100 + i % 3}/{prefix}{i:03d}{'e' * 40}.jpg"
            lines.append(f"{rel},{BOX[0]},{BOX[1]},{BOX[2]},{BOX[3]},{LANDMARKS},{code},{valence},{arousal}")
            if images:
                write_face(root / "Manually_Annotated_Images" / rel)
        (lists / csv_name).write_text("\n".join(lines) + "\n")
    return root


def test_splits_labels_and_dropped_codes(tmp_path: Path, capsys) -> None:
    make_affectnet(tmp_path)
    train = build_dataset("affectnet", tmp_path, "train")
    assert train.task == "classification" and not train.multi_label
    assert train.class_names == AFFECTNET_CLASSES[:7] == (
        "Neutral", "Happiness", "Sadness", "Surprise", "Fear", "Disgust", "Anger",
    )  # fmt: skip
    assert len(train) == 5 and train.labels().tolist() == [1, 0, 6, 1, 3]
    assert train.dropped == {7: 1, 8: 1, 10: 1}
    assert "affectnet train (training.csv): 5 faces of codes 0-6; dropped 3 rows of other codes " \
        "(7 Contempt: 1, 8 None: 1, 10 Non-Face: 1)" in capsys.readouterr().out  # fmt: skip
    sample = train[2]
    assert sample["label"] == 6 and isinstance(sample["label"], int)
    assert sample["name"] == f"Manually_Annotated_Images/102/tr002{'e' * 40}.jpg"
    assert sample["valence"] == pytest.approx(-0.6) and sample["arousal"] == pytest.approx(0.7)
    test = AffectNet(tmp_path, "test")  # the released validation.csv
    assert len(test) == 2 and test.labels().tolist() == [2, 5] and test.dropped == {7: 1, 9: 1}
    with pytest.raises(DataError, match=r"affectnet: unknown split 'val'; expected one of train, test"):
        AffectNet(tmp_path, "val")


def test_eight_classes_keep_contempt(tmp_path: Path) -> None:
    make_affectnet(tmp_path)
    train = build_dataset("affectnet", tmp_path, "train", num_classes=8)
    assert train.class_names == AFFECTNET_CLASSES and train.class_names[7] == "Contempt"
    assert train.labels().tolist() == [1, 0, 6, 7, 1, 3] and train.dropped == {8: 1, 10: 1}
    assert AffectNet(tmp_path, "test", num_classes=8).labels().tolist() == [2, 7, 5]
    # the classification task's metrics take the dataset's classes as for RAF-DB
    logits = np.eye(8, dtype=np.float32)[[1, 0, 6, 7, 1, 0]]
    scores = classification_scores(logits, train.labels(), train)
    assert scores["accuracy"] == pytest.approx(5 / 6)
    with pytest.raises(DataError, match=r"num_classes must be 7 \(codes 0-6\) or 8 \(codes 0-7\), got 9"):
        AffectNet(tmp_path, "train", num_classes=9)


def test_face_is_cropped_with_the_csv_box(tmp_path: Path) -> None:
    make_affectnet(tmp_path)
    crop = AffectNet(tmp_path, "train")[0]["image"]
    assert crop.shape == (BOX[3], BOX[2], 3)  # the box as annotated (margin 0)
    assert np.abs(crop.astype(int) - FACE).mean() < 12  # all face colour (JPEG blurs the edge a little)
    wide = AffectNet(tmp_path, "train", margin=0.5)[0]["image"]
    # 30 x 40 box grown by 50 %: x 12.5..57.5, y -5..65 clipped to the 60-pixel-high image
    assert wide.shape == (60, 46, 3)
    red = (wide[..., 0] > 128) & (wide[..., 2] < 128)
    assert red.mean() == pytest.approx(30 * 40 / (46 * 60), abs=0.03)  # the box, centred, in the wider crop
    assert red[:, :8].sum() == red[:, -8:].sum() == 0 and red[:, 8:38].mean() > 0.6
    whole = AffectNet(tmp_path, "train", crop="image")[0]["image"]
    assert whole.shape == (60, 80, 3)
    with pytest.raises(DataError, match=r"crop must be one of box, image, got 'face'"):
        AffectNet(tmp_path, "train", crop="face")
    with pytest.raises(DataError, match=r"margin must be a number >= 0, got -0.1"):
        AffectNet(tmp_path, "train", margin=-0.1)


def test_malformed_csv_is_a_one_line_error_naming_file_and_line(tmp_path: Path) -> None:
    make_affectnet(tmp_path)
    path = tmp_path / "Manually_Annotated_file_lists" / "training.csv"
    lines = path.read_text().splitlines()

    def error(text: str) -> str:
        path.write_text(text)
        with pytest.raises(DataError) as info:
            AffectNet(tmp_path, "train")
        message = str(info.value)
        assert "\n" not in message and str(path) in message
        return message

    bad_code = lines[3].replace(",6,", ",x6,")
    message = error("\n".join([*lines[:3], bad_code, *lines[4:]]) + "\n")
    assert "training.csv:4: expected an expression code 0..10, got 'expression=x6'" in message
    assert "training.csv:3: expected an expression code 0..10" in error(
        "\n".join([*lines[:2], lines[2].replace(",0,", ",11,")]) + "\n"
    )
    no_column = lines[0].replace(",expression,", ",emotion,")
    message = error("\n".join([no_column, *lines[1:]]) + "\n")
    assert "training.csv:1: expected a header row naming subDirectory_filePath" in message
    assert "(no expression)" in message
    assert "training.csv:2: expected numbers in face_x, face_y" in error(
        "\n".join([lines[0], lines[1].replace(",20,10,", ",twenty,10,")]) + "\n"
    )
    assert "training.csv:2: expected 9 comma-separated fields" in error(
        "\n".join([lines[0], lines[1].rsplit(",", 1)[0]]) + "\n"
    )
    assert "empty file; expected a header row" in error("\n\n")
    path.unlink()
    with pytest.raises(DataError, match=r"affectnet: missing annotation list: .*training\.csv$"):
        AffectNet(tmp_path, "train")


def test_missing_image_names_the_file_and_the_csv_line(tmp_path: Path) -> None:
    make_affectnet(tmp_path)
    train = AffectNet(tmp_path, "train")
    (tmp_path / train.sample_name(1)).unlink()
    with pytest.raises(
        DataError, match=r"affectnet: missing image: .*/tr001e+\.jpg \(training\.csv line 3\)$"
    ):
        train[1]
    assert train[0]["image"].shape[:2] == (BOX[3], BOX[2])  # the others still load
