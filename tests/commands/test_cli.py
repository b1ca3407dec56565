import argparse
import dataclasses
import importlib.metadata
import inspect
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from omegaconf import OmegaConf

import facerep
from facerep.commands.cli import (
    BY_NAME,
    COMMANDS,
    LIGHT_CONFIG_MODULES,
    build_parser,
    complete,
    main,
    resolve,
)
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

    monkeypatch.setattr("facerep.train.pretrain.pretrain", bug)
    with pytest.raises(ValueError, match="a bug inside torch"):  # a traceback, not "facerep: error"
        main(["pretrain"])
    assert "facerep: error" not in capsys.readouterr().err

    def user_error(cfg):
        raise DataError("data.path: no such folder\nsecond line")

    monkeypatch.setattr("facerep.train.pretrain.pretrain", user_error)
    assert main(["pretrain"]) == 2
    assert capsys.readouterr().err == "facerep: error: data.path: no such folder\n"


# --- the table of commands -----------------------------------------------------------------------------

# every command the command line runs, with the overrides its config needs to resolve
RUNNABLE = {
    "pretrain": [], "finetune": [], "evaluate": ["checkpoint=x"], "probe": [], "zeroshot": [], "heatmaps": [],
    "prepare": [], "predict": [], "export": [], "demo": [], "bench pretrain": [], "bench data": [],
    "completion bash": [], "completion zsh": [],
}  # fmt: skip


def run_help(argv: list[str], capsys) -> str:
    with pytest.raises(SystemExit) as exit_:
        main([*argv, "--help"])
    assert exit_.value.code == 0
    return capsys.readouterr().out


def loaded_after(code: str, names: tuple[str, ...]) -> list[str]:
    """Which of the modules ``names`` a fresh interpreter has imported after running ``code``."""
    probe = f"import sys\n{code}\nprint(' '.join(m for m in {names!r} if m in sys.modules))"
    result = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    return result.stdout.split()


def test_the_table_lists_every_command_once_and_its_references_resolve():
    assert [c.name for c in COMMANDS] == list(RUNNABLE)
    assert {c.name: c for c in COMMANDS} == BY_NAME
    for command in COMMANDS:
        assert command.help and command.description, command.name
        schema = resolve(command.config)
        assert isinstance(schema, type) and dataclasses.is_dataclass(schema), command.config
        entries = [command.entry] + ([command.instead[1]] if command.instead else [])
        for ref in entries:
            entry = resolve(ref)
            assert inspect.isfunction(entry) and entry.__module__ == ref.split(":")[0], ref
            (param,) = inspect.signature(entry).parameters.values()  # one argument: the config
            assert param.annotation == schema.__name__, ref
        if command.instead:
            assert command.instead[0] in {f.name for f in dataclasses.fields(schema)}
    with pytest.raises(dataclasses.FrozenInstanceError):
        COMMANDS[0].name = "other"  # type: ignore[misc]


def test_the_parser_has_one_subcommand_per_first_word():
    parser = build_parser()
    (sub,) = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    assert list(sub.choices) == list(dict.fromkeys(name.split()[0] for name in RUNNABLE))
    assert [a.choices for a in sub.choices["bench"]._actions if a.dest == "what"] == [["pretrain", "data"]]
    assert [a.choices for a in sub.choices["completion"]._actions if a.dest == "what"] == [["bash", "zsh"]]
    takes_c = {name for name, p in sub.choices.items() if any("-c" in a.option_strings for a in p._actions)}
    assert takes_c == {"pretrain", "finetune", "zeroshot", "prepare", "predict", "export", "bench"}


def test_each_command_runs_its_entry_point_with_the_resolved_config(monkeypatch):
    calls: list[tuple[str, object]] = []
    for command in COMMANDS:
        for ref in [command.entry] + ([command.instead[1]] if command.instead else []):
            module, name = ref.split(":")
            monkeypatch.setattr(f"{module}.{name}", lambda cfg, ref=ref: calls.append((ref, cfg)))
    for name, overrides in RUNNABLE.items():
        calls.clear()
        assert main([*name.split(), *overrides]) == 0
        assert [ref for ref, _ in calls] == [BY_NAME[name].entry], name
        assert calls[0][1] == load_config(resolve(BY_NAME[name].config), None, overrides)
    calls.clear()
    assert main(["demo", "curve=[3,1]", "seeds=[0]"]) == 0  # the budget curve instead of one benchmark
    assert [ref for ref, _ in calls] == ["facerep.commands.demo:run_curve"] and calls[0][1].curve == [3, 1]


