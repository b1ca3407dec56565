"""Low-label fine-tuning: the labelled split, the probe start, the loss, equal budgets and validation-only
choice of the learning rate."""

import math
from dataclasses import replace

import pytest
import torch
import torch.nn.functional as F

from facerep.apps.lowlabel import (
    LowLabelConfig,
    choose_lrs,
    half_decade,
    labelled_split,
    lowlabel_finetune,
    multitask_loss,
    probed,
)
from facerep.apps.readouts import FaceSet, ReadoutConfig, pyramid_tokens, render_split, ridge_loo
from facerep.backbones import build_backbone
from facerep.data.synthetic import ATTRIBUTES

SIZE = 32


@pytest.fixture(scope="module")
def faces() -> tuple[FaceSet, FaceSet]:
    return render_split("train", 24, SIZE, progress=False), render_split("test", 8, SIZE, progress=False)


def tiny_vit() -> torch.nn.Module:
    torch.manual_seed(0)
    return build_backbone("vit_tiny_patch16_224", img_size=SIZE, depth=2, embed_dim=32, num_heads=2)


def tiny_cfg(**kw) -> LowLabelConfig:
    probe = ReadoutConfig(max_iter=20)
    return LowLabelConfig(**{"sizes": [12], "steps": 3, "batch_size": 4, "lrs": [1e-4, 1e-3], "extend": 0,
                             "levels": [0, 1], "probe": probe, **kw})  # fmt: skip


def test_labelled_split_is_a_seeded_disjoint_draw_from_train(faces):
    train, _ = faces
    fit, val = labelled_split(train, 10, 0.2, seed=3)
    assert (len(fit), len(val)) == (8, 2)
    rows = {tuple(x.flatten()[:8].tolist()) for x in torch.cat([fit.images, val.images])}
    assert len(rows) == 10  # ten distinct train faces
    again, _ = labelled_split(train, 10, 0.2, seed=3)
    other, _ = labelled_split(train, 10, 0.2, seed=4)
    assert torch.equal(again.landmarks, fit.landmarks) and not torch.equal(other.landmarks, fit.landmarks)
    assert len(labelled_split(train, 5, 0.01, seed=0)[1]) == 1  # at least one validation face
    with pytest.raises(ValueError, match="exceeds the 24 train faces"):
        labelled_split(train, 25, 0.2, seed=0)


def test_config_refuses_bad_values():
    with pytest.raises(ValueError, match="val_fraction"):
        LowLabelConfig(val_fraction=1.0)
    with pytest.raises(ValueError, match="at least 5"):
        LowLabelConfig(sizes=[3])


def test_multitask_loss_by_hand():
    out = {"landmarks": torch.tensor([[1.0, -1.0]]), "parsing": torch.zeros(1, 2, 1, 1),
           "attributes": torch.tensor([[0.0, 2.0]])}  # fmt: skip
    batch = {"landmarks": torch.tensor([[0.0, 1.0]]), "parsing": torch.tensor([0.25, 0.75]).view(1, 2, 1, 1),
             "attributes": torch.tensor([[1.0, 0.0]])}  # fmt: skip
    total, terms = multitask_loss(out, batch)
    assert terms["alignment"].item() == pytest.approx((1 + 4) / 2)
    assert terms["parsing"].item() == pytest.approx(math.log(2))  # uniform logits: log K whatever the target
    bce = (math.log(2) + (2 + math.log1p(math.exp(-2)))) / 2
    assert terms["attributes"].item() == pytest.approx(bce, rel=1e-6)
    assert total.item() == pytest.approx(2.5 + math.log(2) + bce, rel=1e-6)


def test_probe_start_is_the_frozen_ridge_on_the_fit_faces(faces):
    train, _ = faces
    fit, _ = labelled_split(train, 12, 0.25, seed=0)
    backbone = tiny_vit()
    model, targets = probed(backbone, fit, tiny_cfg())
    model.eval()
    with torch.no_grad():
        tokens = pyramid_tokens(backbone, fit.images, [0, 1])
        mean, std = tokens.mean((0, 2, 3), keepdim=True), tokens.var((0, 2, 3), keepdim=True).add(1e-5).sqrt()
        expected, _ = ridge_loo(((tokens - mean) / std).flatten(1), targets.landmarks, ((tokens - mean) / std)
                                .flatten(1))  # fmt: skip
        assert torch.allclose(model(fit.images)["landmarks"], expected, atol=1e-3)
        # the attribute probe has learned the labels' priors: better than all-zero logits on its own faces
        logits = model(fit.images)["attributes"]
        fitted = F.binary_cross_entropy_with_logits(logits, targets.attributes)
        assert fitted < F.binary_cross_entropy_with_logits(torch.zeros_like(logits), targets.attributes)
    assert logits.shape == (len(fit), len(ATTRIBUTES))


