"""task=antispoof: model, loss, video-level evaluation, per-domain rows and overlays on a fake video set."""

from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn
from torch.utils.data import DataLoader

from facerep.backbones.vit import build_vit
from facerep.config import ConfigError, FinetuneConfig, load_config
from facerep.data.downstream.base import FaceDataset
from facerep.metrics import antispoof_scores
from facerep.tasks import TaskDataset, build_task, collate_samples
from facerep.tasks.antispoof import per_video

# (video, label, attack, domain, frame liveness scores): frame and video levels rank differently
VIDEOS = [
    ("A/live1", 1, "live", "A", [0.9, 0.3]),
    ("A/live2", 1, "live", "A", [0.7, 0.7]),
    ("A/print1", 0, "print", "A", [0.4, 0.62]),
    ("A/replay1", 0, "replay", "A", [0.2, 0.1]),
    ("B/live3", 1, "live", "B", [0.8, 0.5]),
    ("B/print2", 0, "print", "B", [0.65, 0.05]),
    ("B/replay2", 0, "replay", "B", [0.55, 0.35]),
]


class FakeVideos(FaceDataset):
    """Two frames per video; every frame's image is filled with its own index (the stub model reads it)."""

    dataset_name = "fake_antispoof"
    task = "antispoof"
    class_names = ("spoof", "live")

    def __init__(self, videos: list = VIDEOS) -> None:
        super().__init__(None, "test")
        self.frames = [(v, f) for v in videos for f in range(len(v[4]))]
        self._names = [f"{v[0]}/{f}" for v, f in self.frames]

    def video_ids(self) -> np.ndarray:
        return np.array([v[0] for v, _ in self.frames])

    def _load(self, index: int) -> dict[str, Any]:
        (video, label, attack, domain, _), frame = self.frames[index]
        image = np.full((8, 8, 3), index, dtype=np.uint8)
        return {
            "image": image,
            "label": label,
            "video": video,
            "attack": attack,
            "domain": domain,
            "frame": frame,
        }

    def scores(self) -> np.ndarray:
        return np.array([v[4][f] for v, f in self.frames])


class StubModel(nn.Module):
    """Logits whose softmax gives frame ``i`` the liveness ``scores[i]``; ``i`` is read from the image."""

    def __init__(self, scores: np.ndarray, cfg: Any) -> None:
        super().__init__()
        self.scores = torch.as_tensor(scores, dtype=torch.float64)
        self.mean, self.std = cfg.mean[0], cfg.std[0]

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        index = torch.round((images[:, 0, 0, 0].double() * self.std + self.mean) * 255).long()
        p = self.scores[index]
        return torch.stack([torch.zeros_like(p), torch.log(p / (1 - p))], dim=1).float()


def config(*extra: str) -> FinetuneConfig:
    return load_config(FinetuneConfig, None, ["task=antispoof", "data.image_size=16", *extra])


def tiny_vit() -> nn.Module:
    return build_vit("vit_tiny_patch16_224", img_size=16, patch_size=8, depth=1, embed_dim=16, num_heads=2)


def loader(dataset: FaceDataset, task: Any) -> DataLoader:
    return DataLoader(TaskDataset(dataset, task, train=False), batch_size=3, collate_fn=collate_samples)


def test_collate_keeps_video_attack_and_domain_strings():
    task = build_task(config())
    batch = next(iter(loader(FakeVideos(), task)))
    assert batch["video"] == ["A/live1", "A/live1", "A/live2"]
    assert batch["attack"] == ["live"] * 3 and batch["domain"] == ["A"] * 3
    assert batch["image"].shape == (3, 3, 16, 16) and batch["label"].tolist() == [1, 1, 1]


def test_per_video_averages_frame_scores():
    videos, attacks = np.array(["a", "a", "b", "b"]), np.array(["p", "p", "live", "live"])
    scores, labels, first = per_video(np.array([0.2, 0.4, 0.9, 0.5]), np.array([0, 0, 1, 1]), videos, attacks)
    assert first.tolist() == ["p", "live"]
    assert scores.tolist() == pytest.approx([0.3, 0.7]) and labels.tolist() == [0, 1]
    with pytest.raises(ConfigError, match="mixes live and spoof"):
        per_video(np.array([0.2, 0.4]), np.array([0, 1]), np.array(["a", "a"]))


