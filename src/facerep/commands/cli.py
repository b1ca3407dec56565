"""``facerep`` command line: ``pretrain``, ``finetune``, ``evaluate``, ``probe``, ``zeroshot``, ``heatmaps``,
``prepare``, ``predict``, ``export``, ``demo`` and ``bench``, one :class:`Command` record each in
:data:`COMMANDS` (``bench`` two: ``bench pretrain`` and ``bench data``), run by one handler.

Each takes ``[-c CONFIG.yaml] [--print-config] [KEY=VALUE ...]`` (``evaluate``, ``probe``, ``heatmaps``,
``demo`` and ``bench data`` no ``-c``: only the overrides); ``--print-config`` prints the resolved config as
YAML and exits, ``facerep --version`` the installed version. Failures are printed as one line
``facerep: error: ...`` (``FACEREP_DEBUG=1``: the traceback instead), with an exit code saying whose move
it is:

2
    facerep's own errors (:class:`~facerep.runtime.errors.FacerepError`: bad config, data, checkpoint, a
    non-finite loss): fix the command or its inputs (also argparse's code for a bad command line).
1
    the system refused an operation (:class:`OSError`: a full disk, a read-only or missing folder, a file
    where a folder should be; or a library's wrapped write failure): fix the machine and rerun. Outputs are
    written atomically, so the previous ones are intact.

Anything else is a bug and shows its traceback.

Parsing imports nothing heavy (``facerep --help`` loads no torch): the table names each command's config
class and entry point as ``"module:name"`` strings, imported once the command line chose the command.
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib
import os
import sys
from dataclasses import dataclass
from typing import Any

from facerep.runtime.errors import FacerepError, one_line, os_error_line, write_failure_line


@dataclass(frozen=True)
class Command:
    """One runnable command: ``facerep NAME [-c CONFIG.yaml] [--print-config] [KEY=VALUE ...]``.

    ``config`` and ``entry`` are ``"module:name"`` references (a config dataclass, a function taking it),
    imported only when the command runs. A two-word ``name`` (``bench data``) is a choice of the first
    word's positional argument; the records sharing a first word share its ``help`` and ``description``.
    """

    name: str
    config: str
    entry: str
    help: str
    description: str
    config_file: bool = True  # takes -c CONFIG.yaml (else KEY=VALUE overrides only)
    example: str = ""  # overrides named when a -c is refused (a group whose other choices take one)
    instead: tuple[str, str] | None = None  # (config key, entry): run that entry when the key is set


_BENCH_HELP = "throughput: the full pre-training step (pretrain) or the data pipeline (data)"
_BENCH_DESCRIPTION = (
    "facerep bench pretrain [-c CONFIG] [bench.batch_sizes=[64,128,256] ...] | "
    "facerep bench data [data.source=... workers=[0,1,2] ...]"
)

COMMANDS: list[Command] = [
    Command(
        "pretrain", "facerep.config:PretrainConfig", "facerep.train.pretrain:pretrain",
        "pre-train a face backbone (MCF, MAE, FaRL, FRA, BYOL)",
        "Pre-train a backbone. Defaults: MCF, tiny ViT, synthetic faces, CPU-sized. "
        "Rerun with the same output_dir to resume.",
    ),
    Command(
        "finetune", "facerep.config:FinetuneConfig", "facerep.train.finetune:finetune",
        "fine-tune a backbone on face alignment, parsing or classification (FaRL protocol)",
        "facerep finetune [-c CONFIG] task=alignment|parsing|classification dataset=NAME "
        "data.root=PATH backbone=PATH|random output_dir=DIR [KEY=VALUE ...]",
    ),
    Command(
        "evaluate", "facerep.config:EvaluateConfig", "facerep.train.evaluate:evaluate",
        "score a fine-tuned checkpoint; optional overlays",
        "facerep evaluate checkpoint=PATH [dataset=NAME data.root=PATH split=test overlays=N]",
        config_file=False,
    ),
    Command(
        "probe", "facerep.commands.probe:ProbeConfig", "facerep.commands.probe:run_probe",
        "frozen-feature read-outs of one backbone on synthetic faces",
        "facerep probe backbone=PATH [image_size=96 train_length=1000 test_length=500 output_dir=DIR]",
        config_file=False,
    ),
    Command(
        "zeroshot", "facerep.commands.zeroshot:ZeroShotConfig", "facerep.commands.zeroshot:run_zeroshot",
        "zero-shot classification and image-text retrieval with a CLIP-style model (FaRL)",
        "facerep zeroshot [-c configs/zeroshot_*.yaml] backbone=CLIP_FILE "
        "dataset=NAME [root=DIR split=test] (NAME: a classification set, e.g. rafdb) | "
        "facerep zeroshot backbone=CLIP_FILE dataset=captions [source=synthetic|folder path=DIR length=500]. "
        "Prompt classifiers (templates x class names, features averaged) score images by cosine similarity; "
        "attributes compare a positive and a negative prompt set. Reports accuracy (plus balanced accuracy "
        "and ROC-AUC for attributes) beside the trivial baseline of the split, or recall@1/5/10 beside "
        "chance (a hit = identical caption text); writes zeroshot.json to output_dir "
        "(default runs/zeroshot/<dataset>).",
    ),
    Command(
        "heatmaps", "facerep.commands.heatmaps:HeatmapsConfig", "facerep.commands.heatmaps:run_heatmaps",
        "where an FRA run's region queries look: overlays and IoU vs parsing",
        "facerep heatmaps run=RUN_DIR [images=8 eval_images=200 output_dir=DIR]: the learned region heatmaps "
        "of a method=fra run on held-out synthetic faces as PNG overlays, and each query's best-matching "
        "parsing class with its IoU, beside the random-init method and a fixed grid.",
        config_file=False,
    ),
    Command(
        "prepare", "facerep.commands.prepare:PrepareConfig", "facerep.commands.prepare:run_prepare",
        "raw images -> face-crop WebDataset shards (detect, crop, re-encode)",
        "facerep prepare [-c configs/prepare_*.yaml] input=SHARDS|DIR|LIST.txt output_dir=DIR "
        "[detections=sample2detect_*.pth | detector=mtcnn] [crop.size=224 ...] [engine=pool|ray workers=N]. "
        "Rerun with the same output_dir to resume (finished shards are skipped).",
    ),
    Command(
        "predict", "facerep.commands.predict:PredictConfig", "facerep.commands.predict:run_predict",
        "run a fine-tuned model on photos, folders or videos: JSON + overlays",
        "facerep predict checkpoint=RUN_DIR|finetune.pt|model.onnx input=PHOTO|DIR|VIDEO output_dir=DIR "
        "[device=cpu batch_size=16 overlays=true]",
    ),
    Command(
        "export", "facerep.commands.export:ExportConfig", "facerep.commands.export:run_export",
        "export a fine-tuned model (backbone + head): ONNX, TorchScript, safetensors",
        "facerep export checkpoint=RUN_DIR|finetune.pt format=onnx|torchscript|safetensors [output=PATH]; "
        "ONNX is checked against PyTorch with onnxruntime (max abs diff printed).",
    ),
    Command(
        "demo", "facerep.commands.demo:DemoConfig", "facerep.commands.demo:run_demo",
        "embedded representation benchmark on synthetic faces (MAE vs MCF vs random)",
        "Pre-train MAE and MCF with equal budgets over 3 seeds, evaluate every backbone frozen (ridge "
        "landmarks, linear parsing decoder, attribute probe) against trivial baselines, write "
        "comparison.md/.json/.png and curves.png (~11 minutes on 2 CPU cores).",
        config_file=False,
        instead=("curve", "facerep.commands.demo:run_curve"),
    ),
    Command(
        "bench pretrain", "facerep.commands.bench:BenchPretrainConfig",
        "facerep.commands.bench:bench_pretrain", _BENCH_HELP, _BENCH_DESCRIPTION,
    ),
    Command(
        "bench data", "facerep.commands.bench:BenchDataConfig", "facerep.commands.bench:bench_data",
        _BENCH_HELP, _BENCH_DESCRIPTION,
        config_file=False, example="data.source=..., workers=[0,2]",
    ),
]  # fmt: skip
BY_NAME = {command.name: command for command in COMMANDS}
# modules whose config classes --help may import (no torch); the others' keys are left to --print-config
LIGHT_CONFIG_MODULES = ("facerep.config",)
EVERY_KEY = "run with --print-config to see every key"


def resolve(ref: str) -> Any:
    """The object a ``"module:name"`` reference names (importing the module)."""
    module, _, name = ref.partition(":")
    return getattr(importlib.import_module(module), name)


def run_command(command: Command, args: argparse.Namespace) -> int:
    """Resolve ``command``'s config from ``-c`` + overrides, then print it (``--print-config``) or run it."""
    from facerep.config import ConfigError, load_config, to_yaml

    config_file = getattr(args, "config", None)
    if config_file and not command.config_file:
        raise ConfigError(f"facerep {command.name} takes KEY=VALUE overrides only ({command.example})")
    entry = resolve(command.entry)  # before the config, as each command always has
    cfg = load_config(resolve(command.config), config_file, args.overrides)
    if args.print_config:
        print(to_yaml(cfg), end="")
        return 0
    if command.instead is not None and getattr(cfg, command.instead[0]):
        entry = resolve(command.instead[1])
    entry(cfg)
    return 0


