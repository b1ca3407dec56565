"""Procedural synthetic faces with landmarks, parsing masks and attributes.

This is the embedded default dataset: it needs no download, renders on the CPU with numpy and Pillow only,
and gives every image consistent ground truth, so pre-training demos and downstream benchmarks (68-point
alignment, 11-class face parsing) run anywhere.

How a face is made
    A parametric 3-D face (units: half the cheek width; x to the image right, y down, z towards the viewer)
    is sampled per image: jaw width/length/squareness, forehead height, eye size/spacing/tilt, iris
    colour, brow thickness/arch/colour, nose length/width, mouth width and lip thickness, skin tone, hair
    style (bald, buzz, short, fringe, medium, long) and colour, beard, glasses, hat, and a hand or face-mask
    occluder.  Expression moves the same points (smile, open mouth, raised brows, eye closure).  Every
    point is rotated by yaw (within +-40 deg), pitch and roll, orthographically projected, scaled and
    shifted, so under yaw the features slide towards one side and the far side compresses.  The RGB image
    is drawn 2x supersampled (antialiasing) over a cluttered background (random gradient, shapes, noise),
    then lit with a directional shading gradient, a random brightness/contrast, optional blur and noise.

Ground truth
    ``landmarks``: 68 points in iBUG order (0-16 jaw starting on the image left of a frontal face, 17-21
    and 22-26 brows, 27-30 nose bridge, 31-35 nose bottom, 36-41 and 42-47 eyes, 48-59 outer lip, 60-67
    inner lip) in pixel coordinates with the centre of pixel ``(i, j)`` at ``x = i, y = j``.  Points are
    given even where occluded, as in the real datasets, and always lie inside the image.
    ``mask``: LaPa's 11 classes (``LAPA_CLASSES``), drawn from the very same projected geometry as the
    landmarks: eyes are the polygons of the 6 eye points, brows hang below their 5 (upper-edge) points,
    the upper lip lies between the outer (48-54) and inner (60-64) upper contours, the inner mouth inside
    60-67 (teeth included), the nose covers bridge and alae down to 31-35, skin is the jaw contour closed
    by the forehead (ears included; neck and clothes are background), hair is painted where it is seen.
    Side convention: ``left_*`` labels the part on the IMAGE-left side of a frontal face, i.e.
    ``left_eyebrow`` = iBUG 17-21 and ``left_eye`` = iBUG 36-41 (``right_*`` = 22-26 / 42-47).
    Occluders: glasses are transparent to the mask (pixels keep the label of what is under them);
    hands, hats and face masks are labelled ``background``, since LaPa labels only visible face parts.
    Beards are labelled ``skin``.
    ``attributes``: binary flags in the order of ``ATTRIBUTES``.

Speed (``measure_throughput(200, size)``, one core of a shared 2-core Xeon, best of 3 runs while other jobs
    used the second core): about 430 img/s at 64 px, 340 img/s at 128 px and 195 img/s at 224 px.  Under
    heavier contention of the same machine the 128 px rate dropped to about 200 img/s.
"""

from __future__ import annotations

import functools
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from PIL import Image, ImageChops, ImageDraw, ImageFilter

__all__ = [
    "ATTRIBUTES",
    "LAPA_CLASSES",
    "SyntheticFace",
    "SyntheticFaceDataset",
    "measure_throughput",
    "render_face",
]

LAPA_CLASSES: tuple[str, ...] = (
    "background",
    "skin",
    "left_eyebrow",
    "right_eyebrow",
    "left_eye",
    "right_eye",
    "nose",
    "upper_lip",
    "inner_mouth",
    "lower_lip",
    "hair",
)
ATTRIBUTES: tuple[str, ...] = (
    "glasses",
    "smiling",
    "mouth_open",
    "eyes_closed",
    "bald",
    "beard",
    "hat",
    "occluded",  # a hand or a face mask covers part of the face
)

_BG, _SKIN, _LBROW, _RBROW, _LEYE, _REYE, _NOSE, _ULIP, _MOUTH, _LLIP, _HAIR = range(11)
_SS = 2  # supersampling factor of the RGB canvas

_SKIN_TONES = np.array(
    [
        [255, 226, 204],
        [241, 194, 167],
        [224, 172, 135],
        [198, 134, 96],
        [161, 102, 68],
        [112, 70, 45],
        [78, 50, 34],
    ],
    dtype=np.float64,
)
_HAIR_COLOURS = np.array(
    [
        [28, 24, 22],
        [55, 38, 28],
        [98, 66, 40],
        [140, 72, 38],
        [196, 160, 100],
        [150, 146, 140],
        [222, 220, 212],
    ],
    dtype=np.float64,
)
_HAIR_WEIGHTS = np.array([0.3, 0.25, 0.18, 0.07, 0.1, 0.06, 0.04])
_IRIS_COLOURS = np.array(
    [[60, 38, 24], [100, 64, 36], [120, 100, 50], [70, 110, 70], [70, 110, 160], [110, 120, 130]],
    dtype=np.float64,
)
_HAIR_STYLES = ("bald", "buzz", "short", "fringe", "medium", "long")
_HAIR_STYLE_WEIGHTS = np.array([0.08, 0.1, 0.24, 0.16, 0.2, 0.22])

Colour = tuple[int, ...]


