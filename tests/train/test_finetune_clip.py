"""``facerep finetune backbone=FaRL-...pth``: a FaRL-layout file (OpenAI CLIP keys in ``{"state_dict": sd}``
plus the MIM head under ``visual.``) fine-tuned from the command line, its image tower at 64 px."""

import json

import pytest
import torch
from open_clip.model import CLIP, CLIPTextCfg, CLIPVisionCfg
from timm.layers import resample_abs_pos_embed

from facerep.commands.cli import main
from facerep.config import FinetuneConfig, load_config
from facerep.runtime.checkpoint import load_checkpoint
from facerep.runtime.distributed import init_distributed
from facerep.train.finetune import Finetuner


@pytest.fixture(scope="module")
def farl_file(tmp_path_factory):
    torch.manual_seed(0)
    vision = CLIPVisionCfg(layers=4, width=64, patch_size=8, image_size=32)
    text = CLIPTextCfg(context_length=8, vocab_size=100, width=64, heads=1, layers=1)
    state = CLIP(32, vision, text, quick_gelu=True).state_dict()  # the OpenAI layout
    mim = {"visual.mask_token": torch.randn(64), "visual.ln_lm.weight": torch.ones(64),
           "visual.ln_lm.bias": torch.zeros(64), "visual.lm_head.weight": torch.randn(8192, 64),
           "visual.lm_head.bias": torch.zeros(8192)}  # fmt: skip
    first = "visual.transformer.resblocks.0."
    mim |= {k.replace("transformer", "lm_transformer"): v for k, v in state.items() if k.startswith(first)}
    path = tmp_path_factory.mktemp("farl") / "FaRL-Base-Patch16-LAIONFace20M-ep16.pth"
    torch.save({"state_dict": state | mim}, path)
    return path, state


ARGS = [
    "task=alignment", "dataset=synthetic_alignment", "data.image_size=64", "data.num_workers=0",
    "data.options.size=64", "data.train_options.length=8", "data.test_options.length=4",
    "head.blocks=[0,1,2,3]", "head.channels=16", "train.epochs=1", "train.batch_size=4", "train.progress=log",
]  # fmt: skip


def test_finetune_starts_from_the_farl_image_tower(farl_file, tmp_path):
    path, state = farl_file
    cfg = load_config(FinetuneConfig, None, [f"backbone={path}", f"output_dir={tmp_path}", *ARGS])
    backbone = Finetuner(cfg, init_distributed("cpu")).backbone
    assert (backbone.arch.depth, backbone.arch.act, backbone.arch.img_size) == (4, "quick_gelu", 64)
    pos = state["visual.positional_embedding"][None]
    expected = resample_abs_pos_embed(pos, [8, 8], [4, 4], num_prefix_tokens=1)
    torch.testing.assert_close(backbone.pos_embed, expected)
    weights = backbone.state_dict()
    assert torch.equal(
        weights["blocks.3.attn.qkv.weight"], state["visual.transformer.resblocks.3.attn.in_proj_weight"]
    )
    assert torch.equal(weights["norm_pre.weight"], state["visual.ln_pre.weight"])


@pytest.mark.slow
def test_farl_file_finetunes_from_the_cli(farl_file, tmp_path):
    out = tmp_path / "ft"
    assert main(["finetune", f"backbone={farl_file[0]}", f"output_dir={out}", *ARGS]) == 0
    results = json.loads((out / "results.json").read_text())
    assert results["last"]["epoch"] == 1 and results["last"]["full"]["nme"] > 0
    arch = load_checkpoint(out / "finetune.pt")["arch"]
    assert (arch["act"], arch["pre_norm"], arch["norm_eps"]) == ("quick_gelu", True, 1e-5)
