"""Low-label fine-tuning: what a backbone's weights are worth when they are trained on a few labelled faces.

A frozen read-out hides what fine-tuning shows (MAE's fine-tuning gains over scratch, FaRL's few-shot
tables, where pre-training pays most at 1-10 % of the labels). Here a backbone is trained end to end, with
the frozen read-outs' three linear heads on top (:class:`ReadoutHeads`), on ``n`` labelled faces:

* the ``n`` faces are a seeded draw from the benchmark's train faces; ``val_fraction`` of them are held out
  as the validation split, the rest are trained on; the test faces are never seen before the final score;
* one fine-tune trains the three heads at once (landmark coordinates standardised with the train faces'
  statistics, mean-squared error; parsing cross-entropy on cell class fractions; attribute binary
  cross-entropy: each starts near its trivial baseline's loss, so no term dominates by its units);
* the heads start from the frozen read-outs fitted on the fit split (ridge for the landmarks, L-BFGS for
  the rest: linear probing, then fine-tuning, LP-FT, Kumar et al. 2022), so a fine-tune starts where the
  frozen column ends and the backbone's weights matter from the first step; zero-initialised heads under
  AdamW spend a short budget learning the label priors and wreck the features on the way (measured:
  attribute accuracy 0.51 against a majority class of 0.80 after 60 steps);
* every backbone gets the same budget: ``steps`` AdamW steps of ``batch_size`` faces, whatever ``n``; the
  landmark head, which reads all ``G x G`` tokens at once, learns at ``1 / G^2`` of the rate (Adam's step
  moves an output by about the rate times the fan-in); the learning rate of each task is chosen from
  ``lrs`` by that task's validation score only (:func:`choose_lrs`), and the test score reported is that
  fine-tune's. Rate 0, the probe start itself, is a candidate too: a fine-tune that does not beat its start
  on validation is not taken, and the grid does not go on below a rate that lost to the start.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from facerep.apps.readouts import (
    FaceSet,
    ReadoutConfig,
    attributes_accuracy,
    fit_parsing_decoder,
    landmark_nme,
    lbfgs_fit,
    parsing_f1,
    pyramid_tokens,
    ridge_fit,
    soft_targets,
)
from facerep.data.synthetic import ATTRIBUTES, LAPA_CLASSES
from facerep.runtime.optim import build_optimizer, split_param_groups, timm_excluded
from facerep.runtime.schedules import Schedule
from facerep.train.step import StepLoop

# task -> (validation metric key, higher is better)
SCORES: dict[str, tuple[str, bool]] = {
    "alignment": ("nme", False),
    "parsing": ("mean_f1", True),
    "attributes": ("accuracy", True),
}


@dataclass
class LowLabelConfig:
    """The low-label fine-tuning recipe (the same for every backbone)."""

    sizes: list[int] = field(default_factory=lambda: [100, 500])  # labelled faces per fine-tune ([]: none)
    val_fraction: float = 0.2  # of the labelled faces, held out to choose the learning rate
    steps: int = 60  # AdamW steps per fine-tune, whatever the size (equal budgets)
    batch_size: int = 32
    lrs: list[float] = field(default_factory=lambda: [3e-5, 1e-4, 3e-4])  # the grid each task chooses from
    # rates added past an edge, at most, per side: while a task's choice is the lowest or highest rate run,
    # one more rate half a decade past it (1e-3 after 3e-4) runs, so no choice is clipped by the grid (at 2,
    # a random ResNet-18 still chose the last added rate, 3e-3: docs/benchmark.md)
    extend: int = 4
    weight_decay: float = 0.05
    warmup_fraction: float = 0.1  # of the steps: linear warm-up, then cosine to zero
    parsing_cells: int = 4  # each token predicts the classes of cells x cells sub-cells (as the frozen one)
    levels: list[int] | None = None  # pyramid levels the heads read (default: the backbone's)
    probe: ReadoutConfig = field(default_factory=ReadoutConfig)  # the heads' start: the frozen recipe

    def __post_init__(self) -> None:
        if self.sizes and min(self.sizes) < 5:  # empty: no fine-tuning column
            raise ValueError(f"lowlabel.sizes must list sizes of at least 5 faces, got {self.sizes}")
        if not 0.0 < self.val_fraction < 1.0:
            raise ValueError(f"lowlabel.val_fraction must be in (0, 1), got {self.val_fraction}")
        if self.steps < 1 or self.batch_size < 1 or not self.lrs or min(self.lrs) <= 0:
            raise ValueError("lowlabel.steps and lowlabel.batch_size must be >= 1 and lowlabel.lrs positive")
        if self.extend < 0:
            raise ValueError(f"lowlabel.extend must be >= 0, got {self.extend}")


def labelled_split(train_set: FaceSet, n: int, val_fraction: float, seed: int) -> tuple[FaceSet, FaceSet]:
    """``n`` faces drawn from ``train_set`` by ``seed`` -> ``(fit, validation)``; validation is
    ``round(n * val_fraction)`` of them (at least one, and at least one face is left to fit)."""
    if n > len(train_set):
        raise ValueError(f"lowlabel size {n} exceeds the {len(train_set)} train faces (demo train_length)")
    order = torch.from_numpy(np.random.default_rng(seed).permutation(len(train_set))[:n])
    n_val = min(max(1, round(n * val_fraction)), n - 1)
    return train_set.subset(order[n_val:]), train_set.subset(order[:n_val])


class ReadoutHeads(nn.Module):
    """A backbone with the frozen read-outs' three linear heads, trained end to end.

    The tokens (:func:`~facerep.apps.readouts.pyramid_tokens`, ``[N, C, G, G]``) are batch-normalised
    without affine parameters (the frozen read-outs z-score them); then

    * landmarks: one linear map of all tokens to the 68 standardised coordinates ``[N, 136]``;
    * parsing: per token, a linear map to the logits of its ``cells x cells`` sub-cells plus a bias per cell
      position, pixel-shuffled to ``[N, K, G * cells, G * cells]``;
    * attributes: a linear map of the tokens' spatial mean ``[N, C]`` to one logit per attribute.

    The heads start at zero; :func:`probe_init_` fits them on the frozen tokens.
    """

    def __init__(self, backbone: nn.Module, size: int, levels: Sequence[int], cells: int) -> None:
        super().__init__()
        self.backbone, self.levels, self.cells = backbone, list(levels), cells
        with torch.no_grad():
            was_training = backbone.training
            probe = pyramid_tokens(backbone.eval(), torch.zeros(1, 3, size, size), self.levels)
            backbone.train(was_training)
        channels, grid = probe.shape[1], probe.shape[-1]
        classes = len(LAPA_CLASSES)
        self.norm = nn.BatchNorm2d(channels, affine=False)
        self.landmarks = nn.Linear(channels * grid * grid, 68 * 2)
        self.parsing = nn.Conv2d(channels, classes * cells * cells, 1, bias=False)
        self.parsing_bias = nn.Parameter(torch.zeros(1, classes * cells * cells, grid, grid))
        self.attributes = nn.Linear(channels, len(ATTRIBUTES))
        for param in (*self.landmarks.parameters(), self.parsing.weight, *self.attributes.parameters()):
            nn.init.zeros_(param)

    def forward(self, images: Tensor) -> dict[str, Tensor]:
        """``images [N, 3, S, S]`` -> ``{"landmarks": [N, 136], "parsing": [N, K, G*c, G*c],
        "attributes": [N, A]}`` (standardised coordinates, logits, logits)."""
        tokens = self.norm(pyramid_tokens(self.backbone, images, self.levels))
        parsing = F.pixel_shuffle(self.parsing(tokens) + self.parsing_bias, self.cells)
        return {
            "landmarks": self.landmarks(tokens.flatten(1)),
            "parsing": parsing,
            "attributes": self.attributes(tokens.mean((2, 3))),
        }


@dataclass(frozen=True)
class Targets:
    """The fit split's training targets: standardised landmarks, parsing cell fractions, attributes."""

    landmarks: Tensor  # [N, 136]
    parsing: Tensor  # [N, K, G*c, G*c]
    attributes: Tensor  # [N, A] float 0/1
    mean: Tensor  # [136] crop pixels: the standardisation undone by ``landmarks * std + mean``
    std: Tensor  # [136]


