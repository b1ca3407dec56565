"""Zero-shot math on hand-made cases: prompt ensembling, attribute scores and their metrics, retrieval with
duplicate captions and its chance level, default prompts and their overrides."""

from __future__ import annotations

import math
import re
from itertools import permutations, product
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from facerep.apps.zeroshot import (
    CLASS_TEMPLATES,
    RAFDB_PROMPTS,
    attribute_scores,
    binary_scores,
    caption_groups,
    format_prompts,
    majority_scores,
    resolve_prompts,
    retrieval_chance,
    retrieval_recall,
    text_classifier,
)
from facerep.commands.zeroshot import ZeroShotConfig
from facerep.config import ConfigError, load_config
from facerep.data.captions import ATTRIBUTE_PHRASES, attribute_prompt
from facerep.data.downstream import RAFDB_CLASSES
from facerep.data.synthetic import ATTRIBUTES
from facerep.metrics.classification import roc_auc
from facerep.tasks.classification import classification_scores

CONFIGS = Path(__file__).resolve().parents[2] / "configs"
CPU = torch.device("cpu")
CELEBA_ATTRIBUTES = [
    "5_o_Clock_Shadow", "Arched_Eyebrows", "Attractive", "Bags_Under_Eyes", "Bald", "Bangs", "Big_Lips",
    "Big_Nose", "Black_Hair", "Blond_Hair", "Blurry", "Brown_Hair", "Bushy_Eyebrows", "Chubby",
    "Double_Chin", "Eyeglasses", "Goatee", "Gray_Hair", "Heavy_Makeup", "High_Cheekbones", "Male",
    "Mouth_Slightly_Open", "Mustache", "Narrow_Eyes", "No_Beard", "Oval_Face", "Pale_Skin", "Pointy_Nose",
    "Receding_Hairline", "Rosy_Cheeks", "Sideburns", "Smiling", "Straight_Hair", "Wavy_Hair",
    "Wearing_Earrings", "Wearing_Hat", "Wearing_Lipstick", "Wearing_Necklace", "Wearing_Necktie", "Young",
]  # fmt: skip


class FakeTextModel:
    """``encode_text`` looks each text's feature up in a table (``tokenize`` -> the text's row index)."""

    def __init__(self, table: dict[str, list[float]]) -> None:
        self.texts = list(table)
        self.features = torch.tensor(list(table.values()))

    def tokenize(self, texts):
        return torch.tensor([[self.texts.index(t)] for t in texts])

    def encode_text(self, ids):
        return self.features[ids[:, 0]]


def test_format_prompts_fills_every_template_with_every_name():
    assert format_prompts(["a {}.", "the {} face"], ["x", "y"]) == [
        "a x.",
        "the x face",
        "a y.",
        "the y face",
    ]


@pytest.mark.parametrize("batch_size", [1, 2, 256])
def test_classifier_rows_are_normalised_means_of_normalised_text_features(batch_size):
    model = FakeTextModel(
        {"a1": [3.0, 0.0], "a2": [0.0, 1.0], "b1": [0.0, -5.0], "b2": [1.0, -1.0], "b3": [2, 2]}
    )
    rows = text_classifier(model, [["a1", "a2"], ["b1", "b2", "b3"]], CPU, batch_size)
    # class a: (1, 0) and (0, 1) -> mean (.5, .5) -> (1, 1) / sqrt 2 (the raw mean (1.5, .5) points elsewhere)
    assert torch.allclose(rows[0], torch.tensor([1.0, 1.0]) / math.sqrt(2))
    unit = F.normalize(torch.tensor([[0.0, -1.0], [1.0, -1.0], [1.0, 1.0]]), dim=-1)
    assert torch.allclose(rows[1], F.normalize(unit.mean(0), dim=0))
    assert torch.allclose(rows.norm(dim=1), torch.ones(2))


def test_attribute_score_is_positive_minus_negative_similarity():
    images = torch.tensor([[1.0, 0.0], [0.6, 0.8]])
    positive, negative = torch.tensor([[1.0, 0.0]]), torch.tensor([[0.0, 1.0]])
    assert torch.allclose(attribute_scores(images, positive, negative), torch.tensor([[1.0], [-0.2]]))


def test_roc_auc_matches_pairwise_counting_with_ties():
    rng = np.random.default_rng(0)
    scores, target = rng.integers(0, 4, 30).astype(float), rng.integers(0, 2, 30)
    pos, neg = scores[target == 1], scores[target == 0]
    pairs = [(p > q) + 0.5 * (p == q) for p, q in product(pos, neg)]
    assert roc_auc(scores, target) == pytest.approx(np.mean(pairs))
    assert math.isnan(roc_auc([0.1, 0.2], [1, 1]))


