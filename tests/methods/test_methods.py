import pytest
import torch
import torch.nn.functional as F

from facerep.backbones import export_backbone
from facerep.backbones.vit import build_vit, num_kept
from facerep.config import ConfigError, PretrainConfig, load_config
from facerep.data.views import random_masks
from facerep.methods import METHODS, build_method
from facerep.methods.mcf import default_teacher_blocks
from facerep.models.patches import patchify

SMALL = [
    "model.depth=2", "model.embed_dim=64", "model.num_heads=2", "data.image_size=32",
    "decoder.embed_dim=32", "decoder.depth=1", "decoder.num_heads=2",
    "mcf.proj_hidden_dim=64", "mcf.proj_dim=32", "teacher.checkpoint=random",
]  # fmt: skip


def small(*overrides: str):
    torch.manual_seed(0)
    return build_method(load_config(PretrainConfig, None, [*SMALL, *overrides]))


def batch_for(method, images: torch.Tensor, seed: int = 0, overrides: tuple[str, ...] = ()) -> dict:
    """The batch ``method`` (built with ``overrides``) declares, for ``images``, with masks drawn from
    ``seed``."""
    spec = method.batch_spec(load_config(PretrainConfig, None, [*SMALL, *overrides]).data)
    masks = random_masks(spec, images.shape[0], torch.Generator().manual_seed(seed))
    return {"views": [images] * len(spec.views), "masks": masks}


def test_registry_and_unknown_method():
    assert {"mae", "mcf"} <= set(METHODS)
    with pytest.raises(ConfigError, match="unknown method 'simclr'; available: byol, farl, fra, mae, mcf"):
        small("method=simclr")


def test_method_sections_are_validated_at_load():
    with pytest.raises(ConfigError, match=r"mcf\.momentum must be in \[0.0, 1.0\], got 1.5"):
        load_config(PretrainConfig, None, ["mcf.momentum=1.5"])
    with pytest.raises(ConfigError, match="teacher.norm_axis must be one of token, feature"):
        load_config(PretrainConfig, None, ["teacher.norm_axis=channel"])
    with pytest.raises(ConfigError, match="mcf.temperature"):
        load_config(PretrainConfig, None, ["mcf.temperature=0"])


def test_masked_methods_refuse_a_cnn_backbone():
    with pytest.raises(ConfigError, match="method=mae masks image patches and needs a ViT"):
        small("method=mae", "model.arch=resnet18", "model.depth=null", "model.embed_dim=null",
              "model.num_heads=null")  # fmt: skip


def test_batch_specs_declare_views_and_masks():
    mae, mcf = small("method=mae"), small("method=mcf")
    data = load_config(PretrainConfig, None, SMALL).data
    assert (len(mae.batch_spec(data).views), mae.batch_spec(data).masks) == (1, 1)
    assert (len(mcf.batch_spec(data).views), mcf.batch_spec(data).masks) == (1, 2)
    assert mcf.batch_spec(data).num_patches == 4  # 32 px / patch 16


def test_mcf_balance_rule_keeps_the_papers_weight_at_224_and_scales_with_the_normalised_axis():
    assert small("method=mcf", "mcf.balance=fixed").feature_weight == 1000.0
    feature_axis = small("method=mcf", "teacher.norm_axis=feature")  # 64 channels against ViT-B's 768
    assert feature_axis.feature_weight == pytest.approx(1000 * 64 / 768)
    paper = small("method=mcf", "data.image_size=224", "mcf.feature_weight=1000")
    assert paper.feature_weight == pytest.approx(1000.0)  # 14 x 14 + 1 = 197 tokens
    with pytest.raises(ConfigError, match="mcf.balance"):
        load_config(PretrainConfig, None, ["mcf.balance=auto"])


def test_teacher_blocks():
    assert default_teacher_blocks(12) == [2, 5, 8, 11]
    assert default_teacher_blocks(24) == [5, 11, 17, 23]


def test_mcf_gradients_reach_online_parts_only():
    method = small("method=mcf")
    images = torch.randn(4, 3, 32, 32)
    loss, terms = method(batch_for(method, images))
    assert set(terms) == {"feature", "contrastive"}
    # balance=paper: a 32 px teacher with patch 16 has 2 x 2 + 1 = 5 tokens, against 197 in the paper
    assert method.feature_weight == pytest.approx(1000 * 5 / 197)
    torch.testing.assert_close(loss, 1000 * 5 / 197 * terms["feature"] + terms["contrastive"])
    loss.backward()
    for module in (method.encoder.blocks, method.decoder, method.projector, method.predictor):
        assert all(p.grad is not None for p in module.parameters() if p.requires_grad)
    for module in (method.teacher, method.target_encoder, method.target_projector):
        assert all(p.grad is None and not p.requires_grad for p in module.parameters())
    assert not method.teacher.backbone.training  # frozen teacher stays in eval mode
    method.train()
    assert not method.teacher.backbone.training