def training_targets(faces: FaceSet, out_size: int) -> Targets:
    """Targets of ``faces`` for :class:`ReadoutHeads` whose parsing output is ``out_size`` cells a side."""
    points = faces.landmarks.flatten(1)
    mean, std = points.mean(0), points.std(0).clamp_min(1e-6)
    return Targets((points - mean) / std, soft_targets(faces.masks, out_size), faces.attributes.float(), mean,
                   std)  # fmt: skip


def multitask_loss(out: dict[str, Tensor], batch: dict[str, Tensor]) -> tuple[Tensor, dict[str, Tensor]]:
    """Sum of the three terms (MSE on standardised coordinates, soft cross-entropy, BCE), and the terms."""
    terms = {
        "alignment": F.mse_loss(out["landmarks"], batch["landmarks"]),
        "parsing": -(batch["parsing"] * F.log_softmax(out["parsing"], dim=1)).sum(1).mean(),
        "attributes": F.binary_cross_entropy_with_logits(out["attributes"], batch["attributes"]),
    }
    return sum(terms.values()), terms


def probe_init_(model: ReadoutHeads, fit: FaceSet, targets: Targets, cfg: ReadoutConfig) -> None:
    """Fit ``model``'s normalisation and heads on the frozen tokens of ``fit`` (the frozen read-outs' recipe
    on the fine-tune's own inputs): batch-norm statistics of the fit tokens, ridge for the landmarks
    (leave-one-out strength), L-BFGS to convergence for parsing and attributes."""
    model.eval()
    with torch.no_grad():
        tokens = torch.cat([pyramid_tokens(model.backbone, fit.images[i : i + 100], model.levels)
                            for i in range(0, len(fit), 100)])  # fmt: skip
        model.norm.running_mean.copy_(tokens.mean((0, 2, 3)))
        model.norm.running_var.copy_(tokens.var((0, 2, 3)))
        x = model.norm(tokens)
        weight, bias, _ = ridge_fit(x.flatten(1), targets.landmarks)
        model.landmarks.weight.copy_(weight.T)
        model.landmarks.bias.copy_(bias)

    def attributes_loss() -> Tensor:
        bce = F.binary_cross_entropy_with_logits(model.attributes(x.mean((2, 3))), targets.attributes)
        return bce + cfg.probe_weight_decay * model.attributes.weight.pow(2).sum()

    weight, bias, _ = fit_parsing_decoder(x, targets.parsing, cfg.parsing_weight_decay, cfg.max_iter)
    with torch.no_grad():
        model.parsing.weight.copy_(weight.view_as(model.parsing.weight))
        model.parsing_bias.copy_(bias)
    lbfgs_fit(list(model.attributes.parameters()), attributes_loss, cfg.max_iter)
    model.train()