def test_evaluate_reports_video_frame_and_domain_rows():
    dataset = FakeVideos()
    task = build_task(config())
    model = StubModel(dataset.scores(), task.augment_config())
    results = task.evaluate(model, loader(dataset, task), dataset, torch.device("cpu"))
    assert list(results) == ["full", "frame", "video/A", "frame/A", "video/B", "frame/B"]
    assert task.primary == "hter" and not task.higher_is_better

    frames = dataset.scores()
    labels = np.array([v[1] for v, _ in dataset.frames])
    attacks = np.array([v[2] for v, _ in dataset.frames])
    video_scores = np.array([np.mean(v[4]) for v in VIDEOS])
    video_labels = np.array([v[1] for v in VIDEOS])
    video_attacks = np.array([v[2] for v in VIDEOS])
    expected_video = antispoof_scores(video_scores, video_labels, attack_types=video_attacks)
    expected_frame = antispoof_scores(frames, labels, attack_types=attacks)
    for key, value in expected_video.items():
        assert results["full"][key] == pytest.approx(value, abs=1e-6), key
    for key, value in expected_frame.items():
        assert results["frame"][key] == pytest.approx(value, abs=1e-6), key
    # video level: lives 0.6, 0.7, 0.65; spoofs 0.51, 0.15, 0.35, 0.45 -> separable; frames are not
    assert results["full"]["auc"] == 1.0 and results["full"]["hter"] == 0.0
    assert results["frame"]["auc"] < 1.0
    assert results["full"]["hter_at_0.5"] == pytest.approx(
        antispoof_scores(video_scores, video_labels, 0.5)["hter"]
    )
    in_b = [i for i, v in enumerate(VIDEOS) if v[3] == "B"]
    assert results["video/B"]["auc"] == pytest.approx(
        antispoof_scores(video_scores[in_b], video_labels[in_b])["auc"]
    )
    assert all(set(row) == set(results["full"]) for row in results.values())  # one table layout


def test_a_domain_with_one_class_gets_no_row_and_a_one_class_split_is_a_one_line_error():
    videos = [*VIDEOS, ("C/live4", 1, "live", "C", [0.5, 0.5])]
    dataset = FakeVideos(videos)
    task = build_task(config())
    results = task.evaluate(
        StubModel(dataset.scores(), task.augment_config()), loader(dataset, task), dataset, "cpu"
    )
    assert "video/C" not in results and "video/A" in results
    lives = FakeVideos([v for v in VIDEOS if v[1] == 1])
    with pytest.raises(ConfigError, match="task=antispoof: both classes are needed"):
        task.evaluate(StubModel(lives.scores(), task.augment_config()), loader(lives, task), lives, "cpu")


def test_model_loss_predict_and_draw_on_a_tiny_vit():
    torch.manual_seed(0)
    dataset = FakeVideos()
    task = build_task(config())
    backbone = tiny_vit()
    model = task.build_model(backbone, dataset)
    batch = next(
        iter(DataLoader(TaskDataset(dataset, task, train=True), batch_size=4, collate_fn=collate_samples))
    )
    loss, terms = task.loss(model, batch)
    assert loss.ndim == 0 and torch.isfinite(loss) and set(terms) == {"loss"}
    loss.backward()
    assert model.head.weight.grad is not None and model.head.weight.shape == (2, 16)
    prediction = task.predict(model.eval(), batch)
    assert prediction["live"].shape == (4,) and ((prediction["live"] >= 0) & (prediction["live"] <= 1)).all()
    assert torch.allclose(prediction["live"], prediction["logits"].softmax(1)[:, 1])
    image = task.draw(dataset[0], prediction, dataset)
    assert isinstance(image, Image.Image) and image.size == (8, 8)


def test_dataset_must_name_spoof_and_live():
    class Wrong(FakeVideos):
        class_names = ("live", "spoof")

    task = build_task(config())
    backbone = tiny_vit()
    with pytest.raises(ConfigError, match=r"class_names \(spoof, live\)"):
        task.build_model(backbone, Wrong())
    with pytest.raises(ConfigError, match="data.backbone_size is for the dense tasks"):
        config("data.backbone_size=32")
