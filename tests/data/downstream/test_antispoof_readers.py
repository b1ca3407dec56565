"""OULU-NPU, CASIA-FASD, Replay-Attack and MSU-MFSD readers on tiny fixtures in their official layouts."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from antispoof_fixtures import make_casia, make_msu, make_oulu, make_replay, write_lines

from facerep.data.downstream.antispoof_readers import CasiaFASD, MsuMFSD, OuluNPU, ReplayAttack, dev_holdout
from facerep.data.sources import DataError


@pytest.fixture(scope="module")
def oulu(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("oulu")
    make_oulu(root)
    return root


@pytest.fixture(scope="module")
def casia(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("casia")
    make_casia(root)
    return root


@pytest.fixture(scope="module")
def replay(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("replay")
    make_replay(root)
    return root


@pytest.fixture(scope="module")
def msu(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("msu")
    make_msu(root)
    return root


def summary(ds: object) -> list[tuple[str, str, int, str, str]]:
    return [(v.path, v.video_id, v.label, v.attack, v.subject) for v in ds._videos()]  # type: ignore[attr-defined]


def assert_boxes(boxes: dict[int, np.ndarray] | None, expected: dict[int, list[float]]) -> None:
    assert boxes is not None and sorted(boxes) == sorted(expected)
    for frame, box in expected.items():
        assert boxes[frame].dtype == np.float32 and boxes[frame].shape == (4,)
        np.testing.assert_allclose(boxes[frame], box)


# ------------------------------------------------------------------------------------------- OULU-NPU


def test_oulu_split_folders_and_eye_boxes(oulu: Path) -> None:
    train = OuluNPU(oulu, "train")
    assert (train.dataset_name, train.domain, train.task) == ("oulu_npu", "O", "antispoof")
    assert summary(train) == [
        ("Train_files/1_1_01_1.avi", "oulu/Train_files/1_1_01_1", 1, "live", "01"),
        ("Train_files/1_1_01_2.avi", "oulu/Train_files/1_1_01_2", 0, "print", "01"),
        ("Train_files/1_1_01_4.avi", "oulu/Train_files/1_1_01_4", 0, "replay", "01"),
    ]
    items = train._videos()
    # eyes (27, 20) and (37, 20): 10 px apart -> 25 px square, eyes' midpoint at 40 % of its height
    assert_boxes(items[0].boxes, {0: [19.5, 10, 44.5, 35], 1: [19.5, 10, 44.5, 35], 3: [20.5, 11, 45.5, 36]})
    assert items[2].boxes is None  # no .txt -> the detector
    assert summary(OuluNPU(oulu, "dev")) == [
        ("Dev_files/1_1_21_1.avi", "oulu/Dev_files/1_1_21_1", 1, "live", "21")
    ]
    assert summary(OuluNPU(oulu, "test"))[0][2:] == (0, "replay", "36")


def test_oulu_protocols_and_annotation_options(oulu: Path) -> None:
    assert [s[0] for s in summary(OuluNPU(oulu, "train", protocol=1))] == [
        "Train_files/1_1_01_1.avi",
        "Train_files/1_1_01_2.avi",
    ]
    assert [s[1] for s in summary(OuluNPU(oulu, "train", protocol=3, fold=2))] == [
        "oulu/Train_files/1_1_01_4"
    ]
    assert len(OuluNPU(oulu, "test", protocol=1)._videos()) == 1
    corners = OuluNPU(oulu, "train", protocol=1, annotation="box")._videos()[0].boxes
    assert corners == {}  # the eye lines read as corners have y1 == y2: empty boxes are "no face"
    assert OuluNPU(oulu, "train", annotation="none")._videos()[0].boxes is None
    with pytest.raises(DataError, match=r"^oulu_npu: protocol 3 needs fold 1\.\.6, got None$"):
        OuluNPU(oulu, "train", protocol=3)
    with pytest.raises(DataError, match=r"^oulu_npu: protocol must be 1, 2, 3 or 4, got 5$"):
        OuluNPU(oulu, "train", protocol=5)
    with pytest.raises(DataError, match=r"missing protocol file: .*Protocol_2[/\\]Dev\.txt$"):
        OuluNPU(oulu, "dev", protocol=2)


def test_oulu_errors(tmp_path: Path) -> None:
    make_oulu(tmp_path)
    proto = tmp_path / "Protocols" / "Protocol_1" / "Train.txt"
    write_lines(proto, ["+1,1_1_01_1", "-1,1_1_02_2", "-2,1_1_03_5", "+1,1_1_01_2"])
    with pytest.raises(
        DataError, match=r"^oulu_npu: .*Train\.txt:4: expected \+1 exactly for file type 1"
    ) as err:
        OuluNPU(tmp_path, "train", protocol=1)
    assert "\n" not in str(err.value) and str(proto) in str(err.value)
    write_lines(proto, ["+1,1_1_01_1", "-1,1_1_02_2", "-2,1_1_03_5"])
    with pytest.raises(
        DataError,
        match=r"2 video\(s\) of .*Train\.txt are missing from .*Train_files, the first 1_1_02_2\.avi$",
    ):
        OuluNPU(tmp_path, "train", protocol=1)
    write_lines(proto, ["+1,1_1_01_1", "live 1_1_01_2"])
    with pytest.raises(
        DataError, match=r"Train\.txt:2: expected '<\+1\|-1\|-2>,P_S_UU_F', got 'live 1_1_01_2'"
    ):
        OuluNPU(tmp_path, "train", protocol=1)
    write_lines(tmp_path / "Train_files" / "1_1_01_1.txt", ["0, 10, 8, 40, 32", "2,11,9,41,33"])
    assert_boxes(
        OuluNPU(tmp_path, "train", annotation="box")._videos()[0].boxes,
        {0: [10, 8, 40, 32], 2: [11, 9, 41, 33]},
    )
    write_lines(tmp_path / "Train_files" / "1_1_01_1.txt", ["0, 27, 20, 37, 20", "1, 27, 20, 37"])
    with pytest.raises(
        DataError, match=r"1_1_01_1\.txt:2: expected 5 comma-separated numbers 'frame, left eye"
    ):
        OuluNPU(tmp_path, "train")
    (tmp_path / "Train_files" / "1_1_01_1.txt").unlink()
    (tmp_path / "Train_files" / "notes.avi").write_bytes(b"")
    with pytest.raises(DataError, match=r"notes\.avi: expected a name P_S_UU_F"):
        OuluNPU(tmp_path, "train")
    with pytest.raises(DataError, match=r"^oulu_npu: missing split folder: .*Dev_files$"):
        OuluNPU(tmp_path / "Train_files", "dev")


# ----------------------------------------------------------------------------------------- CASIA-FASD


def test_casia(casia: Path) -> None:
    train = CasiaFASD(casia, "train")
    assert (train.dataset_name, train.domain) == ("casia_fasd", "C")
    assert summary(train) == [
        ("train_release/1/1.avi", "casia/train_release/1/1", 1, "live", "train_release/1"),
        ("train_release/1/3.avi", "casia/train_release/1/3", 0, "print", "train_release/1"),
        ("train_release/2/HR_1.avi", "casia/train_release/2/HR_1", 1, "live", "train_release/2"),
        ("train_release/2/HR_3.avi", "casia/train_release/2/HR_3", 0, "cut", "train_release/2"),
    ]
    test = summary(CasiaFASD(casia, "test"))
    assert [(s[0], s[3]) for s in test] == [
        ("test_release/1/8.avi", "replay"),
        ("test_release/12/6.avi", "cut"),
        ("test_release/12/HR_4.avi", "replay"),
    ]
    assert all(v.boxes is None for v in CasiaFASD(casia, "test")._videos())
    dev = summary(CasiaFASD(casia, "dev"))  # no official dev: the last quarter of the train subjects
    assert [s[0] for s in dev] == ["train_release/2/HR_1.avi", "train_release/2/HR_3.avi"]


def test_casia_errors(tmp_path: Path) -> None:
    with pytest.raises(DataError, match=r"^casia_fasd: root .* is not a directory$"):
        CasiaFASD(tmp_path / "nowhere", "train")
    make_casia(tmp_path)
    (tmp_path / "train_release" / "2" / "9.avi").write_bytes(b"")
    with pytest.raises(DataError, match=r"2[/\\]9\.avi: expected one of 1\.avi, 2\.avi, HR_1\.avi"):
        CasiaFASD(tmp_path, "train")
    (tmp_path / "test_release").rename(tmp_path / "test")
    with pytest.raises(DataError, match=r"^casia_fasd: missing split folder: .*test_release$"):
        CasiaFASD(tmp_path, "test")


# --------------------------------------------------------------------------------- Idiap Replay-Attack


def test_replay_attack(replay: Path) -> None:
    train = ReplayAttack(replay, "train")
    assert (train.dataset_name, train.domain) == ("replay_attack", "I")
    real = "train/real/client001_session01_webcam_authenticate_controlled_1"
    assert summary(train) == [
        (f"{real}.mov", f"replay/{real}", 1, "live", "client001"),
        (
            "train/attack/fixed/attack_print_client001_session01_highdef_photo_adverse.mov",
            "replay/train/attack/fixed/attack_print_client001_session01_highdef_photo_adverse",
            0,
            "print",
            "client001",
        ),
        (
            "train/attack/hand/attack_highdef_client001_session01_highdef_video_controlled.mov",
            "replay/train/attack/hand/attack_highdef_client001_session01_highdef_video_controlled",
            0,
            "replay",
            "client001",
        ),
    ]
    # "frame x y w h" -> x1 y1 x2 y2; the all-zero frame 2 (no face) is left out
    for item in train._videos():
        assert_boxes(item.boxes, {0: [10, 8, 40, 32], 1: [11, 9, 41, 33], 3: [12, 9, 42, 34]})
    dev = summary(ReplayAttack(replay, "dev"))
    assert [(s[0].split("/")[0], s[2], s[3], s[4]) for s in dev] == [
        ("devel", 1, "live", "client003"),
        ("devel", 0, "photo", "client003"),
    ]
    assert len(ReplayAttack(replay, "test")._videos()) == 1


def test_replay_attack_errors(tmp_path: Path) -> None:
    make_replay(tmp_path)
    rel = "test/real/client009_session01_webcam_authenticate_controlled_1.face"
    face = tmp_path / "face-locations" / rel
    write_lines(face, ["0 10 8 30 24", "1 11 9 thirty 24"])
    with pytest.raises(
        DataError, match=r"controlled_1\.face:2: expected 5 whitespace-separated numbers 'frame x y w h'"
    ):
        ReplayAttack(tmp_path, "test")
    face.unlink()
    with pytest.raises(DataError, match=r"^replay_attack: missing face-location file: .*controlled_1\.face$"):
        ReplayAttack(tmp_path, "test")
    (tmp_path / "face-locations").rename(tmp_path / "faces")
    assert ReplayAttack(tmp_path, "test")._videos()[0].boxes is None  # no face-locations/ -> the detector
    (
        tmp_path / "devel" / "attack" / "hand" / "attack_mobile_client003_session01_mobile_adverse.mov"
    ).write_bytes(b"")
    with pytest.raises(DataError, match=r"mobile_adverse\.mov: expected an attack name attack_<print"):
        ReplayAttack(tmp_path, "dev")
    (tmp_path / "train" / "real").rename(tmp_path / "train" / "live")
    with pytest.raises(DataError, match=r"^replay_attack: missing folder of live videos: .*train[/\\]real$"):
        ReplayAttack(tmp_path, "train")


# ------------------------------------------------------------------------------------------- MSU-MFSD


def test_msu_mfsd(msu: Path) -> None:
    train = MsuMFSD(msu, "train")
    assert (train.dataset_name, train.domain) == ("msu_mfsd", "M")
    assert summary(train) == [
        (
            "scene01/real/real_client002_android_SD_scene01.mp4",
            "msu/scene01/real/real_client002_android_SD_scene01",
            1,
            "live",
            "client002",
        ),
        (
            "scene01/real/real_client002_laptop_SD_scene01.mov",
            "msu/scene01/real/real_client002_laptop_SD_scene01",
            1,
            "live",
            "client002",
        ),
        (
            "scene01/real/real_client003_laptop_SD_scene01.mov",
            "msu/scene01/real/real_client003_laptop_SD_scene01",
            1,
            "live",
            "client003",
        ),
        (
            "scene01/attack/attack_client002_android_SD_printed_photo_scene01.mp4",
            "msu/scene01/attack/attack_client002_android_SD_printed_photo_scene01",
            0,
            "print",
            "client002",
        ),
    ]
    items = train._videos()
    assert_boxes(items[0].boxes, {0: [10, 8, 40, 32], 1: [11, 8, 41, 33]})  # corners; frame 3 all zero
    assert items[2].boxes is None  # no .face -> the detector
    xywh = MsuMFSD(msu, "train", face_format="xywh")._videos()[1].boxes
    assert_boxes(xywh, {0: [10, 8, 50, 40], 1: [11, 8, 52, 41]})
    test = summary(MsuMFSD(msu, "test"))  # client 30 is in neither list: left out
    assert [(s[2], s[3], s[4]) for s in test] == [(0, "replay", "client021"), (0, "replay", "client021")]
    assert [s[0] for s in summary(MsuMFSD(msu, "dev"))] == [
        "scene01/real/real_client003_laptop_SD_scene01.mov"
    ]
    assert dev_holdout([2, 3, 5, 6, 7, 8, 9, 11, 12, 21, 22, 34, 53, 54, 55]) == {34, 53, 54, 55}
    assert dev_holdout(list(range(1, 21))) == {16, 17, 18, 19, 20}


def test_msu_mfsd_errors(tmp_path: Path) -> None:
    make_msu(tmp_path)
    write_lines(tmp_path / "train_sub_list.txt", ["02", "client03"])
    with pytest.raises(DataError, match=r"train_sub_list\.txt:2: expected client numbers such as '02'"):
        MsuMFSD(tmp_path, "train")
    write_lines(tmp_path / "train_sub_list.txt", ["02"])
    face = tmp_path / "scene01" / "real" / "real_client002_laptop_SD_scene01.face"
    write_lines(face, ["0,10,8,40,32", "1;11;8;41;33"])
    with pytest.raises(DataError, match=r"laptop_SD_scene01\.face:2: expected 5 comma-separated numbers"):
        MsuMFSD(tmp_path, "train")
    face.unlink()
    (tmp_path / "scene01" / "attack" / "attack_client002_laptop_SD_paper_scene01.mov").write_bytes(b"")
    with pytest.raises(
        DataError, match=r"paper_scene01\.mov: expected printed_photo, ipad_video or iphone_video"
    ):
        MsuMFSD(tmp_path, "train")
    (tmp_path / "test_sub_list.txt").unlink()
    with pytest.raises(DataError, match=r"^msu_mfsd: missing subject list: .*test_sub_list\.txt$"):
        MsuMFSD(tmp_path, "test")


# ------------------------------------------------------------------------------------------- samples


def test_one_sample_per_dataset(oulu: Path, casia: Path, replay: Path, msu: Path, tmp_path: Path) -> None:
    options = dict(frames=2, crop_size=32, cache=str(tmp_path / "cache"), detector="none")
    for cls, root, live in (
        (OuluNPU, oulu, 1),
        (CasiaFASD, casia, 1),
        (ReplayAttack, replay, 1),
        (MsuMFSD, msu, 1),
    ):
        ds = cls(root, "train", **options)
        assert len(ds) == 2 * len(ds.videos) and not ds.unreadable
        s = ds[0]
        assert s["image"].shape == (32, 32, 3) and s["image"].dtype == np.uint8
        assert s["label"] == live and s["attack"] == "live" and s["domain"] == ds.domain
        assert s["video"] == ds.videos[0].video_id and s["name"] == f"{s['video']}#{s['frame']}"
    ds = OuluNPU(oulu, "train", **options)
    assert ds.no_face_frames == 0 and ds[0]["image"][16, 16].mean() > 120  # the annotated box: the square
    assert list(ds.labels()) == [1, 1, 0, 0, 0, 0] and ds.attack_types == ("live", "print", "replay")
