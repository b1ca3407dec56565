"""Zero-shot evaluation of a CLIP-style face model (FaRL): prompt classifiers and image-text retrieval.

Prompt classifiers (CLIP's recipe)
    Every text of a class -- each template (``"a photo of a {} face."``) formatted with each of the class's
    names -- is encoded and L2-normalised; the class's row is the mean of those features, re-normalised
    (:func:`text_classifier`). Images are encoded, L2-normalised and scored by cosine similarity.
    Single-label sets (RAF-DB, a single-label ``generic`` set) take the argmax over classes. A multi-label
    attribute has a positive and a negative prompt set ("a photo of a face wearing glasses" / "... without
    glasses"); its score is ``cos(image, positive) - cos(image, negative)`` and it is predicted present when
    the score is > 0 (:func:`attribute_scores`).

Retrieval
    Image -> text and text -> image recall@k on a captioned set. Captions can repeat (captions generated
    from a synthetic face's few attributes, or one caption for several images), so texts are deduplicated
    and a hit is defined by identity of text: image -> text hits when one of the top k distinct texts IS the
    image's caption; text -> image (each distinct text one query) hits when one of the top k images has
    that text as caption. Ties count against the hit (a model that scores everything equally gets 0).
    Chance levels are exact expectations for a random ranking with the same duplicate structure
    (:func:`retrieval_chance`).
"""

from __future__ import annotations

import math
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from open_clip.constants import OPENAI_DATASET_MEAN, OPENAI_DATASET_STD
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset
from tqdm import tqdm

from facerep.config import ConfigError
from facerep.data.downstream import DATASETS
from facerep.data.downstream.classification import CLASS_TEMPLATES, RAFDB_PROMPTS
from facerep.data.sources import DataError
from facerep.data.transforms import BadImage
from facerep.metrics.classification import mean_class_accuracy, roc_auc
from facerep.runtime.checkpoint import CheckpointError
from facerep.runtime.errors import one_line
from facerep.tasks.classification import classification_scores

__all__ = [
    "CLASS_TEMPLATES",
    "CLIP_MEAN",
    "CLIP_STD",
    "RAFDB_PROMPTS",
    "RECALL_KS",
    "CaptionedImages",
    "PromptSet",
    "attribute_scores",
    "binary_scores",
    "caption_groups",
    "default_prompts",
    "encode_images",
    "encode_texts",
    "evaluate_classification",
    "evaluate_retrieval",
    "format_prompts",
    "majority_scores",
    "recorded_normalization",
    "resolve_prompts",
    "retrieval_chance",
    "retrieval_recall",
    "text_classifier",
]

RECALL_KS = (1, 5, 10)
# OpenAI CLIP's (and FaRL's released models') input normalisation
CLIP_MEAN: tuple[float, ...] = tuple(OPENAI_DATASET_MEAN)
CLIP_STD: tuple[float, ...] = tuple(OPENAI_DATASET_STD)

# -- default prompts; the config replaces any of them (templates, prompts.<class>, negatives.<class>)
# single-label classes: CLASS_TEMPLATES; attributes named mechanically ("Wearing_Hat" -> "wearing hat",
# absent: "not wearing hat")
ATTRIBUTE_TEMPLATES = ("a photo of a face {}.", "a photo of a person {}.")


def format_prompts(templates: Sequence[str], names: Sequence[str]) -> list[str]:
    """Every template with its ``{}`` replaced by every name: ``len(templates) * len(names)`` texts."""
    return [template.replace("{}", name) for name in names for template in templates]


@torch.no_grad()
def encode_texts(
    model: nn.Module, texts: Sequence[str], device: torch.device, batch_size: int = 256
) -> Tensor:
    """``model.encode_text`` of ``model.tokenize(texts)`` in batches, L2-normalised: ``[len(texts), E]``."""
    out = []
    for start in range(0, len(texts), batch_size):
        ids = model.tokenize(list(texts[start : start + batch_size])).to(device)
        out.append(F.normalize(model.encode_text(ids).float(), dim=-1).cpu())
    return torch.cat(out)


@torch.no_grad()
def text_classifier(
    model: nn.Module, prompts: Sequence[Sequence[str]], device: torch.device, batch_size: int = 256
) -> Tensor:
    """One row per class: its texts ``prompts[c]`` encoded and L2-normalised, averaged, re-normalised.

    Returns ``[C, E]`` float32 on the CPU, unit rows.
    """
    if any(not texts for texts in prompts):
        raise ValueError("every class needs at least one prompt")
    flat = [text for texts in prompts for text in texts]
    owner = torch.tensor([c for c, texts in enumerate(prompts) for _ in texts])
    features = encode_texts(model, flat, device, batch_size)
    sums = torch.zeros(len(prompts), features.shape[1]).index_add_(0, owner, features)
    return F.normalize(sums / torch.bincount(owner, minlength=len(prompts))[:, None], dim=-1)


