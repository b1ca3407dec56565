"""DALL-E's dVAE encoder as a frozen image tokenizer: the targets of BEiT / FaRL masked image modelling.

FaRL (Zheng et al., 2022, arXiv 2112.03109) adds masked image modelling to its image-text pre-training
and, as BEiT (Bao et al., 2022) does, predicts for each masked patch the discrete token (one of 8192)
that the encoder of DALL-E's dVAE (Ramesh et al., 2021) assigns to that position. :class:`DVAEEncoder`
is facerep's own implementation of that encoder whose ``state_dict`` keys are exactly those of OpenAI's
``dall_e`` reference code, so the released weights load unchanged. They are not bundled: users supply
them, as a plain state dict (``.safetensors`` or ``torch.save``) read by :func:`load_dvae`.

The encoder downsamples by 8, so a 224 px ViT/16 (14x14 patches) takes its targets from a 112 px view
of the same crop, as in BEiT.
"""

from __future__ import annotations

import math
import re
from collections import OrderedDict
from collections.abc import Mapping
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from facerep.backbones.io import UnsafePickleError, read_checkpoint_file, unwrap_state
from facerep.runtime.checkpoint import CheckpointError
from facerep.runtime.errors import one_line

LOGIT_LAPLACE_EPS = 0.1  # DALL-E's map_pixels: x -> (1 - 2 eps) x + eps keeps pixels off 0 and 1
CONVERT_PICKLE = (
    "python -c \"import torch; torch.save(torch.load('encoder.pkl', weights_only=False).state_dict(), "
    "'dvae_encoder.pth')\""
)
_BLOCK_KEY = re.compile(r"blocks\.group_1\.block_(\d+)\.")