def test_mcf_distillation_regresses_the_teachers_tokens_of_the_whole_image(tmp_path):
    """mcf.distill_weight adds the student's own block tokens -> linear head -> teacher tokens (layer-normed,
    the teacher's larger grid pooled to the student's), on the unmasked image; the loss is the sum."""
    teacher = build_vit("vit_tiny_patch16_224", img_size=64, depth=3, embed_dim=48, num_heads=2)
    path = export_backbone(teacher, tmp_path)
    method = small("method=mcf", f"teacher.checkpoint={path}", "mcf.distill_weight=2.5").eval()
    regressor = method.regressor  # teacher blocks [0, 1, 2] at the same relative depth of 2 student blocks
    assert regressor.blocks == [0, 0, 1] and [h.out_features for h in regressor.heads] == [48, 48, 48]
    images = torch.randn(2, 3, 32, 32)
    batch = batch_for(method, images)
    loss, terms = method(batch)
    with torch.no_grad():
        target = method.teacher.features(images)  # 64 px: 4 x 4 patches + CLS
        student = method.encoder.forward_block_tokens(images, [0, 0, 1])  # 32 px: 2 x 2 + CLS
        expected = 0.0
        for head, s, t in zip(regressor.heads, student, target, strict=True):
            grid = t[:, 1:].reshape(2, 4, 4, 48).permute(0, 3, 1, 2)
            pooled = F.avg_pool2d(grid, 2).flatten(2).transpose(1, 2)
            wanted = F.layer_norm(torch.cat([t[:, :1], pooled], 1), (48,))
            expected += F.mse_loss(head(s), wanted) / 3
    torch.testing.assert_close(terms["distill"], expected)
    torch.testing.assert_close(loss, method.feature_weight * terms["feature"] + terms["contrastive"]
                               + 2.5 * terms["distill"])  # fmt: skip
    assert small("method=mcf").regressor is None  # off by default: the reference's loss
    with pytest.raises(ConfigError, match="distill_weight"):
        load_config(PretrainConfig, None, ["mcf.distill_weight=-1"])


def test_mcf_distillation_heads_start_as_the_first_training_batchs_ridge_fit(tmp_path):
    """In training, the first forward sets each head to the ridge regression of the teacher's layer-normed
    tokens on the student's (no random heads pushing random gradients into the student), once; teacher block
    b is matched by the student's block at its relative depth (blocks 1 and 3 of 4 -> 0 and 1 of 2)."""
    teacher = build_vit("vit_tiny_patch16_224", img_size=32, depth=4, embed_dim=48, num_heads=2)
    path = export_backbone(teacher, tmp_path)
    method = small("method=mcf", f"teacher.checkpoint={path}", "teacher.blocks=[1,3]", "mcf.distill_weight=1")
    regressor = method.regressor
    assert regressor.blocks == [0, 1] and not regressor.fitted
    images = torch.randn(4, 3, 32, 32)
    method.train()(batch_for(method, images))
    assert regressor.fitted and "regressor.fitted" in method.state_dict()  # saved with a checkpoint
    with torch.no_grad():
        tokens = method.encoder.forward_block_tokens(images, [0, 1])
        target = method.teacher.features(images)
    for head, s, t in zip(regressor.heads, tokens, target, strict=True):
        x = torch.cat([s.flatten(0, 1), torch.ones(s.shape[0] * s.shape[1], 1)], 1).double()
        y = F.layer_norm(t, (48,)).flatten(0, 1).double()
        w = torch.cat([head.weight.T, head.bias[None]]).double()
        gram = x.T @ x
        ridge = regressor.ridge * gram.diagonal().mean()
        torch.testing.assert_close(gram @ w + ridge * w, x.T @ y, atol=1e-4, rtol=1e-3)  # normal equations
    with torch.no_grad():
        regressor.heads[0].weight.zero_()
    method(batch_for(method, images, seed=1))
    assert not regressor.heads[0].weight.any()  # fitted once: later batches (and a resumed run) keep training