@torch.no_grad()
def score(model: ReadoutHeads, faces: FaceSet, targets: Targets, batch_size: int = 100) -> dict[str, dict]:
    """The three scores of ``model`` (eval mode) on ``faces``: ``{"alignment": {"nme"}, "parsing":
    {"mean_f1"}, "attributes": {"accuracy"}}``, as the frozen read-outs score them."""
    was_training = model.training
    model.eval()
    points, classes, logits = [], [], []
    size = faces.size
    for start in range(0, len(faces), batch_size):
        out = model(faces.images[start : start + batch_size])
        points.append(out["landmarks"] * targets.std + targets.mean)
        up = F.interpolate(out["parsing"], size=(size, size), mode="bilinear", align_corners=False)
        classes.append(up.argmax(1))
        logits.append(out["attributes"])
    model.train(was_training)
    return {
        "alignment": {"nme": landmark_nme(torch.cat(points).view_as(faces.landmarks).numpy(), faces)},
        "parsing": {"mean_f1": parsing_f1(torch.cat(classes).numpy(), faces)},
        "attributes": {"accuracy": attributes_accuracy(torch.cat(logits).numpy(), faces)},
    }


def probed(backbone: nn.Module, fit: FaceSet, cfg: LowLabelConfig) -> tuple[ReadoutHeads, Targets]:
    """``backbone`` (modified in place, made trainable) with :class:`ReadoutHeads` fitted by
    :func:`probe_init_` on ``fit``, in train mode, and the fit split's targets."""
    levels = cfg.levels if cfg.levels is not None else backbone.default_levels
    model = ReadoutHeads(backbone.requires_grad_(True), fit.size, levels, cfg.parsing_cells).train()
    targets = training_targets(fit, model.parsing_bias.shape[-1] * cfg.parsing_cells)
    probe_init_(model, fit, targets, cfg.probe)
    return model, targets


def finetune_heads(
    model: ReadoutHeads, fit: FaceSet, targets: Targets, cfg: LowLabelConfig, lr: float, seed: int
) -> list[float]:
    """Fine-tune ``model`` (in place: backbone and heads, e.g. from :func:`probed`) on ``fit`` for
    ``cfg.steps`` steps at learning rate ``lr``; returns the loss after every step."""
    torch.manual_seed(seed)
    wide = model.landmarks.weight  # fan-in C * G * G: its rate is scaled by 1 / G^2 (the module docstring)
    named = [(name, p) for name, p in model.named_parameters() if p is not wide]
    groups = split_param_groups(named, cfg.weight_decay, timm_excluded(model))
    grid = model.parsing_bias.shape[-1]
    groups.append({"params": [wide], "weight_decay": cfg.weight_decay, "lr_scale": 1.0 / grid**2})
    optimizer = build_optimizer("adamw", groups, lr, betas=(0.9, 0.999), momentum=0.9, fused=False)
    loop = StepLoop(model, optimizer, torch.device("cpu"))
    schedule = Schedule(lr, warmup_steps=round(cfg.warmup_fraction * cfg.steps))
    generator = torch.Generator().manual_seed(seed)

    def batches():  # reshuffled each pass over the fit split; a batch never spans two passes
        while True:
            order = torch.randperm(len(fit), generator=generator)
            for start in range(0, len(fit) - min(cfg.batch_size, len(fit)) + 1, cfg.batch_size):
                index = order[start : start + cfg.batch_size]
                yield {"images": fit.images[index], "landmarks": targets.landmarks[index],
                       "parsing": targets.parsing[index],
                       "attributes": targets.attributes[index]}  # fmt: skip

    def compute(net: nn.Module, batch: dict[str, Tensor]) -> tuple[Tensor, dict[str, Tensor]]:
        return multitask_loss(net(batch["images"]), batch)

    stream, curve = batches(), []
    for step in range(cfg.steps):
        for group in optimizer.param_groups:
            group["lr"] = schedule.at(step, cfg.steps) * group.get("lr_scale", 1.0)
        loss, _ = loop.step(stream, compute)
        curve.append(float(loss))
    return curve