def test_binary_scores_by_hand():
    dataset = SimpleNamespace(attribute_names=("balanced", "rare", "never"))
    scores = np.array([[0.3, 0.5, 1.0], [-0.1, 0.5, -1.0], [0.2, -1.0, -1.0], [-0.4, -2.0, -1.0]])
    target = np.array([[1, 1, 0], [1, 0, 0], [0, 0, 0], [0, 0, 0]])
    out = binary_scores(scores, target, dataset)
    # balanced: predictions 1 0 1 0 -> accuracy .5, recalls 1/2 and 1/2; AUC: 3 of 4 pairs ordered
    # rare: predictions 1 1 0 0 -> accuracy 3/4, recalls 1 and 2/3; AUC: the positive ties a negative: 2.5/3
    # never: constant -> balanced accuracy and AUC undefined, left out of their means
    assert out["acc_balanced"] == 0.5 and out["acc_rare"] == 0.75 and out["acc_never"] == 0.75
    assert out["mean_accuracy"] == pytest.approx((0.5 + 0.75 + 0.75) / 3)
    assert out["bacc_balanced"] == 0.5 and out["bacc_rare"] == pytest.approx(5 / 6)
    assert out["auc_balanced"] == 0.75 and out["auc_rare"] == pytest.approx(5 / 6)
    assert math.isnan(out["bacc_never"]) and math.isnan(out["auc_never"])
    assert out["mean_balanced_accuracy"] == pytest.approx((0.5 + 5 / 6) / 2)
    assert out["mean_auc"] == pytest.approx((0.75 + 5 / 6) / 2)
    assert {k: out[k] for k in ("mean_accuracy", "acc_rare")} == {
        k: v
        for k, v in classification_scores(scores, target, dataset).items()
        if k in ("mean_accuracy", "acc_rare")
    }


def test_majority_baseline_is_at_chance_for_balanced_accuracy_and_auc():
    dataset = SimpleNamespace(attribute_names=("a", "b"))
    target = np.array([[1, 0], [1, 0], [0, 1], [1, 0]])
    trivial = majority_scores(target, multilabel=True)
    assert (trivial == [[1.0, -1.0]] * 4).all()
    out = binary_scores(trivial, target, dataset)
    assert out["acc_a"] == out["acc_b"] == 0.75
    assert out["mean_balanced_accuracy"] == 0.5 and out["mean_auc"] == 0.5


def test_class_prior_baseline_single_label():
    dataset = SimpleNamespace(attribute_names=None, class_names=("x", "y", "z"))
    target = np.array([2, 2, 0, 2, 1])
    out = classification_scores(majority_scores(target, multilabel=False), target, dataset)
    assert out == {"accuracy": 0.6, "mean_class_accuracy": pytest.approx(1 / 3)}


# ------------------------------------------------------------------------------------------------ retrieval


def test_caption_groups_deduplicate_in_first_seen_order():
    texts, groups = caption_groups(["a", "b", "a", "c"])
    assert texts == ["a", "b", "c"] and groups.tolist() == [0, 1, 0, 2]


def test_retrieval_recall_with_duplicate_captions_by_hand():
    # captions a b a c; texts a = e0, b = e1, c = e2
    texts = torch.eye(3)
    images = torch.tensor([[1.0, 0, 0], [0.8, 0.6, 0], [0, 0, 1.0], [0, 1.0, 0]])
    groups = [0, 1, 0, 2]
    out = retrieval_recall(images, texts, groups, ks=(1, 2, 3, 4))
    # image -> text ranks of the own caption: 0, 1, 2 (b ties a at 0: a tie counts against), 2
    assert out["image_to_text"] == {"recall@1": 0.25, "recall@2": 0.5, "recall@3": 1.0, "recall@4": 1.0}
    # text -> image: a finds image 0 first; b (image 1, .6) is beaten by image 3; c (image 3, 0) ties 0, 1 and
    # is beaten by 2
    assert out["text_to_image"] == pytest.approx({"recall@1": 1 / 3, "recall@2": 2 / 3, "recall@3": 2 / 3,
                                                  "recall@4": 1.0})  # fmt: skip


def test_retrieval_chance_by_hand_and_over_every_ranking():
    groups = [0, 1, 0, 2]  # 4 images, 3 distinct texts, "a" twice
    chance = retrieval_chance(groups, ks=(1, 2))
    assert chance["image_to_text"] == pytest.approx({"recall@1": 1 / 3, "recall@2": 2 / 3})
    # text -> image, k = 1: a 1 - 2/4, b and c 1 - 3/4; k = 2: a 1 - 1/6, b and c 1 - 3/6
    assert chance["text_to_image"] == pytest.approx({"recall@1": 1 / 3, "recall@2": 11 / 18})
    # the mean over every ranking equals it (texts = the identity, so the similarities are the image rows)
    texts = torch.eye(3)
    rows = [torch.tensor(p, dtype=torch.float64)[None, :].expand(4, 3) for p in permutations(range(3))]
    columns = [torch.tensor(p, dtype=torch.float64)[:, None].expand(4, 3) for p in permutations(range(4))]
    for direction, sims in (("image_to_text", rows), ("text_to_image", columns)):
        runs = [retrieval_recall(s, texts, groups, ks=(1, 2))[direction] for s in sims]
        assert {k: np.mean([r[k] for r in runs]) for k in runs[0]} == pytest.approx(chance[direction])


