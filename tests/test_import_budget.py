"""``import facerep`` and ``facerep --help`` stay light: the heavy libraries load only when a command (or a
public name such as ``facerep.Predictor``) needs them. Checked by what a fresh interpreter has in
``sys.modules`` afterwards, which is deterministic (``make import-time`` prints the times)."""

from __future__ import annotations

import subprocess
import sys

import pytest

IMPORT_HEAVY = ("torch", "onnxruntime", "cv2", "av", "ray", "onnx", "matplotlib")
HELP_HEAVY = ("torch", "cv2", "onnxruntime", "av", "ray")


def loaded_after(code: str, names: tuple[str, ...]) -> list[str]:
    """Which of the modules ``names`` a fresh interpreter has imported after running ``code``."""
    probe = f"import sys\n{code}\nprint(' '.join(m for m in {names!r} if m in sys.modules))"
    result = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    return result.stdout.split()


def test_import_facerep_loads_no_heavy_library() -> None:
    assert loaded_after("import facerep", IMPORT_HEAVY) == []


@pytest.mark.parametrize("argv", [["--help"], ["pretrain", "--help"]])
def test_help_loads_no_heavy_library(argv: list[str]) -> None:
    code = (
        "import contextlib, io\nfrom facerep.commands.cli import main\n"
        "with contextlib.redirect_stdout(io.StringIO()), contextlib.suppress(SystemExit):\n"
        f"    main({argv!r})"
    )
    assert loaded_after(code, HELP_HEAVY) == []


def test_public_names_load_on_first_use() -> None:
    code = (
        "import facerep\nassert {'Predictor', 'load_backbone', 'load_clip'} <= set(dir(facerep))\n"
        "assert 'torch' not in sys.modules\nfacerep.load_backbone\nfacerep.tasks.TASKS.get('alignment')"
    )
    assert loaded_after(code, ("torch",)) == ["torch"]