def half_decade(rate: float) -> float:
    """``rate`` snapped to the nearest (in log scale) of 1 or 3 times a power of ten (a usual grid)."""
    power = 10.0 ** math.floor(math.log10(rate))
    mantissa = rate / power
    return float(f"{(1 if mantissa < 3**0.5 else 3 if mantissa < 30**0.5 else 10) * power:.1g}")


def choose_lrs(validation: dict[float, dict[str, dict]]) -> dict[str, float]:
    """Per task, the learning rate whose fine-tune scored best on the validation split (``validation``:
    lr -> :func:`score` output); ties go to the smaller rate."""
    chosen = {}
    for task, (key, higher) in SCORES.items():
        ranked = sorted(validation, key=lambda lr: ((-1 if higher else 1) * validation[lr][task][key], lr))
        chosen[task] = ranked[0]
    return chosen


def lowlabel_finetune(
    backbone: nn.Module,
    train_set: FaceSet,
    test_set: FaceSet,
    n: int,
    cfg: LowLabelConfig,
    seed: int,
    chosen: dict[str, float] | None = None,
) -> dict:
    """Fine-tune copies of ``backbone`` on ``n`` labelled faces (drawn by ``seed``) and score them.

    Without ``chosen``, one fine-tune per rate of ``cfg.lrs`` and each task takes the rate its validation
    score prefers (:func:`choose_lrs`), rate 0 (the probe start itself, not fine-tuned) included: a fine-tune
    that does not beat its start on validation is not taken. While a task's choice is the lowest or highest
    rate run, one more rate half a decade past that edge runs (:func:`half_decade`; ``cfg.extend`` at most
    per side) and the tasks choose again. With ``chosen`` (task -> rate, e.g. chosen on another seed's
    validation split), only those rates run. ``backbone`` itself is left untouched.

    Returns ``{task: {metric: test value, "lr": rate}, "chosen": {task: rate}, "probe": test scores of the
    heads' start (rate 0), "probe_validation": its validation scores, "runs": {rate: {"validation": scores,
    "test": scores, "curve": losses}}, "fit": faces, "validation": faces}`` (JSON-ready).
    """
    fit, validation = labelled_split(train_set, n, cfg.val_fraction, seed)
    start, targets = probed(copy.deepcopy(backbone), fit, cfg)  # one probe, the start of every rate
    probe, probe_validation = score(start, test_set, targets), score(start, validation, targets)
    runs: dict[float, dict] = {}

    def run(lr: float) -> None:
        model = copy.deepcopy(start)
        curve = finetune_heads(model, fit, targets, cfg, lr, seed)
        runs[lr] = {"validation": score(model, validation, targets), "test": score(model, test_set, targets),
                    "curve": curve}  # fmt: skip

    def choose() -> dict[str, float]:
        return choose_lrs({0.0: probe_validation, **{lr: r["validation"] for lr, r in runs.items()}})

    for lr in sorted(set(chosen.values()) - {0.0}) if chosen else cfg.lrs:
        run(lr)
    if not chosen:
        chosen = choose()
        for _ in range(cfg.extend if len(runs) > 1 else 0):  # one rate is a fixed rate, not a grid
            low, high = min(runs), max(runs)
            past = [half_decade(r) for r, edge in ((low / 10**0.5, low), (high * 10**0.5, high))
                    if edge in chosen.values()]  # fmt: skip
            if not past:
                break
            for lr in past:
                run(lr)
            chosen = choose()
    tests = {0.0: probe, **{lr: r["test"] for lr, r in runs.items()}}
    result: dict = {task: {**tests[lr][task], "lr": lr} for task, lr in chosen.items()}
    result.update(chosen=chosen, probe=probe, probe_validation=probe_validation,
                  runs={str(lr): r for lr, r in sorted(runs.items())}, fit=len(fit),
                  validation=len(validation))  # fmt: skip
    return result