def test_identical_features_score_zero_not_one():
    out = retrieval_recall(
        torch.ones(3, 2) / math.sqrt(2), torch.ones(2, 2) / math.sqrt(2), [0, 1, 0], ks=(1,)
    )
    assert out["image_to_text"]["recall@1"] == 0.0 and out["text_to_image"]["recall@1"] == 0.0


# -------------------------------------------------------------------------------------------------- prompts


def test_synthetic_defaults_use_the_captions_phrases():
    prompts = resolve_prompts("synthetic_attributes", ATTRIBUTES, multilabel=True)
    assert prompts.multilabel and prompts.names == ATTRIBUTES
    for name, texts, negatives in zip(prompts.names, prompts.positive, prompts.negative, strict=True):
        assert all(ATTRIBUTE_PHRASES[name] in text for text in texts)
        assert attribute_prompt(name) + "." in texts  # the captions' own wording is one of the prompts
        assert negatives and set(negatives).isdisjoint(texts)


def test_rafdb_defaults_and_mechanical_names():
    rafdb = resolve_prompts("rafdb", RAFDB_CLASSES, multilabel=False)
    assert (
        rafdb.negative is None and len(rafdb.positive[1]) == len(CLASS_TEMPLATES) * 3
    )  # fear, fearful, scared
    assert "a photo of a surprised face." in rafdb.positive[0]
    celeba = resolve_prompts("celeba_attr", ["Wearing_Hat", "5_o_Clock_Shadow"], multilabel=True)
    assert celeba.positive[0] == ("a photo of a face wearing hat.", "a photo of a person wearing hat.")
    assert celeba.negative[1][0] == "a photo of a face not 5 o clock shadow."


def test_overrides_replace_templates_and_single_classes():
    given = {"prompts": {"glasses": ["specs", "eyeglasses"]}, "negatives": {"hat": ["bare head"]}}
    prompts = resolve_prompts("synthetic_attributes", ATTRIBUTES, True, templates=["{}!"], **given)
    assert prompts.positive[0] == ("specs!", "eyeglasses!")
    assert prompts.negative[ATTRIBUTES.index("hat")] == ("bare head!",)
    assert prompts.negative[0] == ("a person!",)  # the default negative (the captions' bare subject) stays
    assert prompts.as_dict()["glasses"] == {
        "positive": ["specs!", "eyeglasses!"],
        "negative": ["a person!"],
    }


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"templates": ["no slot"]}, "templates must be a non-empty list of texts with a {}"),
        ({"templates": []}, "templates must be a non-empty list"),
        ({"prompts": {"Sad": ["x"]}}, "prompts.Sad: rafdb has no class 'Sad'"),
        ({"prompts": {"Fear": []}}, "prompts.Fear: no prompts for class 'Fear'"),
        ({"prompts": {"Fear": [" "]}}, "prompts.Fear: no prompts for class 'Fear'"),
        ({"negatives": {"Fear": ["calm"]}}, "negatives apply to multi-label attributes"),
    ],
)
def test_prompt_mistakes_are_one_line_config_errors(kwargs, message):
    with pytest.raises(ConfigError, match=re.escape(message)):
        resolve_prompts("rafdb", RAFDB_CLASSES, multilabel=False, **kwargs)


def test_a_dataset_without_classes_is_a_config_error():
    with pytest.raises(ConfigError, match="names no classes"):
        resolve_prompts("generic", (), multilabel=False)


def test_rafdb_config_spells_out_the_defaults():
    cfg = load_config(ZeroShotConfig, CONFIGS / "zeroshot_rafdb.yaml")
    assert cfg.dataset == "rafdb" and tuple(cfg.templates) == CLASS_TEMPLATES
    assert {k: tuple(v) for k, v in cfg.prompts.items()} == RAFDB_PROMPTS and set(RAFDB_PROMPTS) == set(
        RAFDB_CLASSES
    )


def test_celeba_config_words_all_40_attributes_both_ways():
    cfg = load_config(ZeroShotConfig, CONFIGS / "zeroshot_celeba_attr.yaml")
    assert cfg.dataset == "celeba_attr"
    assert list(cfg.prompts) == list(cfg.negatives) == CELEBA_ATTRIBUTES
    prompts = resolve_prompts(cfg.dataset, CELEBA_ATTRIBUTES, True, cfg.templates, cfg.prompts, cfg.negatives)
    assert all(set(p).isdisjoint(n) for p, n in zip(prompts.positive, prompts.negative, strict=True))
