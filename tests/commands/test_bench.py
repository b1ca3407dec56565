import json

import pytest

from facerep.commands.cli import main

TINY = [
    "model.arch=vit_tiny_patch16_224", "model.depth=2", "model.embed_dim=64", "model.num_heads=2",
    "data.image_size=32", "decoder.embed_dim=32", "decoder.depth=1", "decoder.num_heads=2",
    "mcf.proj_hidden_dim=64", "mcf.proj_dim=32", "bench.warmup=1", "bench.steps=2", "bench.repeats=2",
]  # fmt: skip


@pytest.mark.parametrize("method", ["mcf", "mae"])
def test_bench_pretrain_on_cpu_writes_a_consistent_report(tmp_path, method, capsys):
    out = tmp_path / "bench.json"
    args = ["bench", "pretrain", *TINY, f"method={method}", "bench.batch_sizes=[2,4]", f"bench.output={out}"]
    assert main(args) == 0
    report = json.loads(out.read_text())
    assert [r["batch_size"] for r in report["rows"]] == [2, 4]
    for row in report["rows"]:
        assert row["images_per_s"] == pytest.approx(row["batch_size"] / row["ms_per_step"] * 1000)
        assert row["gflop_per_image"] > 0 and row["matmul_peak_tflops"] > 0
        assert row["achieved_tflops"] == pytest.approx(row["gflop_per_image"] * row["images_per_s"] / 1000)
        assert row["loss_parity"]["rel_diff"] < 1e-5  # fp32 eager on CPU: the same computation
    assert "img/s" in capsys.readouterr().out


@pytest.mark.slow
def test_compiled_step_matches_the_plain_fp32_losses(tmp_path):
    out = tmp_path / "bench.json"
    args = [
        "bench",
        "pretrain",
        *TINY,
        "method=mcf",
        "train.compile=true",
        "bench.batch_sizes=[4]",
        f"bench.output={out}",
    ]
    assert main(args) == 0
    parity = json.loads(out.read_text())["rows"][0]["loss_parity"]
    assert parity["rel_diff"] < 1e-4, parity


def test_bench_data_reports_each_worker_count(tmp_path):
    out = tmp_path / "data.json"
    args = [
        "bench",
        "data",
        "data.image_size=32",
        "batch_size=8",
        "batches=2",
        "workers=[0,1]",
        f"output={out}",
    ]
    assert main(args) == 0
    rows = json.loads(out.read_text())["rows"]
    assert [r["num_workers"] for r in rows] == [0, 1] and all(r["images_per_s"] > 0 for r in rows)


def test_compile_mode_reaches_torch_compile_and_is_checked(monkeypatch):
    """train.compile_mode=reduce-overhead (CUDA graphs) is torch.compile's mode; default passes none."""
    import torch

    from facerep.config import ConfigError, PretrainConfig, load_config
    from facerep.train.step import StepLoop

    seen = []
    monkeypatch.setattr(torch, "compile", lambda model, mode=None: seen.append(mode) or model)
    net = torch.nn.Linear(2, 2)
    optimizer = torch.optim.SGD(net.parameters(), lr=0.1)
    for mode in ("default", "reduce-overhead"):
        StepLoop(net, optimizer, torch.device("cpu"), compile=True, compile_mode=mode)
    StepLoop(net, optimizer, torch.device("cpu"), compile=False, compile_mode="reduce-overhead")
    assert seen == [None, "reduce-overhead"]
    with pytest.raises(ConfigError, match="train.compile_mode must be one of default, reduce-overhead, "):
        load_config(PretrainConfig, None, ["train.compile_mode=fast"])