def _spell(value: Any) -> str:
    """A default as an override would write it."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, list | tuple):
        return f"[{','.join(_spell(v) for v in value)}]"
    if isinstance(value, dict):
        return "{" + ",".join(f"{k}:{_spell(v)}" for k, v in value.items()) + "}"
    return str(value) if value != "" else "''"


def config_keys(schema: Any, prefix: str = "") -> dict[str, str]:
    """Every dotted key of the config dataclass ``schema`` (a class: its defaults; an instance: its values),
    spelled as an override would write it; without constructing ``schema`` itself."""
    keys: dict[str, str] = {}
    for f in dataclasses.fields(schema):
        if not isinstance(schema, type):
            value = getattr(schema, f.name)
        elif f.default is not dataclasses.MISSING:
            value = f.default
        elif f.default_factory is not dataclasses.MISSING:
            value = f.default_factory()
        else:
            value = "???"
        if dataclasses.is_dataclass(value):
            keys.update(config_keys(value, f"{prefix}{f.name}."))
        else:
            keys[f"{prefix}{f.name}"] = _spell(value)
    return keys


def keys_epilog(command: Command) -> str:
    """The epilog of ``facerep NAME --help``: the config's keys and defaults where its module is light,
    else where to see them."""
    module = command.config.partition(":")[0]
    if module not in LIGHT_CONFIG_MODULES:
        return EVERY_KEY
    from facerep.config import PretrainConfig

    schema = resolve(command.config)
    listed = " ".join(f"{key}={value}" for key, value in config_keys(schema).items())
    if issubclass(schema, PretrainConfig):  # the method sections register with the methods (torch)
        return f"keys: {listed} (the method sections, e.g. mcf.*: {EVERY_KEY})"
    return f"keys: {listed}"


class _CommandParser(argparse.ArgumentParser):
    """A subcommand's parser: its epilog (the config keys) is built only when its help is shown."""

    commands: tuple[Command, ...] = ()

    def format_help(self) -> str:
        if self.commands and self.epilog is None:
            texts = {c.name: keys_epilog(c) for c in self.commands}
            if len(set(texts.values())) == 1:
                self.epilog = next(iter(texts.values()))
            else:
                self.epilog = " | ".join(f"{name}: {text}" for name, text in texts.items())
        return super().format_help()


