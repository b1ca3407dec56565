"""Pre-training methods, built by name: ``build_method(cfg)`` with ``cfg.method`` in ``METHODS``."""

from facerep.methods import byol, farl, fra, mae, mcf  # noqa: F401  (register the methods)
from facerep.methods.base import (
    METHODS,
    MomentumMethod,
    PretrainMethod,
    build_method,
    register_method,
)

__all__ = ["METHODS", "MomentumMethod", "PretrainMethod", "build_method", "register_method"]
