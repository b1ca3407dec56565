"""Does a seed the benchmark has not used before give the same ranking? One seed of a run against the others.

``facerep demo``'s ``compare_to`` compares two runs' tables; this compares one seed of a run (``--new``, by
default the last one, the seed added last: ``seeds=[0,1,2]`` then ``seeds=[0,1,2,3]`` in a copy of the run
directory reuses the first three and runs seed 3 alone, at the learning rates the first seed chose) with the
run's other seeds, from ``comparison.json``'s per-seed values. Per column (frozen, and the fine-tuning column
at each size) and read-out, it prints every row's mean ± std over the other seeds beside its value on the new
seed, and each pre-trained row's gain over its architecture's random init (positive = better) on both, ▲ where
it exceeds twice the larger std over the other seeds of the row and its random init (the benchmark's mark,
with the other seeds' spread); then, as ``compare_to`` does (:func:`facerep.commands.demo.ranking_check`),
Spearman's rank correlation of the rows and the rows whose gain changes sign. Nothing is trained.

Run: ``python scripts/seed_check.py runs/ft1000s3`` (``--new 3`` picks the seed by its place in the run's seed
list; ``--json OUT`` also writes the numbers).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from facerep.commands.demo import METRICS, ranking_check, summarise


def split_summaries(per_seed: dict, summary: dict, baselines: dict, new: int) -> tuple[dict, dict]:
    """``(others, new seed)`` summaries of one column (:func:`facerep.commands.demo.summarise` of the other
    seeds' values and of the new seed's, against the column's ``baselines`` and the random-init rows
    ``summary`` names)."""
    references = {row: next((e["vs_random"]["row"] for e in tasks.values() if "vs_random" in e), None)
                  for row, tasks in summary.items()}  # fmt: skip
    parts = []
    for keep in (True, False):
        results = {row: {task: [{METRICS[task][0]: v} for i, v in enumerate(values)
                                if (i != new % len(values)) == keep] for task, values in tasks.items()}
                   for row, tasks in per_seed.items()}  # fmt: skip
        parts.append(summarise(results, baselines, references))
    return parts[0], parts[1]


def report(name: str, others: dict, new: dict, seed_label: str) -> tuple[list[str], dict]:
    """Markdown lines for one column and its :func:`ranking_check`."""
    lines = [f"### {name}", "", f"| row | read-out | other seeds | {seed_label} | gain over random: others / "
             f"{seed_label} |", "|---|---|---|---|---|"]  # fmt: skip
    for row in others:
        for task, (_, _, scale, _) in METRICS.items():
            o, n = others[row][task], new[row][task]
            gains = ""
            if "vs_random" in o:  # ▲: more than twice the larger std of the row and its random init
                spread = o["vs_random"]["spread"]  # the other seeds' (the new seed alone has none)
                marks = ["▲" if entry["vs_random"]["gain"] > 2 * spread else "" for entry in (o, n)]
                gains = (f"{o['vs_random']['gain'] * scale:+.2f}{marks[0]} / "
                         f"{n['vs_random']['gain'] * scale:+.2f}{marks[1]}")  # fmt: skip
            lines.append(f"| {row} | {task} | {o['mean'] * scale:.2f} ± {o['std'] * scale:.2f} | "
                         f"{n['mean'] * scale:.2f} | {gains} |")  # fmt: skip
    check = ranking_check(new, others)
    lines.append("")
    for task, c in check.items():
        rho = "n/a" if c["spearman"] is None else f"{c['spearman']:.2f}"
        flips = ", ".join(c["side_flips"]) or "none"
        lines.append(f"- {task}: Spearman {rho} over {c['rows']} rows; gain changes sign: {flips}")
    return [*lines, ""], check


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run", type=Path, help="a facerep demo output_dir (its comparison.json)")
    parser.add_argument(
        "--new", type=int, default=-1, help="the new seed's place in the run's seeds (-1: last)"
    )
    parser.add_argument("--json", type=Path, default=None, help="also write the numbers here")
    args = parser.parse_args()
    comparison = json.loads((args.run / "comparison.json").read_text())
    columns = {"frozen": comparison}
    for size, column in (comparison.get("lowlabel") or {}).items():
        columns[f"fine-tuned on {size} faces"] = column
    seed_label = "new seed" if args.new == -1 else f"seed #{args.new}"
    out, lines = {}, [f"# {args.run}: {seed_label} against the other seeds", ""]
    for name, column in columns.items():
        others, new = split_summaries(column["per_seed"], column["summary"], column["baselines"], args.new)
        column_lines, check = report(name, others, new, seed_label)
        lines += column_lines
        out[name] = {"others": others, "new": new, "ranking": check}
    print("\n".join(lines))
    if args.json is not None:
        args.json.write_text(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