@torch.no_grad()
def encode_images(
    model: nn.Module, loader: DataLoader, device: torch.device, desc: str = "images"
) -> tuple[Tensor, dict[str, Any]]:
    """L2-normalised ``model.encode_image`` of every batch's ``"image"``: ``([N, E] float32 on the CPU,
    the batches' other fields joined: tensors concatenated, lists chained)``; a progress bar on a terminal."""
    features: list[Tensor] = []
    fields: dict[str, list[Any]] = {}
    for batch in tqdm(loader, desc=desc, disable=not sys.stderr.isatty(), leave=False):
        features.append(F.normalize(model.encode_image(batch["image"].to(device)).float(), dim=-1).cpu())
        for key, value in batch.items():
            if key != "image":
                fields.setdefault(key, []).append(value)
    joined = {
        key: torch.cat(parts) if isinstance(parts[0], Tensor) else [v for part in parts for v in part]
        for key, parts in fields.items()
    }
    return torch.cat(features), joined


class MappedDataset(Dataset):
    """``fn(dataset[i])`` for every item of ``dataset`` (picklable when ``fn`` is)."""

    def __init__(self, dataset: Any, fn: Callable[[Any], dict[str, Any]]) -> None:
        self.dataset, self.fn = dataset, fn

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int) -> dict[str, Any]:
        return self.fn(self.dataset[index])


# ------------------------------------------------------------------------------------------------- prompts


@dataclass(frozen=True)
class PromptSet:
    """The texts of every class: ``positive[c]``; for multi-label attributes also ``negative[c]``."""

    names: tuple[str, ...]
    positive: tuple[tuple[str, ...], ...]
    negative: tuple[tuple[str, ...], ...] | None = None

    @property
    def multilabel(self) -> bool:
        return self.negative is not None

    def as_dict(self) -> dict[str, Any]:
        """``{class: [texts]}``, or ``{attribute: {"positive": [...], "negative": [...]}}``."""
        if self.negative is None:
            return {n: list(p) for n, p in zip(self.names, self.positive, strict=True)}
        return {
            n: {"positive": list(p), "negative": list(q)}
            for n, p, q in zip(self.names, self.positive, self.negative, strict=True)
        }


def mechanical_phrase(name: str) -> str:
    """A class or attribute name as words: ``"Wearing_Hat"`` -> ``"wearing hat"``."""
    return " ".join(name.replace("_", " ").split()).lower()


def default_prompts(
    dataset: str, names: Sequence[str], multilabel: bool
) -> tuple[tuple[str, ...], dict[str, tuple[str, ...]], dict[str, tuple[str, ...]] | None]:
    """``(templates, positive phrases, negative phrases or None)`` used where the config gives none.

    The dataset's own (:attr:`~facerep.data.downstream.base.DatasetInfo.prompts`: the synthetic attributes
    in the captions' noun phrases, RAF-DB's :data:`RAFDB_PROMPTS`) where they word every name of the same
    kind (single- or multi-label); anything else the names themselves
    (:func:`mechanical_phrase`), absent attributes as ``"not <phrase>"`` (configs/zeroshot_celeba_attr.yaml
    words CelebA's 40 attributes properly).
    """
    own = DATASETS.get(dataset).describe().prompts if dataset in DATASETS else None
    if own is not None and (own.negative is not None) == multilabel and set(names) <= set(own.positive):
        negative = None if own.negative is None else {n: own.negative[n] for n in names}
        return own.templates, {n: own.positive[n] for n in names}, negative
    if multilabel:
        positive = {n: (mechanical_phrase(n),) for n in names}
        return ATTRIBUTE_TEMPLATES, positive, {n: (f"not {p[0]}",) for n, p in positive.items()}
    return CLASS_TEMPLATES, {n: (mechanical_phrase(n),) for n in names}, None


