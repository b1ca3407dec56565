"""facerep: facial representation learning (pre-training of face backbones, transfer to face tasks).

Importing the package registers every backbone family, method and task, so a config loaded anywhere
knows all method sections.
"""

from facerep import methods, tasks  # noqa: F401  (register the methods and tasks)
from facerep.backbones import build_backbone, export_backbone, load_backbone
from facerep.engine.predict import Predictor
from facerep.models.clip import load_clip

__version__ = "0.1.0"
__all__ = ["Predictor", "__version__", "build_backbone", "export_backbone", "load_backbone", "load_clip"]