class _Version(argparse.Action):
    """``--version``: ``facerep <version>`` (the installed distribution's, else ``facerep.__version__``)."""

    def __init__(self, option_strings: list[str], dest: str = argparse.SUPPRESS, **kwargs: Any) -> None:
        super().__init__(option_strings, dest=dest, default=argparse.SUPPRESS, nargs=0, **kwargs)

    def __call__(self, parser: argparse.ArgumentParser, *args: Any) -> None:
        print(f"facerep {version()}")
        parser.exit()


def version() -> str:
    """The version of the installed ``facerep`` distribution, else the package's ``__version__``."""
    from importlib.metadata import PackageNotFoundError
    from importlib.metadata import version as installed

    try:
        return installed("facerep")
    except PackageNotFoundError:
        import facerep

        return getattr(facerep, "__version__", "unknown")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="facerep", description="Facial representation learning.")
    parser.add_argument("--version", action=_Version, help="print facerep's version and exit")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_CommandParser)
    groups: dict[str, list[Command]] = {}
    for command in COMMANDS:
        groups.setdefault(command.name.split()[0], []).append(command)
    for name, commands in groups.items():
        first = commands[0]
        p = sub.add_parser(name, help=first.help, description=first.description)
        p.commands = tuple(commands)
        if len(commands) > 1:  # a first positional choice among the commands' second words
            p.add_argument("what", choices=[c.name.split()[1] for c in commands])
        if any(c.config_file for c in commands):
            p.add_argument(
                "-c", "--config", help="YAML config (see configs/); KEY=VALUE overrides apply on top"
            )
        p.add_argument("--print-config", action="store_true", help="print the resolved config and exit")
        p.add_argument(
            "overrides", nargs="*", metavar="KEY=VALUE", help="dotted overrides, e.g. train.epochs=3"
        )
    return parser


def _failure(err: Exception) -> tuple[str | None, int]:
    """The one line and exit code of a user's (2) or the system's (1) error; ``None`` for a bug."""
    if isinstance(err, FacerepError):
        return one_line(err), 2
    if isinstance(err, OSError):
        return os_error_line(err), 1
    return write_failure_line(err), 1


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    command = BY_NAME[" ".join(filter(None, (args.command, getattr(args, "what", None))))]
    try:
        return run_command(command, args)
    except KeyboardInterrupt:
        return 130
    except Exception as err:
        line, code = _failure(err)
        if line is None or os.environ.get("FACEREP_DEBUG"):
            raise
        print(f"facerep: error: {line}", file=sys.stderr)
        return code


if __name__ == "__main__":
    sys.exit(main())
