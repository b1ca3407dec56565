"""Tiny random CLIP checkpoints written key by key in the OpenAI layout (and FaRL's MIM head), shared by the
CLIP-layout tests."""

import pytest
import torch

from facerep.backbones import CheckpointError

WIDTH, PATCH, IMAGE, EMBED = 128, 8, 32, 64  # 2 heads of 64, a 4x4 grid


def _rand(gen, *shape, std=0.1):
    return torch.randn(*shape, generator=gen) * std


def _norm(gen, prefix, dim):
    return {f"{prefix}.weight": 1 + _rand(gen, dim), f"{prefix}.bias": _rand(gen, dim)}


def _block(gen, prefix, dim):
    """One OpenAI ``ResidualAttentionBlock``'s parameters."""
    return {
        f"{prefix}.attn.in_proj_weight": _rand(gen, 3 * dim, dim, std=dim**-0.5),
        f"{prefix}.attn.in_proj_bias": _rand(gen, 3 * dim),
        f"{prefix}.attn.out_proj.weight": _rand(gen, dim, dim, std=dim**-0.5),
        f"{prefix}.attn.out_proj.bias": _rand(gen, dim),
        **_norm(gen, f"{prefix}.ln_1", dim),
        f"{prefix}.mlp.c_fc.weight": _rand(gen, 4 * dim, dim, std=dim**-0.5),
        f"{prefix}.mlp.c_fc.bias": _rand(gen, 4 * dim),
        f"{prefix}.mlp.c_proj.weight": _rand(gen, dim, 4 * dim, std=(4 * dim) ** -0.5),
        f"{prefix}.mlp.c_proj.bias": _rand(gen, dim),
        **_norm(gen, f"{prefix}.ln_2", dim),
    }


def openai_state(seed=0, layers=2, text_width=64, vocab=500, context=16):
    """A CLIP ViT state dict in the OpenAI layout, written key by key."""
    gen = torch.Generator().manual_seed(seed)
    grid = IMAGE // PATCH
    state = {
        "visual.conv1.weight": _rand(gen, WIDTH, 3, PATCH, PATCH, std=0.05),
        "visual.class_embedding": _rand(gen, WIDTH),
        "visual.positional_embedding": _rand(gen, 1 + grid * grid, WIDTH),
        **_norm(gen, "visual.ln_pre", WIDTH),
        **_norm(gen, "visual.ln_post", WIDTH),
        "visual.proj": _rand(gen, WIDTH, EMBED, std=WIDTH**-0.5),
        "token_embedding.weight": _rand(gen, vocab, text_width, std=0.02),
        "positional_embedding": _rand(gen, context, text_width, std=0.01),
        **_norm(gen, "ln_final", text_width),
        "text_projection": _rand(gen, text_width, EMBED, std=text_width**-0.5),
        "logit_scale": torch.tensor(2.5),
    }
    for i in range(layers):
        state |= _block(gen, f"visual.transformer.resblocks.{i}", WIDTH)
        state |= _block(gen, f"transformer.resblocks.{i}", text_width)
    return state


def mim_head(seed=1):
    """FaRL's masked-image-modelling head, kept under ``visual.`` in its released files."""
    gen = torch.Generator().manual_seed(seed)
    return {
        "visual.mask_token": _rand(gen, WIDTH),
        **_block(gen, "visual.lm_transformer.resblocks.0", WIDTH),
        **_norm(gen, "visual.ln_lm", WIDTH),
        "visual.lm_head.weight": _rand(gen, 8192, WIDTH),
        "visual.lm_head.bias": _rand(gen, 8192),
    }


def assert_malformed_refused(load, state, path, message):
    """``load`` on ``{"state_dict": state}`` saved at ``path`` raises a one-line CheckpointError that starts
    with the path and matches ``message``."""
    torch.save({"state_dict": state}, path)
    with pytest.raises(CheckpointError, match=message) as info:
        load(path)
    assert str(info.value).startswith(str(path)) and "\n" not in str(info.value)


def save_torchscript(path):
    """A tiny TorchScript archive at ``path`` (what OpenAI's original CLIP release ships)."""
    torch.jit.save(torch.jit.trace(torch.nn.Linear(2, 2), torch.zeros(1, 2)), path)
    return path
