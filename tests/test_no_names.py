"""One home for each kind of knowledge: outside ``tasks/`` and the datasets' registry entries
(``data/downstream/``) no module names a task or a dataset; it asks the task (its flags and methods) or the
dataset's :meth:`~facerep.data.downstream.base.FaceDataset.describe`. Checked on every string literal."""

from __future__ import annotations

import ast
from pathlib import Path

from facerep.data.downstream import DATASETS
from facerep.tasks import TASKS

PACKAGE = Path(__file__).resolve().parents[1] / "src" / "facerep"
HOMES = ("tasks/", "data/downstream/")
READOUT = "a benchmark read-out family (a key of comparison.json / probe.json), not a registry lookup"
# (module, name) -> why that module may spell the name
ALLOWED = {
    ("apps/readouts.py", "alignment"): READOUT,
    ("apps/readouts.py", "parsing"): READOUT,
    ("apps/lowlabel.py", "alignment"): READOUT,
    ("apps/lowlabel.py", "parsing"): READOUT,
    ("commands/demo.py", "alignment"): READOUT,
    ("commands/demo.py", "parsing"): READOUT,
    ("commands/probe.py", "alignment"): READOUT,
    ("commands/probe.py", "parsing"): READOUT,
    ("apps/heatmaps.py", "parsing"): "the parsing tile of a heatmap figure and its read-out key",
    ("commands/zeroshot.py", "classification"): "zeroshot.json's result kind (classification | attributes)",
    ("apps/facer.py", "alignment"): "facer's release table: the task each external model was trained for",
    ("apps/facer.py", "parsing"): "facer's release table: the task each external model was trained for",
    ("apps/facer.py", "lapa"): "facer's release file names (face_parsing.farl.lapa...)",
    ("apps/facer.py", "aflw19"): "facer's release file names (face_alignment.farl.aflw19...)",
    ("apps/facer.py", "wflw"): "facer's release file names (face_alignment.farl.wflw...)",
    ("config.py", "alignment"): "FinetuneConfig's default task",
    ("config.py", "synthetic_alignment"): "FinetuneConfig's default dataset",
}


def named(path: Path, names: set[str]) -> list[tuple[int, str]]:
    """``(line, name)`` of every string literal in ``path`` equal to one of ``names``."""
    tree = ast.parse(path.read_text(), str(path))
    strings = (n for n in ast.walk(tree) if isinstance(n, ast.Constant) and isinstance(n.value, str))
    return [(node.lineno, node.value) for node in strings if node.value in names]


def test_no_module_outside_the_registries_names_a_task_or_a_dataset():
    names = set(TASKS) | set(DATASETS)
    found = []
    for path in sorted(PACKAGE.rglob("*.py")):
        module = path.relative_to(PACKAGE).as_posix()
        if module.startswith(HOMES):
            continue
        found += [
            f"{module}:{line}: {name!r}" for line, name in named(path, names) if (module, name) not in ALLOWED
        ]
    assert found == [], "ask the task or the dataset's describe() instead of naming it:\n" + "\n".join(found)


def test_every_allowed_name_is_still_there():
    names = set(TASKS) | set(DATASETS)
    stale = [key for key in ALLOWED if key[1] not in {n for _, n in named(PACKAGE / key[0], names)}]
    assert stale == []
