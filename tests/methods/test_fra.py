"""FRA and BYOL: the declared two-view augmentation, the terms and their weights, gradients and the
momentum target, the ViT refusal, LARS, and the heatmaps command on a tiny run."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from facerep.commands.cli import main
from facerep.config import ConfigError, PretrainConfig, load_config
from facerep.data.transforms import BYOLAugment
from facerep.data.views import draw_sample
from facerep.losses.byol import byol_loss, region_consistency_loss
from facerep.losses.clustering import cluster_assignment_loss
from facerep.methods import build_method
from facerep.methods.fra import FRA, sample_crops, zoom_transforms
from facerep.models.regions import pointwise
from facerep.runtime.distributed import init_distributed
from facerep.runtime.optim import LARS
from facerep.train.pretrain import Trainer
from lars_reference import fra_excluded_by_name, reference_lars

FRA_TINY = (
    "model.arch=resnet18", "data.image_size=64", "byol.hidden_dim=32", "byol.proj_dim=16",
    "fra.num_regions=4", "fra.decoder_heads=2", "train.optimizer=lars", "train.lr=0.2",
)  # fmt: skip


def _cfg(tmp_path, *overrides):
    return load_config(
        PretrainConfig, None,
        ["method=fra", *FRA_TINY, "data.num_workers=0", "data.synthetic_length=64", "train.batch_size=4",
         "train.max_steps=2", "train.warmup_steps=1", "train.log_every=1", "train.progress=log",
         f"output_dir={tmp_path / 'run'}", *overrides],
    )  # fmt: skip


def _batch(method, cfg, n=4):
    face = Image.fromarray(np.random.default_rng(0).integers(0, 255, (80, 80, 3), dtype=np.uint8))
    samples = [draw_sample(method.batch_spec(cfg.data), face, seed) for seed in range(n)]
    return {"views": [torch.stack([s[0][v] for s in samples]) for v in range(2)]}


def _seeded_loss(cfg):
    """A method built under seed 0, a batch, and its loss and terms run under seed 1 (as tests rebuild)."""
    torch.manual_seed(0)
    method = build_method(cfg)
    batch = _batch(method, cfg)
    torch.manual_seed(1)
    loss, terms = method(batch)
    return method, batch, loss, terms


def test_the_two_views_are_byols_asymmetric_augmentation_and_differ(tmp_path):
    cfg = _cfg(tmp_path)
    spec = build_method(cfg).batch_spec(cfg.data)
    assert len(spec.views) == 2 and spec.masks == 0 and spec.text is None
    assert all(isinstance(v, BYOLAugment) for v in spec.views)
    first, second = (list(v.pipeline.transforms) for v in spec.views)
    assert [t.p for t in first if type(t).__name__ == "RandomApply"] == [0.8, 1.0]  # jitter, blur always
    assert [t.p for t in second if type(t).__name__ == "RandomApply"] == [0.8, 0.1]
    assert [t.p for t in first if type(t).__name__ == "RandomSolarize"] == [0.0]
    assert [t.p for t in second if type(t).__name__ == "RandomSolarize"] == [0.2]
    face = Image.fromarray(np.random.default_rng(1).integers(0, 255, (80, 80, 3), dtype=np.uint8))
    views, _ = draw_sample(spec, face, seed=3)
    assert views[0].shape == views[1].shape == (3, 64, 64) and not torch.allclose(views[0], views[1])
    again, _ = draw_sample(spec, face, seed=3)
    assert all(torch.equal(a, b) for a, b in zip(views, again, strict=True))  # a pure function of the seed


def test_solarize_inverts_bright_pixels_and_bad_crop_scale_is_an_error():
    white = Image.new("RGB", (32, 32), (250, 250, 250))
    aug = BYOLAugment(32, [0, 0, 0], [1, 1, 1], crop_scale=(1.0, 1.0), hflip=0, blur=0, solarize=1.0)
    torch.manual_seed(0)
    out = aug(white)  # jitter may move it a little (p 0.8); solarized it must be dark
    assert out.mean() < 0.3
    with pytest.raises(Exception, match="crop scale"):
        BYOLAugment(32, [0, 0, 0], [1, 1, 1], crop_scale=(0.5, 0.2))


def test_colour_jitter_and_grayscale_off_keep_every_pixels_colour(tmp_path):
    face = Image.new("RGB", (40, 40), (200, 120, 40))  # one colour: any crop and resize keep it
    exact = torch.tensor([200, 120, 40]).float().div(255)[:, None, None].expand(3, 32, 32)
    kept = BYOLAugment(32, [0, 0, 0], [1, 1, 1], crop_scale=(1.0, 1.0), hflip=0, blur=0,
                       color_jitter=0, grayscale=0)  # fmt: skip
    default = BYOLAugment(32, [0, 0, 0], [1, 1, 1], crop_scale=(1.0, 1.0), hflip=0, blur=0)
    torch.manual_seed(0)
    assert all(torch.allclose(kept(face), exact, atol=1e-6) for _ in range(5))
    assert not all(torch.allclose(default(face), exact, atol=1e-6) for _ in range(5))  # jitter, gray
    cfg = _cfg(tmp_path, "byol.color_jitter=0", "byol.grayscale=0.5")
    first = list(build_method(cfg).batch_spec(cfg.data).views[0].pipeline.transforms)
    assert [t.p for t in first if type(t).__name__ in ("RandomApply", "RandomGrayscale")] == [0.0, 0.5, 1.0]
    with pytest.raises(ConfigError, match="byol.grayscale"):
        _cfg(tmp_path, "byol.grayscale=2")


def test_fra_loss_is_the_documented_sum_of_its_terms(tmp_path):
    cfg = _cfg(tmp_path, "fra.global_weight=0.3", "fra.cluster_weight=0.2")
    _, batch, loss, terms = _seeded_loss(cfg)
    assert set(terms) == {"global", "region", "decorrelation", "cluster"}
    torch.testing.assert_close(loss.detach(), terms["global"] + terms["region"] + 0.2 * terms["cluster"])

    # recompute every term from the same embeddings by hand (same RNG for dropout, same BN batches)
    torch.manual_seed(0)
    again = build_method(cfg)
    torch.manual_seed(1)
    online = [again.represent(again.encoder, again.head, v) for v in batch["views"]]
    with torch.no_grad():
        target = [again.represent(again.target_encoder, again.target_head, v) for v in batch["views"]]
    g = byol_loss(again.predictor(online[0]["global"]), target[1]["global"]) + byol_loss(
        again.predictor(online[1]["global"]), target[0]["global"]
    )
    r = sum(
        region_consistency_loss(
            pointwise(again.region_predictor, o["regions"].transpose(1, 2)).transpose(1, 2),
            t["regions"],
            0.02,
        )[0]
        for o, t in ((online[0], target[1]), (online[1], target[0]))
    )

    def pix(d):
        return d.permute(0, 2, 3, 1).flatten(0, 2)

    c = (
        sum(
            cluster_assignment_loss(pix(o["dots"]), pix(t["dots"]))[0]
            for o, t in zip(online, target, strict=True)
        )
        / 2
    )
    torch.testing.assert_close(terms["global"], 0.3 * g.detach())
    torch.testing.assert_close(terms["region"], 0.7 * r.detach())
    torch.testing.assert_close(terms["cluster"], c.detach())


def test_zoom_crops_the_image_where_the_sampled_scores_lie():
    """A map equal to its own pixel coordinates, sampled over the crops at the view's size (the zoomed view)
    and at a coarse map's (where the online scores are read): both equal x_in = s * x_out + t by hand."""
    torch.manual_seed(0)
    size = 24
    centre = (torch.arange(size) + 0.5) / size
    coords = torch.stack(torch.meshgrid(centre, centre, indexing="xy"))[None].repeat(3, 1, 1, 1)  # x, y
    theta = zoom_transforms(3, [0.5, 0.8], coords.device)
    side, shift = theta[:, 0, 0], theta[:, :, 2]
    assert torch.all((side >= 0.5) & (side <= 0.8)) and torch.equal(theta[:, 1, 1], side)
    assert torch.all(shift.abs() <= (1 - side)[:, None] + 1e-6)
    zoomed = sample_crops(coords, theta, (size, size))
    expected_x = (side[:, None] * (centre * 2 - 1) + shift[:, :1] + 1) / 2  # [B, S] along a row
    torch.testing.assert_close(zoomed[:, 0, 5, :], expected_x)
    coarse_centre = (torch.arange(6) + 0.5) / 6
    coarse = sample_crops(coords, theta, (6, 6))  # bilinear in a linear map: exact at any point inside
    expected_y = (side[:, None] * (coarse_centre * 2 - 1) + shift[:, 1:] + 1) / 2  # [B, 6] down a column
    torch.testing.assert_close(coarse[:, 1, :, 2], expected_y)
    whole = torch.tensor([[[1.0, 0, 0], [0, 1, 0]]])
    torch.testing.assert_close(sample_crops(coords[:1], whole, (size, size)), coords[:1])  # side 1: the view


