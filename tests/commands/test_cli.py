from pathlib import Path

import pytest
from omegaconf import OmegaConf

from facerep.commands.cli import main
from facerep.config import PretrainConfig, load_config, to_dict
from facerep.data.sources import DataError

CONFIGS = Path(__file__).resolve().parents[2] / "configs"


def test_unknown_key_is_a_one_line_error(capsys):
    assert main(["pretrain", "train.bsz=8"]) == 2
    err = capsys.readouterr().err.strip()
    assert err == "facerep: error: config key 'train.bsz': Key 'bsz' not in 'TrainConfig'"


def test_bad_value_names_the_key(capsys):
    assert main(["pretrain", "train.batch_size=many"]) == 2
    err = capsys.readouterr().err
    assert "train.batch_size" in err and len(err.strip().splitlines()) == 1


def test_missing_config_file(capsys):
    assert main(["pretrain", "-c", "nope.yaml"]) == 2
    assert "config file not found: nope.yaml" in capsys.readouterr().err


def test_cpu_config_file_spells_out_the_defaults_but_its_cpu_learning_rate():
    from_file = to_dict(load_config(PretrainConfig, CONFIGS / "mcf_cpu_tiny.yaml"))
    assert from_file["train"].pop("blr") == 1e-2  # the defaults leave it to MCF's recipe (1.5e-4)
    defaults = to_dict(load_config(PretrainConfig))
    assert defaults["train"].pop("blr") is None
    assert from_file == defaults


@pytest.mark.parametrize("name", ["mcf_vit_base_patch16.yaml", "mae_vit_base_patch16.yaml"])
def test_recipes_resolve(name, capsys):
    assert main(["pretrain", "-c", str(CONFIGS / name), "--print-config", "train.max_steps=7"]) == 0
    cfg = OmegaConf.create(capsys.readouterr().out)
    assert cfg.model.arch == "vit_base_patch16_224" and cfg.train.global_batch == 4096
    assert cfg.train.max_steps == 7 and cfg.decoder.embed_dim == 512


def test_recipe_without_teacher_says_so(tmp_path, capsys):
    args = ["pretrain", "-c", str(CONFIGS / "mcf_vit_base_patch16.yaml"), f"output_dir={tmp_path}",
            "data.source=synthetic", "device=cpu"]  # fmt: skip
    assert main(args) == 2
    assert "teacher.checkpoint" in capsys.readouterr().err


def test_facerep_errors_are_one_line_and_bugs_keep_their_traceback(monkeypatch, capsys):
    def bug(cfg):
        raise ValueError("a bug inside torch, say")

    monkeypatch.setattr("facerep.engine.trainer.pretrain", bug)
    with pytest.raises(ValueError, match="a bug inside torch"):  # a traceback, not "facerep: error"
        main(["pretrain"])
    assert "facerep: error" not in capsys.readouterr().err

    def user_error(cfg):
        raise DataError("data.path: no such folder\nsecond line")

    monkeypatch.setattr("facerep.engine.trainer.pretrain", user_error)
    assert main(["pretrain"]) == 2
    assert capsys.readouterr().err == "facerep: error: data.path: no such folder\n"
