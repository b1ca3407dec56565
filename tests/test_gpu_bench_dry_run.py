"""The prepared GPU benchmark (benchmarks/gpu.sh) end to end in its dry run: CPU, tiny model, 2 steps."""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "benchmarks" / "gpu.sh"


def gpu_rows():
    spec = importlib.util.spec_from_file_location("gpu_rows", ROOT / "benchmarks" / "gpu_rows.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules["gpu_rows"] = module
    spec.loader.exec_module(module)
    return module


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("bash") is None or shutil.which("timeout") is None, reason="needs bash")
def test_gpu_bench_dry_run_writes_every_row(tmp_path):
    out = tmp_path / "gpu_bench"
    env = {**os.environ, "PYTHON": sys.executable, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}
    env["OUT"] = str(tmp_path / "device_out")  # the device machine's folder that comes back
    (tmp_path / "device_out").mkdir()
    proc = subprocess.run(
        ["bash", str(SCRIPT), "--dry-run", str(out)],
        env=env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert f"budget {gpu_rows().TOTAL_BUDGET_S}s;" in (out / "gpu_bench.log").read_text()  # one number
    result = json.loads((out / "gpu_bench.json").read_text())
    assert result["dry_run"] is True and result["failed"] == []
    names = [r["name"] for r in result["rows"]]
    assert names == gpu_rows().expected_names(dry_run=True)
    kinds = {r["name"]: r["kind"] for r in result["rows"]}
    assert sorted(set(kinds.values())) == ["data", "finetune", "parity", "pretrain"]
    for row in result["rows"]:
        assert "error" not in row, row
        assert isinstance(row["elapsed_s"], float)
        if row["kind"] == "parity":
            assert row["rel_diff"] < 0.05
            if row["name"] == "fp8_parity":  # the fp8 teacher against the same teacher at bf16 (CPU fp8)
                assert row["of_row"] == "mcf_eager_fp8_b8" and 0 < row["fp8_rel_diff"] < 0.05
            else:
                assert row["compiled"] is True and "fp8_rel_diff" not in row
            continue
        assert row["images_per_s"] > 0 and row["warmup_s" if row["kind"] != "data" else "jpeg_write_s"] >= 0
        if row["kind"] == "pretrain":
            assert row["ms_per_step"] > 0 and row["gflop_per_image"] > 0 and row["percent_of_peak"] > 0
            assert row["first_step_s"] > 0 and row["timed_steps"] == 2
            assert row["compiled"] is row["compile"]
            assert (row["fp8_layers"] > 0) is (row["teacher_precision"] == "fp8")
    pretrain = [r for r in result["rows"] if r["kind"] == "pretrain"]
    assert sorted((r["batch_size"], r["compile"], r["teacher_precision"]) for r in pretrain) == sorted(
        [(b, c, "auto") for b in (2, 4, 8) for c in (False, True)] + [(8, False, "fp8")]
    )
    table = (out / "gpu_bench.md").read_text()
    assert (tmp_path / "device_out" / "gpu_bench.md").read_text() == table
    assert json.loads((tmp_path / "device_out" / "gpu_bench.json").read_text()) == result
    assert all(f"| {name} | ok |" in table for name in names)


def test_a_failing_or_missing_row_is_recorded_with_its_error(tmp_path):
    module = gpu_rows()
    out = tmp_path / "out"
    module.cmd_fail(out, "mcf_compile_b2", "killed at the time budget (status 124)", dry_run=True)
    module.cmd_collect(out, dry_run=True, total_s=1.0)
    result = json.loads((out / "gpu_bench.json").read_text())
    rows = {r["name"]: r for r in result["rows"]}
    assert rows["mcf_compile_b2"]["error"].startswith("killed") and rows["loss_parity"]["error"].startswith(
        "killed"
    )
    assert rows["mcf_eager_b2"]["error"].startswith("no record")
    assert set(result["failed"]) == set(rows)
    assert "| mcf_compile_b2 | error |" in (out / "gpu_bench.md").read_text()


def test_the_gpu_plan_fits_the_budget():
    module = gpu_rows()
    rows = module.plan(dry_run=False)
    assert sum(r.budget_s for r in rows) <= module.TOTAL_BUDGET_S - 40  # gpu.sh starts no row after 440 s
    names = module.expected_names(dry_run=False)
    for b in (64, 128, 256):
        assert f"mcf_eager_b{b}" in names and f"mcf_compile_b{b}" in names
    assert {"loss_parity", "data_feed_jpeg", "finetune_alignment_448"} <= set(names)
    assert {"mcf_eager_fp8_b256", "fp8_parity"} <= set(names)


BLOCKER = """import sys
class Block:  # the packages the GPU machine's image lacks, as there
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in {"omegaconf", "webdataset", "lmdb", "open_clip", "torchao"}:
            raise ModuleNotFoundError(f"No module named {name!r}")
sys.meta_path.insert(0, Block())
"""


@pytest.mark.skipif(shutil.which("bash") is None, reason="needs bash")
def test_without_the_dependencies_or_their_wheels_gpu_sh_stops_at_once_in_one_line(tmp_path):
    (tmp_path / "site").mkdir()
    (tmp_path / "site" / "sitecustomize.py").write_text(BLOCKER)
    (tmp_path / "wheels").mkdir()  # no wheels: benchmarks/gpu_wheels.sh was not run
    env = {**os.environ, "PYTHON": sys.executable, "PYTHONPATH": str(tmp_path / "site"),
           "FACEREP_WHEELS": str(tmp_path / "wheels")}  # fmt: skip
    env.pop("OUT", None)
    proc = subprocess.run(["bash", str(SCRIPT), "--dry-run", str(tmp_path / "out")], env=env, cwd=tmp_path,
                          capture_output=True, text=True, timeout=120)  # fmt: skip
    assert proc.returncode == 2 and not (tmp_path / "out").exists()
    assert proc.stderr.strip().splitlines() == [
        f"gpu.sh: {sys.executable} cannot import facerep's dependencies (import omegaconf, webdataset, "
        f"lmdb, open_clip, torchao) and {tmp_path / 'wheels'} has no wheels: run bash "
        "benchmarks/gpu_wheels.sh where pip reaches PyPI and carry .whl"
    ]


def test_gpu_rows_picks_the_named_rows_extras_included(monkeypatch):
    module = gpu_rows()
    monkeypatch.setenv("GPU_ROWS", "mcf_compile_fp8_b256, mcf_eager_b64")
    rows = module.plan(dry_run=False)
    assert [r.name for r in rows] == ["mcf_compile_fp8_b256", "mcf_eager_b64"]
    assert rows[0].params == {
        "compile": True,
        "batch": 256,
        "parity": True,
        "fp8": True,
        "compile_mode": "default",
    }
    assert module.expected_names(dry_run=False) == [
        "mcf_compile_fp8_b256",
        "compiled_fp8_parity",
        "mcf_eager_b64",
    ]
    monkeypatch.setenv("GPU_ROWS", "mcf_cudagraph_b64")
    assert module.plan(dry_run=False)[0].params["compile_mode"] == "reduce-overhead"
    monkeypatch.setenv("GPU_ROWS", "mcf_eager_b64,nope")
    with pytest.raises(SystemExit, match=r"^GPU_ROWS: no row named nope; the rows: mcf_eager_b64, "):
        module.plan(dry_run=False)
    monkeypatch.delenv("GPU_ROWS")
    assert "mcf_cudagraph_b64" not in module.expected_names(dry_run=False)  # extras: only when named


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("bash") is None or shutil.which("timeout") is None, reason="needs bash")
def test_the_extra_rows_run_in_the_dry_run(tmp_path):
    env = {**os.environ, "PYTHON": sys.executable, "GPU_ROWS": "mcf_cudagraph_b2,mcf_compile_fp8_b8",
           "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}  # fmt: skip
    env.pop("OUT", None)
    proc = subprocess.run(["bash", str(SCRIPT), "--dry-run", str(tmp_path / "out")], env=env, cwd=tmp_path,
                          capture_output=True, text=True, timeout=300)  # fmt: skip
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    rows = {r["name"]: r for r in json.loads((tmp_path / "out" / "gpu_bench.json").read_text())["rows"]}
    assert list(rows) == ["mcf_cudagraph_b2", "cudagraph_parity", "mcf_compile_fp8_b8", "compiled_fp8_parity"]
    assert all("error" not in r for r in rows.values()), rows
    assert (
        rows["mcf_cudagraph_b2"]["compile_mode"] == "reduce-overhead" and rows["mcf_cudagraph_b2"]["compiled"]
    )
    assert rows["mcf_compile_fp8_b8"]["fp8_layers"] > 0 and rows["mcf_compile_fp8_b8"]["compiled"]
    assert 0 < rows["compiled_fp8_parity"]["fp8_rel_diff"] < 0.05