def test_a_zoomed_cluster_target_scores_a_crop_with_the_momentum_network(tmp_path):
    cfg = _cfg(tmp_path, "fra.cluster_zoom=[0.5,0.8]", "fra.decoder_dropout=0")
    method, batch, loss, terms = _seeded_loss(cfg)
    loss.backward()
    assert all(p.grad is None for p in method.target_encoder.parameters())
    assert method.head.project_pixel[0].weight.grad.abs().sum() > 0

    torch.manual_seed(0)
    again = build_method(cfg)
    torch.manual_seed(1)
    online, _ = again.embed(batch["views"])
    c = 0
    for view, o in zip(batch["views"], online, strict=True):
        theta = zoom_transforms(view.shape[0], [0.5, 0.8], view.device)
        with torch.no_grad():
            zoomed = sample_crops(view, theta, view.shape[-2:])
            dots = again.represent(again.target_encoder, again.target_head, zoomed)["dots"]
        student = sample_crops(o["dots"], theta, dots.shape[-2:])
        pix = [d.permute(0, 2, 3, 1).flatten(0, 2) for d in (student, dots)]
        c = c + cluster_assignment_loss(*pix)[0] / 2
    torch.testing.assert_close(terms["cluster"], c.detach())
    with pytest.raises(ConfigError, match="fra.cluster_zoom"):
        _cfg(tmp_path, "fra.cluster_zoom=[0.9,0.5]")