def test_version_prints_the_installed_version(monkeypatch, capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["--version"])
    assert exit_.value.code == 0
    assert capsys.readouterr().out == f"facerep {importlib.metadata.version('facerep')}\n"

    def not_installed(name):
        raise importlib.metadata.PackageNotFoundError(name)

    monkeypatch.setattr(importlib.metadata, "version", not_installed)
    with pytest.raises(SystemExit):
        main(["--version"])
    assert capsys.readouterr().out == f"facerep {facerep.__version__}\n"


def test_version_completion_and_the_help_of_light_configs_load_no_torch():
    """``--help`` imports the command's config module: torch-free for the configs of facerep.config
    (pretrain, finetune, evaluate) and completion; so are ``--complete`` and the completion scripts."""
    argvs = [["--version"], ["--help"], *([name, "--help"] for name in ("pretrain", "finetune", "evaluate"))]
    argvs += [["completion", "--help"], ["completion", "bash"], ["--complete", "finetune", "tr"]]
    argvs += [["--complete", ""], ["--complete", "pretrain", "train."]]
    code = (
        "import contextlib, io\nfrom facerep.commands.cli import main\n"
        f"for argv in {argvs!r}:\n"
        "    with contextlib.redirect_stdout(io.StringIO()), contextlib.suppress(SystemExit):\n"
        "        main(argv)"
    )
    assert loaded_after(code, ("torch", "cv2", "av", "onnxruntime", "matplotlib")) == []
    assert loaded_after(f"import {', '.join(LIGHT_CONFIG_MODULES)}", ("torch",)) == []


@pytest.mark.parametrize("name", list(RUNNABLE))
def test_print_config_reads_back_to_the_same_config(name, tmp_path, capsys):
    command, overrides = BY_NAME[name], RUNNABLE[name]
    schema = resolve(command.config)
    assert main([*name.split(), "--print-config", *overrides]) == 0
    printed = capsys.readouterr().out
    saved = tmp_path / "config.yaml"
    saved.write_text(printed)
    assert load_config(schema, saved) == load_config(schema, None, overrides)
    assert OmegaConf.to_container(OmegaConf.create(printed)) == to_dict(load_config(schema, saved))
    if command.config_file:  # the printed file as -c gives the same config (an override on top)
        assert main([*name.split(), "-c", str(saved), "--print-config"]) == 0
        assert capsys.readouterr().out == printed


def test_print_config_applies_the_overrides(capsys):
    assert main(["probe", "--print-config", "image_size=64", "train_length=10"]) == 0
    cfg = OmegaConf.create(capsys.readouterr().out)
    assert cfg.image_size == 64 and cfg.train_length == 10
    assert main(["evaluate", "--print-config"]) == 2  # the checkpoint is still required
    assert "checkpoint" in capsys.readouterr().err


def test_a_config_file_where_only_overrides_are_taken(tmp_path, capsys):
    assert main(["bench", "data", "-c", str(tmp_path / "x.yaml")]) == 2
    assert capsys.readouterr().err == (
        "facerep: error: facerep bench data takes KEY=VALUE overrides only (data.source=..., workers=[0,2])\n"
    )
    with pytest.raises(SystemExit) as exit_:
        main(["evaluate", "-c", str(tmp_path / "x.yaml"), "checkpoint=x"])
    assert exit_.value.code == 2 and "unrecognized arguments: -c" in capsys.readouterr().err


def help_keys(text: str) -> dict[str, tuple[str, str]]:
    """The ``  key (type) = default`` lines of a command's help."""
    keys = {}
    for line in text.splitlines():
        if line.startswith("  ") and " (" in line and ") = " in line and not line.startswith("   "):
            key, _, rest = line.strip().partition(" (")
            kind, _, default = rest.partition(") = ")
            keys[key] = (kind, default)
    return keys


@pytest.mark.parametrize("name", [name for name in RUNNABLE if " " not in name])
def test_help_lists_every_key_with_its_type_and_default_and_an_example(name, capsys):
    text = run_help([name], capsys)
    keys = help_keys(text.split("keys (KEY=VALUE):", 1)[1])
    schema = resolve(BY_NAME[name].config)
    defaults = OmegaConf.to_container(OmegaConf.structured(schema))
    flat = {}

    def walk(tree, prefix=""):
        for key, value in tree.items():
            if isinstance(value, dict) and any(k.startswith(f"{prefix}{key}.") for k in keys):
                walk(value, f"{prefix}{key}.")  # a section (a nested dataclass), not a dict-valued key
            else:
                flat[f"{prefix}{key}"] = value

    walk(defaults)
    assert list(keys) == list(flat)  # every key of the dataclass, in its order
    for key, value in flat.items():  # each default as written reads back as an override to itself
        read = OmegaConf.to_container(OmegaConf.from_dotlist([f"{key}={keys[key][1]}"]))
        for part in key.split("."):
            read = read[part]
        assert read == value or (value == "???" and read == "???"), key
    types = {f.name: f.type for f in dataclasses.fields(schema)}
    top = next(key for key in keys if "." not in key)
    assert keys[top][0] == types[top]  # the type as the dataclass declares it
    (example,) = [line for line in text.splitlines() if line.startswith("example: ")]
    assert example == f"example: {BY_NAME[name].example}" and example.startswith(f"example: facerep {name} ")
    assert ("run with --print-config to see every key" in text) == (name == "pretrain")
    assert "--print-config" in text.split("options:")[1]