@dataclass
class SyntheticFace:
    """One rendered face and its ground truth."""

    image: np.ndarray  # [H, W, 3] uint8 RGB
    landmarks: np.ndarray  # [68, 2] float32 (x, y) pixels, iBUG order
    mask: np.ndarray  # [H, W] uint8, indices into LAPA_CLASSES
    attributes: np.ndarray  # [len(ATTRIBUTES)] uint8 0/1
    params: dict[str, Any] = field(default_factory=dict)  # sampled parameters, for debugging


# --------------------------------------------------------------------------------------------- geometry


class _Pose:
    """Yaw/pitch/roll rotation, orthographic projection, scale and shift to pixel coordinates."""

    def __init__(
        self, yaw: float, pitch: float, roll: float, scale: float = 1.0, cx: float = 0.0, cy: float = 0.0
    ):
        self.yaw, self.pitch, self.roll, self.scale = yaw, pitch, roll, scale
        cyw, syw, cp, sp = math.cos(yaw), math.sin(yaw), math.cos(pitch), math.sin(pitch)
        rot_y = np.array([[cyw, 0.0, syw], [0.0, 1.0, 0.0], [-syw, 0.0, cyw]])
        rot_x = np.array([[1.0, 0.0, 0.0], [0.0, cp, -sp], [0.0, sp, cp]])
        rot_z = np.array([[math.cos(roll), -math.sin(roll)], [math.sin(roll), math.cos(roll)]])
        self.matrix = (scale * rot_z @ (rot_x @ rot_y)[:2]).T  # [3, 2]
        self.offset = np.array([cx, cy])

    def project(self, pts: np.ndarray) -> np.ndarray:
        """[N, 3] face-frame points -> [N, 2] pixel coordinates."""
        return pts @ self.matrix + self.offset


def _pts(x: Any, y: Any, z: Any) -> np.ndarray:
    """Stack coordinates (arrays or scalars, broadcast to the length of ``x``) into [N, 3] points."""
    x = np.asarray(x, dtype=np.float64)
    out = np.empty((x.shape[0], 3))
    out[:, 0], out[:, 1], out[:, 2] = x, y, z
    return out


def _flip(p: np.ndarray) -> np.ndarray:
    """Mirror points about the face's vertical midline, keeping their order."""
    q = p.copy()
    q[:, 0] *= -1
    return q


def _mirror(p: np.ndarray) -> np.ndarray:
    """Mirror points and reverse their order (a left-to-right sequence stays left-to-right)."""
    return _flip(p[::-1])


_JAW_A = np.pi * (1.0 - np.arange(17) / 16.0)
_U5 = np.linspace(0.0, 1.0, 5)
_HEAD_B = np.linspace(0.0, np.pi, 15)[1:-1]
_ARC11 = np.linspace(0.0, np.pi, 11)
_ARC13 = np.linspace(0.0, np.pi, 13)
_RIM20 = np.linspace(0.0, 2.0 * np.pi, 20, endpoint=False)


