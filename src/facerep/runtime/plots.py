"""A run's curves as pictures in ``output_dir/plots/``, drawn from its ``metrics.jsonl`` at the end of a run.

* ``loss.png``: the loss and each of its terms against the optimizer step, one panel each;
* ``metrics.png`` (fine-tuning): each test metric (``test/<metric>`` keys) against the epoch; the per-class
  and per-attribute scores (``f1_<class>``, ``acc_<attribute>``) share one panel per family.

matplotlib is imported inside the functions, with the Agg canvas (no display, no pyplot state), so
``import facerep`` stays light. Every picture is written atomically. :func:`warn_on_failure` runs the
plotting of a finished run: a failure is one warning line, never a lost run.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

from facerep.runtime.atomic import atomic_save

PLOTS = "plots"
# the keys of a record that are not a loss: its position, throughput, counts (and lr, lr_<group>)
NOT_LOSSES = frozenset({"step", "epoch", "images_per_s", "skipped"})
FAMILIES = ("f1_", "acc_")  # per-class / per-attribute metrics, drawn together
MAX_LEGEND = 12


def read_metrics(output_dir: Path) -> list[dict[str, Any]]:
    """The records of ``output_dir/metrics.jsonl`` (none when it is missing)."""
    path = Path(output_dir) / "metrics.jsonl"
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def _number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def _ordered_keys(records: Iterable[dict[str, Any]], keep: Callable[[str], bool]) -> list[str]:
    return list(dict.fromkeys(k for r in records for k, v in r.items() if keep(k) and _number(v)))


def loss_keys(records: Sequence[dict[str, Any]], terms: Sequence[str] | None = None) -> list[str]:
    """``loss`` and its terms, as the records hold them: ``terms`` when the trainer names them, else every
    numeric key that is neither a position, a rate, a count nor a test metric."""
    if terms is not None:
        wanted = ["loss", *terms]
        present = _ordered_keys(records, lambda k: True)
        return [k for k in dict.fromkeys(wanted) if k in present]
    return _ordered_keys(records, lambda k: k not in NOT_LOSSES and not k.startswith(("test/", "lr")))


def _figure(panels: int, columns: int = 3) -> tuple[Any, list[Any]]:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.ticker import MaxNLocator

    columns = min(columns, panels)
    rows = math.ceil(panels / columns)
    fig = Figure(figsize=(4.2 * columns, 3.0 * rows), layout="constrained")
    FigureCanvasAgg(fig)
    axes = [fig.add_subplot(rows, columns, i + 1) for i in range(panels)]
    for ax in axes:  # steps and epochs are whole numbers
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
    return fig, axes


def _save(fig: Any, path: Path) -> Path:
    return atomic_save(lambda tmp: fig.savefig(tmp, format="png", dpi=100), path)


def _series(records: Sequence[dict[str, Any]], key: str, x: str) -> tuple[list[float], list[float]]:
    points = [(r[x], r[key]) for r in records if x in r and _number(r.get(key))]
    return [p[0] for p in points], [p[1] for p in points]


def plot_losses(
    records: Sequence[dict[str, Any]], path: Path, terms: Sequence[str] | None = None, title: str = ""
) -> Path | None:
    """``path`` (``loss.png``): the loss and each term against ``step``; ``None`` when nothing was logged."""
    keys = loss_keys(records, terms)
    if not keys:
        return None
    fig, axes = _figure(len(keys))
    for ax, key in zip(axes, keys, strict=True):
        xs, ys = _series(records, key, "step")
        ax.plot(xs, ys, marker="." if len(xs) <= 50 else None, color="tab:blue")
        ax.set_title(key, fontsize=10)
        ax.set_xlabel("optimizer step")
    if title:
        fig.suptitle(title, fontsize=11)
    return _save(fig, path)


def plot_test_metrics(records: Sequence[dict[str, Any]], path: Path, title: str = "") -> Path | None:
    """``path`` (``metrics.png``): every ``test/<metric>`` against ``epoch`` (``step`` for records without
    one); ``None`` when no record holds a test metric."""
    rows = [r for r in records if any(k.startswith("test/") for k in r)]
    keys = _ordered_keys(rows, lambda k: k.startswith("test/"))
    if not keys:
        return None
    panels: dict[str, list[str]] = {}
    for key in keys:
        name = key.removeprefix("test/")
        family = next((f for f in FAMILIES if name.startswith(f)), None)
        panels.setdefault(f"test/{family}*" if family else key, []).append(key)
    x = "epoch" if all("epoch" in r for r in rows) else "step"
    fig, axes = _figure(len(panels))
    for ax, (panel, members) in zip(axes, panels.items(), strict=True):
        for key in members:
            xs, ys = _series(rows, key, x)
            label = key.removeprefix("test/") if len(members) > 1 else None
            marker = "." if len(xs) <= 50 else None
            ax.plot(xs, ys, marker=marker, linewidth=1.0 if label else 1.5, label=label)
        if 1 < len(members) <= MAX_LEGEND:
            ax.legend(fontsize=7)
        ax.set_title(panel, fontsize=10)
        ax.set_xlabel(x)
    if title:
        fig.suptitle(title, fontsize=11)
    return _save(fig, path)


def warn_on_failure(what: str, draw: Callable[[], Any]) -> Any:
    """``draw()``, or ``None`` and one warning line when it raises: a picture never costs a finished run."""
    try:
        return draw()
    except Exception as err:  # any failure of a picture is only a warning
        reason = " ".join(f"{type(err).__name__}: {err}".split())
        print(f"[facerep] warning: {what} not written ({reason}); the run is complete", flush=True)
        return None


def write_curves(output_dir: Path, terms: Sequence[str] | None = None, title: str = "") -> list[Path]:
    """``plots/loss.png`` and, when the run evaluated, ``plots/metrics.png`` from ``metrics.jsonl``; each
    picture that fails is one warning line. Returns the pictures written."""
    output_dir = Path(output_dir)
    records = warn_on_failure(f"{PLOTS}/ (reading metrics.jsonl)", lambda: read_metrics(output_dir))
    if not records:
        return []
    out = output_dir / PLOTS
    written = [
        warn_on_failure(f"{PLOTS}/loss.png", lambda: plot_losses(records, out / "loss.png", terms, title)),
        warn_on_failure(
            f"{PLOTS}/metrics.png", lambda: plot_test_metrics(records, out / "metrics.png", title)
        ),
    ]
    return [path for path in written if path is not None]