def resolve_prompts(
    dataset: str,
    names: Sequence[str],
    multilabel: bool,
    templates: Sequence[str] | None = None,
    prompts: dict[str, Sequence[str]] | None = None,
    negatives: dict[str, Sequence[str]] | None = None,
) -> PromptSet:
    """The texts of every class of ``dataset``: :func:`default_prompts`, with ``templates`` and the classes
    named in ``prompts`` / ``negatives`` (phrases for ``{}``) replaced. Mistakes are one-line ConfigErrors."""
    if not names:
        raise ConfigError(f"{dataset}: the dataset names no classes or attributes to score")
    base_templates, positive, negative = default_prompts(dataset, names, multilabel)
    templates = base_templates if templates is None else tuple(templates)
    if not templates or any("{}" not in t for t in templates):
        raise ConfigError(f"templates must be a non-empty list of texts with a {{}}, got {list(templates)}")
    if negatives and not multilabel:
        raise ConfigError(f"negatives apply to multi-label attributes; {dataset} is single-label")
    for key, given, table in (("prompts", prompts, positive), ("negatives", negatives, negative)):
        for name, phrases in (given or {}).items():
            if name not in names:
                raise ConfigError(
                    f"{key}.{name}: {dataset} has no class {name!r} (it has {', '.join(names)})"
                )
            if not phrases or not all(isinstance(p, str) and p.strip() for p in phrases):
                raise ConfigError(f"{key}.{name}: no prompts for class {name!r} (give a list of phrases)")
            table[name] = tuple(phrases)
    for name in names:
        if not positive[name] or not all(p.strip() for p in positive[name]):
            raise ConfigError(f"prompts.{name}: no prompts for class {name!r} (give a list of phrases)")

    def texts(table: dict[str, tuple[str, ...]]) -> tuple[tuple[str, ...], ...]:
        return tuple(tuple(format_prompts(templates, table[n])) for n in names)

    return PromptSet(tuple(names), texts(positive), texts(negative) if negative is not None else None)


# ------------------------------------------------------------------------------------------ classification


def attribute_scores(images: Tensor, positive: Tensor, negative: Tensor) -> Tensor:
    """``cos(image, positive_a) - cos(image, negative_a)``: images ``[N, E]``, classifiers ``[A, E]`` (all
    unit rows) -> ``[N, A]``; an attribute is predicted present where the score is > 0."""
    return images @ positive.T - images @ negative.T


def _mean(values: Sequence[float]) -> float:
    """Mean of the defined (non-NaN) values; NaN when there are none."""
    kept = [v for v in values if not math.isnan(v)]
    return float(np.mean(kept)) if kept else float("nan")


def binary_scores(scores: Any, target: Any, dataset: Any) -> dict[str, float]:
    """Multi-label scores of ``[N, A]`` scores (present where > 0) against ``[N, A]`` 0/1 targets.

    Fine-tuning's ``mean_accuracy`` and ``acc_<name>``
    (:func:`~facerep.tasks.classification.classification_scores`), plus per attribute the balanced accuracy
    (``bacc_<name>``: the mean of the recalls of present and absent,
    :func:`~facerep.metrics.classification.mean_class_accuracy` over the two classes) and the ROC-AUC
    (``auc_<name>``), both NaN when the attribute is constant on the split, with their means over the
    defined values, ``mean_balanced_accuracy`` and ``mean_auc``.
    Chance is 0.5 for both. ``dataset`` names the attributes (``attribute_names``).
    """
    s, t = np.asarray(scores, dtype=np.float64), np.asarray(target).astype(np.int64)
    out = classification_scores(s, t, dataset)
    names = dataset.attribute_names
    bacc = [
        mean_class_accuracy((s[:, a] > 0).astype(np.int64), t[:, a], 2)
        if 0 < t[:, a].sum() < len(t)
        else math.nan
        for a in range(len(names))
    ]
    auc = [roc_auc(s[:, a], t[:, a]) for a in range(len(names))]
    out["mean_balanced_accuracy"] = _mean(bacc)
    out["mean_auc"] = _mean(auc)
    out.update({f"bacc_{n}": float(v) for n, v in zip(names, bacc, strict=True)})
    out.update({f"auc_{n}": float(v) for n, v in zip(names, auc, strict=True)})
    return out


def majority_scores(target: Any, multilabel: bool) -> np.ndarray:
    """The trivial baseline's scores on the split it is scored on, a constant for every image: per attribute
    +1 where the attribute is present in more than half of the images, else -1 (``[N, A]``); single-label
    a one-hot of the most frequent class (``[N, C]``, ``C`` = the largest label + 1)."""
    t = np.asarray(target).astype(np.int64)
    if multilabel:
        row = np.where(t.mean(axis=0) > 0.5, 1.0, -1.0)
    else:
        counts = np.bincount(t)
        row = np.eye(len(counts))[counts.argmax()]
    return np.broadcast_to(row, (t.shape[0], row.shape[0])).copy()


