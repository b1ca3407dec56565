"""The method contract every pre-training method implements, the momentum base, and the ``method=`` registry.

A method is an ``nn.Module`` that composes a backbone, heads and pure losses:

* :meth:`PretrainMethod.batch_spec` declares what each batch must carry (views with their transforms,
  masks), and the data pipeline draws exactly that (:mod:`facerep.data.views`);
* :meth:`PretrainMethod.forward` maps such a batch to ``(loss, named terms)``;
* :meth:`PretrainMethod.resolve_stages` runs whatever must finish before the method can be built
  (MCF's MAE-trained teacher);
* :meth:`PretrainMethod.on_optimizer_step` runs once per optimizer step (not per micro-batch);
* :meth:`PretrainMethod.export` writes what the method has beyond its backbone (FaRL's text tower);
* :meth:`PretrainMethod.decay_exclusion`, ``sync_batchnorm`` and ``batch_statistics`` state the parts of
  the reference's recipe the trainer applies: which parameters get weight decay, whether BatchNorm spans
  every process, what depends on the batch; ``recipe`` is its published optimizer setting, what the
  ``train.*`` keys left unset take (:func:`with_recipe`).

A new method is one module with a :func:`register_method` class (plus one import line in
``facerep/methods/__init__.py``); its config sections come with the registration.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, ClassVar

import torch
from torch import Tensor, nn

from facerep.backbones import MaskedViT, build_backbone, load_backbone
from facerep.backbones.resnet import ResNet
from facerep.backbones.select import select_weights_
from facerep.config import ConfigError, DataConfig, ModelConfig, PretrainConfig, register_section
from facerep.data.transforms import build_pretrain_transform
from facerep.data.views import BatchSpec
from facerep.models.ema import ema_update_
from facerep.runtime.optim import ExclusionRule, split_param_groups, timm_excluded
from facerep.runtime.registry import Registry
from facerep.runtime.schedules import Schedule

# run_stage(what, cfg): pre-train ``cfg`` (a stage described by ``what``); returns its exported backbone.
RunStage = Callable[[str, PretrainConfig], Path]


@dataclass(frozen=True)
class Recipe:
    """A method's published optimizer setting: ``lr = blr * batch / 256``; what ``train.optimizer``,
    ``train.blr``, ``train.weight_decay`` and ``train.betas`` become when a run leaves them unset."""

    optimizer: str = "adamw"
    blr: float = 1.5e-4  # MAE's
    weight_decay: float = 0.05
    betas: tuple[float, float] = (0.9, 0.95)


class PretrainMethod(nn.Module):
    """A pre-training method (see the module docstring); ``encoder`` is the backbone that is exported."""

    name: ClassVar[str]
    encoder: nn.Module
    recipe: ClassVar[Recipe] = Recipe()
    # BatchNorm over every process's images under DDP, as the method's reference trains it (FRA's SyncBN)
    sync_batchnorm: ClassVar[bool] = False
    # what in the method depends on the batch it sees (BatchNorm, in-batch negatives, batch-level loss
    # statistics), named in the trainer's warning when accumulation gives it the micro-batch only
    batch_statistics: ClassVar[str | None] = None

    @classmethod
    def from_config(cls, cfg: PretrainConfig) -> PretrainMethod:
        raise NotImplementedError

    @classmethod
    def resolve_stages(cls, cfg: PretrainConfig, run_stage: RunStage) -> PretrainConfig:
        """Run the stages this method needs first (through ``run_stage``) and return the config that uses
        their outputs; by default there are none."""
        return cfg

    def batch_spec(self, data: DataConfig) -> BatchSpec:
        """What each batch carries; by default one view through the standard transform and no masks."""
        return BatchSpec((build_pretrain_transform(data),))

    def forward(self, batch: dict[str, Any]) -> tuple[Tensor, dict[str, Tensor]]:
        """A batch of :meth:`batch_spec` -> (total loss, named loss terms detached for logging)."""
        raise NotImplementedError

    def on_optimizer_step(self, step: int, total_steps: int) -> dict[str, float]:
        """Called after every optimizer step (not micro-batch); returns values to log."""
        return {}

    def export(self, output_dir: Path) -> Path | None:
        """Write files beside the exported backbone at the end of the run (main process); returns the
        path written, or ``None`` when the backbone is all there is (the default)."""
        return None

    def decay_exclusion(self) -> ExclusionRule:
        """Which parameters get no weight decay (and no LARS trust ratio): timm's rule by default (1-D tensors
        and ``no_weight_decay()`` names); a method whose reference code differs returns its own rule."""
        return timm_excluded(self)

    def param_groups(self, weight_decay: float) -> list[dict]:
        """Trainable parameters split by :meth:`decay_exclusion` into a decayed and an excluded group."""
        return split_param_groups(self.named_parameters(), weight_decay, self.decay_exclusion())


def with_recipe(cfg: PretrainConfig) -> PretrainConfig:
    """``cfg`` with every unset (``None``) optimizer key of ``train`` taken from its method's ``recipe``."""
    recipe, train = METHODS.get(cfg.method).recipe, cfg.train
    return replace(cfg, train=replace(
        train,
        optimizer=train.optimizer if train.optimizer is not None else recipe.optimizer,
        blr=train.blr if train.blr is not None else recipe.blr,
        weight_decay=train.weight_decay if train.weight_decay is not None else recipe.weight_decay,
        betas=list(train.betas) if train.betas is not None else list(recipe.betas),
    ))  # fmt: skip