def _build_face(p: dict[str, Any]) -> dict[str, np.ndarray]:
    """3-D landmarks and auxiliary outlines of the face described by the parameters ``p``."""
    w, yt = p["cheek_w"], p["jaw_top"]
    smile, opening = p["smile"], p["mouth_open"]

    # jaw 0-16: superellipse from the image-left temple over the chin; the chin drops when the mouth opens
    a = _JAW_A
    c, s = np.cos(a), np.sin(a)
    e = 2.0 / p["jaw_n"]
    jx = np.sign(c) * np.abs(c) ** e * w * (1.0 - (1.0 - p["jaw_ratio"]) * s**2)
    jy = yt + (p["jaw_len"] + 0.6 * opening * s**4) * np.abs(s) ** e
    jaw = _pts(jx, jy, 0.28 - 0.62 * np.abs(c) ** 1.2)

    # brows 17-21 / 22-26 (upper edge, outer to inner on the image-left side)
    ex, ew = p["eye_x"], p["eye_w"]
    u = _U5
    bx = -ex - ew * 1.35 + u * ew * 2.3
    by = p["brow_y"] - p["brow_raise"] - p["brow_arch"] * np.sin(np.pi * (0.15 + 0.75 * u)) + 0.03 * u
    rbrow = _pts(bx, by, 0.12 * u - 0.04)
    brows = np.concatenate([rbrow, _mirror(rbrow)])

    # nose 27-35
    nl, nw = p["nose_len"], p["nose_w"]
    bridge = _pts([0.0, 0.0, 0.0, 0.0], np.linspace(-0.06, nl, 4), [0.18, 0.3, 0.42, 0.52])
    base = nl + 0.08
    nbot = _pts(
        np.array([-1.0, -0.5, 0.0, 0.5, 1.0]) * nw,
        base + np.array([-0.03, 0.015, 0.035, 0.015, -0.03]),
        [0.22, 0.32, 0.4, 0.32, 0.22],
    )

    # eyes 36-41 / 42-47, both ordered: outer/inner corner, upper lid, other corner, lower lid
    eh = p["eye_h"] * p["eye_open"]
    tilt = p["eye_tilt"]
    k = np.array([-1.0, -1 / 3, 1 / 3, 1.0, 1 / 3, -1 / 3])
    lid = np.array([0.0, -1.1, -1.1, 0.0, 0.8, 0.8]) * eh
    reye = _pts(-ex + k * ew, lid + tilt * k, [-0.1, 0.02, 0.05, 0.05, 0.05, 0.02])
    eyes = np.concatenate([reye, _flip(reye)[[3, 2, 1, 0, 5, 4]]])

    # mouth 48-59 outer, 60-67 inner
    mw, my = p["mouth_w"] * (1.0 + 0.12 * smile), base + p["mouth_gap"]
    tu, tl = p["lip_up"], p["lip_low"]
    lift = 0.09 * smile

    def curve(xs: np.ndarray) -> np.ndarray:  # smile lifts the mouth towards the corners
        return -lift * (np.abs(xs) / mw) ** 2

    ox = np.array([-1.0, -0.62, -0.25, 0.0, 0.25, 0.62, 1.0, 0.62, 0.25, 0.0, -0.25, -0.62]) * mw
    oy = np.array([0.0, -0.8, -1.05, -0.85, -1.05, -0.8, 0.0]) * tu
    oy = np.concatenate([oy, opening / 2 + np.array([0.75, 0.97, 1.0, 0.97, 0.75]) * tl])
    oy[1:6] -= opening / 2 * np.array([0.7, 1.0, 1.0, 1.0, 0.7])
    outer = _pts(ox, my + oy + curve(ox), 0.3 - 0.2 * (np.abs(ox) / mw) ** 2)
    ix = np.array([-0.86, -0.4, 0.0, 0.4, 0.86, 0.4, 0.0, -0.4]) * mw
    iy = opening / 2 * np.array([0.0, -0.85, -1.0, -0.85, 0.0, 0.85, 1.0, 0.85])
    inner = _pts(ix, my + iy + curve(ix), 0.28 - 0.18 * (np.abs(ix) / mw) ** 2)

    lm = np.concatenate([jaw, brows, bridge, nbot, eyes, outer, inner])

    # forehead arc from the image-right temple over the head back to the image-left temple
    b = _HEAD_B
    head = _pts(w * np.cos(b), yt - p["head_h"] * np.sin(b), 0.05 - 0.35 * np.abs(np.cos(b)))
    # nose outline for the mask: bridge sides, alae, nose bottom
    bw0, bw1 = 0.07, 0.1
    nose_l = _pts(
        [-bw0, -bw1, -nw * 0.95, -nw * 1.12],
        [-0.06, nl * 0.55, base - 0.16, base - 0.06],
        [0.15, 0.3, 0.2, 0.15],
    )
    nose = np.concatenate([nose_l, nbot, _mirror(nose_l)])
    # brow lower edges (thickness tapers towards the tail)
    th = p["brow_thick"] * np.array([0.55, 0.8, 0.95, 1.0, 1.0])
    rbrow_low = rbrow[::-1].copy()
    rbrow_low[:, 1] += th[::-1]
    ear_r = _pts(w * np.array([0.96, 1.1, 1.17, 1.12, 0.98]), [-0.12, -0.17, 0.04, 0.3, 0.38], -0.4)
    return {
        "lm": lm,
        "head": head,
        "nose": nose,
        "rbrow": np.concatenate([rbrow, rbrow_low]),
        "lbrow": _mirror(np.concatenate([rbrow, rbrow_low])),
        "ear_r": ear_r,
        "ear_l": _mirror(ear_r),
    }


# --------------------------------------------------------------------------------------------- sampling


def _colour(v: Any) -> Colour:
    return tuple(min(255, max(0, round(float(t)))) for t in v)


class _Draws:
    """Uniform random numbers drawn in one batch from the face's generator and handed out in order."""

    def __init__(self, rng: np.random.Generator, n: int = 256) -> None:
        self._buf = rng.random(n).tolist()
        self._i = 0

    def __call__(self, lo: float = 0.0, hi: float = 1.0) -> float:
        v = self._buf[self._i]
        self._i += 1
        return lo + (hi - lo) * v

    def vec(self, lo: float, hi: float, n: int = 3) -> np.ndarray:
        return np.array([self(lo, hi) for _ in range(n)])

    def normal(self, sd: float) -> float:
        """Box-Muller normal sample with standard deviation ``sd``."""
        u1, u2 = self(), self()
        return sd * math.sqrt(-2.0 * math.log(1.0 - u1)) * math.cos(2.0 * math.pi * u2)

    def choice(self, weights: np.ndarray) -> int:
        return min(
            int(np.searchsorted(np.cumsum(weights), self() * weights.sum(), side="right")), len(weights) - 1
        )


