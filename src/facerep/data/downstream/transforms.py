"""Downstream (transfer) transforms under FaRL's protocol: face crops, tanh warping, augmentation.

Samples come from the downstream datasets (see :mod:`facerep.data.downstream.base`) as dicts of numpy
arrays; the transforms here turn them into tensors a default ``DataLoader`` collate can batch, and the
module-level functions map predictions back to the ORIGINAL image, so scores are computed there.

Coordinates
    Pixel coordinates everywhere (original image, aligned crop) put the centre of pixel ``(i, j)`` at
    ``x = i, y = j``, so an image of width ``W`` covers ``[-0.5, W - 0.5]``.  Normalised crop
    coordinates (the ``"landmarks"`` targets) are ``(x + 0.5) / S``: ``0`` and ``1`` are the crop's
    outer edges -- FaRL's ``normalize_points`` (``farl/network/geometry.py``), and exactly the
    ``align_corners=False`` convention of ``grid_sample`` / ``interpolate``.  A pixel index ``i``
    becomes ``(i + 0.5) / S``.

Geometry (FaRL: blueprint ``augmenters/geometry.py``, ``UpdateCropAndResizeMatrix``,
``UpdateRandomTransformMatrix``, ``GetTransformMap``, ``TransformPoints2D``)
    An image->crop affine ``M`` is built from a *base* matrix (face box, five-point similarity, or the
    whole image, mapped onto ``S x S``) followed by a rotation/scale about the crop centre and a shift:
    ``M = T(c + shift) . s R(theta) . T(-c) . base`` with ``c = ((S-1)/2, (S-1)/2)``,
    ``s = 1 / crop_scale (+ jitter)``.  In eval mode ``theta = shift = 0`` and ``s = 1 / crop_scale``
    (FaRL's ``scale_mu``).  The same ``M`` moves the image (bilinear), the landmarks and the mask
    (nearest); everything outside the source image is black (image) / background 0 (mask), as in FaRL.

Tanh warping (RoI tanh-warping, Lin et al. CVPR 2019; FaRL LaPa uses ``warp_factor = 0.8``)
    With ``warp = "tanh"``, ``M`` maps into an *aligned* frame and the crop is a non-linear function of
    it.  Per axis, in normalised coordinates ``u = (2a + 1) / S - 1`` of the aligned frame, the crop
    coordinate is ``v = u`` for ``|u| <= 1 - f`` and
    ``v = sign(u) * ((1 - f) + f * tanh((|u| - (1 - f)) / f))`` outside, ``f = warp_factor``; the
    whole image is squeezed into the crop, the face centre keeps its scale.  The inverse uses
    ``artanh`` with its argument clipped to ``0.999`` as blueprint's ``_safe_arctanh`` (so pixels on
    the outermost crop ring sample at most ``(1 - f) + f * artanh(0.999)`` half-widths away).
    ``warp_factor = 0`` is the plain affine crop.

FaRL's protocol (values confirmed in github.com/FacePerceiver/FaRL, ``farl/experiments``)
    Alignment (``face_alignment/trainers/{ibug300w,wflw,aflw19}_farl.yaml`` + ``augmenters/train.yaml``):
    box crop with ``scale_mu = 0.8`` (our ``crop_scale = 1 / 0.8 = 1.25``; AFLW-19 uses ``1.0``),
    ``shift_sigma = 0.05``, ``rot_sigma = 0.174``, ``scale_sigma = 0.1``, all three *uniform*
    (``*_normal: false``: ``U(mu - sigma, mu + sigma)``; shift in units of the crop side); then on the
    crop: RandomOcclusion (always), NoiseFusion with p = 0.5, RandomGray (p = 0.1), RandomGamma,
    RandomBlur; no flips; ``warp_factor = 0``.  The boxes of 300W/WFLW are already square
    (``200 * scale``); FaRL stretches non-square boxes (AFLW-19) to the square crop, our default keeps the
    aspect (``keep_aspect``) by using the longer side.
    Parsing (``face_parsing/augmenters/{lapa,celebm}/train.yaml``, ``trainers/lapa_farl.yaml``,
    ``farl/datasets/prepare.py``): LaPa is aligned by a similarity from 5 landmarks (106-point ids
    ``[104, 105, 54, 84, 90]``: eye centres, nose tip, mouth corners) to a fixed template, then
    tanh-warped with ``warp_factor = 0.8``; CelebAMask-HQ uses the whole (512 px) image and no warp.
    Jitter ``shift_sigma = 0.01`` (uniform), ``rot_sigma = 0.314`` and ``scale_sigma = 0.1`` (normal,
    around 1); photometric: RandomGray, RandomGamma, RandomBlur only.  See
    :meth:`AugmentConfig.farl_parsing`.  FaRL warps to 512 px and lets the network resize to 448; so do
    we (``image_size`` 512 here, the model's ``data.backbone_size`` 448, logits scored at 512).

Photometric augmentations (train mode, on the ``[0, 1]`` crop, before mean/std normalisation; the
    blueprint ``augmenters/image.py`` definitions): occlusion -- a rectangle of height ``U(0.1, 0.4)``
    of the crop side and width that +- 0.1, centred uniformly, filled with black (FaRL), a random
    colour or uniform noise; noise -- FaRL's NoiseFusion ``(1 - a) x + a U(0, 1)``, ``a ~ U(0, 0.5)``,
    or additive gaussian noise; grayscale (ITU-R 601 luma, as cv2); gamma -- ``x ** g`` with ``g`` drawn
    uniformly from ``gamma_choices`` (FaRL: sqrt / identity / square = ``[0.5, 1, 2]``); blur -- box
    filter (cv2.blur, reflect-101 borders) of side ``int(ratio * (H + W) / 2)``, ``ratio ~ U(0, 0.01)``,
    applied when the side is > 1 (or a gaussian of that size with ``blur_kind = "gaussian"``).
    Landmarks and masks are never changed by them.

Randomness comes from torch's global RNG (seed the DataLoader workers) or from the ``generator`` given
to a transform (or to one call).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import torch.nn.functional as nnf
from omegaconf import ListConfig
from torch import Tensor
from torchvision.transforms.v2 import functional as F

from facerep.config import IMAGENET_MEAN, IMAGENET_STD, ConfigError
from facerep.data.downstream.fra_expression import fra_chain, run_seeded, to_pil
from facerep.data.sources import DataError
from facerep.geometry import (
    FIVE_POINT_INDICES,
    FIVE_POINT_TEMPLATE,
    apply_transform_tensor,
    box_matrix,
    five_point_matrix,
    five_points,
    image_matrix,
    invert,
    landmarks_box,
    rotation_scale_about,
    similarity,
)

__all__ = [
    "FIVE_POINT_INDICES",
    "FIVE_POINT_TEMPLATE",
    "AlignmentTransform",
    "AugmentConfig",
    "ClassificationTransform",
    "ParsingTransform",
    "apply_photometric",
    "build_matrix",
    "five_points",
    "landmarks_box",
    "landmarks_to_image",
    "logits_to_image",
    "points_to_crop",
    "sampling_grid",
    "similarity",
    "tanh_unwarp",
    "tanh_warp",
    "warp_image",
    "warp_mask",
]

WARPS = ("affine", "tanh")
ALIGNS = ("auto", "five_point", "box", "image")
OCCLUSION_FILLS = ("zero", "color", "noise")
NOISE_KINDS = ("fusion", "gaussian")
BLUR_KINDS = ("box", "gaussian")
CLASSIFY_CHAINS = ("flip", "fra")

_OUTSIDE_LOGIT = -1e4  # non-background logit for pixels outside the crop (fp16-safe)


@dataclass
class AugmentConfig:
    """Crop geometry, jitter and photometric augmentation (defaults: FaRL face alignment).

    Plain typed fields, so it nests in an OmegaConf structured config.  String fields take one of the
    values listed in their comment; :meth:`check` validates them (the transforms call it).  For face
    parsing use :meth:`farl_parsing` (the parsing transform's default).
    """

    # -- crop geometry
    crop_scale: float = 1.25  # crop side = face box side * crop_scale (FaRL scale_mu = 1 / crop_scale)
    keep_aspect: bool = True  # square crop from the box's longer side (False: stretch the box, as FaRL)
    align: str = "auto"  # parsing crop: auto | five_point | box | image (see ParsingTransform)
    warp: str = "affine"  # affine | tanh
    warp_factor: float = 0.8  # tanh warp strength (used when warp == "tanh")
    # -- geometric jitter (train); shift in units of the crop side, rotation in radians
    shift_sigma: float = 0.05
    rot_sigma: float = 0.174
    scale_sigma: float = 0.1
    shift_normal: bool = False  # False: U(-sigma, sigma); True: N(0, sigma)
    rot_normal: bool = False
    scale_normal: bool = False
    # -- photometric (train)
    occlusion_prob: float = 1.0
    occlusion_min: float = 0.1  # occluder height, fraction of the crop side
    occlusion_max: float = 0.4
    occlusion_aspect_delta: float = 0.1  # width = height +- this (fraction of the side)
    occlusion_fill: str = "zero"  # zero | color | noise
    noise_prob: float = 0.5
    noise_kind: str = "fusion"  # fusion: (1-a) x + a U(0,1), a ~ U(0, noise_alpha) | gaussian: x + N(0, std)
    noise_alpha: float = 0.5
    noise_std: float = 0.05
    gray_prob: float = 0.1
    gamma_choices: list[float] = field(default_factory=lambda: [0.5, 1.0, 2.0])
    blur_prob: float = 1.0
    blur_max_ratio: float = 0.01  # kernel side = int(U(0, ratio) * (H + W) / 2)
    blur_kind: str = "box"  # box | gaussian
    # -- classification
    hflip_prob: float = 0.5
    classify: str = "flip"  # flip (resize + flip) | fra (FRA's main_fer.py chain; see fra_expression)
    # -- output normalisation
    mean: list[float] = field(default_factory=lambda: list(IMAGENET_MEAN))
    std: list[float] = field(default_factory=lambda: list(IMAGENET_STD))

    @classmethod
    def farl_alignment(cls) -> AugmentConfig:
        """FaRL's 300W / WFLW alignment recipe (= the defaults); AFLW-19 uses ``crop_scale = 1.0``."""
        return cls()

    @classmethod
    def farl_parsing(cls, warp: str = "tanh") -> AugmentConfig:
        """FaRL's parsing recipe: LaPa (five-point alignment + tanh warp 0.8); ``warp="affine"`` with
        samples that have no landmarks is the CelebAMask-HQ one (whole image, no warp)."""
        return cls(
            crop_scale=1.0,
            warp=warp,
            warp_factor=0.8,
            shift_sigma=0.01,
            rot_sigma=0.314,
            scale_sigma=0.1,
            shift_normal=False,
            rot_normal=True,
            scale_normal=True,
            occlusion_prob=0.0,
            noise_prob=0.0,
        )

    @classmethod
    def for_task(cls, task: str, **overrides: Any) -> AugmentConfig:
        """FaRL's preset for ``task`` (``"parsing"``: :meth:`farl_parsing`, otherwise the defaults) with
        ``overrides`` (field -> value, e.g. a config's ``augment`` mapping) applied on top."""
        base = cls.farl_parsing() if task == "parsing" else cls()
        unknown = set(overrides) - {f.name for f in dataclasses.fields(cls)}
        if unknown:
            raise ConfigError(f"unknown augment option(s): {', '.join(sorted(unknown))}")
        return dataclasses.replace(base, **{k: _plain(v) for k, v in overrides.items()})

    def check(self) -> None:
        """Raise a :class:`ConfigError` naming the first invalid field."""
        _check_cfg(self)


def _plain(value: Any) -> Any:
    """OmegaConf containers -> plain lists (so a config's ``augment`` mapping can be splatted in)."""
    if isinstance(value, (ListConfig, list, tuple)):
        return [_plain(v) for v in value]
    return value


def _check_cfg(cfg: Any) -> None:
    choices = {
        "warp": WARPS,
        "align": ALIGNS,
        "occlusion_fill": OCCLUSION_FILLS,
        "noise_kind": NOISE_KINDS,
        "blur_kind": BLUR_KINDS,
        "classify": CLASSIFY_CHAINS,
    }
    for name, allowed in choices.items():
        if getattr(cfg, name) not in allowed:
            raise ConfigError(
                f"augment.{name} must be one of {', '.join(allowed)}, got {getattr(cfg, name)!r}"
            )
    if not cfg.crop_scale > 0:
        raise ConfigError(f"augment.crop_scale must be > 0, got {cfg.crop_scale}")
    if cfg.warp == "tanh" and not 0.0 < cfg.warp_factor <= 1.0:
        raise ConfigError(f"augment.warp_factor must be in (0, 1] for a tanh warp, got {cfg.warp_factor}")
    if len(cfg.mean) != 3 or len(cfg.std) != 3:
        raise ConfigError("augment.mean and augment.std must have 3 values")
    if len(cfg.gamma_choices) == 0:
        raise ConfigError("augment.gamma_choices must not be empty")


def _warp_factor(cfg: Any) -> float:
    return float(cfg.warp_factor) if cfg.warp == "tanh" else 0.0


# ---------------------------------------------------------------------------------------------- geometry


def tanh_warp(u: Tensor, warp_factor: float | Tensor) -> Tensor:
    """Aligned-frame normalised coordinates ``u`` -> warped (crop) normalised coordinates (elementwise).

    ``warp_factor`` is a float or a tensor broadcastable to ``u``; 0 is the identity.
    """
    f = torch.as_tensor(warp_factor, dtype=u.dtype, device=u.device)
    lin = 1.0 - f
    a = u.abs()
    fs = torch.where(f > 0, f, torch.ones_like(f))
    out = torch.sign(u) * (lin + f * torch.tanh((a - lin) / fs))
    return torch.where((a > lin) & (f > 0), out, u)


def tanh_unwarp(v: Tensor, warp_factor: float | Tensor) -> Tensor:
    """Inverse of :func:`tanh_warp` (``artanh`` argument clipped to 0.999, as blueprint)."""
    f = torch.as_tensor(warp_factor, dtype=v.dtype, device=v.device)
    lin = 1.0 - f
    a = v.abs()
    fs = torch.where(f > 0, f, torch.ones_like(f))
    t = ((a - lin) / fs).clamp(max=0.999)
    out = torch.sign(v) * (lin + f * torch.atanh(t))
    return torch.where((a > lin) & (f > 0), out, v)


def points_to_crop(
    points: Tensor, image_to_crop: Tensor, image_size: int, warp_factor: float | Tensor = 0.0
) -> Tensor:
    """Original-image pixel points ``[..., K, 2]`` -> normalised crop coordinates in ``[0, 1]``.

    ``image_to_crop`` ``[..., 2, 3]`` maps image pixels to aligned-crop pixels; with a tanh warp the
    result is ``(tanh_warp(u) + 1) / 2``.
    """
    a = apply_transform_tensor(image_to_crop, points)
    u = (2.0 * a + 1.0) / image_size - 1.0
    wf = (
        warp_factor
        if not torch.is_tensor(warp_factor)
        else warp_factor.to(u).reshape(*warp_factor.shape, 1, 1)
    )
    return (tanh_warp(u, wf) + 1.0) / 2.0


def landmarks_to_image(
    pred01: Tensor, crop_to_image: Tensor, image_size: int, warp_factor: float | Tensor = 0.0
) -> Tensor:
    """Normalised crop predictions ``[N, K, 2]`` -> original-image pixel coordinates ``[N, K, 2]``.

    ``crop_to_image`` ``[N, 2, 3]`` is the transform's ``"crop_to_image"`` (batched); ``image_size`` the
    crop side ``S``; ``warp_factor`` (float or ``[N]``) only if the transform used a tanh warp.
    Inverts the transform's landmark mapping: ``x_crop = pred * S - 0.5``, then the affine.
    """
    v = 2.0 * pred01 - 1.0
    wf = (
        warp_factor
        if not torch.is_tensor(warp_factor)
        else warp_factor.to(v).reshape(*warp_factor.shape, 1, 1)
    )
    u = tanh_unwarp(v, wf)
    crop_px = ((u + 1.0) * image_size - 1.0) / 2.0
    m = crop_to_image.to(device=pred01.device, dtype=torch.float64)
    return apply_transform_tensor(m, crop_px.to(torch.float64)).to(pred01.dtype)


def sampling_grid(
    image_to_crop: np.ndarray | Tensor,
    image_hw: tuple[int, int],
    out_size: int,
    warp_factor: float = 0.0,
) -> Tensor:
    """``grid_sample`` grid ``[1, S, S, 2]`` (``align_corners=False``) that builds the crop from the image."""
    h, w = image_hw
    s = out_size
    v = (2.0 * torch.arange(s, dtype=torch.float64) + 1.0) / s - 1.0
    u = tanh_unwarp(v, warp_factor)
    a = ((u + 1.0) * s - 1.0) / 2.0  # aligned-frame pixel coordinates along one axis
    ay, ax = torch.meshgrid(a, a, indexing="ij")
    crop_to_image = torch.as_tensor(invert(np.asarray(image_to_crop, dtype=np.float64)))
    pts = torch.stack([ax, ay], dim=-1)  # [S, S, 2]
    src = apply_transform_tensor(crop_to_image[:2], pts)
    grid = torch.stack([(2.0 * src[..., 0] + 1.0) / w - 1.0, (2.0 * src[..., 1] + 1.0) / h - 1.0], dim=-1)
    return grid.to(torch.float32).unsqueeze(0)


def warp_image(image: Tensor, grid: Tensor) -> Tensor:
    """Float image ``[C, H, W]`` -> ``[C, S, S]`` by bilinear sampling of ``grid``; outside = 0."""
    out = nnf.grid_sample(
        image.unsqueeze(0), grid, mode="bilinear", padding_mode="zeros", align_corners=False
    )
    return out.squeeze(0)


def warp_mask(mask: Tensor, grid: Tensor) -> Tensor:
    """Class-id mask ``[H, W]`` -> int64 ``[S, S]`` by nearest sampling; outside = 0 (background)."""
    m = mask.to(torch.float32)[None, None]
    out = nnf.grid_sample(m, grid, mode="nearest", padding_mode="zeros", align_corners=False)
    return out[0, 0].round().to(torch.int64)


def logits_to_image(
    logits: Tensor,
    warp: Tensor,
    warp_factor: float | Tensor,
    out_size: tuple[int, int] | Tensor,
    *,
    image_size: int | None = None,
    background: int = 0,
) -> Tensor:
    """Crop-frame logits ``[N, C, s, s]`` -> original-image logits ``[N, C, H, W]`` (bilinear).

    ``warp`` ``[N, 2, 3]`` and ``warp_factor`` (float, ``[]`` or ``[N]``) are the parsing transform's
    ``"warp"`` / ``"warp_factor"``; ``out_size`` is the original ``(H, W)`` (``"orig_size"``; one size
    for the whole batch -- evaluate images of different sizes one at a time).  ``image_size`` is the
    crop side ``S`` the transform used (default: the logits' side; logits predicted at a lower
    resolution than ``S`` are fine, the sampling grid is resolution-free).

    Original pixels whose crop position falls outside the crop (possible with the affine warp) get
    the logit vector ``0`` for ``background`` and ``-1e4`` for every other class, so argmax/softmax call
    them background (FaRL fills them with 0, whose argmax is also class 0).
    """
    n, c, _, lw = logits.shape
    s = int(image_size) if image_size is not None else lw
    h, w = (int(v) for v in (out_size.tolist() if torch.is_tensor(out_size) else out_size))
    dev = logits.device
    ys = torch.arange(h, dtype=torch.float64, device=dev)
    xs = torch.arange(w, dtype=torch.float64, device=dev)
    yy, xx = torch.meshgrid(ys, xs, indexing="ij")
    pts = torch.stack([xx, yy], dim=-1).reshape(1, h * w, 2)
    m = torch.as_tensor(warp).to(device=dev, dtype=torch.float64).reshape(n, 2, 3)
    a = apply_transform_tensor(m, pts)  # [N, HW, 2] aligned-frame pixels
    u = (2.0 * a + 1.0) / s - 1.0
    wf = torch.as_tensor(warp_factor).to(device=dev, dtype=torch.float64).reshape(-1, 1, 1).expand(n, 1, 1)
    grid = tanh_warp(u, wf)  # crop-normalised = grid_sample coordinates (align_corners=False)
    inside = (grid.abs() <= 1.0).all(dim=-1).reshape(n, 1, h, w)
    grid = grid.reshape(n, h, w, 2).to(logits.dtype)
    out = nnf.grid_sample(logits, grid, mode="bilinear", padding_mode="border", align_corners=False)
    fill = torch.full((1, c, 1, 1), _OUTSIDE_LOGIT, dtype=logits.dtype, device=logits.device)
    fill[:, background] = 0.0
    return torch.where(inside, out, fill)


def _draw(n: int, sigma: float, normal: bool, gen: torch.Generator | None) -> np.ndarray:
    if normal:
        return (torch.randn(n, generator=gen, dtype=torch.float64) * sigma).numpy()
    return ((torch.rand(n, generator=gen, dtype=torch.float64) * 2.0 - 1.0) * sigma).numpy()


def build_matrix(
    base: np.ndarray, out_size: int, cfg: Any, train: bool, generator: torch.Generator | None = None
) -> np.ndarray:
    """``base`` (image -> unscaled crop, 3x3) composed with the FaRL scale ``1 / crop_scale`` and, in
    train mode, the shift/rotation/scale jitter; returns the 3x3 image -> crop (aligned frame) matrix."""
    scale = 1.0 / float(cfg.crop_scale)
    angle, shift = 0.0, (0.0, 0.0)
    if train:
        sh = _draw(2, cfg.shift_sigma, cfg.shift_normal, generator) * out_size
        angle = float(_draw(1, cfg.rot_sigma, cfg.rot_normal, generator)[0])
        scale += float(_draw(1, cfg.scale_sigma, cfg.scale_normal, generator)[0])
        shift = (float(sh[0]), float(sh[1]))
    jitter = rotation_scale_about((out_size - 1) / 2.0, angle, scale, shift)
    return jitter @ base


# ------------------------------------------------------------------------------------------ photometric


def _rand(gen: torch.Generator | None) -> float:
    return float(torch.rand((), generator=gen, dtype=torch.float64))


def _box_blur(x: Tensor, k: int) -> Tensor:
    lo, hi = k // 2, k - 1 - k // 2  # cv2 anchor at k // 2
    padded = nnf.pad(x.unsqueeze(0), (lo, hi, lo, hi), mode="reflect")
    return nnf.avg_pool2d(padded, kernel_size=k, stride=1).squeeze(0)


def apply_photometric(image: Tensor, cfg: Any, generator: torch.Generator | None = None) -> Tensor:
    """FaRL's photometric chain on a ``[3, H, W]`` float image in ``[0, 1]``: occlusion, noise, gray,
    gamma, blur (each with its probability in ``cfg``).  Returns a new tensor, same shape and dtype."""
    g = generator
    x = image.clone()
    _, h, w = x.shape
    if _rand(g) < cfg.occlusion_prob:
        hf = cfg.occlusion_min + _rand(g) * (cfg.occlusion_max - cfg.occlusion_min)
        wf = max(0.0, hf + (2.0 * _rand(g) - 1.0) * cfg.occlusion_aspect_delta)
        cx, cy = int((w - 1) * _rand(g)), int((h - 1) * _rand(g))
        dh, dw = int(h * hf), int(w * wf)
        x0, x1 = max(0, cx - dw // 2), min(w - 1, cx + dw // 2)
        y0, y1 = max(0, cy - dh // 2), min(h - 1, cy + dh // 2)
        if x1 >= x0 and y1 >= y0:
            region = (3, y1 - y0 + 1, x1 - x0 + 1)
            if cfg.occlusion_fill == "zero":
                fill = torch.zeros(region, dtype=x.dtype)
            elif cfg.occlusion_fill == "color":
                fill = torch.rand(3, 1, 1, generator=g).to(x.dtype).expand(region)
            else:
                fill = torch.rand(region, generator=g).to(x.dtype)
            x[:, y0 : y1 + 1, x0 : x1 + 1] = fill
    if _rand(g) < cfg.noise_prob:
        if cfg.noise_kind == "fusion":
            alpha = cfg.noise_alpha * _rand(g)
            x = (1.0 - alpha) * x + alpha * torch.rand(x.shape, generator=g).to(x.dtype)
        else:
            x = (x + cfg.noise_std * torch.randn(x.shape, generator=g).to(x.dtype)).clamp(0.0, 1.0)
    if _rand(g) < cfg.gray_prob:
        x = F.rgb_to_grayscale(x, num_output_channels=3)
    choices = list(cfg.gamma_choices)
    gamma = float(choices[int(torch.randint(len(choices), (), generator=g))])
    x = x.clamp(0.0, 1.0)
    if gamma != 1.0:
        x = F.adjust_gamma(x, gamma)
    if _rand(g) < cfg.blur_prob:
        k = int((h + w) / 2 * cfg.blur_max_ratio * _rand(g))
        if k > 1:
            if cfg.blur_kind == "box":
                x = _box_blur(x, k)
            else:
                k = k | 1
                x = F.gaussian_blur(x, [k, k])
    return x


# ----------------------------------------------------------------------------------------------- inputs


def _to_float_image(image: np.ndarray) -> Tensor:
    """``[H, W, 3]`` (or ``[H, W]``) uint8 -> float32 ``[3, H, W]`` in ``[0, 1]``."""
    arr = np.asarray(image)
    if arr.ndim == 2:
        arr = arr[:, :, None]
    if arr.shape[2] == 1:
        arr = np.repeat(arr, 3, axis=2)
    if arr.shape[2] != 3:
        raise ValueError(f"expected an RGB image [H, W, 3], got shape {tuple(arr.shape)}")
    img = F.to_image(np.ascontiguousarray(arr))
    return F.to_dtype(img, torch.float32, scale=True).as_subclass(Tensor)


def _normalize(x: Tensor, cfg: Any) -> Tensor:
    return F.normalize(x, mean=[float(v) for v in cfg.mean], std=[float(v) for v in cfg.std])


def _resolve_cfg(cfg: Any, default: AugmentConfig) -> Any:
    cfg = default if cfg is None else cfg
    _check_cfg(cfg)
    return cfg


class _Base:
    def __init__(self, image_size: int, train: bool, cfg: Any, generator: torch.Generator | None) -> None:
        if image_size < 1:
            raise ConfigError(f"image_size must be >= 1, got {image_size}")
        self.image_size = int(image_size)
        self.train = bool(train)
        self.cfg = cfg
        self.generator = generator

    def _gen(self, generator: torch.Generator | None) -> torch.Generator | None:
        return generator if generator is not None else self.generator

    def __repr__(self) -> str:
        return f"{type(self).__name__}(image_size={self.image_size}, train={self.train})"


class AlignmentTransform(_Base):
    """Face-alignment sample -> crop tensors (FaRL: box crop, jitter + photometric in train mode).

    Output: ``"image"`` float32 ``[3, S, S]`` (normalised), ``"landmarks"`` float32 ``[K, 2]`` in
    normalised crop coordinates ``(x + 0.5) / S`` (may fall outside ``[0, 1]``), ``"crop_to_image"``
    float32 ``[2, 3]`` (crop pixels -> original pixels; see :func:`landmarks_to_image`), ``"box"``
    float32 ``[4]`` (the original box; the landmarks' tight box if the sample has none), ``"visible"``
    bool ``[K]`` (all True if absent), ``"warp_factor"`` float32 ``[]`` (0 unless ``cfg.warp == "tanh"``)
    and ``"name"`` when the sample has one.
    """

    def __init__(
        self,
        image_size: int = 448,
        train: bool = False,
        cfg: Any = None,
        generator: torch.Generator | None = None,
    ) -> None:
        super().__init__(image_size, train, _resolve_cfg(cfg, AugmentConfig.farl_alignment()), generator)

    def __call__(self, sample: dict[str, Any], generator: torch.Generator | None = None) -> dict[str, Any]:
        g = self._gen(generator)
        cfg, s = self.cfg, self.image_size
        lms = np.asarray(sample["landmarks"], dtype=np.float64)
        box = sample.get("box")
        box = landmarks_box(lms) if box is None else np.asarray(box, dtype=np.float32)
        m = build_matrix(box_matrix(box, s, cfg.keep_aspect), s, cfg, self.train, g)
        wf = _warp_factor(cfg)
        image = _to_float_image(sample["image"])
        crop = warp_image(image, sampling_grid(m, image.shape[-2:], s, wf))
        if self.train:
            crop = apply_photometric(crop, cfg, g)
        lm01 = points_to_crop(torch.from_numpy(lms), torch.from_numpy(m[:2]), s, wf)
        vis = sample.get("visible")
        out = {
            "image": _normalize(crop, cfg),
            "landmarks": lm01.to(torch.float32),
            "crop_to_image": torch.from_numpy(invert(m)[:2]).to(torch.float32),
            "box": torch.from_numpy(np.asarray(box, dtype=np.float32).copy()),
            "visible": (
                torch.ones(lms.shape[0], dtype=torch.bool)
                if vis is None
                else torch.from_numpy(np.asarray(vis, dtype=bool).copy())
            ),
            "warp_factor": torch.tensor(wf, dtype=torch.float32),
        }
        if "name" in sample:
            out["name"] = sample["name"]
        return out


class ParsingTransform(_Base):
    """Face-parsing sample -> crop tensors; :func:`logits_to_image` maps predictions back.

    The crop (``cfg.align``): ``"five_point"`` -- similarity from five landmarks (layouts in
    ``FIVE_POINT_INDICES``) to FaRL's template (LaPa protocol); ``"box"`` -- the sample's ``"box"``
    or, failing that, the landmarks' tight box, times ``crop_scale``; ``"image"`` -- the whole image
    resized to ``S x S`` (CelebAMask-HQ protocol); ``"auto"`` -- the first of these the sample
    supports.  Then ``cfg.warp`` (``"tanh"``: FaRL's RoI tanh warp, ``warp_factor``).

    Output: ``"image"`` float32 ``[3, S, S]``, ``"mask"`` int64 ``[S, S]`` (nearest; outside the
    image = 0), ``"warp"`` float32 ``[2, 3]`` (original pixels -> aligned-crop pixels),
    ``"warp_factor"`` float32 ``[]``, ``"orig_size"`` int64 ``[2]`` (H, W), and ``"name"`` when given.
    Default ``cfg``: :meth:`AugmentConfig.farl_parsing`.
    """

    def __init__(
        self,
        image_size: int = 512,
        train: bool = False,
        cfg: Any = None,
        generator: torch.Generator | None = None,
    ) -> None:
        super().__init__(image_size, train, _resolve_cfg(cfg, AugmentConfig.farl_parsing()), generator)

    def base_matrix(self, sample: dict[str, Any], hw: tuple[int, int]) -> np.ndarray:
        """The image -> unscaled-crop matrix chosen by ``cfg.align`` (see the class docstring)."""
        align, s = self.cfg.align, self.image_size
        lms = sample.get("landmarks")
        lms = None if lms is None else np.asarray(lms, dtype=np.float64)
        if align in ("auto", "five_point"):
            pts = None if lms is None else five_points(lms)
            if pts is not None:
                return five_point_matrix(pts, s)
            if align == "five_point":
                raise ConfigError("align='five_point' needs landmarks with 106, 98, 68 or 5 points")
        if align in ("auto", "box"):
            box = sample.get("box")
            if box is None and lms is not None:
                box = landmarks_box(lms)
            if box is not None:
                return box_matrix(np.asarray(box, dtype=np.float64), s, self.cfg.keep_aspect)
            if align == "box":
                raise ConfigError("align='box' needs a 'box' or 'landmarks' in the sample")
        return image_matrix(hw, s)

    def __call__(self, sample: dict[str, Any], generator: torch.Generator | None = None) -> dict[str, Any]:
        g = self._gen(generator)
        cfg, s = self.cfg, self.image_size
        image = _to_float_image(sample["image"])
        hw = (int(image.shape[-2]), int(image.shape[-1]))
        mask = torch.from_numpy(np.asarray(sample["mask"]).astype(np.int64))
        if tuple(mask.shape) != hw:
            raise DataError(f"mask shape {tuple(mask.shape)} does not match image {hw}")
        m = build_matrix(self.base_matrix(sample, hw), s, cfg, self.train, g)
        wf = _warp_factor(cfg)
        grid = sampling_grid(m, hw, s, wf)
        crop = warp_image(image, grid)
        if self.train:
            crop = apply_photometric(crop, cfg, g)
        out = {
            "image": _normalize(crop, cfg),
            "mask": warp_mask(mask, grid),
            "warp": torch.from_numpy(m[:2].copy()).to(torch.float32),
            "warp_factor": torch.tensor(wf, dtype=torch.float32),
            "orig_size": torch.tensor(hw, dtype=torch.int64),
        }
        if "name" in sample:
            out["name"] = sample["name"]
        return out


class ClassificationTransform(_Base):
    """Classification sample -> ``{"image": [3, S, S], "label"}`` by ``cfg.classify``: ``"flip"`` -- resize
    to ``S x S`` (bilinear, antialiased, on the float image), horizontal flip with ``cfg.hflip_prob`` in train
    mode, normalise; ``"fra"`` -- FRA's expression chain (:mod:`facerep.data.downstream.fra_expression`:
    PIL resize, flip, colour jitter, translation, rotation, normalise, random erasing).  ``"label"`` is an
    int64 scalar (single-label) or int64 ``[A]`` (multi-label 0/1)."""

    def __init__(
        self,
        image_size: int = 224,
        train: bool = False,
        cfg: Any = None,
        generator: torch.Generator | None = None,
    ) -> None:
        super().__init__(image_size, train, _resolve_cfg(cfg, AugmentConfig()), generator)
        self.chain = fra_chain(self.image_size, self.train, self.cfg) if self.cfg.classify == "fra" else None

    def _image(self, image: np.ndarray, generator: torch.Generator | None) -> Tensor:
        if self.chain is not None:
            return run_seeded(self.chain, to_pil(image), generator)
        s = self.image_size
        x = F.resize(_to_float_image(image), [s, s], antialias=True).clamp(0.0, 1.0)
        if self.train and _rand(generator) < self.cfg.hflip_prob:
            x = F.horizontal_flip(x)
        return _normalize(x, self.cfg)

    def __call__(self, sample: dict[str, Any], generator: torch.Generator | None = None) -> dict[str, Any]:
        out = {
            "image": self._image(sample["image"], self._gen(generator)),
            "label": torch.as_tensor(np.asarray(sample["label"]).astype(np.int64)),
        }
        if "name" in sample:
            out["name"] = sample["name"]
        return out
