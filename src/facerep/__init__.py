"""facerep: facial representation learning (MCF/MAE pre-training of ViT face backbones)."""

from facerep.checkpoints import load_backbone

__version__ = "0.1.0"
__all__ = ["__version__", "load_backbone"]
