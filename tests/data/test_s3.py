"""Webdataset shards streamed from S3-compatible object storage: a local moto server started here holds
the ``wds_shards`` fixture's shards; a connection dropped mid-shard is retried without losing or repeating
a sample; ``facerep pretrain`` runs from ``s3://``."""

from __future__ import annotations

import os
import socket
from collections import Counter
from itertools import islice
from pathlib import Path

import pytest

pytest.importorskip("s3fs")
moto_server = pytest.importorskip("moto.server")

import facerep.data.sources as sources  # noqa: E402
from facerep.commands.cli import main  # noqa: E402
from facerep.config import DataConfig  # noqa: E402
from facerep.data.loader import build_pretrain_loader  # noqa: E402
from facerep.data.sources import DataError, WebDatasetSource, is_transient  # noqa: E402
from facerep.runtime.checkpoint import load_checkpoint  # noqa: E402

BUCKET = "faces"


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="module")
def s3_endpoint():
    """A moto S3 server on a free local port, for this module's tests."""
    port = _free_port()
    server = moto_server.ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    yield f"http://127.0.0.1:{port}"
    server.stop()


@pytest.fixture
def s3_shards(s3_endpoint, wds_shards, monkeypatch):
    """The ``wds_shards`` shards uploaded under ``s3://faces/<test>/``, the ``AWS_*`` environment pointing
    at the server: ``(s3 brace pattern, good keys, bad keys)``."""
    import boto3
    import s3fs

    for name, value in {
        "AWS_ENDPOINT_URL": s3_endpoint,
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": "us-east-1",
    }.items():
        monkeypatch.setenv(name, value)
    for name in ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_ENDPOINT_URL_S3"):
        monkeypatch.delenv(name, raising=False)
    s3fs.S3FileSystem.clear_instance_cache()  # an instance cached by another test knows another endpoint
    pattern, good, bad = wds_shards
    client = boto3.client("s3", endpoint_url=s3_endpoint)
    if BUCKET not in {b["Name"] for b in client.list_buckets()["Buckets"]}:
        client.create_bucket(Bucket=BUCKET)
    prefix = os.environ.get("PYTEST_CURRENT_TEST", "t").split(" ")[0].rsplit("::", 1)[-1]
    for tar in sorted(Path(pattern).parent.glob("*.tar")):
        client.upload_file(str(tar), BUCKET, f"{prefix}/{tar.name}")
    yield f"s3://{BUCKET}/{prefix}/{{00000..00003}}.tar", good, bad
    s3fs.S3FileSystem.clear_instance_cache()


class FlakyFile:
    """A shard's file object whose reads raise ``ConnectionError`` once the stream passes ``after`` bytes,
    while ``fail()`` says so."""

    def __init__(self, inner, after: int, fail) -> None:
        self.inner, self.after, self.fail, self.pos = inner, after, fail, 0

    def read(self, size: int = -1) -> bytes:
        data = self.inner.read(size)
        if self.pos + len(data) > self.after and self.fail():
            raise ConnectionError("Connection reset by peer (injected)")
        self.pos += len(data)
        return data

    def close(self) -> None:
        self.inner.close()

    def __getattr__(self, name: str):
        return getattr(self.inner, name)


def _inject(monkeypatch, shard: str, marker: Path | None, *, after: int = 12_000) -> None:
    """Reads of the shards whose URL ends in ``shard`` fail past ``after`` bytes, once per ``marker`` (a
    file name that may hold ``{pid}`` and ``{shard}``; created by the read that fails, so it holds across
    DataLoader worker processes, which fork with this patch); ``marker=None`` fails every time."""
    real = sources.open_shard

    def flaky_open(url, storage_options=None):
        stream = real(url, storage_options)
        if not url.endswith(shard):
            return stream

        def fail() -> bool:
            if marker is None:
                return True
            name = str(marker).format(pid=os.getpid(), shard=url.rsplit("/", 1)[-1])
            try:
                os.close(os.open(name, os.O_CREAT | os.O_EXCL | os.O_WRONLY))
            except FileExistsError:
                return False
            return True

        return FlakyFile(stream, after, fail)

    monkeypatch.setattr(sources, "open_shard", flaky_open)


def _local_samples(pattern: str) -> dict[str, list[str]]:
    src = WebDatasetSource(pattern)
    return {url: [s["__key__"] for s in src.shard_samples(url, print)] for url in src.shards}


