"""Multi-node launches as users run them, simulated on one host (gloo on CPU).

Each "node" is one ``torchrun --nnodes=2 --nproc_per_node=2 --rdzv_backend=c10d`` process; both
rendezvous on ``127.0.0.1:<port>``. Checked against one ``torchrun --nnodes=1 --nproc_per_node=4``:

* two nodes x 2 processes train exactly as one node x 4 (same losses, same weights, bit for bit);
* a node dying (its torchrun and its workers SIGKILLed after a checkpoint) ends the other node's run
  within seconds (gloo: "Connection reset by peer"), and rerunning both nodes' command resumes from the
  last checkpoint;
* with ``--max-restarts`` the surviving node restarts its workers and waits in the rendezvous: starting the
  dead node's command again is all it takes.

The launch examples (``examples/slurm``, ``examples/kubernetes``) are checked for syntax.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file

from conftest import TINY

ROOT = Path(__file__).resolve().parents[2]
TORCHRUN = [sys.executable, "-m", "torch.distributed.run"]
STEPS = 20  # enough steps after the first checkpoint (step 2) to kill a node mid-run
RUN = [*TINY, "method=mae", "device=cpu", f"train.max_steps={STEPS}", "train.ckpt_every=2"]
TIMEOUT = 300  # seconds for any one launch; a hang fails the test instead of blocking CI


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _torchrun(
    out: Path, *, nnodes: int, nproc: int, port: int, rdzv_id: str, node_rank: int = 0, extra=()
) -> list[str]:
    """The command a user types on each node (``node_rank`` is ignored by c10d: kept as users write it)."""
    return [
        *TORCHRUN, f"--nnodes={nnodes}", f"--nproc_per_node={nproc}", f"--node_rank={node_rank}",
        "--rdzv_backend=c10d", f"--rdzv_endpoint=127.0.0.1:{port}", f"--rdzv_id={rdzv_id}", *extra,
        "-m", "facerep", "pretrain", *RUN, f"output_dir={out}",
    ]  # fmt: skip


class Node:
    """One simulated node: a torchrun agent in its own session, its output in ``log``."""

    def __init__(self, cmd: list[str], log: Path, env: dict[str, str] | None = None) -> None:
        self.log = log
        env = {**os.environ, "OMP_NUM_THREADS": "1", **(env or {})}
        with log.open("w") as f:
            self.proc = subprocess.Popen(
                cmd, stdout=f, stderr=subprocess.STDOUT, env=env, start_new_session=True
            )

    def wait(self, timeout: float = TIMEOUT) -> int:
        return self.proc.wait(timeout=timeout)

    def text(self) -> str:
        return self.log.read_text(errors="replace")

    def workers(self) -> list[int]:
        """The agent's children: torchrun starts each worker in a session of its own."""
        pid = self.proc.pid
        try:
            return [int(p) for p in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
        except OSError:
            return []

    def kill(self) -> None:
        """What a node dying looks like to the others: the agent and every worker SIGKILLed at once.

        Killing torchrun's process group alone would leave its workers running (their own sessions)."""
        for pid in [self.proc.pid, *self.workers()]:
            with contextlib.suppress(ProcessLookupError):  # already gone
                os.killpg(pid, signal.SIGKILL)
        self.proc.wait(timeout=30)


@pytest.fixture
def nodes():
    """Starts nodes; whatever is still running at the end is killed."""
    started: list[Node] = []

    def start(cmd: list[str], log: Path, env: dict[str, str] | None = None) -> Node:
        started.append(Node(cmd, log, env))
        return started[-1]

    yield start
    for node in started:
        if node.proc.poll() is None:
            node.kill()


def _run_two_nodes(start, out: Path, rdzv_id: str, extra=(), env=None, tag: str = "") -> list[Node]:
    port = _free_port()
    return [
        start(
            _torchrun(out, nnodes=2, nproc=2, port=port, rdzv_id=rdzv_id, node_rank=r, extra=extra),
            out.parent / f"{out.name}{tag}.node{r}.log",
            env,
        )
        for r in (0, 1)
    ]


def _losses(out: Path) -> list[tuple[int, float]]:
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    return [(r["step"], r["loss"]) for r in records]


def _weights(out: Path) -> dict[str, torch.Tensor]:
    return load_file(out / "backbone.safetensors")  # tensors only: the metadata's key order varies


def _assert_ok(nodes_: list[Node]) -> str:
    rcs = [n.wait() for n in nodes_]
    logs = "\n".join(n.text() for n in nodes_)
    assert rcs == [0] * len(nodes_), logs[-4000:]
    return logs


def _wait_for_checkpoint(out: Path, running: list[Node]) -> None:
    deadline = time.monotonic() + TIMEOUT
    while not (out / "checkpoint.pt").exists():
        assert all(n.proc.poll() is None for n in running), running[0].text()[-3000:]
        assert time.monotonic() < deadline, "no checkpoint written"
        time.sleep(0.02)


def _checkpoint_step(out: Path) -> int:
    return int(torch.load(out / "checkpoint.pt", map_location="cpu", weights_only=False)["step"])


def _assert_close_to(out: Path, ref: Path) -> None:
    """Resumed under DDP: equal up to float rounding (see docs/scaling-multinode.md, "Resume")."""
    got, want = _losses(out), _losses(ref)
    assert [s for s, _ in got] == [s for s, _ in want] == list(range(1, STEPS + 1))
    assert [loss for _, loss in got] == pytest.approx([loss for _, loss in want], abs=1e-5)
    a, b = _weights(out), _weights(ref)
    assert a.keys() == b.keys()
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=1e-5, atol=1e-5, msg=key)


