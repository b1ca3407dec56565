"""The command line when the system refuses a write (a full disk, a file grown past its limit, a read-only
folder, a file where ``output_dir`` should be): one line ``facerep: error: ...``, exit code 1, and the
previous outputs left as they were (no temporary behind). Bugs keep their traceback."""

from __future__ import annotations

import contextlib
import errno
import io
import os
import signal
from collections.abc import Iterator
from pathlib import Path

import av
import pytest
import torch
from PIL import Image
from safetensors.torch import save_file

import facerep.apps.predict as engine_predict
from facerep.backbones import export_backbone
from facerep.backbones.vit import build_vit
from facerep.commands.cli import main
from facerep.data.detect import Detection
from facerep.data.scenes import render_scene

TINY_FINETUNE = [
    "task=alignment", "dataset=synthetic_alignment", "data.image_size=64", "data.num_workers=0",
    "data.options.size=64", "data.train_options.length=8", "data.test_options.length=2",
    "head.blocks=[0,1,2,3]", "head.channels=16", "train.epochs=1", "train.batch_size=4", "train.progress=log",
]  # fmt: skip
# each subcommand (with the arguments it needs to start) and the function it runs
COMMANDS = {
    "pretrain": "facerep.train.pretrain.pretrain",
    "finetune": "facerep.train.finetune.finetune",
    "evaluate checkpoint=x": "facerep.train.evaluate.evaluate",
    "probe": "facerep.commands.probe.run_probe",
    "zeroshot": "facerep.commands.zeroshot.run_zeroshot",
    "heatmaps": "facerep.commands.heatmaps.run_heatmaps",
    "prepare": "facerep.commands.prepare.run_prepare",
    "predict": "facerep.commands.predict.run_predict",
    "export": "facerep.commands.export.run_export",
    "demo": "facerep.commands.demo.run_demo",
    "bench pretrain": "facerep.commands.bench.bench_pretrain",
    "bench data": "facerep.commands.bench.bench_data",
}
FILE_SIZE_LIMIT = 64 << 10  # JSON passes; an overlay PNG or a checkpoint does not


def oserror(code: int, *paths: str) -> OSError:
    """What the OS raises for ``code`` on ``paths`` (none, one, or two for a rename)."""
    args = (paths[0], None, paths[1]) if len(paths) == 2 else paths
    return OSError(code, os.strerror(code), *args)


def fail_with(monkeypatch, command: str, error: BaseException) -> list[str]:
    """``command``'s function raises ``error``; returns the argv running it."""

    def broken(*args, **kwargs):
        raise error

    monkeypatch.setattr(COMMANDS[command], broken)
    return command.split()


def error_line(capsys) -> str:
    """What the command line printed on stderr: exactly one line."""
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("facerep: error: "), err
    return err[len("facerep: error: ") : -1]


def snapshot(folder: Path) -> dict[str, bytes]:
    """Every file under ``folder`` (temporaries included) by relative path."""
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