def test_a_dropped_connection_reopens_the_shard_and_skips_what_was_read(
    s3_shards, wds_shards, tmp_path, monkeypatch, capfd
) -> None:
    pattern, _, _ = s3_shards
    marker = tmp_path / "dropped"
    _inject(monkeypatch, "00002.tar", marker)
    src = WebDatasetSource(pattern, backoff=0.01)
    assert len(src.shards) == 4 and all(s.startswith(f"s3://{BUCKET}/") for s in src.shards)
    errors: list[str] = []
    keys = [[s["__key__"] for s in src.shard_samples(url, errors.append)] for url in src.shards]
    assert marker.exists() and not errors
    assert keys == list(_local_samples(wds_shards[0]).values())  # every sample, once, in order
    err = capfd.readouterr().err
    assert "00002.tar: ConnectionError: Connection reset by peer (injected)" in err
    assert "retry 1 of 3, skipping the " in err and "skipping the 0 samples" not in err  # mid-shard


def test_retries_run_out_in_a_one_line_error_naming_the_shard(s3_shards, monkeypatch, capfd) -> None:
    pattern, _, _ = s3_shards
    _inject(monkeypatch, "00001.tar", None, after=0)
    src = WebDatasetSource(pattern, retries=2, backoff=0.0)
    url = src.shards[1]
    with pytest.raises(
        DataError, match=r"cannot read shard s3://faces/.*/00001\.tar: ConnectionError"
    ) as info:
        list(src.shard_samples(url, print))
    assert "\n" not in str(info.value) and "after 2 retries" in str(info.value)
    assert capfd.readouterr().err.count("reopening it") == 2
    # a missing object is no transient error: reported and skipped at once, as a missing URL always was
    errors: list[str] = []
    assert list(src.shard_samples(url.replace("00001", "00009"), errors.append)) == []
    assert len(errors) == 1 and "00009.tar" in errors[0] and "reopening" not in capfd.readouterr().err


def test_transient_errors() -> None:
    import botocore.exceptions

    assert is_transient(ConnectionResetError()) and is_transient(TimeoutError()) and is_transient(OSError(5))
    assert is_transient(botocore.exceptions.EndpointConnectionError(endpoint_url="http://x"))
    assert not is_transient(FileNotFoundError()) and not is_transient(PermissionError())
    assert not is_transient(ValueError("bad tar"))


def test_two_ranks_two_workers_see_every_sample_once_despite_a_drop(s3_shards, tmp_path, monkeypatch) -> None:
    pattern, good, bad = s3_shards
    # every worker's first read of every shard drops mid-shard (a worker may read ahead into the next
    # epoch before its loader is closed: a drop there alone would prove nothing)
    _inject(monkeypatch, ".tar", tmp_path / "dropped-{pid}-{shard}")
    cfg = DataConfig(source="webdataset", path=pattern, image_size=8, num_workers=2, shuffle_buffer=0)
    keys: list[str] = []
    for rank in (0, 1):
        loader = build_pretrain_loader(cfg, batch_size=5, seed=11, rank=rank, world_size=2, return_keys=True)
        assert loader.loader.num_workers == 2
        batches = [b["keys"] for b in islice(loader, 2)]  # 2 workers x 1 shard of 5 good samples
        loader.close()
        assert all(len({k.split(":")[0] for k in b}) == 1 for b in batches)  # a batch = one worker's shard
        keys += [k for b in batches for k in b]
    dropped = {p.name.rsplit("-", 1)[1] for p in tmp_path.glob("dropped-*")}
    assert dropped == {f"{i:05d}.tar" for i in range(4)}  # in the workers: each epoch-0 shard dropped
    counts = Counter(k.rsplit(":", 1)[1] for k in keys)
    assert sorted(counts) == sorted(good) and set(counts.values()) == {1} and not set(counts) & set(bad)
    assert all(k.startswith(f"s3://{BUCKET}/") for k in keys)
    # resume: rank 1 started at its sample 5 gives what the uninterrupted stream gave from there
    full = build_pretrain_loader(cfg, batch_size=5, seed=11, rank=1, world_size=2, return_keys=True)
    resumed = build_pretrain_loader(
        cfg, batch_size=5, seed=11, rank=1, world_size=2, start_sample=5, return_keys=True
    )
    want, got = [b["keys"] for b in islice(full, 3)][1:], [b["keys"] for b in islice(resumed, 2)]
    full.close(), resumed.close()
    assert got == want


@pytest.mark.slow
def test_pretrain_command_streams_from_s3(s3_shards, tiny_overrides, tmp_path, monkeypatch, capfd) -> None:
    pattern, _, _ = s3_shards
    _inject(monkeypatch, ".tar", tmp_path / "dropped-{shard}")
    out = tmp_path / "run"
    overrides = [*tiny_overrides, "data.source=webdataset", f"data.path={pattern}", "data.shuffle_buffer=4"]
    assert main(["pretrain", *overrides, "train.max_steps=3", f"output_dir={out}"]) == 0
    assert load_checkpoint(out / "checkpoint.pt")["step"] == 3
    assert ".tar: ConnectionError: Connection reset" in capfd.readouterr().err  # dropped, survived
