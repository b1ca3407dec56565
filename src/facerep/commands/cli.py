"""``facerep`` command line: ``pretrain``, ``finetune``, ``evaluate``, ``probe``, ``zeroshot``, ``heatmaps``,
``prepare``, ``predict``, ``export``, ``demo`` and ``bench``.

Each takes ``[-c CONFIG.yaml] [KEY=VALUE ...]`` (``evaluate``, ``probe``, ``demo`` and ``bench data`` only the
overrides). Failures are printed as one line ``facerep: error: ...`` (``FACEREP_DEBUG=1``: the traceback
instead), with an exit code saying whose move it is:

2
    facerep's own errors (:class:`~facerep.runtime.errors.FacerepError`: bad config, data, checkpoint, a
    non-finite loss): fix the command or its inputs (also argparse's code for a bad command line).
1
    the system refused an operation (:class:`OSError`: a full disk, a read-only or missing folder, a file
    where a folder should be; or a library's wrapped write failure): fix the machine and rerun. Outputs are
    written atomically, so the previous ones are intact.

Anything else is a bug and shows its traceback.

Parsing imports nothing heavy (``facerep --help`` loads no torch): each handler imports its command's modules
once the command line chose it.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable
from typing import Any

from facerep.runtime.errors import FacerepError, one_line, os_error_line, write_failure_line


def _run_config(schema: type, run: Callable[[Any], object], args: argparse.Namespace) -> int:
    """Resolve ``schema`` from ``-c`` + overrides, then print it (``--print-config``) or ``run`` it."""
    from facerep.config import load_config, to_yaml

    cfg = load_config(schema, args.config, args.overrides)
    if args.print_config:
        print(to_yaml(cfg), end="")
    else:
        run(cfg)
    return 0


def _pretrain(args: argparse.Namespace) -> int:
    from facerep.config import PretrainConfig
    from facerep.engine.trainer import pretrain

    return _run_config(PretrainConfig, pretrain, args)


def _finetune(args: argparse.Namespace) -> int:
    from facerep.config import FinetuneConfig
    from facerep.engine.finetune import finetune

    return _run_config(FinetuneConfig, finetune, args)


def _evaluate(args: argparse.Namespace) -> int:
    from facerep.config import EvaluateConfig, load_config
    from facerep.engine.evaluate import evaluate

    evaluate(load_config(EvaluateConfig, None, args.overrides))
    return 0


def _probe(args: argparse.Namespace) -> int:
    from facerep.commands.probe import ProbeConfig, run_probe
    from facerep.config import load_config

    run_probe(load_config(ProbeConfig, None, args.overrides))
    return 0


def _heatmaps(args: argparse.Namespace) -> int:
    from facerep.commands.heatmaps import HeatmapsConfig, run_heatmaps
    from facerep.config import load_config

    run_heatmaps(load_config(HeatmapsConfig, None, args.overrides))
    return 0


def _zeroshot(args: argparse.Namespace) -> int:
    from facerep.commands.zeroshot import ZeroShotConfig, run_zeroshot

    return _run_config(ZeroShotConfig, run_zeroshot, args)


def _prepare(args: argparse.Namespace) -> int:
    from facerep.commands.prepare import PrepareConfig, run_prepare

    return _run_config(PrepareConfig, run_prepare, args)


def _predict(args: argparse.Namespace) -> int:
    from facerep.commands.predict import PredictConfig, run_predict

    return _run_config(PredictConfig, run_predict, args)


def _export(args: argparse.Namespace) -> int:
    from facerep.commands.export import ExportConfig, run_export

    return _run_config(ExportConfig, run_export, args)


def _demo(args: argparse.Namespace) -> int:
    from facerep.commands.demo import DemoConfig, run_curve, run_demo
    from facerep.config import load_config

    cfg = load_config(DemoConfig, None, args.overrides)
    (run_curve if cfg.curve else run_demo)(cfg)
    return 0


def _bench(args: argparse.Namespace) -> int:
    from facerep.commands import bench
    from facerep.config import ConfigError

    if args.what == "pretrain":
        return _run_config(bench.BenchPretrainConfig, bench.bench_pretrain, args)
    if args.config:
        raise ConfigError(
            "facerep bench data takes KEY=VALUE overrides only (data.source=..., workers=[0,2])"
        )
    return _run_config(bench.BenchDataConfig, bench.bench_data, args)


def _command(
    sub: argparse._SubParsersAction,
    name: str,
    func: Callable,
    help: str,
    description: str,
    config: bool,
    what: list[str] | None = None,
) -> None:
    """A subcommand taking ``KEY=VALUE`` overrides (and ``-c CONFIG`` / ``--print-config`` if ``config``;
    a first positional choice among ``what`` if given)."""
    p = sub.add_parser(name, help=help, description=description)
    if what:
        p.add_argument("what", choices=what)
    if config:
        p.add_argument("-c", "--config", help="YAML config (see configs/); KEY=VALUE overrides apply on top")
        p.add_argument("--print-config", action="store_true", help="print the resolved config and exit")
    p.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="dotted overrides, e.g. train.epochs=3")
    p.set_defaults(func=func)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="facerep", description="Facial representation learning.")
    sub = parser.add_subparsers(dest="command", required=True)
    _command(
        sub, "pretrain", _pretrain, "pre-train a face backbone (MCF, MAE, FaRL, FRA, BYOL)",
        "Pre-train a backbone. Defaults: MCF, tiny ViT, synthetic faces, CPU-sized. "
        "Rerun with the same output_dir to resume.", config=True,
    )  # fmt: skip
    _command(
        sub, "finetune", _finetune,
        "fine-tune a backbone on face alignment, parsing or classification (FaRL protocol)",
        "facerep finetune [-c CONFIG] task=alignment|parsing|classification dataset=NAME "
        "data.root=PATH backbone=PATH|random output_dir=DIR [KEY=VALUE ...]", config=True,
    )  # fmt: skip
    _command(
        sub, "evaluate", _evaluate, "score a fine-tuned checkpoint; optional overlays",
        "facerep evaluate checkpoint=PATH [dataset=NAME data.root=PATH split=test overlays=N]", config=False,
    )  # fmt: skip
    _command(
        sub, "probe", _probe, "frozen-feature read-outs of one backbone on synthetic faces",
        "facerep probe backbone=PATH [image_size=96 train_length=1000 test_length=500 output_dir=DIR]",
        config=False,
    )  # fmt: skip
    _command(
        sub, "zeroshot", _zeroshot,
        "zero-shot classification and image-text retrieval with a CLIP-style model (FaRL)",
        "facerep zeroshot [-c configs/zeroshot_*.yaml] backbone=CLIP_FILE "
        "dataset=NAME [root=DIR split=test] (NAME: a classification set, e.g. rafdb) | "
        "facerep zeroshot backbone=CLIP_FILE dataset=captions [source=synthetic|folder path=DIR length=500]. "
        "Prompt classifiers (templates x class names, features averaged) score images by cosine similarity; "
        "attributes compare a positive and a negative prompt set. Reports accuracy (plus balanced accuracy "
        "and ROC-AUC for attributes) beside the trivial baseline of the split, or recall@1/5/10 beside "
        "chance (a hit = identical caption text); writes zeroshot.json to output_dir "
        "(default runs/zeroshot/<dataset>).", config=True,
    )  # fmt: skip
    _command(
        sub, "heatmaps", _heatmaps, "where an FRA run's region queries look: overlays and IoU vs parsing",
        "facerep heatmaps run=RUN_DIR [images=8 eval_images=200 output_dir=DIR]: the learned region heatmaps "
        "of a method=fra run on held-out synthetic faces as PNG overlays, and each query's best-matching "
        "parsing class with its IoU, beside the random-init method and a fixed grid.", config=False,
    )  # fmt: skip
    _command(
        sub, "prepare", _prepare, "raw images -> face-crop WebDataset shards (detect, crop, re-encode)",
        "facerep prepare [-c configs/prepare_*.yaml] input=SHARDS|DIR|LIST.txt output_dir=DIR "
        "[detections=sample2detect_*.pth | detector=mtcnn] [crop.size=224 ...] [engine=pool|ray workers=N]. "
        "Rerun with the same output_dir to resume (finished shards are skipped).", config=True,
    )  # fmt: skip
    _command(
        sub, "predict", _predict, "run a fine-tuned model on photos, folders or videos: JSON + overlays",
        "facerep predict checkpoint=RUN_DIR|finetune.pt|model.onnx input=PHOTO|DIR|VIDEO output_dir=DIR "
        "[device=cpu batch_size=16 overlays=true]", config=True,
    )  # fmt: skip
    _command(
        sub, "export", _export, "export a fine-tuned model (backbone + head): ONNX, TorchScript, safetensors",
        "facerep export checkpoint=RUN_DIR|finetune.pt format=onnx|torchscript|safetensors [output=PATH]; "
        "ONNX is checked against PyTorch with onnxruntime (max abs diff printed).", config=True,
    )  # fmt: skip
    _command(
        sub, "demo", _demo, "embedded representation benchmark on synthetic faces (MAE vs MCF vs random)",
        "Pre-train MAE and MCF with equal budgets over 3 seeds, evaluate every backbone frozen (ridge "
        "landmarks, linear parsing decoder, attribute probe) against trivial baselines, write "
        "comparison.md/.json/.png and curves.png (~11 minutes on 2 CPU cores).", config=False,
    )  # fmt: skip
    _command(
        sub, "bench", _bench, "throughput: the full pre-training step (pretrain) or the data pipeline (data)",
        "facerep bench pretrain [-c CONFIG] [bench.batch_sizes=[64,128,256] ...] | "
        "facerep bench data [data.source=... workers=[0,1,2] ...]", config=True, what=["pretrain", "data"],
    )  # fmt: skip
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
    try:
        return args.func(args)
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