def _sample_params(u: _Draws) -> dict[str, Any]:
    """Identity, expression, pose and appearance of one face."""
    p: dict[str, Any] = {
        "cheek_w": u(0.95, 1.05),
        "jaw_top": u(0.0, 0.1),
        "jaw_len": u(1.12, 1.42),
        "jaw_n": u(1.7, 3.2),
        "jaw_ratio": u(0.78, 1.0),
        "head_h": u(1.2, 1.45),
        "eye_x": u(0.38, 0.46),
        "eye_w": u(0.15, 0.2),
        "eye_h": u(0.06, 0.095),
        "eye_tilt": u(-0.02, 0.035),
        "brow_y": u(-0.3, -0.22),
        "brow_arch": u(0.0, 0.08),
        "brow_thick": u(0.04, 0.1),
        "nose_len": u(0.36, 0.5),
        "nose_w": u(0.15, 0.24),
        "mouth_gap": u(0.22, 0.32),
        "mouth_w": u(0.28, 0.4),
        "lip_up": u(0.05, 0.1),
        "lip_low": u(0.06, 0.13),
    }
    # expression
    p["smile"] = 0.0 if u() < 0.5 else u(0.3, 1.0)
    p["mouth_open"] = 0.0 if u() < 0.62 else u(0.06, 0.3)
    p["brow_raise"] = u(0.0, 0.04) + (u(0.03, 0.09) if u() < 0.25 or p["mouth_open"] > 0.2 else 0.0)
    p["eye_open"] = u(0.05, 0.2) if u() < 0.12 else u(0.75, 1.15) * (1.0 - 0.3 * p["smile"] ** 2)
    # pose and framing
    p["yaw"] = min(max(u.normal(18.0), -40.0), 40.0)
    p["pitch"] = u(-10.0, 10.0)
    p["roll"] = min(max(u.normal(10.0), -30.0), 30.0)
    p["face_frac"] = u(0.4, 0.6)
    p["shift"] = (u(-1.0, 1.0), u(-1.0, 1.0))
    # appearance
    t = u(0.0, len(_SKIN_TONES) - 1.0)
    i0 = min(int(t), len(_SKIN_TONES) - 2)
    skin = _SKIN_TONES[i0] + (t - i0) * (_SKIN_TONES[i0 + 1] - _SKIN_TONES[i0]) + u.vec(-10.0, 10.0)
    p["skin"] = _colour(skin)
    p["hair_style"] = _HAIR_STYLES[u.choice(_HAIR_STYLE_WEIGHTS)]
    hc = _HAIR_COLOURS[u.choice(_HAIR_WEIGHTS)]
    if u() < 0.04:  # dyed
        hc = u.vec(30.0, 230.0)
    p["hair"] = _colour(hc * u(0.85, 1.15))
    p["hair_volume"] = u(1.04, 1.16)
    p["hairline"] = u(-0.98, -0.66)
    p["hair_part"] = u(-0.5, 0.5)
    p["hair_len"] = u(0.9, 1.5) if p["hair_style"] == "medium" else u(2.0, 3.0)
    brow = hc * 0.7 if p["hair_style"] != "bald" and u() < 0.8 else np.full(3, u(25.0, 90.0))
    p["brow"] = _colour(np.minimum(brow, skin * 0.55))
    p["iris"] = _colour(_IRIS_COLOURS[u.choice(np.ones(len(_IRIS_COLOURS)))] + u.vec(-12.0, 12.0))
    lip = skin * u(0.62, 0.8) + np.array([70.0, 8.0, 20.0]) * u(0.3, 1.0)
    p["lip"] = _colour(lip)
    p["blush"] = u() < 0.4
    p["beard"] = u() < 0.15
    p["beard_alpha"] = int(u(110, 245))
    p["glasses"] = u() < 0.25
    p["glasses_round"] = u() < 0.5
    p["glasses_colour"] = _colour(u.vec(0.0, 90.0) if u() < 0.75 else u.vec(100.0, 230.0))
    p["hat"] = u() < 0.12
    p["hat_colour"] = _colour(u.vec(20.0, 235.0))
    occ = u()
    p["occluder"] = "hand" if occ < 0.09 else ("facemask" if occ < 0.16 else "none")
    p["occluder_pos"] = (u(-0.6, 0.6), u(-0.1, 1.2), u(0.0, math.pi))
    p["hand"] = _colour(skin * u(0.85, 1.1))
    p["facemask_colour"] = _colour(
        [u(150, 255), u(180, 255), u(200, 255)] if u() < 0.7 else u.vec(20.0, 80.0)
    )
    p["clothes"] = _colour(u.vec(10.0, 245.0))
    # lighting / camera
    p["light_angle"] = u(0.0, 2 * math.pi)
    p["light_strength"] = u(0.08, 0.4)
    p["brightness"] = u(0.75, 1.15)
    p["contrast"] = u(0.75, 1.2)
    p["blur"] = u(0.3, 0.8) if u() < 0.25 else 0.0
    p["noise"] = u(0.0, 7.0)
    return p


# --------------------------------------------------------------------------------------------- drawing