def test_equal_budgets_and_the_learning_rate_chosen_on_validation_only(faces):
    train, test = faces
    backbone = tiny_vit()
    before = {k: v.clone() for k, v in backbone.state_dict().items()}
    cfg = tiny_cfg()
    small = lowlabel_finetune(backbone, train, test, 12, cfg, seed=0)
    large = lowlabel_finetune(backbone, train, test, 24, cfg, seed=0)
    for result in (small, large):  # the same number of steps whatever the number of labels
        assert set(result["runs"]) == {"0.0001", "0.001"}
        assert all(len(run["curve"]) == cfg.steps for run in result["runs"].values())
    assert (small["fit"], small["validation"]) == (10, 2) and (large["fit"], large["validation"]) == (19, 5)
    assert all(torch.equal(v, before[k]) for k, v in backbone.state_dict().items())  # copies are tuned
    # the choice reads the validation scores only: other test faces change no choice and no validation score
    flipped = FaceSet(test.images.flip(-1), test.landmarks, test.masks, 1 - test.attributes)
    other = lowlabel_finetune(backbone, train, flipped, 12, cfg, seed=0)
    assert (
        other["chosen"]
        == small["chosen"]
        == choose_lrs(
            {
                0.0: small["probe_validation"],
                **{float(lr): run["validation"] for lr, run in small["runs"].items()},
            }
        )
    )
    validation = [r["validation"] for r in small["runs"].values()]
    assert [r["validation"] for r in other["runs"].values()] == validation
    for task, key in (("alignment", "nme"), ("parsing", "mean_f1"), ("attributes", "accuracy")):
        lr = small["chosen"][task]
        test_scores = small["runs"][str(lr)]["test"] if lr else small["probe"]  # rate 0: the probe start
        assert small[task] == {key: test_scores[task][key], "lr": lr}
    assert set(small["probe"]) == set(small["probe_validation"]) == {"alignment", "parsing", "attributes"}
    # rates chosen elsewhere (the first seed) run alone; rate 0 is the probe start, nothing to run
    fixed = {"alignment": 1e-3, "parsing": 1e-3, "attributes": 0.0}
    kept = lowlabel_finetune(backbone, train, test, 12, cfg, seed=1, chosen=fixed)
    assert set(kept["runs"]) == {"0.001"} and kept["chosen"] == fixed
    assert kept["attributes"] == {"accuracy": kept["probe"]["attributes"]["accuracy"], "lr": 0.0}


def test_the_rate_grid_goes_on_past_an_edge_a_task_chooses(faces, monkeypatch):
    """Validation prefers 1e-3 for the landmarks, 1e-4 for parsing (inside the grid) and the lowest rate for
    the attributes, each over the probe start (rate 0): the grid grows half a decade at a time past each
    edge a task sits on, ``extend`` times at most, and stops on a side once that side's choice is inside.
    Where the start beats every fine-tune of a task, the task takes rate 0 and the grid stays put below."""
    start_attributes = {"value": -1.0}  # the start's attribute score: below every fine-tune's

    def tuned(model, fit, targets, cfg, lr, seed):
        model.rate = lr
        return [0.0] * cfg.steps

    def scored(model, faces, targets, batch_size=100):
        if not hasattr(model, "rate"):  # the probe start
            return {"alignment": {"nme": 10.0}, "parsing": {"mean_f1": -10.0},
                    "attributes": {"accuracy": start_attributes["value"]}}  # fmt: skip
        return {
            "alignment": {"nme": abs(math.log10(model.rate) + 3)},  # distance from 1e-3
            "parsing": {"mean_f1": -abs(math.log10(model.rate) + 4)},
            "attributes": {"accuracy": -model.rate},
        }

    monkeypatch.setattr("facerep.apps.lowlabel.finetune_heads", tuned)
    monkeypatch.setattr("facerep.apps.lowlabel.score", scored)
    train, test = faces
    cfg = tiny_cfg(lrs=[3e-5, 1e-4, 3e-4], extend=3)
    result = lowlabel_finetune(tiny_vit(), train, test, 12, cfg, seed=0)
    assert [float(r) for r in result["runs"]] == [1e-6, 3e-6, 1e-5, 3e-5, 1e-4, 3e-4, 1e-3, 3e-3]
    assert result["chosen"] == {"alignment": 1e-3, "parsing": 1e-4, "attributes": 1e-6}
    once = lowlabel_finetune(tiny_vit(), train, test, 12, replace(cfg, extend=1), seed=0)
    assert [float(r) for r in once["runs"]] == [1e-5, 3e-5, 1e-4, 3e-4, 1e-3]
    inside = lowlabel_finetune(tiny_vit(), train, test, 12, replace(cfg, lrs=[1e-6, 1e-4, 1e-2]), seed=0)
    assert [float(r) for r in inside["runs"]] == [3e-8, 1e-7, 3e-7, 1e-6, 1e-4, 1e-2]  # the low edge only
    start_attributes["value"] = 0.0  # the start beats every fine-tune on the attributes
    kept = lowlabel_finetune(tiny_vit(), train, test, 12, cfg, seed=0)
    assert [float(r) for r in kept["runs"]] == [3e-5, 1e-4, 3e-4, 1e-3, 3e-3]  # the high edge only
    assert kept["chosen"] == {"alignment": 1e-3, "parsing": 1e-4, "attributes": 0.0}
    assert kept["attributes"] == {"accuracy": 0.0, "lr": 0.0}
    assert half_decade(3e-4 * 10**0.5) == 1e-3 and half_decade(3e-5 / 10**0.5) == 1e-5


def test_choose_lrs_per_task_direction_and_ties():
    validation = {
        1e-4: {"alignment": {"nme": 0.10}, "parsing": {"mean_f1": 0.5}, "attributes": {"accuracy": 0.8}},
        1e-3: {"alignment": {"nme": 0.08}, "parsing": {"mean_f1": 0.4}, "attributes": {"accuracy": 0.8}},
    }
    assert choose_lrs(validation) == {"alignment": 1e-3, "parsing": 1e-4, "attributes": 1e-4}