class _Conv(nn.Module):
    """'Same'-padded 2-D convolution whose parameters are named ``w`` and ``b``, as in ``dall_e``."""

    def __init__(self, n_in: int, n_out: int, kernel: int) -> None:
        super().__init__()
        self.w = nn.Parameter(torch.randn(n_out, n_in, kernel, kernel) / math.sqrt(n_in * kernel**2))
        self.b = nn.Parameter(torch.zeros(n_out))

    def forward(self, x: Tensor) -> Tensor:
        return F.conv2d(x, self.w, self.b, padding=self.w.shape[-1] // 2)


class _Block(nn.Module):
    """Pre-activation residual block: a 1x1 projection when the width changes, plus a ReLU-conv
    bottleneck (3x3, 3x3, 3x3, 1x1 at a quarter of the output width) scaled by ``post_gain``."""

    def __init__(self, n_in: int, n_out: int, post_gain: float) -> None:
        super().__init__()
        hid = n_out // 4
        self.post_gain = post_gain
        self.id_path = _Conv(n_in, n_out, 1) if n_in != n_out else nn.Identity()
        widths = [(n_in, hid, 3), (hid, hid, 3), (hid, hid, 3), (hid, n_out, 1)]
        layers: OrderedDict[str, nn.Module] = OrderedDict()
        for i, (c_in, c_out, kernel) in enumerate(widths, start=1):
            layers[f"relu_{i}"] = nn.ReLU()
            layers[f"conv_{i}"] = _Conv(c_in, c_out, kernel)
        self.res_path = nn.Sequential(layers)

    def forward(self, x: Tensor) -> Tensor:
        return self.id_path(x) + self.post_gain * self.res_path(x)


class DVAEEncoder(nn.Module):
    """DALL-E's dVAE encoder: an image in [0, 1] -> logits over ``vocab_size`` visual tokens per 8x8 cell.

    A 7x7 input conv to ``n_hid`` channels, then 4 groups of ``n_blk_per_group`` residual blocks at
    widths ``n_hid * (1, 2, 4, 8)`` with a 2x2 max-pool after each of the first three (residual paths
    scaled by ``1 / n_layers**2``, ``n_layers = 4 * n_blk_per_group``), then ReLU and a 1x1 conv to the
    logits. The released encoder has ``n_hid=256, n_blk_per_group=2, vocab_size=8192``.

    The convolutions run in the weights' dtype (float32 unless cast) or under autocast; ``dall_e`` itself
    runs all but the output conv in float16 on CUDA, so rare near-tie argmaxes may differ there.
    """

    downsample = 8

    def __init__(
        self, n_hid: int = 256, n_blk_per_group: int = 2, vocab_size: int = 8192, in_chans: int = 3
    ) -> None:
        super().__init__()
        if n_hid < 4 or n_hid % 4 or n_blk_per_group < 1 or vocab_size < 1 or in_chans < 1:
            raise ValueError(
                f"dVAE encoder needs n_hid a positive multiple of 4 and positive n_blk_per_group, "
                f"vocab_size, in_chans; got {n_hid}, {n_blk_per_group}, {vocab_size}, {in_chans}"
            )
        self.n_hid, self.n_blk_per_group = n_hid, n_blk_per_group
        self.vocab_size, self.in_chans = vocab_size, in_chans
        post_gain = 1 / (4 * n_blk_per_group) ** 2
        layers: OrderedDict[str, nn.Module] = OrderedDict(input=_Conv(in_chans, n_hid, 7))
        n_in = n_hid
        for g, mult in enumerate((1, 2, 4, 8), start=1):
            group: OrderedDict[str, nn.Module] = OrderedDict()
            for j in range(1, n_blk_per_group + 1):
                group[f"block_{j}"] = _Block(n_in, mult * n_hid, post_gain)
                n_in = mult * n_hid
            if g < 4:
                group["pool"] = nn.MaxPool2d(kernel_size=2)
            layers[f"group_{g}"] = nn.Sequential(group)
        layers["output"] = nn.Sequential(OrderedDict(relu=nn.ReLU(), conv=_Conv(8 * n_hid, vocab_size, 1)))
        self.blocks = nn.Sequential(layers)

    def forward(self, x01: Tensor) -> Tensor:
        """Token logits ``[N, V, H/8, W/8]`` of images ``x01`` ``[N, C, H, W]`` with values in [0, 1]."""
        if x01.dim() != 4 or not x01.is_floating_point():
            raise ValueError(
                f"dVAE encoder expects a float [N, C, H, W] batch, got {x01.dtype} {list(x01.shape)}"
            )
        _, c, h, w = x01.shape
        if c != self.in_chans or h % self.downsample or w % self.downsample:
            raise ValueError(
                f"dVAE encoder expects [N, {self.in_chans}, H, W] with H and W multiples of "
                f"{self.downsample}, got {list(x01.shape)}"
            )
        x = x01.to(self.blocks.input.w.dtype)
        return self.blocks((1 - 2 * LOGIT_LAPLACE_EPS) * x + LOGIT_LAPLACE_EPS)

    @torch.no_grad()
    def tokens(self, x01: Tensor) -> Tensor:
        """Target tokens ``[N, (H/8) * (W/8)]`` (int64, row-major over the grid): the argmax logit."""
        return self(x01).argmax(dim=1).flatten(1)


def _state_dict(path: Path) -> dict[str, Tensor]:
    """The plain state dict in the file, read as :func:`facerep.load_backbone` reads files (wrappers and a
    DDP ``module.`` prefix removed); a pickled module is refused with how to convert it."""
    try:
        obj, _ = read_checkpoint_file(path)
    except UnsafePickleError as err:
        raise CheckpointError(
            f"{path}: a pickled module (like OpenAI's encoder.pkl) needs torch.load(weights_only=False), "
            f"which facerep refuses (it can run arbitrary code); convert it once where dall_e is "
            f"installed: {CONVERT_PICKLE}"
        ) from err
    sd = unwrap_state(obj) if isinstance(obj, Mapping) else obj
    if not isinstance(sd, Mapping) or not all(
        isinstance(k, str) and isinstance(v, Tensor) for k, v in sd.items()
    ):
        raise CheckpointError(f"{path}: not a state dict of tensors (got {type(obj).__name__})")
    return dict(sd)


def _first(keys: list[str], limit: int = 3) -> str:
    more = f" (+{len(keys) - limit} more)" if len(keys) > limit else ""
    return ", ".join(keys[:limit]) + more


def load_dvae(path: str | Path) -> DVAEEncoder:
    """A frozen (``requires_grad=False``), eval-mode :class:`DVAEEncoder` from a state dict in the
    ``dall_e`` key layout (``.safetensors`` or ``torch.save``, read with ``weights_only=True``);
    ``n_hid``, ``n_blk_per_group`` and ``vocab_size`` come from the tensors' keys and shapes."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: dVAE encoder weights file not found")
    sd = _state_dict(path)
    n_blk = max((int(m.group(1)) for k in sd if (m := _BLOCK_KEY.match(k))), default=2)
    expected = list(DVAEEncoder(n_hid=4, n_blk_per_group=n_blk, vocab_size=1).state_dict())
    missing = [k for k in expected if k not in sd]
    unexpected = [k for k in sd if k not in set(expected)]
    if missing or unexpected:
        parts = ([f"missing {_first(missing)}"] if missing else []) + (
            [f"unexpected {_first(unexpected)}"] if unexpected else []
        )
        raise CheckpointError(f"{path}: not a dall_e dVAE encoder state dict: {'; '.join(parts)}")
    n_hid, in_chans = sd["blocks.input.w"].shape[:2]
    try:
        model = DVAEEncoder(n_hid, n_blk, sd["blocks.output.conv.w"].shape[0], in_chans)
    except ValueError as err:
        raise CheckpointError(f"{path}: {one_line(err)}") from err
    own = model.state_dict()
    wrong = [k for k in expected if sd[k].shape != own[k].shape]
    if wrong:
        raise CheckpointError(
            f"{path}: {wrong[0]} has shape {list(sd[wrong[0]].shape)}, expected {list(own[wrong[0]].shape)} "
            f"for n_hid={n_hid}, n_blk_per_group={n_blk}, vocab_size={model.vocab_size}"
        )
    model.load_state_dict(sd)
    return model.requires_grad_(False).eval()
