"""What every pre-training method offers the trainer, and the ``method=`` registry."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, ClassVar

import torch
from torch import nn

from facerep.models.vit import MaskedViT, build_vit, random_keep_order

if TYPE_CHECKING:
    from facerep.config import ModelConfig, PretrainConfig

# Parameter names (last component) that never get weight decay, besides every 1-D tensor.
NO_DECAY_NAMES = ("cls_token", "pos_embed", "mask_token")


class PretrainMethod(nn.Module):
    """A method composes a backbone, heads and pure losses into one ``forward(images) -> loss``.

    Subclasses set ``encoder`` (the backbone that is exported) and implement :meth:`forward`.
    """

    name: ClassVar[str]
    encoder: MaskedViT

    def forward(self, images: torch.Tensor, ids_shuffle=None) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """``images [N, 3, H, W]`` -> (total loss, named loss terms detached for logging).

        ``ids_shuffle`` optionally fixes the random masks (parity checks); its form is per method.
        """
        raise NotImplementedError

    def fixed_masks(self, images: torch.Tensor, generator: torch.Generator) -> object:
        """Masks for ``forward(images, ids_shuffle=...)`` drawn from ``generator`` (one per masked view)."""
        n, length = images.shape[0], self.encoder.num_patches
        return random_keep_order(n, length, "cpu", generator).to(images.device)

    def on_optimizer_step(self, step: int, total_steps: int) -> dict[str, float]:
        """Called after every optimizer step (not micro-batch); returns values to log (e.g. momentum)."""
        return {}

    def param_groups(self, weight_decay: float) -> list[dict]:
        """Trainable parameters split into decayed weights and undecayed norms/biases/tokens."""
        decay, no_decay = [], []
        for name, param in self.named_parameters():
            if not param.requires_grad:
                continue
            if param.ndim <= 1 or name.rsplit(".", 1)[-1] in NO_DECAY_NAMES:
                no_decay.append(param)
            else:
                decay.append(param)
        return [
            {"params": decay, "weight_decay": weight_decay},
            {"params": no_decay, "weight_decay": 0.0},
        ]


def build_encoder(cfg: PretrainConfig) -> MaskedViT:
    """The trainable encoder: ``cfg.model.arch`` at ``cfg.data.image_size``, optionally initialised from
    ``cfg.model.init`` (any file ``facerep.load_backbone`` reads; its position embedding is resampled)."""
    if cfg.model.init:
        from facerep.checkpoints import load_backbone

        encoder = load_backbone(cfg.model.init, img_size=cfg.data.image_size).train()
        encoder.pos_embed.requires_grad_(False)
    else:
        encoder = build_vit(cfg.model.arch, img_size=cfg.data.image_size, **arch_overrides(cfg.model))
    encoder.set_grad_checkpointing(cfg.model.grad_checkpointing)
    return encoder


def arch_overrides(model: ModelConfig) -> dict:
    """The ``model.depth/embed_dim/num_heads/drop_path_rate`` values that were set."""
    fields = {"depth": model.depth, "embed_dim": model.embed_dim, "num_heads": model.num_heads}
    return {k: v for k, v in fields.items() if v is not None} | {"drop_path_rate": model.drop_path_rate}


METHODS: dict[str, Callable[[PretrainConfig], PretrainMethod]] = {}


def register_method(name: str) -> Callable[[type[PretrainMethod]], type[PretrainMethod]]:
    """Class decorator: make a method buildable as ``method=<name>`` (via its ``from_config``)."""

    def wrap(cls: type[PretrainMethod]) -> type[PretrainMethod]:
        if name in METHODS:
            raise ValueError(f"method {name!r} is already registered")
        cls.name = name
        METHODS[name] = cls.from_config  # type: ignore[attr-defined]
        return cls

    return wrap


def build_method(cfg: PretrainConfig) -> PretrainMethod:
    """Instantiate ``cfg.method`` from the registry; unknown names are a one-line error."""
    if cfg.method not in METHODS:
        raise ValueError(f"unknown method {cfg.method!r}; available: {', '.join(sorted(METHODS))}")
    return METHODS[cfg.method](cfg)
