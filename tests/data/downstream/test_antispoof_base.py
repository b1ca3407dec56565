"""Anti-spoofing datasets: the video base class, the synthetic set, OCIM concatenation."""

from __future__ import annotations

from pathlib import Path

import av
import cv2
import numpy as np
import pytest

from facerep.data.detect import Detection
from facerep.data.downstream import DATASETS, build_dataset
from facerep.data.downstream.antispoof import (
    ANTISPOOF_CLASSES,
    OCIM,
    OCIM_DATASETS,
    OCIM_PROTOCOLS,
    SyntheticAntispoof,
    VideoFaceDataset,
    VideoItem,
)
from facerep.data.sources import DataError

W, H, N = 64, 48, 10
BOX = np.array([8, 8, 24, 24], np.float32)  # a white square in every frame of the test videos


def write_video(path: Path, background: tuple[int, int, int]) -> None:
    """``N`` mpeg4 frames: ``background`` with a white square at :data:`BOX`."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with av.open(str(path), "w", format="mp4") as out:
        stream = out.add_stream("mpeg4", rate=10)
        stream.width, stream.height, stream.pix_fmt = W, H, "yuv420p"
        img = np.broadcast_to(np.array(background, np.uint8), (H, W, 3)).copy()
        img[8:24, 8:24] = 255
        for _ in range(N):
            for packet in stream.encode(av.VideoFrame.from_ndarray(img, format="rgb24")):
                out.mux(packet)
        for packet in stream.encode():
            out.mux(packet)


class TinyVideos(VideoFaceDataset):
    """Two readable videos (one with the dataset's own boxes, one without) and a broken one."""

    dataset_name = "tiny_videos"
    domain = "T"
    reads = 0

    def _videos(self) -> list[VideoItem]:
        return [
            VideoItem("live/a.mp4", "tiny/a", 1, "live", "1", {0: BOX, 9: BOX + 100}),
            VideoItem("spoof/b.mp4", "tiny/b", 0, "print", "1", None),
            VideoItem("spoof/broken.mp4", "tiny/broken", 0, "replay", "2", None),
        ]

    def _read(self, item: VideoItem, indices: list[int]) -> dict[int, np.ndarray]:
        type(self).reads += 1
        return super()._read(item, indices)


@pytest.fixture(scope="module")
def root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("tiny")
    write_video(root / "live/a.mp4", (200, 30, 30))
    write_video(root / "spoof/b.mp4", (30, 30, 200))
    (root / "spoof/broken.mp4").write_bytes(b"\x00garbage" * 64)
    return root


def test_video_dataset_samples(root: Path, capsys: pytest.CaptureFixture) -> None:
    ds = TinyVideos(root, "train", frames=3, crop_size=32, crop_expand=1.0, detector="none")
    assert "tiny_videos: skipping unreadable video spoof/broken.mp4" in capsys.readouterr().out
    assert ds.unreadable == ["spoof/broken.mp4"] and ds.attack_types == ("live", "print")
    assert len(ds) == 6 and ds.class_names == ANTISPOOF_CLASSES and ds.task == "antispoof"
    assert ds.video_ids().tolist() == ["tiny/a"] * 3 + ["tiny/b"] * 3
    assert ds.labels().tolist() == [1, 1, 1, 0, 0, 0] and ds.labels().dtype == np.int64
    s = ds[1]
    assert set(s) == {"image", "label", "video", "attack", "domain", "frame", "name"}
    assert (s["label"], s["video"], s["attack"], s["domain"], s["frame"]) == (1, "tiny/a", "live", "T", 5)
    assert s["name"] == "tiny/a#5" and s["image"].shape == (32, 32, 3) and s["image"].dtype == np.uint8
    assert s["image"].max() < 60  # frame 5's nearest dataset box is frame 9's, outside the image (black)
    assert ds[0]["image"][4:28, 4:28].min() > 200  # frame 1: frame 0's box, the white square
    assert ds.no_face_frames == 0
    b = ds[4]["image"]  # no box, no detector: the centre 48 x 48 square, mostly blue
    assert b[..., 2].mean() > 150 and ds.no_face_frames == 3


def test_detector_and_frame_cache(root: Path, tmp_path: Path) -> None:
    TinyVideos.reads = 0
    kw = {"frames": 2, "crop_size": 16, "crop_expand": 1.0, "cache": str(tmp_path / "c")}
    ds = TinyVideos(root, "test", **kw)
    ds._detector = lambda image: [Detection(BOX, None, 0.99)]  # stands in for MTCNN
    first = [ds[i]["image"] for i in range(len(ds))]
    assert TinyVideos.reads == 2 and first[3][3:13, 3:13].min() > 200  # video b cropped at the detector's box
    again = TinyVideos(root, "test", **kw)
    assert all(np.array_equal(a, again[i]["image"]) for i, a in enumerate(first))
    assert TinyVideos.reads == 2 and again._cache.hits == 2  # no second decode
    other = TinyVideos(root, "test", **{**kw, "frames": 3}, detector="none")
    other[0]
    assert TinyVideos.reads == 3  # another sampling is another cache entry
    assert (tmp_path / "c/frame_counts.json").is_file()


def test_unwritable_cache_is_one_line(root: Path, tmp_path: Path) -> None:
    (tmp_path / "f").write_text("")
    with pytest.raises(DataError, match=r"^tiny_videos: frame cache folder .* not writable .*cache=DIR"):
        TinyVideos(root, "train", cache=str(tmp_path / "f/x"))


def hf_energy(image: np.ndarray) -> float:
    return float(np.abs(cv2.Laplacian(image.astype(np.float32).mean(2), cv2.CV_32F)).mean())


def test_synthetic_antispoof() -> None:
    ds = build_dataset("synthetic_antispoof", None, "train", length=24, frames=2, size=64)
    again = SyntheticAntispoof(None, "train", length=24, frames=2, size=64)
    assert len(ds) == 48 and np.array_equal(ds[17]["image"], again[17]["image"])
    assert ds[17]["image"].shape == (64, 64, 3) and ds.domain == "synthetic"
    assert ds.labels().mean() == 0.5 and set(ds.attack_types) == {"live", "print", "replay", "mask"}
    assert not np.array_equal(ds[0]["image"], ds[1]["image"])  # frames jitter
    test = SyntheticAntispoof(None, "test", length=4, frames=2, size=64)
    assert not np.array_equal(test[0]["image"], ds[0]["image"])  # splits are disjoint draws
    shifted = SyntheticAntispoof(None, "train", length=4, frames=2, size=64, domain_shift=1)
    assert shifted.domain == "synthetic1" and not np.array_equal(shifted[0]["image"], ds[0]["image"])
    energy: dict[str, list[float]] = {}
    for i in range(0, len(ds), 2):
        s = ds[i]
        energy.setdefault(s["attack"], []).append(hf_energy(s["image"]))
    live = np.mean(energy.pop("live"))
    means = {k: np.mean(v) for k, v in energy.items()}
    assert means["print"] > 1.3 * live and means["replay"] > 1.3 * live and means["mask"] < 0.8 * live, means


def synthetic_reader(shift: int):
    def make(root: Path, split: str, **options) -> SyntheticAntispoof:
        assert root.name in OCIM_DATASETS.values() and options["frames"] == 2
        return SyntheticAntispoof(None, split, length=4, frames=2, size=32, domain_shift=shift)

    return make


def test_ocim_keeps_domains_apart(tmp_path: Path) -> None:
    readers = {d: synthetic_reader(k + 1) for k, d in enumerate("OCIM")}
    train = OCIM(tmp_path, "train", protocol="OCI_M", frames=2, readers=readers)
    test = OCIM(tmp_path, "test", protocol="OCI_M", frames=2, readers=readers)
    assert train.domain_names == ("O", "C", "I") and test.domain_names == ("M",)
    assert len(train) == 24 and train.domains().tolist() == ["O"] * 8 + ["C"] * 8 + ["I"] * 8
    assert set(test.domains()) == {"M"} and len(test) == 8
    ids = train.video_ids()
    assert ids[0] == "O/synthetic1/train/00000" and len(set(ids)) == 12
    s = train[9]
    assert s["domain"] == "C" and s["video"] == ids[9] and s["name"].startswith("C/synthetic2/")
    assert train.labels().tolist() == [s["label"] for s in (train[i] for i in range(len(train)))]
    assert train.subsets()["I"].tolist() == list(range(16, 24))
    dev = OCIM.from_sources("dev", {"A": SyntheticAntispoof(None, "dev", length=2, frames=1)}, {})
    assert dev.domains().tolist() == ["A", "A"] and dev[1]["video"] == "A/synthetic/dev/00001"


def test_ocim_protocols_are_validated(tmp_path: Path) -> None:
    assert "ocim" in DATASETS and len(OCIM_PROTOCOLS) == 6
    with pytest.raises(
        DataError, match="unknown protocol .OC_X.; expected one of OCI_M, OMI_C, OCM_I, ICM_O, MI_C, MI_O$"
    ) as err:
        build_dataset("ocim", tmp_path, "train", protocol="OC_X")
    assert "\n" not in str(err.value)
