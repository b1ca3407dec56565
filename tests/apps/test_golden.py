"""Fixed-seed CPU runs give the losses the pre-redesign code gave (commit 048cbdc), when both see the
same masks. Since the redesign the data pipeline draws the masks (from the sample's seed, not from the
model's RNG stream), so here they are replaced by one fixed sequence, drawn as the old code drew them;
images, initial weights, optimizer, schedules, momentum and fine-tuning are compared as they are.

Fine-tuning runs with 048cbdc's cosine schedule (``train.schedule=cosine``; FaRL's step schedule is the
default now). Classification still gives 048cbdc's values; alignment and parsing were re-derived by the
same procedure after the FaRL protocol changes of issue 9 (raw last pyramid level, UPerNet dropout,
heatmap BCE at 128 with FaRL's truncated kernel) and again when the UPerNet classifier went back to torch's
default init (FaRL never applies mmseg's normal(0.01)), which change their numbers by design."""

import json

import pytest
import torch

import facerep.train.pretrain as trainer_module
from facerep.backbones import export_backbone
from facerep.backbones.vit import build_vit
from facerep.config import FinetuneConfig, PretrainConfig, load_config
from facerep.runtime.distributed import init_distributed
from facerep.train.finetune import finetune
from facerep.train.pretrain import Trainer

TINY = [
    "model.arch=vit_tiny_patch16_224", "model.depth=2", "model.embed_dim=64", "model.num_heads=2",
    "data.image_size=32", "data.synthetic_length=256", "data.num_workers=0", "decoder.embed_dim=32",
    "decoder.depth=1", "decoder.num_heads=2", "mcf.proj_hidden_dim=64", "mcf.proj_dim=32",
    "teacher.checkpoint=random", "train.batch_size=4", "train.warmup_steps=1", "train.blr=1e-3",
    "train.log_every=1", "train.ckpt_every=100", "train.progress=log", "train.max_steps=6",
    "train.accum_steps=2", "mcf.balance=fixed",  # 048cbdc had no balance rule: the weight stayed 1000
]  # fmt: skip
# losses per optimizer step and the sum of every floating-point state entry at the end, from 048cbdc (MAE with
# 048cbdc's pixel targets: norm_pix_loss is on by default since the per-method recipes); MCF's
# re-derived after issue 22 made its heads xavier-initialised and its tokens weight-decayed as the reference
# code (with the former head init and decay rule this code still gives 048cbdc's values exactly)
PRETRAIN = {
    "mae": (
        ["mae.norm_pix_loss=false"],
        [1.001054, 1.035714, 1.172572, 0.770781, 0.821190, 0.808821],
        654.33925,
    ),
    "mcf": ([], [553.773438, 554.537231, 559.564636, 491.270569, 501.064117, 523.533936], 1967.30824),
    "mcf_symmetric_cosine": (
        ["mcf.symmetric=true", "mcf.momentum_schedule=cosine"],
        [554.674805, 555.146301, 560.218323, 491.886169, 501.622131, 524.268066],
        1954.73695,
    ),
}
# (loss, primary test metric) per epoch: classification from 048cbdc, alignment and parsing re-derived
# after the FaRL protocol changes (see the module docstring)
FINETUNE = {
    ("alignment", "synthetic_alignment", False): [(0.9518752694, 0.5623751433), (0.8805136681, 0.5379708592)],
    ("parsing", "synthetic_parsing", False): [(2.1388516426, 0.0082244439), (1.7957353592, 0.0194516010)],
    ("classification", "synthetic_attributes", False): [(0.7206780910, 0.65625), (0.4902573824, 0.75)],
    ("classification", "synthetic_attributes", True): [(0.7377743721, 0.65625), (0.5521443486, 0.75)],
}


@pytest.fixture
def old_style_masks(monkeypatch):
    """Replace the pipeline's masks by one generator stream, drawn per micro-batch as 048cbdc drew them."""
    build = trainer_module.build_pretrain_loader

    def loader(cfg, *, spec, **kwargs):
        gen = torch.Generator().manual_seed(1234)
        for batch in build(cfg, spec=spec, **kwargs):
            n = batch["views"][0].shape[0]
            batch["masks"] = [
                torch.rand(n, spec.num_patches, generator=gen).argsort(1) for _ in batch["masks"]
            ]
            yield batch

    monkeypatch.setattr(trainer_module, "build_pretrain_loader", loader)


@pytest.mark.parametrize("name", sorted(PRETRAIN))
def test_pretraining_losses_match_the_pre_redesign_code(tmp_path, old_style_masks, name):
    extra, losses, checksum = PRETRAIN[name]
    method = name.split("_")[0]
    cfg = load_config(PretrainConfig, None, [*TINY, f"method={method}", f"output_dir={tmp_path}", *extra])
    trainer = Trainer(cfg, init_distributed("cpu"))
    trainer.fit()
    records = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [r["loss"] for r in records] == pytest.approx(losses, rel=1e-5)
    total = sum(
        v.double().sum().item() for v in trainer.method.state_dict().values() if v.is_floating_point()
    )
    assert total == pytest.approx(checksum, rel=1e-6)


@pytest.mark.slow
@pytest.mark.parametrize(("task", "dataset", "probe"), sorted(FINETUNE))
def test_finetuning_matches_the_pre_redesign_code(tmp_path, task, dataset, probe):
    torch.manual_seed(0)  # the random backbone's weights
    backbone = export_backbone(
        build_vit("vit_tiny_patch16_224", img_size=64, depth=4, embed_dim=64, num_heads=2), tmp_path / "bb"
    )
    cfg = load_config(FinetuneConfig, None, [
        f"task={task}", f"dataset={dataset}", f"backbone={backbone}", f"output_dir={tmp_path / 'ft'}",
        "data.image_size=64", "data.num_workers=0", "data.options.size=64", "data.train_options.length=8",
        "data.test_options.length=4", "head.blocks=[0,1,2,3]", "head.channels=16", "train.epochs=2",
        "train.batch_size=4", "train.progress=log", "train.ema=0.9", f"train.probe={str(probe).lower()}",
        "train.schedule=cosine",
    ])  # fmt: skip
    results = finetune(cfg)
    records = [json.loads(line) for line in (tmp_path / "ft" / "metrics.jsonl").read_text().splitlines()]
    primary = results["primary_metric"]
    got = [(r["loss"], r[f"test/{primary}"]) for r in records]
    for (loss, metric), (old_loss, old_metric) in zip(got, FINETUNE[task, dataset, probe], strict=True):
        # the loss pins the computation; an untrained model's near-tied argmax flips a few pixels between
        # CPUs (measured: parsing F1 0.008182 vs 0.008224 with the loss equal to 10 digits)
        assert loss == pytest.approx(old_loss, rel=1e-5)
        assert metric == pytest.approx(old_metric, rel=1e-5, abs=1e-4)