# ------------------------------------------------------------------------------------------------ retrieval


def caption_groups(captions: Sequence[str]) -> tuple[list[str], np.ndarray]:
    """``(distinct texts in first-seen order, [N] int64 index of each image's caption among them)``."""
    index: dict[str, int] = {}
    groups = np.asarray([index.setdefault(text, len(index)) for text in captions], dtype=np.int64)
    return list(index), groups


def retrieval_recall(
    images: Tensor, texts: Tensor, groups: Any, ks: Sequence[int] = RECALL_KS
) -> dict[str, dict[str, float]]:
    """Recall@k of image -> text and text -> image with duplicate captions (see the module docstring).

    Args:
        images: ``[N, E]`` unit image features.
        texts: ``[U, E]`` unit features of the distinct texts.
        groups: ``[N]`` index of each image's caption in ``texts`` (:func:`caption_groups`).
    Returns:
        ``{"image_to_text": {"recall@k": ...}, "text_to_image": {...}}``; a hit needs the true item ranked
        within the top k with every tie counted against it.
    """
    g = torch.as_tensor(np.asarray(groups), dtype=torch.int64)
    sim = images.double() @ texts.double().T  # [N, U]
    true = sim.gather(1, g[:, None])
    i2t_rank = (sim >= true).sum(1) - 1  # other texts scoring at least the image's own caption
    relevant = g[None, :] == torch.arange(texts.shape[0])[:, None]  # [U, N]
    sim_t = sim.T
    best = sim_t.masked_fill(~relevant, -math.inf).max(1, keepdim=True).values
    t2i_rank = ((sim_t >= best) & ~relevant).sum(1)  # irrelevant images scoring at least the best relevant
    return {
        "image_to_text": {f"recall@{k}": float((i2t_rank < k).double().mean()) for k in ks},
        "text_to_image": {f"recall@{k}": float((t2i_rank < k).double().mean()) for k in ks},
    }


def retrieval_chance(groups: Any, ks: Sequence[int] = RECALL_KS) -> dict[str, dict[str, float]]:
    """Expected recall@k of a uniformly random ranking, same keys as :func:`retrieval_recall`.

    Image -> text: one of ``U`` distinct texts is right, ``min(k, U) / U``. Text -> image: a text shared
    by ``m`` of the ``N`` images is found unless the top k hold none of them,
    ``1 - C(N - m, k) / C(N, k)``, averaged over the distinct texts.
    """
    counts = np.bincount(np.asarray(groups, dtype=np.int64))
    n, u = int(counts.sum()), len(counts)

    def found(m: int, k: int) -> float:
        total = math.comb(n, min(k, n))
        return (total - math.comb(n - m, min(k, n))) / total

    return {
        "image_to_text": {f"recall@{k}": min(k, u) / u for k in ks},
        "text_to_image": {f"recall@{k}": float(np.mean([found(int(m), k) for m in counts])) for k in ks},
    }


# ------------------------------------------------------------------------------------------------ evaluation


def _loader(dataset: Dataset, batch_size: int, num_workers: int) -> DataLoader:
    return DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=num_workers)


def evaluate_classification(
    model: nn.Module,
    dataset: Any,
    prompts: PromptSet,
    transform: Callable[[dict[str, Any]], dict[str, Any]],
    device: torch.device,
    batch_size: int = 64,
    num_workers: int = 0,
) -> dict[str, Any]:
    """Zero-shot scores of a downstream classification ``dataset`` (``transform``: sample -> ``"image"``
    ``[3, S, S]`` and ``"label"``) with its trivial baseline on the same images.

    Returns ``{"zeroshot": {subset: scores}, "baseline": {subset: scores}}``: single-label
    ``accuracy`` / ``mean_class_accuracy`` (baseline: the most frequent class), multi-label
    :func:`binary_scores` (baseline: each attribute's majority value).
    """
    loader = _loader(MappedDataset(dataset, _ImageLabel(transform)), batch_size, num_workers)
    images, fields = encode_images(model, loader, device, desc=f"{dataset.dataset_name} images")
    target = fields["label"].numpy()
    positive = text_classifier(model, prompts.positive, device, batch_size)
    if prompts.negative is not None:
        scores = attribute_scores(
            images, positive, text_classifier(model, prompts.negative, device, batch_size)
        )
        score: Callable[[Any, Any, Any], dict[str, float]] = binary_scores
    else:
        scores, score = images @ positive.T, classification_scores
    scores_np = scores.double().numpy()
    result: dict[str, Any] = {"zeroshot": {}, "baseline": {}}
    for subset, members in dataset.subsets().items():
        result["zeroshot"][subset] = score(scores_np[members], target[members], dataset)
        trivial = majority_scores(target[members], prompts.multilabel)
        result["baseline"][subset] = score(trivial, target[members], dataset)
    return result