@contextlib.contextmanager
def file_size_limit(limit: int) -> Iterator[None]:
    """The kernel refuses writes past ``limit`` bytes of any file (EFBIG, "File too large"): a write that
    fails mid-file, as on a full disk, without root or a small filesystem."""
    resource = pytest.importorskip("resource")
    handler = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # else the signal kills the process
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    resource.setrlimit(resource.RLIMIT_FSIZE, (limit, hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
        signal.signal(signal.SIGXFSZ, handler)


@contextlib.contextmanager
def disk_full_in_png_writer(monkeypatch) -> Iterator[None]:
    """PIL writes part of each PNG, then the disk is full (ENOSPC, no file name: what PIL raises)."""
    real = Image.Image.save

    def partial(self, fp, format=None, **params):
        buffer = io.BytesIO()
        real(self, buffer, format=format, **params)
        Path(fp).write_bytes(buffer.getvalue()[:100])
        raise oserror(errno.ENOSPC)

    with monkeypatch.context() as patch:
        patch.setattr(Image.Image, "save", partial)
        yield


@pytest.fixture(scope="module")
def backbone(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("faults_backbone")
    return export_backbone(
        build_vit("vit_tiny_patch16_224", img_size=64, depth=4, embed_dim=64, num_heads=2), root
    )


@pytest.fixture(scope="module")
def run(tmp_path_factory, backbone) -> Path:
    """A one-epoch alignment fine-tune of a tiny ViT."""
    out = tmp_path_factory.mktemp("faults") / "run"
    assert main(["finetune", f"backbone={backbone}", f"output_dir={out}", *TINY_FINETUNE]) == 0
    return out


@pytest.fixture
def photos(tmp_path, monkeypatch) -> Path:
    """Two rendered scenes and a detector that finds their faces (no MTCNN)."""
    folder = tmp_path / "photos"
    folder.mkdir()
    scenes = [render_scene(4, i, faces=1) for i in range(2)]
    for i, scene in enumerate(scenes):
        Image.fromarray(scene.image).save(folder / f"{i}.png")
    dets = [Detection(scenes[0].faces[0].box, scenes[0].faces[0].points, 0.9)]
    monkeypatch.setattr(engine_predict, "build_detector", lambda name, **options: lambda image: dets)
    return folder


# ---------------------------------------------------------------------------------- every command, one line


@pytest.mark.parametrize("command", COMMANDS)
def test_every_command_tells_a_full_disk_in_one_line_naming_the_file(command, monkeypatch, capsys):
    argv = fail_with(monkeypatch, command, oserror(errno.ENOSPC, "/out/run/finetune.pt"))
    assert main(argv) == 1
    assert error_line(capsys) == "/out/run/finetune.pt: No space left on device"


@pytest.mark.parametrize(
    ("error", "line"),
    [
        (oserror(errno.EACCES, "/out/run"), "/out/run: Permission denied"),
        (oserror(errno.EROFS, "/mnt/ro/x.json"), "/mnt/ro/x.json: Read-only file system"),
        (oserror(errno.ENOENT, "/nowhere/x.json"), "/nowhere/x.json: No such file or directory"),
        (oserror(errno.EISDIR, "/out/summary.json"), "/out/summary.json: Is a directory"),
        (oserror(errno.ENOTDIR, "/out/a_file/run"), "/out/a_file/run: Not a directory"),
        (oserror(errno.EXDEV, "/tmp/a", "/out/a"), "/tmp/a -> /out/a: Invalid cross-device link"),
        (oserror(errno.ENOSPC), "No space left on device"),  # what a plain file write raises
    ],
)
def test_os_errors_name_their_paths_and_what_went_wrong(error, line, monkeypatch, capsys):
    assert main(fail_with(monkeypatch, "predict", error)) == 1
    assert error_line(capsys) == line


def test_facerep_debug_keeps_the_traceback(monkeypatch):
    monkeypatch.setenv("FACEREP_DEBUG", "1")
    with pytest.raises(OSError, match="No space left"):
        main(fail_with(monkeypatch, "pretrain", oserror(errno.ENOSPC, "/out/x")))


def wrapped_write_failures(tmp_path: Path) -> list[BaseException]:
    """The errors torch.save and safetensors raise (not OSError) when a write fails, caught for real."""
    errors = []
    writes = [
        lambda: torch.save({"w": torch.zeros(4)}, tmp_path / "missing" / "x.pt"),  # "Parent directory ..."
        lambda: save_file({"w": torch.zeros(4)}, str(tmp_path / "missing" / "x.safetensors")),  # I/O error
    ]
    with file_size_limit(1024):
        writes.append(lambda: torch.save({"w": torch.zeros(4096)}, tmp_path / "big.pt"))  # "unexpected pos"
        for write in writes:
            try:
                write()
            except Exception as err:
                errors.append(err)
    assert len(errors) == len(writes) and not any(isinstance(e, OSError) for e in errors)
    return errors


def test_write_failures_libraries_wrap_in_their_own_errors_are_one_line_too(tmp_path, monkeypatch, capsys):
    for error in wrapped_write_failures(tmp_path):
        assert main(fail_with(monkeypatch, "finetune", error)) == 1
        assert error_line(capsys).startswith("cannot write a file (a full disk? a read-only folder?): ")


def test_other_runtime_errors_are_bugs_with_their_traceback(monkeypatch, capsys):
    bug = RuntimeError("mat1 and mat2 shapes cannot be multiplied (4x3 and 5x6)")
    with pytest.raises(RuntimeError, match="mat1 and mat2"):
        main(fail_with(monkeypatch, "finetune", bug))
    assert "facerep: error" not in capsys.readouterr().err


# ------------------------------------------------------------------------------------------ real commands


def test_output_dir_that_is_a_file_is_one_line(tmp_path, run, photos, capsys):
    taken = tmp_path / "notes.txt"
    taken.write_text("keep me")
    commands = {
        "pretrain": ["pretrain", "teacher.checkpoint=random"],
        "pretrain with its MAE stage": ["pretrain"],  # the stage's folder below the file: ENOTDIR
        "finetune": ["finetune", "backbone=random", *TINY_FINETUNE],
        "prepare": ["prepare", f"input={photos}"],
        "predict": ["predict", f"checkpoint={run}", f"input={photos}"],
    }
    for name, argv in commands.items():
        assert main([*argv, f"output_dir={taken}"]) == 1, name
        assert error_line(capsys) == f"{taken}: File exists and is not a folder", name
    assert taken.read_text() == "keep me"


@pytest.mark.parametrize("fault", ["file too large", "disk full"])
def test_a_write_failing_mid_file_keeps_the_previous_predictions(
    fault, tmp_path, run, photos, monkeypatch, capsys
):
    out = tmp_path / "out"
    argv = ["predict", f"checkpoint={run}", f"input={photos}", f"output_dir={out}"]
    assert main(argv) == 0
    before = snapshot(out)
    assert {"0.json", "0_overlay.png", "1.json", "summary.json"} <= set(before)
    capsys.readouterr()
    faulty = (
        file_size_limit(FILE_SIZE_LIMIT)
        if fault == "file too large"
        else disk_full_in_png_writer(monkeypatch)
    )
    with faulty:
        code = main([*argv, "box_scale=1.2"])  # new predictions for the same files
    assert code == 1
    path, reason = error_line(capsys).split(": ", 1)
    assert reason == {"file too large": "File too large", "disk full": "No space left on device"}[fault]
    assert Path(path).is_relative_to(out) and not Path(path).name.startswith(".")  # not the temporary
    assert snapshot(out) == before  # same files, same bytes: nothing lost, no temporary left


def test_a_checkpoint_write_failing_mid_file_keeps_the_previous_checkpoint(tmp_path, backbone, run, capsys):
    copy = tmp_path / "run"
    copy.mkdir()
    for path in run.iterdir():
        if path.is_file():
            (copy / path.name).write_bytes(path.read_bytes())
    checkpoint = (copy / "finetune.pt").read_bytes()
    assert len(checkpoint) > FILE_SIZE_LIMIT
    argv = ["finetune", f"backbone={backbone}", f"output_dir={copy}", *TINY_FINETUNE]
    with file_size_limit(FILE_SIZE_LIMIT):
        assert main([*argv, "train.epochs=2"]) == 1  # resumes, trains epoch 2, cannot save it
    assert error_line(capsys) == f"{copy / 'finetune.pt'}: File too large"  # the file, not its temporary
    assert (copy / "finetune.pt").read_bytes() == checkpoint
    assert not [p.name for p in copy.iterdir() if p.name.endswith(".tmp")]


def test_a_video_overlay_that_cannot_be_written_stops_the_run_unlike_an_unreadable_video(
    tmp_path, run, photos, capsys
):
    videos = tmp_path / "videos"
    videos.mkdir()
    (videos / "broken.mp4").write_bytes(b"\x00\x00\x00\x18ftypmp42 not really a video")
    with av.open(str(videos / "clip.mp4"), "w") as container:
        stream = container.add_stream("mpeg4", rate=5)
        stream.width, stream.height, stream.pix_fmt = 320, 240, "yuv420p"
        for i in range(3):
            frame = render_scene(4, i, width=320, height=240, faces=1).image
            container.mux(stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")))
        container.mux(stream.encode())
    out = tmp_path / "out"
    argv = ["predict", f"checkpoint={run}", f"input={videos}", f"output_dir={out}"]
    assert main(argv) == 0  # the unreadable video is skipped, the other predicted
    assert "skipped cannot decode video" in capsys.readouterr().out
    before = snapshot(out)
    assert {"clip.json", "clip_overlay.mp4", "summary.json"} <= set(before)
    with file_size_limit(1024):  # was: the failed overlay write "skipped" as an unreadable input, exit 0
        assert main([*argv, "box_scale=1.2"]) == 1
    assert error_line(capsys).endswith("File too large")
    assert snapshot(out) == before


@pytest.mark.skipif(
    not hasattr(os, "geteuid") or os.geteuid() == 0, reason="root writes into read-only folders"
)
def test_a_read_only_output_dir_is_one_line_and_keeps_its_files(tmp_path, run, photos, capsys):
    out = tmp_path / "out"
    argv = ["predict", f"checkpoint={run}", f"input={photos}", f"output_dir={out}"]
    assert main(argv) == 0
    before = snapshot(out)
    capsys.readouterr()
    out.chmod(0o500)
    try:
        assert main(argv) == 1
    finally:
        out.chmod(0o700)
    line = error_line(capsys)
    assert line.startswith(f"{out}{os.sep}") and line.endswith(": Permission denied")
    assert snapshot(out) == before
