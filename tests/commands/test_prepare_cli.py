"""``facerep prepare`` from the command line: the recipe, one-line errors, a run and its resume."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from facerep.commands.cli import main
from facerep.commands.prepare import PrepareConfig
from facerep.config import load_config, to_dict
from facerep.data.scenes import write_scene_shards

CONFIGS = Path(__file__).resolve().parents[2] / "configs"


def test_the_laion_face_recipe_spells_out_the_defaults(capsys) -> None:
    recipe = CONFIGS / "prepare_laion_face.yaml"
    assert to_dict(load_config(PrepareConfig, recipe)) == to_dict(PrepareConfig())
    assert main(["prepare", "-c", str(recipe), "--print-config", "crop.align=five_point", "engine=ray"]) == 0
    cfg = OmegaConf.create(capsys.readouterr().out)
    assert cfg.crop.align == "five_point" and cfg.crop.size == 224 and cfg.engine == "ray"


@pytest.mark.parametrize(
    ("args", "message"),
    [
        ([], "facerep prepare needs input=SHARDS|DIR|LIST.txt and output_dir=DIR"),
        (["engine=spark"], "engine must be one of pool, ray, got 'spark'"),
        (["crop.align=eyes"], "crop.align must be one of box, five_point, got 'eyes'"),
        (["crop.size=many"], "crop.size"),
        (["ray_address=auto"], "ray_address=auto needs engine=ray"),
        (["max_pixels=-1"], "max_pixels must be >= 0 (0: no limit), got -1"),
        (["max_json_depth=-2"], "max_json_depth must be >= 0 (0: no limit), got -2"),
        (["input=nowhere/{00000..00001}.tar", "output_dir=x"], "shard not found: nowhere/00000.tar"),
        (["input=.", "output_dir=x", "detector=yolo"], "face detector"),
    ],
)
def test_mistakes_are_one_line_errors(args, message, tmp_path, monkeypatch, capsys) -> None:
    monkeypatch.chdir(tmp_path)
    assert main(["prepare", *args]) == 2
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "x").exists()  # nothing written


def test_a_run_and_its_resume_from_the_command_line(tmp_path, capsys) -> None:
    scenes = tmp_path / "scenes"
    write_scene_shards(scenes, 4, shard_size=2, seed=5)
    args = ["prepare", f"input={scenes / '{00000..00001}.tar'}", f"output_dir={tmp_path / 'out'}",
            f"detections={scenes / 'sample2detect.pth'}", "workers=1", "progress=false",
            "crop.min_face=0"]  # fmt: skip
    assert main(args) == 0
    out = capsys.readouterr().out
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    n = summary["crops"]
    assert f"4 images, {summary['faces']} faces, {n} crops in 2 shard(s) (0 done before)" in out
    assert summary["crops"] == summary["faces"] > 0
    saved = OmegaConf.load(tmp_path / "out" / "config.yaml")
    assert saved.crop.min_face == 0 and saved.workers == 1
    assert main(args) == 0
    assert "(2 done before)" in capsys.readouterr().out
    assert main([*args, "crop.jpeg_quality=80"]) == 2
    assert "crop=" in capsys.readouterr().err
