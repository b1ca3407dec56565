import json

import pytest

from facerep.commands.demo import DemoConfig, run_demo

TINY_PRETRAIN = [
    "model.depth=4", "model.embed_dim=64", "model.num_heads=2", "decoder.embed_dim=32", "decoder.depth=1",
    "decoder.num_heads=2", "mcf.proj_hidden_dim=64", "mcf.proj_dim=32", "data.num_workers=0",
    "train.progress=log", "train.log_every=2",
]  # fmt: skip


@pytest.mark.slow
def test_demo_end_to_end_writes_table_and_plot(tmp_path):
    cfg = DemoConfig(
        output_dir=str(tmp_path), image_size=32, teacher_steps=2, mcf_steps=2, batch_size=4,
        finetune_epochs=1, finetune_batch_size=4, train_length=8, test_length=4, head_channels=8,
        pretrain_overrides=TINY_PRETRAIN,
        finetune_overrides=["head.blocks=[0,1,2,3]", "data.num_workers=0", "train.progress=log"],
    )  # fmt: skip
    rows = run_demo(cfg)
    assert set(rows) == {"random", "mae", "mcf"} and all(
        set(r) == {"alignment", "parsing"} for r in rows.values()
    )
    table = (tmp_path / "comparison.md").read_text()
    assert table.count("\n") == 5 and "| mcf |" in table
    assert (
        json.loads((tmp_path / "comparison.json").read_text())["mae"]["parsing"]["primary_metric"]
        == "mean_f1"
    )
    assert (tmp_path / "comparison.png").stat().st_size > 1000
    # the MAE baseline sees as many images as MCF's teacher stage + MCF
    mae_steps = [
        json.loads(x)["step"] for x in (tmp_path / "pretrain_mae" / "metrics.jsonl").read_text().splitlines()
    ]
    assert mae_steps[-1] == 4