class MomentumMethod(PretrainMethod):
    """A method whose target networks are EMA copies of online ones (MoCo v3, MCF; BYOL, FRA).

    Subclasses make the copies with :meth:`momentum_copy` and list ``(online, target)`` pairs in
    :meth:`momentum_pairs`; ``target = m * target + (1 - m) * online`` then runs once per optimizer
    step with ``m`` from ``momentum_schedule``.
    """

    def __init__(self, momentum_schedule: Schedule) -> None:
        super().__init__()
        self.momentum_schedule = momentum_schedule
        self.momentum = momentum_schedule.base

    @staticmethod
    def momentum_copy(module: nn.Module) -> nn.Module:
        """A frozen copy of ``module`` to serve as its momentum target."""
        return copy.deepcopy(module).requires_grad_(False)

    def momentum_pairs(self) -> list[tuple[nn.Module, nn.Module]]:
        """``(online, target)`` module pairs updated by EMA."""
        raise NotImplementedError

    @torch.no_grad()
    def on_optimizer_step(self, step: int, total_steps: int) -> dict[str, float]:
        self.momentum = self.momentum_schedule.at(step, total_steps)
        for online, target in self.momentum_pairs():
            ema_update_(target, online, self.momentum)
        return {"momentum": self.momentum}


def arch_overrides(model: ModelConfig) -> dict:
    """The ``model.depth/embed_dim/num_heads/output_stride/drop_path_rate`` values that were set."""
    fields = {"depth": model.depth, "embed_dim": model.embed_dim, "num_heads": model.num_heads,
              "output_stride": model.output_stride}  # fmt: skip
    return {k: v for k, v in fields.items() if v is not None} | {"drop_path_rate": model.drop_path_rate}


def build_encoder(cfg: PretrainConfig, layout: Mapping[str, Any] | None = None) -> nn.Module:
    """The trainable backbone: ``cfg.model.arch`` at ``cfg.data.image_size`` (with the architecture fields
    ``layout`` a method fixes, e.g. FaRL's CLIP tower), or initialised from ``cfg.model.init`` (any file
    ``facerep.load_backbone`` reads, as stored; a ViT's position embedding is resampled). With
    ``model.init``, ``model.num_heads`` and ``model.output_stride`` are load options, and a
    ``model.depth`` or ``model.embed_dim`` other than the file's is a one-line error (weights fix them)."""
    if cfg.model.init and cfg.model.select_from:
        raise ConfigError("model.init and model.select_from both start the encoder: set one of them")
    if cfg.model.init:
        encoder = load_backbone(
            cfg.model.init, img_size=cfg.data.image_size, drop_path_rate=cfg.model.drop_path_rate,
            num_heads=cfg.model.num_heads, output_stride=cfg.model.output_stride,
        ).train()  # fmt: skip
        if cfg.model.output_stride is not None and not isinstance(encoder, ResNet):
            raise ConfigError(
                f"model.output_stride dilates a ResNet; model.init={cfg.model.init} holds a "
                f"{type(encoder).__name__}"
            )
        for key in ("depth", "embed_dim", "num_heads"):
            asked, held = getattr(cfg.model, key), getattr(encoder.arch, key, None)
            if asked is not None and asked != held:
                holds = f"{key}={held}" if held is not None else f"a {type(encoder).__name__} (no {key})"
                raise ConfigError(
                    f"model.{key}={asked}, but model.init={cfg.model.init} holds {holds}; the file fixes the "
                    f"architecture: leave model.{key} unset (null) or start from another file"
                )
    else:
        fields = {**(layout or {}), **arch_overrides(cfg.model)}
        encoder = build_backbone(cfg.model.arch, img_size=cfg.data.image_size, **fields)
        if cfg.model.select_from:
            source = load_backbone(cfg.model.select_from)
            if not isinstance(encoder, MaskedViT) or not isinstance(source, MaskedViT):
                raise ConfigError(
                    f"model.select_from={cfg.model.select_from}: weight selection needs a ViT source and "
                    f"model.arch=vit_* (got {type(source).__name__} -> {cfg.model.arch})"
                )
            select_weights_(encoder, source)
    encoder.set_grad_checkpointing(cfg.model.grad_checkpointing)
    return encoder


def build_masked_encoder(cfg: PretrainConfig, layout: Mapping[str, Any] | None = None) -> MaskedViT:
    """:func:`build_encoder` for methods that mask patches: a one-line error unless it is a ViT."""
    encoder = build_encoder(cfg, layout)
    if not isinstance(encoder, MaskedViT):
        raise ConfigError(
            f"method={cfg.method} masks image patches and needs a ViT backbone (model.arch=vit_*), "
            f"got {type(encoder).__name__} ({cfg.model.init or cfg.model.arch})"
        )
    return encoder


METHODS: Registry[type[PretrainMethod]] = Registry("method", ConfigError)


def register_method(
    name: str, sections: Mapping[str, type] | None = None
) -> Callable[[type[PretrainMethod]], type[PretrainMethod]]:
    """Class decorator: make a method buildable as ``method=<name>`` (via its ``from_config``), with its
    config sections (``{"mcf": MCFConfig, ...}``) added to every pre-training config."""

    def wrap(cls: type[PretrainMethod]) -> type[PretrainMethod]:
        cls.name = name
        for key, schema in (sections or {}).items():
            register_section(key, schema)
        return METHODS.add(name, cls)

    return wrap


def build_method(cfg: PretrainConfig) -> PretrainMethod:
    """Instantiate ``cfg.method`` from the registry; unknown names are a one-line error."""
    return METHODS.get(cfg.method).from_config(cfg)
