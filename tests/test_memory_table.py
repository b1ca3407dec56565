"""scripts/memory_table.py: exact parameter counts, FSDP2's sharded terms, and its prediction against a real
2-process gloo run (DDP and FSDP2) of the tiny model."""

import sys
from pathlib import Path

import pytest
import torch

SCRIPTS = Path(__file__).resolve().parents[1] / "scripts"
sys.path.insert(0, str(SCRIPTS))  # spawned workers unpickle their function from this module by name
import memory_table as mt  # noqa: E402

VIT_B16 = 85_798_656  # timm vit_base_patch16_224, num_classes=0 (85.8 M)
VIT_L16 = 303_301_632  # timm vit_large_patch16_224, num_classes=0
VIT_H14 = 630_764_800  # timm vit_huge_patch14_224, num_classes=0


def _mcf(arch: str):
    cfg = mt.method_config("mcf", [f"model.arch={arch}", *mt.RECIPE, "teacher.arch=vit_base_patch16_224"])
    return cfg, mt.build_meta(cfg)


@pytest.mark.parametrize(
    ("arch", "expected"),
    [
        ("vit_base_patch16_224", VIT_B16),
        ("vit_large_patch16_224", VIT_L16),
        ("vit_huge_patch14_224", VIT_H14),
    ],
)
def test_encoder_counts_match_timm(arch, expected):
    _, model = _mcf(arch)
    c = mt.count(model)
    tokens = 1 + model.encoder.num_patches
    assert sum(p.numel() for p in model.encoder.parameters()) == expected
    assert c.encoder == expected - tokens * model.encoder.embed_dim  # the sin-cos position embedding is fixed
    assert c.teacher == VIT_B16  # MCF's paper teacher: a frozen ViT-B/16, replicated


def test_fsdp_divides_sharded_terms_by_world_size():
    cfg, model = _mcf("vit_base_patch16_224")
    c = mt.count(model)
    ddp, fsdp = mt.model_states(c, "ddp", 8), mt.model_states(c, "fsdp2", 8)
    for key in ("master", "grads", "momentum"):
        assert fsdp[key] == pytest.approx(ddp[key] / 8)
    steps = 4 * c.tensors  # one AdamW step scalar per tensor, on every rank
    assert fsdp["adamw"] - steps == pytest.approx((ddp["adamw"] - steps) / 8)
    assert ddp["master"] + ddp["grads"] + ddp["adamw"] - steps == 16 * c.trainable  # ZeRO's 2 + 2 + 12
    assert fsdp["teacher"] == ddp["teacher"] == 4 * VIT_B16  # replicated
    assert fsdp["buckets"] == 0 and ddp["buckets"] == 4 * c.trainable
    # activations do not depend on the sharding; checkpointing only lowers them
    act, act_ck = mt.activations(model, cfg, 64, False), mt.activations(model, cfg, 64, True)
    assert 0 < act_ck < act and mt.activations(model, cfg, 128, False) == 2 * act


def test_block_activation_formula():
    # Korthikanti et al.'s 34 s h without dropout masks (-2) and with fp32 LayerNorm inputs (+4): 36 s h
    assert mt.block_activations(50, 768, 12) == 36 * 50 * 768 + 4 * 12 * 50 + 16 * 50
    assert mt.block_activations(197, 768, 12, frozen=True) == 24 * 197 * 768 + 4 * 12 * 197 + 16 * 197


@pytest.mark.parametrize("frozen", [False, True])
def test_block_activations_are_what_autograd_saves(frozen):
    """The formula against the tensors autograd keeps for 2 timm blocks under bf16 autocast (fused
    attention), the bf16 casts of the weights left out (the table counts them with the weights)."""
    from facerep.backbones.vit import build_vit

    torch.manual_seed(0)
    vit = build_vit("vit_small_patch16_224", depth=2).requires_grad_(not frozen)
    b, s, h = 3, 50, vit.embed_dim
    x = torch.randn(b, s, h, requires_grad=True)
    saved: dict[int, int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        if t.dim() > 0 and t.shape[0] in (b, b * s):  # not a weight (or its bf16 cast, maybe transposed)
            saved[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t), torch.autocast("cpu", torch.bfloat16):
        vit.blocks(x)
    assert sum(saved.values()) == 2 * b * mt.block_activations(s, h, vit.arch.num_heads, frozen=frozen)


@pytest.mark.parametrize("rows", [0, 1, 2, 3, 7, 64, 65])
def test_shard_rows_cover_the_tensor(rows):
    for world in (1, 2, 3, 8):
        assert sum(mt.shard_rows(rows, world, r) for r in range(world)) == rows


def test_markdown_table(tmp_path):
    out = tmp_path / "table.md"
    assert mt.main(["--out", str(out), "--batch", "64"]) == 0
    text = out.read_text()
    assert text.count("| MCF | base_patch16 | FSDP2 | 64 |") == 1
    assert "| MAE | huge_patch14 | DDP | 64 |" in text


@pytest.mark.slow
def test_measured_local_shards_equal_prediction():
    rows = mt.measure(world=2, steps=1)
    assert [(r["parallel"], r["rank"]) for r in rows] == [("ddp", 0), ("ddp", 1), ("fsdp2", 0), ("fsdp2", 1)]
    for row in rows:
        assert row["measured"] == row["predicted"], row
    ddp, fsdp = sum(rows[0]["measured"].values()), sum(rows[2]["measured"].values())
    assert fsdp < 0.6 * ddp  # everything but the replicated teacher halves