class _ImageLabel:
    """``transform(sample)`` reduced to ``{"image", "label"}`` (picklable for DataLoader workers)."""

    def __init__(self, transform: Callable[[dict[str, Any]], dict[str, Any]]) -> None:
        self.transform = transform

    def __call__(self, sample: dict[str, Any]) -> dict[str, Any]:
        out = self.transform(sample)
        return {"image": out["image"], "label": out["label"]}


class CaptionedImages(Dataset):
    """Items of a map-style source (``load_item(i) -> (PIL image, caption or None)``, see
    :mod:`facerep.data.sources`) as ``{"image": transform(image), "caption": str, "status": int}``;
    status 0 = usable, 1 = no caption, 2 = unreadable image (its image is zeros, its caption ``""``)."""

    OK, NO_CAPTION, UNREADABLE = 0, 1, 2

    def __init__(self, source: Any, transform: Callable[[Any], Tensor], image_size: int) -> None:
        self.source, self.transform, self.image_size = source, transform, image_size

    def __len__(self) -> int:
        return len(self.source)

    def __getitem__(self, index: int) -> dict[str, Any]:
        try:
            image, caption = self.source.load_item(index)
        except BadImage:
            blank = torch.zeros(3, self.image_size, self.image_size)
            return {"image": blank, "caption": "", "status": self.UNREADABLE}
        status = self.OK if caption else self.NO_CAPTION
        return {"image": self.transform(image), "caption": caption or "", "status": status}


def evaluate_retrieval(
    model: nn.Module,
    items: CaptionedImages,
    device: torch.device,
    batch_size: int = 64,
    num_workers: int = 0,
    ks: Sequence[int] = RECALL_KS,
) -> dict[str, Any]:
    """Image <-> text recall@k over the captioned, readable items of ``items`` (the others are counted and
    left out) beside the chance level of a random ranking (see the module docstring for the hit rule).

    Returns ``{"num_images", "num_texts" (distinct), "skipped": {"no_caption", "unreadable"},
    "zeroshot": recalls, "baseline": chance}``; recalls as :func:`retrieval_recall`.
    """
    images, fields = encode_images(
        model, _loader(items, batch_size, num_workers), device, desc="caption images"
    )
    status = fields["status"].numpy()
    keep = np.flatnonzero(status == CaptionedImages.OK)
    skipped = {"no_caption": int((status == CaptionedImages.NO_CAPTION).sum()),
               "unreadable": int((status == CaptionedImages.UNREADABLE).sum())}  # fmt: skip
    if keep.size == 0:
        where = getattr(items.source, "captions_from", "the source")
        raise DataError(
            f"{getattr(items.source, 'where', 'captions')}: no readable image with a caption among "
            f"{len(status)} ({skipped['no_caption']} without a caption, {skipped['unreadable']} unreadable); "
            f"captions are read from {where}"
        )
    texts, groups = caption_groups([fields["caption"][i] for i in keep])
    text_features = encode_texts(model, texts, device, batch_size)
    return {
        "num_images": int(keep.size),
        "num_texts": len(texts),
        "skipped": skipped,
        "zeroshot": retrieval_recall(images[torch.from_numpy(keep)], text_features, groups, ks),
        "baseline": retrieval_chance(groups, ks),
    }


def recorded_normalization(
    recorded: Mapping[str, Any], source: str
) -> tuple[list[float], list[float]] | None:
    """``(mean, std)`` a facerep ``clip.safetensors`` recorded (a FaRL run writes its ``data.mean`` /
    ``data.std``; :attr:`facerep.models.clip.CLIPModel.recorded`), else ``None`` (released FaRL / OpenAI
    files record none)."""
    if "mean" not in recorded or "std" not in recorded:
        return None
    mean, std = recorded["mean"], recorded["std"]
    try:
        values = [float(v) for v in mean], [float(v) for v in std]
    except (TypeError, ValueError) as err:
        raise CheckpointError(f"{source}: unreadable mean/std metadata ({one_line(err)})") from err
    if len(values[0]) != 3 or len(values[1]) != 3:
        raise CheckpointError(f"{source}: mean/std metadata need 3 values each, got {mean} and {std}")
    return values