class _Canvas:
    """A supersampled RGB canvas and a native-resolution label canvas drawn with the same polygons."""

    def __init__(self, image: Image.Image, size: int) -> None:
        self.size = size
        self.img = image
        self.opaque = ImageDraw.Draw(image)
        self.blend = ImageDraw.Draw(image, "RGBA")  # ~5x slower: used only for translucent colours
        self.mask = Image.new("L", (size, size), _BG)
        self.mdraw = ImageDraw.Draw(self.mask)

    def pen(self, colour: Colour) -> tuple[ImageDraw.ImageDraw, Colour]:
        if len(colour) == 4 and colour[3] < 255:
            return self.blend, colour
        return self.opaque, colour[:3]

    @staticmethod
    def hi(pts: np.ndarray) -> list[float]:
        """Native pixel coordinates (pixel centres at integers) -> flat supersampled coordinates."""
        return (pts * _SS + (_SS - 1) / 2).ravel().tolist()

    def poly(self, pts: np.ndarray, colour: Colour | None, label: int | None = None) -> None:
        if colour is not None:
            draw, colour = self.pen(colour)
            draw.polygon(self.hi(pts), fill=colour)
        if label is not None:
            self.mdraw.polygon(pts.ravel().tolist(), fill=label)

    def line(self, pts: np.ndarray, colour: Colour, width: float) -> None:
        draw, colour = self.pen(colour)
        draw.line(self.hi(pts), fill=colour, width=max(1, round(width * _SS)), joint="curve")

    def ellipse(self, centre: np.ndarray, r: float, colour: Colour, label: int | None = None) -> None:
        x, y = centre * _SS + (_SS - 1) / 2
        rr = r * _SS
        draw, colour = self.pen(colour)
        draw.ellipse((x - rr, y - rr, x + rr, y + rr), fill=colour)
        if label is not None:
            cx, cy = centre
            self.mdraw.ellipse((cx - r, cy - r, cx + r, cy + r), fill=label)

    def clipped(self, pts: np.ndarray, paint: Callable[[ImageDraw.ImageDraw, Callable], None]) -> None:
        """Run ``paint`` on a crop of the RGB canvas and paste it back only inside polygon ``pts``."""
        q = pts * _SS + (_SS - 1) / 2
        x0, y0 = np.maximum(np.floor(q.min(0)).astype(int) - 1, 0)
        x1, y1 = np.minimum(np.ceil(q.max(0)).astype(int) + 2, self.img.size[0])
        if x1 - x0 < 2 or y1 - y0 < 2:
            return
        region = self.img.crop((int(x0), int(y0), int(x1), int(y1)))
        clip = Image.new("L", region.size, 0)
        off = np.array([x0, y0], dtype=float)
        ImageDraw.Draw(clip).polygon((q - off).ravel().tolist(), fill=255)

        def to_crop(p: np.ndarray) -> list[float]:
            return (p * _SS + (_SS - 1) / 2 - off).ravel().tolist()

        paint(ImageDraw.Draw(region, "RGBA"), to_crop)
        self.img.paste(region, (int(x0), int(y0)), clip)


@functools.lru_cache(maxsize=8)
def pixel_grid(size: int) -> tuple[np.ndarray, np.ndarray]:
    """Pixel-centre coordinates of a ``size x size`` image, broadcastable: x ``[1, S]``, y ``[S, 1]``."""
    r = np.arange(size, dtype=np.float32)
    return r[None, :], r[:, None]


@functools.lru_cache(maxsize=16)
def _flat(size: int, value: int) -> Image.Image:
    return Image.new("RGB", (size, size), (value,) * 3)


_NOISE_SD = 8.0


@functools.lru_cache(maxsize=8)
def _noise_bank(size: int) -> Image.Image:
    """A fixed [2S, 2S] RGB Gaussian noise tile (mean 128), cropped at random offsets per image."""
    noise = np.random.default_rng(1234).normal(128.0, _NOISE_SD, (2 * size, 2 * size, 3))
    return Image.fromarray(np.clip(np.rint(noise), 0, 255).astype(np.uint8))


def _background(u: _Draws, size: int) -> Image.Image:
    """Smooth random colour field plus translucent clutter shapes, upsampled to the RGB canvas."""
    k = 2 + int(u(0, 2.999))
    tint, offset = u.vec(0.4, 1.0), u.vec(0.0, 60.0)
    base = np.array([[u(0.0, 255.0) * tint + offset for _ in range(k)] for _ in range(k)])
    img = Image.fromarray(np.clip(base, 0, 255).astype(np.uint8)).resize((size, size), Image.BILINEAR)
    draw = ImageDraw.Draw(img, "RGBA")
    for _ in range(3 + int(u(0, 6.999))):
        kind = int(u(0, 3.999))
        col = (int(u(0, 255.9)), int(u(0, 255.9)), int(u(0, 255.9)), int(u(60, 255.9)))
        x0, y0, bw, bh = u(-0.2, 1.0) * size, u(-0.2, 1.0) * size, u(0.05, 0.6) * size, u(0.05, 0.6) * size
        if kind == 0:
            draw.ellipse((x0, y0, x0 + bw, y0 + bh), fill=col)
        elif kind == 1:
            draw.rectangle((x0, y0, x0 + bw, y0 + bh), fill=col)
        elif kind == 2:
            draw.polygon([u(-0.1, 1.1) * size for _ in range(2 * (3 + int(u(0, 2.999))))], fill=col)
        else:
            draw.line([x0, y0, x0 + bw, y0 + bh], fill=col, width=1 + int(u(0, 0.03 * size)))
    return img.resize((_SS * size, _SS * size), Image.NEAREST)


def _shade(c: Colour, f: float, alpha: int = 255) -> Colour:
    return (*(min(255, int(v * f)) for v in c[:3]), alpha)


