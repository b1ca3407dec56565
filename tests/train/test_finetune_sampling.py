"""Class-balanced fine-tuning sampling (``data.sampler=balanced``): the draw, its DDP shares, the config."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from facerep.commands.cli import main
from facerep.config import ConfigError, FinetuneConfig, load_config
from facerep.data.downstream import build_dataset
from facerep.data.loader import BalancedSampler, class_labels

IMBALANCED = np.array([0] * 900 + [1] * 100)  # 90 / 10


def affectnet_fixture():
    """``make_affectnet`` of tests/data/downstream/test_affectnet.py (one fixture writer for both)."""
    path = Path(__file__).parents[1] / "data" / "downstream" / "test_affectnet.py"
    spec = importlib.util.spec_from_file_location("affectnet_fixture", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.make_affectnet


def test_balanced_draw_is_uniform_over_classes():
    sampler = BalancedSampler(IMBALANCED, seed=0)
    assert len(sampler) == 1000 and sampler.class_counts.tolist() == [900, 100]
    drawn = np.concatenate([sampler.epoch_draw(e).numpy() for e in range(4)])
    minority = (IMBALANCED[drawn] == 1).mean()
    # 4000 draws of a fair coin: std 0.008; a uniform shuffle would give 0.10
    assert abs(minority - 0.5) < 0.04
    # within a class every sample is equally likely: the 100 minority samples are each drawn ~20 times
    hits = np.bincount(drawn[IMBALANCED[drawn] == 1] - 900, minlength=100)
    assert hits.min() >= 5 and hits.max() <= 45


def test_same_seed_and_epoch_same_draw_and_new_epochs_differ():
    a, b = BalancedSampler(IMBALANCED, seed=3), BalancedSampler(IMBALANCED, seed=3)
    a.set_epoch(2)
    b.set_epoch(2)
    assert list(a) == list(b)  # a resumed run at epoch 2 draws what the first run did
    assert not torch.equal(a.epoch_draw(0), a.epoch_draw(1))
    assert not torch.equal(a.epoch_draw(0), BalancedSampler(IMBALANCED, seed=4).epoch_draw(0))


@pytest.mark.parametrize("n", [1000, 999])
def test_ddp_shares_are_disjoint_and_cover_the_draw(n):
    labels = IMBALANCED[:n]
    ranks = [BalancedSampler(labels, seed=1, rank=r, world_size=2) for r in (0, 1)]
    for sampler in ranks:
        sampler.set_epoch(5)
    shares = [list(s) for s in ranks]
    assert len(shares[0]) == len(shares[1]) == len(ranks[0]) == -(-n // 2)  # equal steps on every rank
    draw = ranks[0].epoch_draw(5).tolist()
    interleaved = [i for pair in zip(*shares, strict=True) for i in pair]
    assert interleaved[:n] == draw  # rank r has positions r, r + 2, ...: disjoint, together the draw
    assert interleaved[n:] == draw[: len(interleaved) - n]  # an odd draw is padded by wrapping
    single = BalancedSampler(labels, seed=1)
    single.set_epoch(5)
    assert list(single) == draw  # the same draw as one process


def test_sampler_needs_single_class_labels():
    with pytest.raises(ConfigError, match=r"data.sampler=balanced needs one class label per training sample; "
                       r"task=alignment has none"):  # fmt: skip
        load_config(FinetuneConfig, None, ["task=alignment", "data.sampler=balanced"])
    with pytest.raises(ConfigError, match=r"data.sampler must be one of uniform, balanced, got 'weighted'"):
        load_config(FinetuneConfig, None, ["data.sampler=weighted"])
    attributes = build_dataset("synthetic_attributes", None, "train", length=2)
    with pytest.raises(
        ConfigError, match=r"dataset=synthetic_attributes: it is multi-label \(8 attributes\)$"
    ):
        class_labels(attributes, "synthetic_attributes")
    with pytest.raises(ConfigError, match=r"dataset=synthetic_parsing: it is a parsing dataset$"):
        class_labels(build_dataset("synthetic_parsing", None, "train", length=2), "synthetic_parsing")
    with pytest.raises(ValueError, match="non-empty 1-D array of class ids"):
        BalancedSampler(np.zeros((3, 2), dtype=np.int64))


@pytest.mark.slow
def test_finetune_affectnet_with_the_balanced_sampler_from_the_cli(tmp_path, capsys):
    root = affectnet_fixture()(tmp_path / "affectnet")
    out = tmp_path / "run"
    args = [
        "finetune", "task=classification", "dataset=affectnet", f"data.root={root}", "data.sampler=balanced",
        "backbone=random", "backbone_arch=resnet18", f"output_dir={out}", "data.image_size=64",
        "data.num_workers=0", "train.epochs=1", "train.batch_size=2", "train.progress=log",
    ]  # fmt: skip
    assert main(args) == 0
    printed = capsys.readouterr().out
    assert "affectnet train (training.csv): 5 faces of codes 0-6; dropped 3 rows" in printed
    assert "data.sampler=balanced: train classes Neutral 1, Happiness 2, Sadness 0, Surprise 1" in printed
    results = json.loads((out / "results.json").read_text())
    assert results["primary_metric"] == "accuracy" and results["last"]["epoch"] == 1
    assert set(results["last"]["full"]) == {"accuracy", "mean_class_accuracy"}
    assert "sampler: balanced" in (out / "config.yaml").read_text()


def test_anti_spoofing_sets_give_live_and_spoof_labels_to_the_balanced_sampler():
    dataset = build_dataset("synthetic_antispoof", None, "train", length=6, frames=2, size=32)
    labels = class_labels(dataset, "synthetic_antispoof")
    assert labels.shape == (12,) and labels.tolist() == [int(dataset[i]["label"]) for i in range(12)]
    assert sorted(set(labels.tolist())) == [0, 1]
    cfg = load_config(FinetuneConfig, None, ["task=antispoof", "dataset=synthetic_antispoof",
                                             "data.sampler=balanced"])  # fmt: skip
    assert cfg.data.sampler == "balanced"
