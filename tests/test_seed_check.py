"""scripts/seed_check.py: one seed of a benchmark run against its other seeds, on a hand-made table."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPTS = Path(__file__).resolve().parents[1] / "scripts"
sys.path.insert(0, str(SCRIPTS))
import seed_check  # noqa: E402

# three rows, three seeds; alignment (NME, lower is better) and parsing / attributes (higher is better)
PER_SEED = {
    "random": {"alignment": [0.10, 0.11, 0.10], "parsing": [0.40, 0.42, 0.41], "attributes": [0.8, 0.8, 0.8]},
    "byol": {"alignment": [0.08, 0.08, 0.09], "parsing": [0.46, 0.44, 0.45], "attributes": [0.8, 0.8, 0.8]},
    "fra": {"alignment": [0.09, 0.10, 0.12], "parsing": [0.41, 0.43, 0.44], "attributes": [0.8, 0.8, 0.8]},
}
BASELINES = {"alignment": {"nme": 0.15}, "parsing": {"mean_f1": 0.2}, "attributes": {"accuracy": 0.8}}
VS = {"vs_random": {"row": "random"}}
SUMMARY = {"random": {t: {} for t in PER_SEED["random"]}, "byol": {t: VS for t in PER_SEED["random"]},
           "fra": {t: VS for t in PER_SEED["random"]}}  # fmt: skip


def test_the_new_seed_is_split_off_and_its_gains_and_ranking_computed():
    others, new = seed_check.split_summaries(PER_SEED, SUMMARY, BASELINES, new=-1)
    assert (
        others["byol"]["alignment"]["mean"] == pytest.approx(0.08) and others["byol"]["alignment"]["std"] == 0
    )
    assert new["fra"]["alignment"]["mean"] == pytest.approx(0.12)
    assert new["fra"]["alignment"]["beats_baseline"] and not new["fra"]["attributes"]["beats_baseline"]
    assert others["fra"]["alignment"]["vs_random"]["gain"] == pytest.approx(0.105 - 0.095)  # NME: lower wins
    assert new["fra"]["alignment"]["vs_random"]["gain"] == pytest.approx(0.10 - 0.12)
    assert new["byol"]["parsing"]["vs_random"]["gain"] == pytest.approx(0.45 - 0.41)
    lines, check = seed_check.report("frozen", others, new, "new seed")
    assert check["alignment"]["side_flips"] == ["fra"] and check["parsing"]["side_flips"] == []
    assert check["attributes"]["spearman"] is None  # tied means: no rank correlation
    # byol's parsing: +0.04 on the new seed against a spread of max(0.0141, 0.0141): 2.8 spreads, marked
    assert "| byol | parsing | 45.00 ± 1.41 | 45.00 | +4.00▲ / +4.00▲ |" in lines
    assert "| fra | alignment | 9.50 ± 0.71 | 12.00 | +1.00 / -2.00 |" in lines
    first, _ = seed_check.split_summaries(PER_SEED, SUMMARY, BASELINES, new=0)
    assert first["byol"]["alignment"]["mean"] == pytest.approx(0.085)


def test_the_command_reads_a_run_and_writes_its_json(tmp_path):
    (tmp_path / "comparison.json").write_text(json.dumps({
        "per_seed": PER_SEED, "summary": SUMMARY, "baselines": BASELINES,
        "lowlabel": {"100": {"per_seed": PER_SEED, "summary": SUMMARY, "baselines": BASELINES}},
    }))  # fmt: skip
    command = [
        sys.executable,
        str(SCRIPTS / "seed_check.py"),
        str(tmp_path),
        "--json",
        str(tmp_path / "c.json"),
    ]
    proc = subprocess.run(command, capture_output=True, text=True, check=True)
    assert "### fine-tuned on 100 faces" in proc.stdout
    assert "- alignment: Spearman 0.50 over 3 rows; gain changes sign: fra" in proc.stdout
    out = json.loads((tmp_path / "c.json").read_text())
    assert (
        set(out) == {"frozen", "fine-tuned on 100 faces"} and out["frozen"]["ranking"]["parsing"]["rows"] == 3
    )