def test_mcf_uses_the_batch_masks_and_each_view_its_own():
    method = small("method=mcf").eval()
    images = torch.randn(4, 3, 32, 32)
    batch = batch_for(method, images)
    a, _ = method(batch)
    b, _ = method(batch)
    torch.testing.assert_close(a, b)
    c, _ = method(batch_for(method, images, seed=1))
    assert not torch.allclose(a, c)  # other masks, other loss
    swapped, _ = method({**batch, "masks": batch["masks"][::-1]})
    assert not torch.allclose(a, swapped)  # online and momentum masks play different roles


def _infonce_by_hand(query: torch.Tensor, key: torch.Tensor, t: float) -> torch.Tensor:
    logits = F.normalize(query, dim=1) @ F.normalize(key, dim=1).T / t
    return 2 * t * F.cross_entropy(logits, torch.arange(query.shape[0]))


def test_mcf_symmetric_loss_is_the_sum_of_both_directions():
    method = small("method=mcf", "mcf.symmetric=true").eval()
    images = torch.randn(4, 3, 32, 32)
    batch = batch_for(method, images)
    ratio, t = method.cfg.mask_ratio, method.cfg.temperature

    def query(ids):
        latent = method.encoder.forward_masked(images, ratio, ids)[0]
        return method.predictor(method.projector(latent[:, 0]))

    def key(ids):
        return method.target_projector(method.target_encoder.forward_masked(images, ratio, ids)[0][:, 0])

    online, target = batch["masks"]
    with torch.no_grad():
        expected = _infonce_by_hand(query(online), key(target), t) + _infonce_by_hand(
            query(target), key(online), t
        )
        got = method(batch)[1]["contrastive"]
    torch.testing.assert_close(got, expected)
    one_way = small("method=mcf").eval()
    with torch.no_grad():
        torch.testing.assert_close(
            one_way(batch)[1]["contrastive"], _infonce_by_hand(query(online), key(target), t)
        )


def test_teacher_file_at_another_resolution_sees_resized_images(tmp_path):
    teacher = build_vit("vit_tiny_patch16_224", img_size=64, depth=3)
    path = export_backbone(teacher, tmp_path)
    method = small("method=mcf", f"teacher.checkpoint={path}", "data.image_size=48")
    assert method.teacher.img_size == 64 and method.teacher.blocks == [0, 1, 2]
    loss, _ = method(batch_for(method, torch.randn(2, 3, 48, 48)))
    assert torch.isfinite(loss)


def test_mae_loss_covers_exactly_the_masked_patches():
    method = small("method=mae", "mae.norm_pix_loss=false").eval()
    images = torch.randn(3, 3, 32, 32)
    batch = batch_for(method, images)
    (ids,) = batch["masks"]
    keep = num_kept(4, method.mask_ratio)
    with torch.no_grad():
        latent, mask, ids_restore = method.encoder.forward_masked(images, method.mask_ratio, ids)
        pred = method.decoder(latent, ids_restore)
        per_patch = (pred - patchify(images, 16)).pow(2).mean(dim=-1)  # [N, L]
        masked = ids[:, keep:]  # the patches the batch's order leaves out
        expected = per_patch.gather(1, masked).mean()
        loss, terms = method(batch)
    assert masked.shape == (3, 4 - keep) and torch.equal(
        mask.gather(1, masked), torch.ones_like(masked, dtype=mask.dtype)
    )
    torch.testing.assert_close(loss, expected)
    assert set(terms) == {"pixel"}


@pytest.mark.parametrize("name", ["mae", "mcf"])
def test_mae_and_mcf_decay_groups_are_timm_0_3_2s_add_weight_decay(name):
    """MAE's and MCF's code call timm 0.3.2's ``add_weight_decay(model, wd)`` with no skip list: every tensor
    of two or more dimensions is decayed (the 3-D ``cls_token`` and ``mask_token`` too), 1-D tensors and
    ``.bias`` names are not; frozen tensors are left out."""
    method = small(f"method={name}", "teacher.checkpoint=random")
    decay, no_decay = method.param_groups(0.05)
    names = {id(p): n for n, p in method.named_parameters()}
    decayed = {names[id(p)] for p in decay["params"]}
    undecayed = {names[id(p)] for p in no_decay["params"]}
    expected = {n for n, p in method.named_parameters() if p.requires_grad and p.ndim > 1}
    assert decayed == expected and decay["weight_decay"] == 0.05
    assert "encoder.cls_token" in decayed and "decoder.mask_token" in decayed
    assert "encoder.blocks.0.norm1.weight" in undecayed and "encoder.blocks.0.attn.qkv.bias" in undecayed
    assert "encoder.pos_embed" not in undecayed | decayed  # frozen sin-cos
