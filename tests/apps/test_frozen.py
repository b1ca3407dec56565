"""Frozen-feature read-outs: closed-form ridge, the per-token parsing decoder, the probe and the baselines."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from facerep.apps.readouts import (
    RIDGE_GRID,
    FaceSet,
    Features,
    ReadoutConfig,
    attributes_readout,
    evaluate_frozen,
    extract_features,
    fit_parsing_decoder,
    parsing_readout,
    render_split,
    ridge_loo,
    trivial_baselines,
)
from facerep.backbones import build_backbone
from facerep.data.synthetic import ATTRIBUTES, LAPA_CLASSES


def test_ridge_matches_the_primal_solution_and_brute_force_leave_one_out():
    gen = torch.Generator().manual_seed(0)
    x, y = torch.randn(30, 8, generator=gen), torch.randn(30, 2, generator=gen)
    x_test = torch.randn(5, 8, generator=gen)
    lam = 3.0
    pred, chosen = ridge_loo(x, y, x_test, lambdas=[lam])
    xm, ym = x.double().mean(0), y.double().mean(0)
    xc, yc = x.double() - xm, y.double() - ym
    w = torch.linalg.solve(xc.T @ xc + lam * torch.eye(8, dtype=torch.float64), xc.T @ yc)
    assert chosen == lam
    torch.testing.assert_close(pred.double(), (x_test.double() - xm) @ w + ym, rtol=1e-4, atol=1e-5)

    def brute_loo(lam: float) -> float:  # refit without sample i, intercept included
        errors = []
        for i in range(len(x)):
            keep = torch.arange(len(x)) != i
            p, _ = ridge_loo(x[keep], y[keep], x[i : i + 1], lambdas=[lam])
            errors.append((p - y[i]).pow(2).mean().item())
        return float(np.mean(errors))

    lambdas = [0.01, 1.0, 100.0]
    best = min(lambdas, key=brute_loo)
    assert ridge_loo(x, y, x_test, lambdas=lambdas)[1] == best


def test_ridge_grid_is_scale_free_and_goes_on_past_the_edge_it_lands_on():
    gen = torch.Generator().manual_seed(1)
    x, x_test = torch.randn(60, 6, generator=gen), torch.randn(4, 6, generator=gen)
    centred = x.double() - x.double().mean(0)
    scale = torch.linalg.eigvalsh(centred @ centred.T).clamp_min(0).mean().item()
    # noise-free targets: the less shrinkage the better, below the base grid's smallest strength
    exact = x @ torch.randn(6, 2, generator=gen)
    assert ridge_loo(x, exact, x_test)[1] < scale * min(RIDGE_GRID)
    # targets unrelated to the inputs: the more shrinkage the better, above the base grid's largest
    noise = torch.randn(60, 2, generator=gen)
    assert ridge_loo(x, noise, x_test)[1] > scale * max(RIDGE_GRID)
    # the same relative choice for inputs 1000x larger
    mixed = exact + 0.5 * noise
    assert ridge_loo(1000 * x, mixed, x_test)[1] == pytest.approx(
        1e6 * ridge_loo(x, mixed, x_test)[1], rel=1e-6
    )


def _faces(masks: torch.Tensor, attributes: torch.Tensor | None = None, landmarks: torch.Tensor | None = None
           ) -> FaceSet:  # fmt: skip
    n, size = masks.shape[0], masks.shape[-1]
    images = torch.zeros(n, 3, size, size)
    landmarks = landmarks if landmarks is not None else torch.zeros(n, 68, 2)
    attributes = attributes if attributes is not None else torch.zeros(n, len(ATTRIBUTES), dtype=torch.long)
    return FaceSet(images, landmarks, masks, attributes)


def test_trivial_baselines_by_hand():
    # 3 train masks of 2 x 2 pixels: the prior map is class 1 left, class 2 right
    train_masks = torch.tensor([[[1, 2], [1, 2]], [[1, 2], [1, 0]], [[1, 1], [1, 2]]])
    test_masks = torch.tensor([[[1, 2], [1, 1]]])
    attrs = torch.zeros(3, len(ATTRIBUTES), dtype=torch.long)
    attrs[:2, 0] = 1  # attribute 0 is mostly on
    lm = torch.zeros(3, 68, 2)
    lm[:, 45, 0] = 10.0  # outer eye corners 10 px apart: inter-ocular unit 10
    test_lm = lm[:1].clone()
    test_lm[0, 0] = torch.tensor([3.0, 4.0])  # one point 5 px off the mean face
    out = trivial_baselines(_faces(train_masks, attrs, lm), _faces(test_masks, attrs[:1] * 0, test_lm))
    assert out["alignment"]["nme"] == pytest.approx(5.0 / 10.0 / 68)
    # prediction [[1, 2], [1, 2]] against [[1, 2], [1, 1]]: class 1 F1 = 2*2/(2+3) = 0.8, class 2 = 2*1/(2+1)
    expected_f1 = np.mean([0.8, 2 / 3])
    assert out["parsing"]["mean_f1"] == pytest.approx(expected_f1)
    # majority says attribute 0 on, test has it off: 1 wrong out of len(ATTRIBUTES)
    assert out["attributes"]["accuracy"] == pytest.approx(1 - 1 / len(ATTRIBUTES))


def test_parsing_decoder_reads_informative_tokens_and_falls_back_to_the_prior_on_constant_ones():
    gen = torch.Generator().manual_seed(0)
    n, grid, stride = 48, 2, 4  # 16 px images: 2 x 2 tokens, each 2 x 2 cells of 4 px
    cell = torch.randint(0, 3, (n, grid * 2, grid * 2), generator=gen)  # random classes per cell
    masks = cell.repeat_interleave(stride, 1).repeat_interleave(stride, 2)
    # informative tokens: the one-hot classes of their 4 cells, stacked on channels
    onehot = torch.nn.functional.one_hot(cell, 3).permute(0, 3, 1, 2).float()
    tokens = torch.nn.functional.pixel_unshuffle(onehot, 2)  # [N, 3 * 4, G, G]
    train, test = _faces(masks[:32]), _faces(masks[32:])
    cfg = ReadoutConfig(parsing_cells=2, parsing_components=12, max_iter=200)

    def split(x: torch.Tensor) -> tuple[Features, Features]:
        return Features(x[:32], x[:32, :, 0, 0]), Features(x[32:], x[32:, :, 0, 0])

    good = parsing_readout(*split(tokens), train, test, cfg)
    assert good["mean_f1"] > 0.95 and good["converged"]
    const = torch.ones_like(tokens) + 1e-3 * torch.randn(tokens.shape, generator=gen)
    blind = parsing_readout(*split(const), train, test, cfg)
    assert blind["mean_f1"] < 0.6


def test_parsing_decoder_fit_minimises_the_pixel_shuffled_soft_cross_entropy(monkeypatch):
    """The fit's unshuffled loss is the loss of the returned decoder's shuffled logits, at any weights."""
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(5, 6, 3, 3, generator=gen)
    target = torch.softmax(torch.randn(5, 4, 6, 6, generator=gen), dim=1)  # 4 classes, 2 x 2 cells a token
    seen = []

    def one_step(params, loss_fn, max_iter):  # perturb the start, record its loss, keep the weights
        with torch.no_grad():
            for p in params:
                p.normal_(generator=gen)
        seen.append(float(loss_fn().detach()))
        return seen

    monkeypatch.setattr("facerep.apps.readouts.lbfgs_fit", one_step)
    weight, bias, _ = fit_parsing_decoder(x, target, 0.01, 1)
    logits = F.pixel_shuffle(torch.einsum("ncij,oc->noij", x, weight) + bias, 2)
    expected = -(target * F.log_softmax(logits, dim=1)).sum(1).mean() + 0.01 * weight.pow(2).sum()
    assert weight.shape == (16, 6) and bias.shape == (1, 16, 3, 3)
    assert seen[0] == pytest.approx(float(expected), rel=1e-5)


def test_attribute_probe_reads_a_linear_code():
    gen = torch.Generator().manual_seed(0)
    labels = torch.randint(0, 2, (80, len(ATTRIBUTES)), generator=gen)
    pooled = labels.float() * 2 - 1 + 0.1 * torch.randn(80, len(ATTRIBUTES), generator=gen)
    masks = torch.zeros(80, 8, 8, dtype=torch.long)
    tokens = torch.zeros(80, 1, 1, 1)
    train, test = _faces(masks[:60], labels[:60]), _faces(masks[60:], labels[60:])
    train_features, test_features = Features(tokens[:60], pooled[:60]), Features(tokens[60:], pooled[60:])
    out = attributes_readout(train_features, test_features, train, test, ReadoutConfig())
    assert out["accuracy"] == 1.0 and out["converged"]


def test_rendered_crops_keep_landmarks_on_their_mask_parts():
    faces = render_split("test", 16, 64, progress=False)
    eye = faces.landmarks[:, 36:42].mean(1).round().long()  # centre of iBUG's image-left eye
    on_eye = [int(faces.masks[i, eye[i, 1], eye[i, 0]]) == LAPA_CLASSES.index("left_eye") for i in range(16)]
    assert sum(on_eye) >= 14  # occluders (hands, masks) may hide a few


@pytest.mark.parametrize(
    "arch,levels,channels,grid",
    [("vit_tiny_patch16_224", [1, 3], 2 * 64, 2), ("resnet18", [1, 2, 3, 4], 64 + 128 + 256 + 512, 2)],
)
def test_features_of_vits_and_resnets_on_rendered_faces(arch, levels, channels, grid):
    faces = render_split("test", 3, 32, progress=False)
    assert faces.masks.shape == (3, 32, 32) and int(faces.masks.max()) < len(LAPA_CLASSES)
    assert faces.landmarks.shape == (3, 68, 2) and 0 < faces.landmarks.mean() < 32
    overrides = {"depth": 4, "embed_dim": 64, "num_heads": 2} if arch.startswith("vit") else {}
    backbone = build_backbone(arch, img_size=32, **overrides).train()
    feats = extract_features(backbone, faces, levels)
    assert feats.tokens.shape == (3, channels, grid, grid)
    assert feats.pooled.shape == (3, backbone.feature_dim) and backbone.training
    if arch == "resnet18":  # on a ViT/16's grid (32 // 16 = 2): finer stages pooled, stride 32 upsampled
        with torch.no_grad():
            maps = backbone.eval().forward_pyramid(faces.images, levels)
        assert [m.shape[-1] for m in maps] == [8, 4, 2, 1]
        torch.testing.assert_close(feats.tokens[:, :64], F.avg_pool2d(maps[0], 4))
        torch.testing.assert_close(feats.tokens[:, 64 + 128 : 64 + 128 + 256], maps[2])
        torch.testing.assert_close(feats.tokens[:, -512:], maps[3].expand(-1, -1, 2, 2))  # 1 x 1, upsampled


def test_evaluate_frozen_keys_and_ranges():
    train, test = render_split("train", 24, 32, progress=False), render_split("test", 8, 32, progress=False)
    backbone = build_backbone("vit_tiny_patch16_224", img_size=32, depth=2, embed_dim=32, num_heads=2)
    out = evaluate_frozen(backbone, train, test, ReadoutConfig(levels=[0, 1], max_iter=20))
    assert 0 < out["alignment"]["nme"] < 1 and out["alignment"]["ridge_lambda"] > 0
    assert 0 <= out["parsing"]["mean_f1"] <= 1 and 0 <= out["attributes"]["accuracy"] <= 1