@pytest.fixture(scope="module")
def one_node(tmp_path_factory) -> Path:
    """The uninterrupted reference: 1 node x 4 processes, c10d rendezvous."""
    out = tmp_path_factory.mktemp("one_node") / "run"
    cmd = _torchrun(out, nnodes=1, nproc=4, port=_free_port(), rdzv_id="one")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=TIMEOUT, env=env)
    assert result.returncode == 0, result.stderr[-3000:]
    return out


@pytest.mark.slow
def test_two_nodes_train_exactly_as_one_node(tmp_path, nodes, one_node):
    out = tmp_path / "two_nodes"
    logs = _assert_ok(_run_two_nodes(nodes, out, "two"))
    assert logs.count("[facerep] done") == 1 and "on cpu x4" in logs  # one world of 4; rank 0 writes
    assert _losses(out) == _losses(one_node)
    a, b = _weights(out), _weights(one_node)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.slow
def test_a_dead_node_ends_the_run_and_rerunning_both_resumes(tmp_path, nodes, one_node):
    out = tmp_path / "killed"
    first = _run_two_nodes(nodes, out, "kill")
    _wait_for_checkpoint(out, first)
    first[1].kill()
    killed_at = time.monotonic()
    assert first[0].wait(timeout=120) != 0  # the survivor's workers fail in gloo; its torchrun exits
    assert time.monotonic() - killed_at < 60
    assert "Connection reset by peer" in first[0].text() or "closed" in first[0].text()
    saved = _checkpoint_step(out)
    assert 2 <= saved < STEPS and not (out / "backbone.safetensors").exists()

    logs = _assert_ok(_run_two_nodes(nodes, out, "kill", tag=".rerun"))  # the same command on both
    assert f"resuming at step {saved}" in logs
    _assert_close_to(out, one_node)


def test_launch_examples_parse():
    sbatch = ROOT / "examples" / "slurm" / "pretrain_2x8.sbatch"
    result = subprocess.run(["bash", "-n", str(sbatch)], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    text = sbatch.read_text()
    assert "#SBATCH --nodes=2" in text and "--rdzv_backend=c10d" in text and "scontrol show hostnames" in text

    job = yaml.safe_load((ROOT / "examples" / "kubernetes" / "pytorchjob.yaml").read_text())
    assert job["apiVersion"] == "kubeflow.org/v1" and job["kind"] == "PyTorchJob"
    spec = job["spec"]
    assert spec["elasticPolicy"]["rdzvBackend"] == "c10d"
    assert spec["elasticPolicy"]["minReplicas"] == spec["elasticPolicy"]["maxReplicas"] == 2
    assert spec["nprocPerNode"] == "8"
    worker = spec["pytorchReplicaSpecs"]["Worker"]
    assert worker["replicas"] == 2 and worker["restartPolicy"] == "OnFailure"
    (container,) = worker["template"]["spec"]["containers"]
    assert container["name"] == "pytorch"  # the name the training operator injects its env into
    assert container["resources"]["limits"]["nvidia.com/gpu"] == 8
    assert container["command"][:4] == ["torchrun", "-m", "facerep", "pretrain"]