def test_gradients_reach_the_online_side_only_and_the_target_moves_only_at_optimizer_steps(tmp_path):
    trainer = Trainer(_cfg(tmp_path, "train.accum_steps=2", "byol.momentum=0.9"), init_distributed("cpu"))
    method = trainer.method
    assert isinstance(method, FRA) and isinstance(trainer.optimizer, LARS)
    loss, _ = method(_batch(method, trainer.cfg))
    loss.backward()
    assert all(
        p.grad is None for p in (*method.target_encoder.parameters(), *method.target_head.parameters())
    )
    for part in (method.encoder, method.head, method.predictor, method.region_predictor):
        assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in part.parameters())
    excluded = trainer.optimizer.param_groups[1]
    assert excluded["weight_decay"] == 0.0 and excluded["lars_exclude"]

    seen = []
    forward = method.forward

    def spy(batch):
        seen.append(torch.cat([p.detach().flatten().clone() for p in method.target_head.parameters()]))
        return forward(batch)

    method.forward = spy
    trainer.fit()
    assert len(seen) == 4  # 2 optimizer steps x 2 micro-batches
    assert (
        torch.equal(seen[0], seen[1]) and not torch.equal(seen[1], seen[2]) and torch.equal(seen[2], seen[3])
    )


def test_fra_refuses_a_vit_in_one_line(tmp_path):
    with pytest.raises(ConfigError, match="method=fra .* needs a ResNet backbone"):
        build_method(_cfg(tmp_path, "model.arch=vit_tiny_patch16_224"))
    with pytest.raises(ConfigError, match="fra.query_init"):
        _cfg(tmp_path, "fra.query_init=random")