def test_a_groups_help_shows_each_commands_keys_and_example(capsys):
    text = run_help(["bench"], capsys)
    assert (
        "facerep bench pretrain: keys (KEY=VALUE):" in text
        and "facerep bench data: keys (KEY=VALUE):" in text
    )
    assert "  bench.batch_sizes (list[int]) = []" in text and "  workers (list[int]) = [0,1,2]" in text
    examples = [line for line in text.splitlines() if line.startswith("example: ")]
    assert examples == [f"example: {BY_NAME[n].example}" for n in ("bench pretrain", "bench data")]
    assert "  program (str) = facerep" in run_help(["completion"], capsys)
    assert run_help(["finetune"], capsys).count("  train.epochs (int) = ") == 1


@pytest.mark.parametrize("name", [name for name in RUNNABLE if not name.startswith("completion")])
def test_every_example_resolves(name, capsys, monkeypatch):
    """Each command's example is a command line its config accepts (``--print-config``)."""
    monkeypatch.chdir(CONFIGS.parent)
    words = BY_NAME[name].example.split()
    assert words[: 1 + name.count(" ") + 1] == ["facerep", *name.split()]
    assert main([*words[1:], "--print-config"]) == 0, capsys.readouterr().err
    printed = OmegaConf.create(capsys.readouterr().out)
    for word in words[1:]:
        if "=" in word:
            key, value = word.split("=", 1)
            assert str(OmegaConf.select(printed, key)).replace(" ", "") == value.replace(" ", ""), key


# --- shell completion ------------------------------------------------------------------------------------


def test_the_completer_offers_commands_options_and_keys_one_level_at_a_time(capsys):
    firsts = list(dict.fromkeys(name.split()[0] for name in RUNNABLE))
    assert complete([""]) == [*firsts, "--help", "--version"]
    assert complete(["p"]) == ["pretrain", "probe", "prepare", "predict"]
    assert complete(["bench", ""]) == ["pretrain", "data"] and complete(["completion", "z"]) == ["zsh"]
    assert complete(["finetune", "tr"]) == ["train."]
    assert complete(["finetune", "train.ep"]) == ["train.epochs="]
    assert "train.epochs=" not in complete(["finetune", "train.epochs=3", "train.e"])
    assert complete(["finetune", "-"]) == ["-c", "--config", "--print-config", "--help"]
    assert complete(["evaluate", "--"]) == ["--print-config", "--help"]  # no -c
    assert complete(["bench", "data", "work"]) == ["workers="]
    assert complete(["finetune", "-c", ""]) == [] and complete(["finetune", "train.epochs="]) == []
    assert complete(["nope", ""]) == [] and complete(["bench", "nope", ""]) == []
    top = complete(["pretrain", ""])
    assert "train." in top and "method=" in top and all(w.endswith((".", "=")) for w in top)
    assert main(["--complete", "finetune", "tr"]) == 0 and capsys.readouterr().out == "train.\n"
    assert main(["--complete", "zzz"]) == 0 and capsys.readouterr().out == ""


@pytest.mark.skipif(shutil.which("bash") is None, reason="no bash")
def test_the_bash_script_completes_through_facerep_complete(tmp_path, capsys):
    assert main(["completion", "bash", f"program={sys.executable} -m facerep"]) == 0
    script = capsys.readouterr().out
    assert "complete -o default -F _facerep_complete" in script
    probe = tmp_path / "probe.sh"
    probe.write_text(
        script
        + 't() { COMP_LINE="$1"; COMP_POINT=${#1}; _facerep_complete; echo "${COMPREPLY[*]}"; }\n'
        + 't "facerep "\nt "facerep finetune tr"\nt "facerep finetune train.ep"\nt "facerep bench d"\n'
    )
    result = subprocess.run(["bash", str(probe)], capture_output=True, text=True, timeout=120)
    lines = result.stdout.splitlines()
    assert lines[0].split()[:2] == ["pretrain", "finetune"], result.stderr
    assert lines[1:] == ["train.", "train.epochs=", "data"], result.stderr
    assert main(["completion", "zsh"]) == 0
    zsh = capsys.readouterr().out
    assert (
        zsh.startswith("#compdef facerep")
        and "facerep --complete" in zsh
        and "compdef _facerep_complete facerep" in zsh
    )