def _render(p: dict[str, Any], bg: _Draws, size: int) -> SyntheticFace:
    geo = _build_face(p)
    pose0 = _Pose(math.radians(p["yaw"]), math.radians(p["pitch"]), math.radians(p["roll"]))

    # framing: the landmark box gets face_frac of the image, shifted at random but kept inside
    lm0 = pose0.project(geo["lm"])
    lo, hi = lm0.min(0), lm0.max(0)
    scale = p["face_frac"] * (size - 1) / float((hi - lo).max())  # all in units of size - 1: size-invariant
    half = (hi - lo) * scale / 2
    margin = 0.05 * (size - 1)
    slack = np.maximum((size - 1) / 2 - margin - half, 0.0)
    centre = (size - 1) / 2 + np.array(p["shift"]) * slack * 0.8
    centre[1] = min(centre[1] + 0.15 * slack[1], (size - 1) / 2 + slack[1])  # faces sit a bit low
    cx, cy = centre - (lo + hi) / 2 * scale
    pose = _Pose(pose0.yaw, pose0.pitch, pose0.roll, scale, float(cx), float(cy))
    body = _Pose(pose0.yaw * 0.3, 0.0, pose0.roll * 0.3, scale, float(cx), float(cy))
    proj = pose.project
    lm = proj(geo["lm"])

    cv = _Canvas(_background(bg, size), size)
    skin, hair = p["skin"], p["hair"]
    w, yt, ss = p["cheek_w"], p["jaw_top"], scale
    style = p["hair_style"]
    vol = p["hair_volume"]

    # body: clothes and neck (background label)
    cv.poly(
        body.project(
            _pts([-0.45, -0.7, -2.6, -3.2, 3.2, 2.6, 0.7, 0.45], [1.6, 2.1, 2.4, 6, 6, 2.4, 2.1, 1.6], 0)
        ),
        p["clothes"],
    )
    # hair behind the head
    if style in ("medium", "long"):
        bb = _ARC11
        top = _pts(w * vol * 1.02 * np.cos(bb), yt - 0.1 - (p["head_h"] + 0.08) * vol * np.sin(bb), -0.6)
        ln, spread = p["hair_len"], 0.25 if style == "long" else 0.08
        sides = _pts(
            [-w * vol - spread, -w * vol - spread * 0.6, w * vol + spread * 0.6, w * vol + spread],
            [ln * 0.7, ln, ln, ln * 0.7],
            -0.6,
        )
        cv.poly(proj(np.concatenate([top, sides])), hair, _HAIR)
    neck = body.project(_pts([-0.5, -0.52, 0.52, 0.5], [0.6, 2.3, 2.3, 0.6], -0.3))
    cv.poly(neck, _shade(skin, 0.78))
    # ears (the far one hides behind the head at large yaw)
    for name, sign in (("ear_r", -1.0), ("ear_l", 1.0)):
        if sign * p["yaw"] < 22:
            cv.poly(proj(geo[name]), _shade(skin, 0.9), _SKIN)
    # face
    face = np.concatenate([lm[:17], proj(geo["head"])])
    light = np.array([math.cos(p["light_angle"]), math.sin(p["light_angle"])])
    fc = lm[27:36].mean(0)
    cv.poly(face, _shade(skin, 0.88), _SKIN)
    rim_c = fc + light * (0.08 * ss)  # concentric lighter layers give a rounded, lit look
    for k, f in ((0.95, 0.94), (0.88, 1.0)):
        cv.poly(rim_c + (face - rim_c) * k, _shade(skin, f))
    if p["blush"]:
        for side in (-1, 1):
            cheek = proj(_pts([side * (p["eye_x"] + 0.05)], [p["nose_len"] + 0.05], 0.1))[0]
            cv.ellipse(cheek, 0.17 * ss, (230, 90, 90, 38))
    if p["beard"]:
        my = p["nose_len"] + 0.08 + p["mouth_gap"]
        mw = p["mouth_w"]
        inner = _pts(
            [0.8 * w, mw + 0.09, mw * 0.5, 0.0, -mw * 0.5, -mw - 0.09, -0.8 * w],
            [
                my - 0.15,
                my - 0.04,
                p["nose_len"] + 0.16,
                p["nose_len"] + 0.15,
                p["nose_len"] + 0.16,
                my - 0.04,
                my - 0.15,
            ],
            0.25,
        )
        cv.poly(np.concatenate([lm[3:14], proj(inner)]), (*hair[:3], p["beard_alpha"]))
    # brows
    cv.poly(proj(geo["rbrow"]), p["brow"], _LBROW)
    cv.poly(proj(geo["lbrow"]), p["brow"], _RBROW)
    # nose: faint fill, shadow side, nostrils
    nose = proj(geo["nose"])
    cv.poly(nose, _shade(skin, 0.96), _NOSE)
    dark_side = lm[31] if light[0] > 0 else lm[35]
    cv.line(
        np.stack([lm[27], lm[28] + (dark_side - lm[33]) * 0.3, dark_side]), _shade(skin, 0.7, 90), 0.02 * ss
    )
    nr = max(0.4, 0.035 * ss)
    for i, j in ((32, 31), (34, 35)):
        cv.ellipse(lm[i] * 0.7 + lm[j] * 0.3 - np.array([0, 0.2 * nr]), nr, _shade(skin, 0.35, 200))
    # eyes: white, iris, pupil, highlight, lid line
    iris_r = p["eye_w"] * 0.48 * ss
    for idx, label in ((slice(36, 42), _LEYE), (slice(42, 48), _REYE)):
        eye = lm[idx]
        up = (lm[27] - lm[30]) / max(float(np.linalg.norm(lm[27] - lm[30])), 1e-6)  # face "up" in the image
        cv.line(eye[[0, 1, 2, 3]] + up * (0.045 * ss), _shade(skin, 0.8), 0.015 * ss)  # lid crease
        cv.poly(eye, (236, 234, 228), label)
        if p["eye_open"] > 0.25:
            ic = eye.mean(0) + (eye[3] - eye[0]) * 0.06 * math.sin(math.radians(p["yaw"]))

            def paint(d: ImageDraw.ImageDraw, to: Callable, ic: np.ndarray = ic) -> None:
                for rad, col in ((iris_r, p["iris"]), (iris_r * 0.45, (12, 10, 10))):
                    x0, y0, x1, y1 = to(np.array([ic - rad, ic + rad]))
                    d.ellipse((x0, y0, x1, y1), fill=col)
                hx, hy = to(ic - iris_r * 0.35)
                d.ellipse(
                    (hx - iris_r * 0.4, hy - iris_r * 0.4, hx + iris_r * 0.4, hy + iris_r * 0.4),
                    fill=(250,) * 3,
                )

            cv.clipped(eye, paint)
        cv.line(eye[[0, 1, 2, 3]], _shade(skin, 0.25, 230), 0.022 * ss)
    # mouth
    cv.poly(np.concatenate([lm[48:55], lm[[64, 63, 62, 61, 60]]]), _shade(p["lip"], 0.88), _ULIP)
    cv.poly(np.concatenate([lm[54:60], lm[[48, 60, 67, 66, 65, 64]]]), p["lip"], _LLIP)
    if p["mouth_open"] > 0:  # drawn after the lips so that even a slightly open mouth keeps its label
        inner = lm[60:68]

        def paint_mouth(d: ImageDraw.ImageDraw, to: Callable) -> None:
            d.polygon(to(inner), fill=(70, 18, 28))
            top = inner[[0, 1, 2, 3, 4]]
            teeth = np.concatenate([top, top[::-1] + np.array([0.0, 0.09 * ss])])
            d.polygon(to(teeth), fill=(238, 234, 222))

        cv.poly(inner, None, _MOUTH)
        cv.clipped(inner, paint_mouth)
    else:
        cv.line(lm[60:65], _shade(p["lip"], 0.5, 220), 0.012 * ss)
    # hair on top of the head
    if style != "bald":
        bb = _ARC13
        y_side = {"buzz": -0.3, "short": -0.05, "fringe": -0.05}.get(style, 0.05)
        top_y = yt - p["head_h"]
        v = vol if style != "buzz" else 1.02
        ry = (y_side - top_y) + 0.08 * v
        outer = _pts(w * v * np.cos(bb), y_side - ry * np.sin(bb), -0.05 - 0.3 * np.abs(np.cos(bb)))
        hb = _ARC13[::-1]
        hl = p["hairline"] if style != "fringe" else p["brow_y"] - p["brow_raise"] - p["brow_arch"] - 0.1
        t_y = min(y_side, -0.3) - 0.05
        peak = np.sin(hb) ** 0.5 * (1.0 - 0.25 * p["hair_part"] * np.cos(hb))
        line_y = t_y + (hl - t_y) * peak
        if style == "fringe":
            line_y[1:-1:2] -= 0.07
        hline = _pts(w * 0.93 * np.cos(hb), line_y, 0.15 - 0.3 * np.abs(np.cos(hb)))
        cap = proj(np.concatenate([outer, hline]))
        cv.poly(cap, hair, _HAIR)
        n_out = len(outer)
        for j in range(1, len(hb) - 1, 2):  # strands
            a, b = cap[n_out // 2 + (j - 6) // 3], cap[n_out + j]
            cv.line(np.stack([a * 0.85 + b * 0.15, a * 0.05 + b * 0.95]), _shade(hair, 0.7, 120), 0.012 * ss)
    # glasses
    if p["glasses"]:
        gcol = (*p["glasses_colour"], 255)
        rims = []
        for idx in (slice(36, 42), slice(42, 48)):
            c = geo["lm"][idx].mean(0) + np.array([0.0, 0.01, 0.06])
            gw, gh = p["eye_w"] * 1.5, p["eye_w"] * (1.05 if p["glasses_round"] else 0.85)
            ang = _RIM20
            pw = 2.0 / (2.0 if p["glasses_round"] else 5.0)
            ca, sa = np.cos(ang), np.sin(ang)
            rim = _pts(
                c[0] + gw * np.sign(ca) * np.abs(ca) ** pw, c[1] + gh * np.sign(sa) * np.abs(sa) ** pw, c[2]
            )
            rims.append(proj(rim))
        for rim in rims:
            cv.poly(rim, (200, 220, 235, 40))
            cv.line(np.concatenate([rim, rim[:1]]), gcol, 0.025 * ss)
        cv.line(np.stack([rims[0][0], rims[1][10]]), gcol, 0.025 * ss)  # bridge
        for rim, j in ((rims[0], 10), (rims[1], 0)):
            temple = lm[0] if j == 10 else lm[16]
            cv.line(np.stack([rim[j], temple]), gcol, 0.02 * ss)
    # hat
    if p["hat"]:
        hy = min(p["hairline"] + 0.05, p["brow_y"] - 0.22)
        top_y = yt - p["head_h"] - 0.25
        crown = _pts(
            np.array([-1.05, -0.95, -0.7, 0.7, 0.95, 1.05]) * w,
            [hy, top_y + 0.3, top_y, top_y, top_y + 0.3, hy],
            0.0,
        )
        cv.poly(proj(crown), p["hat_colour"], _BG)
        brim = _pts(np.array([-1.25, 1.25, 1.3, -1.3]) * w, [hy - 0.12, hy - 0.12, hy + 0.04, hy + 0.04], 0.1)
        cv.poly(proj(brim), _shade(p["hat_colour"], 0.8), _BG)
    # occluders
    if p["occluder"] == "facemask":
        mwid = np.arange(2, 15)
        upper = proj(_pts(np.array([0.95, 0.5, 0.0, -0.5, -0.95]) * w, [0.3, 0.22, 0.2, 0.22, 0.3], 0.5))
        mpoly = np.concatenate([lm[mwid], upper])
        cv.poly(mpoly, p["facemask_colour"], _BG)
        for a, b in ((mpoly[0], lm[0]), (mpoly[12], lm[16])):
            cv.line(np.stack([a, b]), _shade(p["facemask_colour"], 0.9), 0.02 * ss)
    elif p["occluder"] == "hand":
        ox, oy, ang = p["occluder_pos"]
        hc = p["hand"]
        ca, sa = math.cos(ang), math.sin(ang)
        palm = np.array([ox, oy])
        shapes = [np.array([[-0.35, -0.25], [0.35, -0.25], [0.4, 0.35], [-0.38, 0.35]])]
        for f in range(4):
            fx = -0.3 + f * 0.2
            shapes.append(
                np.array(
                    [
                        [fx - 0.08, -0.25],
                        [fx + 0.08, -0.25],
                        [fx + 0.07, -0.75 + abs(f - 1.5) * 0.1],
                        [fx - 0.07, -0.75 + abs(f - 1.5) * 0.1],
                    ]
                )
            )
        shapes.append(
            np.array([[0.3, 0.1], [0.42, 0.0], [0.75, -0.25], [0.7, -0.35], [0.35, -0.15]])
        )  # thumb
        for sh in shapes:
            q = sh @ np.array([[ca, sa], [-sa, ca]]) + palm
            cv.poly(proj(_pts(q[:, 0], q[:, 1], 0.7)), hc, _BG)

    # lighting, exposure, blur, noise
    img = cv.img.reduce(_SS)
    if p["blur"] > 0:
        img = img.filter(ImageFilter.BoxBlur(p["blur"] * size / 128))
    mask = np.asarray(cv.mask)
    gx, gy = pixel_grid(size)
    radius = max(float(np.ptp(lm[:, 0])), 1.0)
    g = ((gx - fc[0]) * light[0] + (gy - fc[1]) * light[1]) * (p["light_strength"] / radius)
    g = np.clip(g, -0.5, 0.5)
    shade = 1.0 + np.where(mask > 0, g, 0.4 * g)  # in [0.5, 1.5]; stronger on the head
    shade_img = Image.fromarray((shade * 170.0).astype(np.uint8)).convert("RGB")
    img = ImageChops.multiply(img, shade_img)  # img * shade / 1.5
    black, grey = _flat(size, 0), _flat(size, 128)
    img = Image.blend(grey, Image.blend(black, img, 1.5 * p["brightness"]), p["contrast"])
    if p["noise"] > 0:
        ox, oy = int(bg(0, size - 0.01)), int(bg(0, size - 0.01))
        noise = _noise_bank(size).crop((ox, oy, ox + size, oy + size))
        img = Image.blend(img, ImageChops.add(img, noise, 1.0, -128), p["noise"] / _NOISE_SD)
    image = np.asarray(img).copy()

    attrs = np.array(
        [
            p["glasses"],
            p["smile"] > 0.5,
            p["mouth_open"] > 0,
            p["eye_open"] < 0.25,
            style == "bald",
            p["beard"],
            p["hat"],
            p["occluder"] != "none",
        ],
        dtype=np.uint8,
    )
    return SyntheticFace(
        image=image, landmarks=lm.astype(np.float32), mask=mask.copy(), attributes=attrs, params=p
    )


def render_face(seed: int, index: int, size: int = 128) -> SyntheticFace:
    """Render face ``index`` of dataset ``seed`` at ``size`` x ``size`` pixels.

    Deterministic per ``(seed, index, size)`` (bit-identical in any process, independent of global RNG
    state); the face geometry and appearance do not depend on ``size``.
    """
    if size < 16:
        raise ValueError(f"size must be >= 16, got {size}")
    rng = np.random.default_rng([seed, index])
    params = _sample_params(_Draws(rng))
    return _render(params, _Draws(rng), size)


class SyntheticFaceDataset(torch.utils.data.Dataset):
    """``length`` procedurally rendered faces; item ``i`` is ``render_face(seed, i, size)``."""

    def __init__(self, length: int, size: int = 128, seed: int = 0) -> None:
        if length < 0:
            raise ValueError(f"length must be >= 0, got {length}")
        self.length, self.size, self.seed = length, size, seed

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, index: int) -> SyntheticFace:
        if index < 0:
            index += self.length
        if not 0 <= index < self.length:
            raise IndexError(f"index {index} out of range for length {self.length}")
        return render_face(self.seed, index, self.size)


def measure_throughput(num_images: int = 200, size: int = 128, seed: int = 0) -> float:
    """Images per second of ``render_face`` in this process (one core)."""
    render_face(seed, 0, size)  # warm-up (caches, lazy imports)
    start = time.perf_counter()
    for i in range(num_images):
        render_face(seed, i, size)
    return num_images / max(time.perf_counter() - start, 1e-9)