@pytest.mark.slow
@pytest.mark.parametrize("method", ["fra", "byol"])
def test_loss_falls_on_synthetic_faces(tmp_path, method):
    out = tmp_path / method
    args = [
        "pretrain", f"method={method}", *FRA_TINY, "data.num_workers=0", "train.batch_size=16",
        "train.max_steps=40", "train.warmup_steps=5", "train.log_every=1", "train.progress=log",
        "byol.momentum=0.99", f"output_dir={out}",
    ]  # fmt: skip
    assert main(args) == 0
    losses = [json.loads(line)["loss"] for line in (out / "metrics.jsonl").read_text().splitlines()]
    first, last = np.mean(losses[:8]), np.mean(losses[-8:])
    assert last < 0.8 * first, (first, last)
    assert (out / "backbone.json").is_file()


@pytest.mark.slow
def test_heatmaps_command_writes_overlays_and_scores_against_the_parsing_masks(tmp_path, capsys):
    run = tmp_path / "run"
    assert main(["pretrain", "method=fra", *FRA_TINY, "data.num_workers=0", "train.batch_size=4",
                 "train.max_steps=2", "train.progress=log", f"output_dir={run}"]) == 0  # fmt: skip
    assert main(["heatmaps", f"run={run}", "images=2", "eval_images=6"]) == 0
    out = Path(run / "heatmaps")
    assert sorted(p.name for p in out.glob("*.png")) == ["face_000.png", "face_001.png"]
    with Image.open(out / "face_000.png") as png:
        assert png.width == (3 + 4) * (64 + 2)  # face, parsing, argmax, 4 queries
    result = json.loads((out / "heatmaps.json").read_text())
    for name in ("trained", "random_init", "grid"):
        assert len(result[name]["per_query"]) == 4 and 0 <= result[name]["mean_best_iou"] <= 1
    for name in ("trained", "random_init"):
        assert 0.25 <= result[name]["heatmap_peak"] <= 1 and -1 <= result[name]["embedding_cosine"] <= 1
    assert "mean best IoU" in capsys.readouterr().out
    # the validation faces (to choose a recipe on) are other faces, written apart from the test scores
    assert main(["heatmaps", f"run={run}", "images=0", "eval_images=6", "split=val"]) == 0
    val = json.loads((run / "heatmaps_val" / "heatmaps.json").read_text())
    assert val["config"]["split"] == "val" and val["grid"] != result["grid"]
    assert main(["heatmaps", f"run={run}", "split=train"]) == 2
    assert "split must be one of val, test, got 'train'" in capsys.readouterr().err
    mcf = tmp_path / "mcf"
    (mcf / "config.yaml").parent.mkdir()
    (mcf / "config.yaml").write_text("method: mcf\n")
    (mcf / "checkpoint.pt").write_bytes(b"")
    assert main(["heatmaps", f"run={mcf}"]) == 2
    assert "method=mcf has no region heatmaps" in capsys.readouterr().err


def test_byol_takes_any_backbone_a_vit_too(tmp_path):
    cfg = _cfg(
        tmp_path, "method=byol", "model.arch=vit_tiny_patch16_224", "model.depth=2", "data.image_size=32"
    )
    method = build_method(cfg)
    loss, terms = method(_batch(method, cfg))
    assert set(terms) == {"byol"} and torch.isfinite(loss) and 0 <= loss.item() <= 8


