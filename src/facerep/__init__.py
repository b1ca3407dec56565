"""facerep: facial representation learning (pre-training of face backbones, transfer to face tasks).

``import facerep`` is light: the public names below load their modules (and torch) on first use. Each
registry's subpackage registers its built-in entries when it is imported (``facerep.methods``,
``facerep.tasks``, ``facerep.backbones``), and :func:`facerep.config.load_config` calls
:func:`register_methods` before it reads a pre-training config, so the built-in sections are always known.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from facerep.apps.predict import Predictor, preprocess
    from facerep.backbones import build_backbone, create_model, export_backbone, load_backbone
    from facerep.models.clip import load_clip
    from facerep.tasks import Task

__version__ = "0.1.0"
_LAZY = {
    "Predictor": "facerep.apps.predict",
    "build_backbone": "facerep.backbones",
    "create_model": "facerep.backbones",
    "export_backbone": "facerep.backbones",
    "load_backbone": "facerep.backbones",
    "load_clip": "facerep.models.clip",
    "preprocess": "facerep.apps.predict",
}
__all__ = [
    "Predictor",
    "__version__",
    "build_backbone",
    "create_model",
    "export_backbone",
    "load_backbone",
    "load_clip",
    "preprocess",
]


def register_methods() -> None:
    """Import the built-in pre-training methods (and torch), which register themselves and their config
    sections (``mcf``, ``mae``, ...) in the order they always have, before any plug-in that imports them."""
    import facerep.methods  # noqa: F401


def find_task(name: str | None) -> type[Task] | None:
    """The task class registered as ``name`` (importing the built-in tasks, and torch), None when no task
    has that name: how the layers below :mod:`facerep.tasks` (config, data) ask a task's flags."""
    from facerep.tasks import TASKS

    return TASKS.get(name) if isinstance(name, str) and name in TASKS else None


def __getattr__(name: str) -> Any:
    """The public name (or submodule) ``name``, imported on first use (PEP 562)."""
    if name in _LAZY:
        value = getattr(importlib.import_module(_LAZY[name]), name)
        globals()[name] = value
        return value
    if not name.startswith("_"):
        try:
            return importlib.import_module(f"{__name__}.{name}")  # facerep.tasks without importing it first
        except ModuleNotFoundError as err:
            if err.name != f"{__name__}.{name}":
                raise
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})