def test_one_lars_step_moves_every_parameter_as_fras_optimizer(tmp_path):
    """FRA's ``collect_params`` + LARS on identical gradients: only names with ``bn`` / ``downsample.1`` /
    ``bias`` take a plain SGD step without decay; every other tensor (the neck's Sequential BatchNorms, the
    decoder's LayerNorms, the query embeddings) is decayed and scaled by its trust ratio, and a tensor whose
    gradient is zero (the first self-attention's weights, whose values are the zero queries) gets eta / wd."""
    cfg = _cfg(tmp_path, "train.weight_decay=1e-6", "train.lr=0.9", "fra.decoder_dropout=0")
    trainer = Trainer(cfg, init_distributed("cpu"))
    method, optimizer = trainer.method, trainer.optimizer
    loss, _ = method(_batch(method, cfg))
    loss.backward()
    params = {n: p for n, p in method.named_parameters() if p.requires_grad}
    before = {n: p.detach().clone() for n, p in params.items()}
    grads = {n: p.grad.clone() for n, p in params.items() if p.grad is not None}
    optimizer.step()
    for name, grad in grads.items():
        excluded = fra_excluded_by_name(name)
        wd = 0.0 if excluded else 1e-6
        expected = reference_lars(before[name], [grad], [0.9], wd, 0.9, excluded)
        torch.testing.assert_close(params[name].detach().double(), expected, rtol=1e-5, atol=1e-7, msg=name)
    for name in ("head.decoder.query_embed", "head.project.1.weight", "head.decoder.norm.weight"):
        assert not fra_excluded_by_name(name) and not torch.equal(params[name], before[name])
    zero = "head.decoder.layers.0.self_attn.in_proj_weight"
    assert not grads[zero].any()
    ratio = (before[zero] - params[zero]).norm() / (0.9 * 1e-6 * before[zero].norm())
    assert ratio.item() == pytest.approx(1000, rel=0.01)  # eta / wd, as FRA's formula gives


def test_accumulation_warns_once_that_batch_statistics_see_the_micro_batch(tmp_path, capsys):
    trainer = Trainer(_cfg(tmp_path, "train.global_batch=8"), init_distributed("cpu"))
    note = trainer.accumulation_note()
    assert trainer.cfg.train.accum_steps == 2 and "BatchNorm" in note and "Sinkhorn" in note
    assert "4 images at a time" in note and "not 8" in note
    trainer.fit()
    assert capsys.readouterr().out.count("[facerep] warning: method=fra reaches 8 images") == 1
    assert Trainer(_cfg(tmp_path / "one"), init_distributed("cpu")).accumulation_note() is None
    mae = load_config(
        PretrainConfig, None,
        ["method=mae", "model.arch=vit_tiny_patch16_224", "model.depth=1", "data.image_size=32",
         "train.accum_steps=2", f"output_dir={tmp_path}"],
    )  # fmt: skip
    assert Trainer(mae, init_distributed("cpu")).accumulation_note() is None  # nothing depends on the batch


def test_byol_keeps_byols_rule_every_bias_and_batchnorm_out_of_decay_and_trust_ratio(tmp_path):
    method = build_method(_cfg(tmp_path, "method=byol"))
    decayed, excluded = method.param_groups(1e-6)
    names = {id(p): n for n, p in method.named_parameters()}
    assert excluded["lars_exclude"] and excluded["weight_decay"] == 0.0
    assert {names[id(p)] for p in excluded["params"]} == {
        n for n, p in method.named_parameters() if p.requires_grad and p.ndim == 1
    }  # the backbone's and the heads' BatchNorms (head.1.weight too, unlike FRA's name rule) and biases
    assert "head.1.weight" in {names[id(p)] for p in excluded["params"]}
    assert method.sync_batchnorm and all(p.ndim > 1 for p in decayed["params"])
