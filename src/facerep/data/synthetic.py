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

    In code: ``sample_face_spec`` draws a ``FaceSpec`` (frozen groups ``Head``, ``Features``, ``Pose``,
    ``Hair``, ``Accessories``, ``Lighting``, ``Background``) from the face's generator; ``frame_face`` builds
    the 3-D face and places it in the image (``FaceLayout``); ``draw_background`` makes the canvas, each of
    ``DRAW_STEPS`` paints one part over the parts before it, and ``develop`` downsamples, lights, exposes
    and adds noise.  ``render_spec`` runs the whole chain; steps can be run alone on a ``Canvas``.

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
    "FaceSpec",
    "SyntheticFace",
    "SyntheticFaceDataset",
    "measure_throughput",
    "render_face",
    "render_spec",
    "sample_face_spec",
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
    params: dict[str, Any] = field(
        default_factory=dict
    )  # FaceSpec.params(): flat, read by captions and tests
    spec: FaceSpec | None = None  # the description it was drawn from


# ------------------------------------------------------------------------------------------- face description
# Lengths are in face units (half the cheek width), angles of the pose in degrees, colours RGB(A) 0-255.


@dataclass(frozen=True)
class Head:
    """Head shape and skin."""

    cheek_w: float  # half the cheek width
    jaw_top: float  # height of the temples (jaw point 0)
    jaw_len: float  # temple to chin
    jaw_n: float  # superellipse exponent of the jaw: 2 round, larger square
    jaw_ratio: float  # chin width relative to the cheeks
    head_h: float  # temple to the top of the head
    skin: Colour
    blush: bool


@dataclass(frozen=True)
class Features:
    """Eyes, brows, nose and mouth: their shape, expression and colours."""

    eye_x: float  # eye centre from the midline
    eye_w: float  # half eye width
    eye_h: float
    eye_tilt: float  # outer corners raised by this much
    brow_y: float
    brow_arch: float
    brow_thick: float
    nose_len: float  # bridge top to the nose bottom
    nose_w: float  # half the width of the alae
    mouth_gap: float  # nose bottom to the mouth line
    mouth_w: float  # half the mouth width
    lip_up: float
    lip_low: float
    smile: float  # 0 or in [0.3, 1]
    mouth_open: float  # 0 or in [0.06, 0.3]
    brow_raise: float
    eye_open: float  # < 0.25: closed
    brow: Colour
    iris: Colour
    lip: Colour


@dataclass(frozen=True)
class Pose:
    """Head rotation (degrees) and where the face sits in the image."""

    yaw: float  # within +-40
    pitch: float
    roll: float
    face_frac: float  # landmark box side / image side
    shift: tuple[float, float]  # in [-1, 1]: towards the image edges, within the slack


@dataclass(frozen=True)
class Hair:
    """Hair style and colour, and a beard in the same colour."""

    style: str  # one of _HAIR_STYLES
    colour: Colour
    volume: float  # hair outline / head outline
    hairline: float  # height of the hairline's peak
    part: float  # tilts the hairline to one side
    length: float  # of medium and long hair, below the temples
    beard: bool
    beard_alpha: int


@dataclass(frozen=True)
class Accessories:
    """Glasses, hat, a hand or face-mask occluder, and clothes."""

    glasses: bool
    glasses_round: bool
    glasses_colour: Colour
    hat: bool
    hat_colour: Colour
    occluder: str  # "none", "hand" or "facemask"
    occluder_pos: tuple[float, float, float]  # hand centre x, y (face units) and angle (radians)
    hand: Colour
    facemask_colour: Colour
    clothes: Colour


@dataclass(frozen=True)
class Lighting:
    """Directional light, exposure and camera: blur and sensor noise."""

    angle: float  # direction of the light's gradient in the image, radians
    strength: float
    brightness: float
    contrast: float
    blur: float  # box-blur radius at 128 px; 0: sharp
    noise: float  # standard deviation of the sensor noise, 0-255 scale


@dataclass(frozen=True)
class BackgroundShape:
    """One translucent clutter shape; positions are fractions of the image side."""

    kind: str  # "ellipse", "rectangle", "polygon" or "line"
    colour: Colour  # RGBA
    box: tuple[float, float, float, float]  # x0, y0, width, height (the line runs corner to corner)
    polygon: tuple[float, ...]  # x, y, x, y, ... of a polygon
    width: float  # in [0, 1): line width as a fraction of 3 % of the image side


@dataclass(frozen=True)
class Background:
    """A smooth colour field (a k x k grid bilinearly upsampled) under clutter shapes."""

    grid: tuple[tuple[tuple[float, ...], ...], ...]  # [k, k, 3] RGB
    shapes: tuple[BackgroundShape, ...]
    noise_at: tuple[float, float]  # where the sensor-noise tile is cropped, fractions of the image side


@dataclass(frozen=True)
class FaceSpec:
    """Everything that decides one synthetic face, independent of the image size."""

    head: Head
    features: Features
    pose: Pose
    hair: Hair
    accessories: Accessories
    lighting: Lighting
    background: Background

    def params(self) -> dict[str, Any]:
        """The description as one flat dict under the historical keys (``SyntheticFace.params``)."""
        out: dict[str, Any] = {}
        for group in (self.head, self.features, self.pose, self.hair, self.accessories, self.lighting):
            rename = _PARAM_KEYS.get(type(group), {})
            out |= {rename.get(name, name): value for name, value in vars(group).items()}
        return out


_PARAM_KEYS: dict[type, dict[str, str]] = {
    Hair: {
        "style": "hair_style",
        "colour": "hair",
        "volume": "hair_volume",
        "part": "hair_part",
        "length": "hair_len",
    },
    Lighting: {"angle": "light_angle", "strength": "light_strength"},
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


# uniform ranges of the identity, drawn in this order
HEAD_RANGES = {
    "cheek_w": (0.95, 1.05),
    "jaw_top": (0.0, 0.1),
    "jaw_len": (1.12, 1.42),
    "jaw_n": (1.7, 3.2),
    "jaw_ratio": (0.78, 1.0),
    "head_h": (1.2, 1.45),
}
FEATURE_RANGES = {
    "eye_x": (0.38, 0.46),
    "eye_w": (0.15, 0.2),
    "eye_h": (0.06, 0.095),
    "eye_tilt": (-0.02, 0.035),
    "brow_y": (-0.3, -0.22),
    "brow_arch": (0.0, 0.08),
    "brow_thick": (0.04, 0.1),
    "nose_len": (0.36, 0.5),
    "nose_w": (0.15, 0.24),
    "mouth_gap": (0.22, 0.32),
    "mouth_w": (0.28, 0.4),
    "lip_up": (0.05, 0.1),
    "lip_low": (0.06, 0.13),
}


def sample_face_spec(rng: np.random.Generator) -> FaceSpec:
    """Identity, expression, pose, appearance, lighting and background of one face.

    The face takes the next 256 uniforms of ``rng`` in a fixed order (the order below is the dataset:
    reordering it changes every face); the background takes the 256 after them.
    """
    u = _Draws(rng)
    head = {name: u(*r) for name, r in HEAD_RANGES.items()}
    feat = {name: u(*r) for name, r in FEATURE_RANGES.items()}
    # expression
    smile = 0.0 if u() < 0.5 else u(0.3, 1.0)
    mouth_open = 0.0 if u() < 0.62 else u(0.06, 0.3)
    brow_raise = u(0.0, 0.04) + (u(0.03, 0.09) if u() < 0.25 or mouth_open > 0.2 else 0.0)
    eye_open = u(0.05, 0.2) if u() < 0.12 else u(0.75, 1.15) * (1.0 - 0.3 * smile**2)
    pose = Pose(
        yaw=min(max(u.normal(18.0), -40.0), 40.0),
        pitch=u(-10.0, 10.0),
        roll=min(max(u.normal(10.0), -30.0), 30.0),
        face_frac=u(0.4, 0.6),
        shift=(u(-1.0, 1.0), u(-1.0, 1.0)),
    )
    # appearance
    t = u(0.0, len(_SKIN_TONES) - 1.0)
    i0 = min(int(t), len(_SKIN_TONES) - 2)
    skin = _SKIN_TONES[i0] + (t - i0) * (_SKIN_TONES[i0 + 1] - _SKIN_TONES[i0]) + u.vec(-10.0, 10.0)
    style = _HAIR_STYLES[u.choice(_HAIR_STYLE_WEIGHTS)]
    hc = _HAIR_COLOURS[u.choice(_HAIR_WEIGHTS)]
    if u() < 0.04:  # dyed
        hc = u.vec(30.0, 230.0)
    hair = {
        "style": style,
        "colour": _colour(hc * u(0.85, 1.15)),
        "volume": u(1.04, 1.16),
        "hairline": u(-0.98, -0.66),
        "part": u(-0.5, 0.5),
        "length": u(0.9, 1.5) if style == "medium" else u(2.0, 3.0),
    }
    brow = hc * 0.7 if style != "bald" and u() < 0.8 else np.full(3, u(25.0, 90.0))
    feat["brow"] = _colour(np.minimum(brow, skin * 0.55))
    feat["iris"] = _colour(_IRIS_COLOURS[u.choice(np.ones(len(_IRIS_COLOURS)))] + u.vec(-12.0, 12.0))
    feat["lip"] = _colour(skin * u(0.62, 0.8) + np.array([70.0, 8.0, 20.0]) * u(0.3, 1.0))
    blush = u() < 0.4
    beard = u() < 0.15
    hair |= {"beard": beard, "beard_alpha": int(u(110, 245))}
    glasses, glasses_round = u() < 0.25, u() < 0.5
    glasses_colour = _colour(u.vec(0.0, 90.0) if u() < 0.75 else u.vec(100.0, 230.0))
    hat = u() < 0.12
    hat_colour = _colour(u.vec(20.0, 235.0))
    occ = u()
    accessories = Accessories(
        glasses=glasses,
        glasses_round=glasses_round,
        glasses_colour=glasses_colour,
        hat=hat,
        hat_colour=hat_colour,
        occluder="hand" if occ < 0.09 else ("facemask" if occ < 0.16 else "none"),
        occluder_pos=(u(-0.6, 0.6), u(-0.1, 1.2), u(0.0, math.pi)),
        hand=_colour(skin * u(0.85, 1.1)),
        facemask_colour=_colour([u(150, 255), u(180, 255), u(200, 255)] if u() < 0.7 else u.vec(20.0, 80.0)),
        clothes=_colour(u.vec(10.0, 245.0)),
    )
    lighting = Lighting(
        angle=u(0.0, 2 * math.pi),
        strength=u(0.08, 0.4),
        brightness=u(0.75, 1.15),
        contrast=u(0.75, 1.2),
        blur=u(0.3, 0.8) if u() < 0.25 else 0.0,
        noise=u(0.0, 7.0),
    )
    return FaceSpec(
        head=Head(**head, skin=_colour(skin), blush=blush),
        features=Features(
            **feat, smile=smile, mouth_open=mouth_open, brow_raise=brow_raise, eye_open=eye_open
        ),
        pose=pose,
        hair=Hair(**hair),
        accessories=accessories,
        lighting=lighting,
        background=_sample_background(_Draws(rng)),
    )


_SHAPE_KINDS = ("ellipse", "rectangle", "polygon", "line")


def _sample_background(u: _Draws) -> Background:
    """Colour grid, 3-9 clutter shapes and the noise crop, from the background's own uniforms."""
    k = 2 + int(u(0, 2.999))
    tint, offset = u.vec(0.4, 1.0), u.vec(0.0, 60.0)
    grid = tuple(tuple(tuple((u(0.0, 255.0) * tint + offset).tolist()) for _ in range(k)) for _ in range(k))
    shapes = []
    for _ in range(3 + int(u(0, 6.999))):
        kind = _SHAPE_KINDS[int(u(0, 3.999))]
        colour = (int(u(0, 255.9)), int(u(0, 255.9)), int(u(0, 255.9)), int(u(60, 255.9)))
        box = (u(-0.2, 1.0), u(-0.2, 1.0), u(0.05, 0.6), u(0.05, 0.6))
        polygon = tuple(u(-0.1, 1.1) for _ in range(2 * (3 + int(u(0, 2.999))))) if kind == "polygon" else ()
        shapes.append(BackgroundShape(kind, colour, box, polygon, u() if kind == "line" else 0.0))
    return Background(grid, tuple(shapes), noise_at=(u(), u()))


# --------------------------------------------------------------------------------------------- geometry


class _Projection:
    """Yaw/pitch/roll rotation (radians), orthographic projection, scale and shift to pixel coordinates."""

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


@dataclass(frozen=True, eq=False)
class FaceGeometry:
    """3-D landmarks and the outlines drawn from them, in face units."""

    lm: np.ndarray  # [68, 3] iBUG order
    head: np.ndarray  # [13, 3] forehead arc, image-right temple over the head to the image-left temple
    nose: np.ndarray  # [13, 3] outline for the mask: bridge sides, alae, nose bottom
    rbrow: np.ndarray  # [10, 3] image-left brow: upper edge, then lower edge back
    lbrow: np.ndarray  # [10, 3] image-right brow
    ear_r: np.ndarray  # [5, 3] image-left ear
    ear_l: np.ndarray  # [5, 3] image-right ear


def build_geometry(spec: FaceSpec) -> FaceGeometry:
    """The 3-D face of ``spec``'s head and features (expression included)."""
    h, f = spec.head, spec.features
    w, yt = h.cheek_w, h.jaw_top
    smile, opening = f.smile, f.mouth_open

    # jaw 0-16: superellipse from the image-left temple over the chin; the chin drops when the mouth opens
    a = _JAW_A
    c, s = np.cos(a), np.sin(a)
    e = 2.0 / h.jaw_n
    jx = np.sign(c) * np.abs(c) ** e * w * (1.0 - (1.0 - h.jaw_ratio) * s**2)
    jy = yt + (h.jaw_len + 0.6 * opening * s**4) * np.abs(s) ** e
    jaw = _pts(jx, jy, 0.28 - 0.62 * np.abs(c) ** 1.2)

    # brows 17-21 / 22-26 (upper edge, outer to inner on the image-left side)
    ex, ew = f.eye_x, f.eye_w
    u = _U5
    bx = -ex - ew * 1.35 + u * ew * 2.3
    by = f.brow_y - f.brow_raise - f.brow_arch * np.sin(np.pi * (0.15 + 0.75 * u)) + 0.03 * u
    rbrow = _pts(bx, by, 0.12 * u - 0.04)
    brows = np.concatenate([rbrow, _mirror(rbrow)])

    # nose 27-35
    nl, nw = f.nose_len, f.nose_w
    bridge = _pts([0.0, 0.0, 0.0, 0.0], np.linspace(-0.06, nl, 4), [0.18, 0.3, 0.42, 0.52])
    base = nl + 0.08
    nbot = _pts(
        np.array([-1.0, -0.5, 0.0, 0.5, 1.0]) * nw,
        base + np.array([-0.03, 0.015, 0.035, 0.015, -0.03]),
        [0.22, 0.32, 0.4, 0.32, 0.22],
    )

    # eyes 36-41 / 42-47, both ordered: outer/inner corner, upper lid, other corner, lower lid
    eh = f.eye_h * f.eye_open
    tilt = f.eye_tilt
    k = np.array([-1.0, -1 / 3, 1 / 3, 1.0, 1 / 3, -1 / 3])
    lid = np.array([0.0, -1.1, -1.1, 0.0, 0.8, 0.8]) * eh
    reye = _pts(-ex + k * ew, lid + tilt * k, [-0.1, 0.02, 0.05, 0.05, 0.05, 0.02])
    eyes = np.concatenate([reye, _flip(reye)[[3, 2, 1, 0, 5, 4]]])

    # mouth 48-59 outer, 60-67 inner
    mw, my = f.mouth_w * (1.0 + 0.12 * smile), base + f.mouth_gap
    tu, tl = f.lip_up, f.lip_low
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

    b = _HEAD_B
    bw0, bw1 = 0.07, 0.1
    nose_l = _pts(
        [-bw0, -bw1, -nw * 0.95, -nw * 1.12],
        [-0.06, nl * 0.55, base - 0.16, base - 0.06],
        [0.15, 0.3, 0.2, 0.15],
    )
    # brow lower edges (thickness tapers towards the tail)
    th = f.brow_thick * np.array([0.55, 0.8, 0.95, 1.0, 1.0])
    rbrow_low = rbrow[::-1].copy()
    rbrow_low[:, 1] += th[::-1]
    ear_r = _pts(w * np.array([0.96, 1.1, 1.17, 1.12, 0.98]), [-0.12, -0.17, 0.04, 0.3, 0.38], -0.4)
    return FaceGeometry(
        lm=np.concatenate([jaw, brows, bridge, nbot, eyes, outer, inner]),
        head=_pts(w * np.cos(b), yt - h.head_h * np.sin(b), 0.05 - 0.35 * np.abs(np.cos(b))),
        nose=np.concatenate([nose_l, nbot, _mirror(nose_l)]),
        rbrow=np.concatenate([rbrow, rbrow_low]),
        lbrow=_mirror(np.concatenate([rbrow, rbrow_low])),
        ear_r=ear_r,
        ear_l=_mirror(ear_r),
    )


@dataclass(frozen=True, eq=False)
class FaceLayout:
    """The face's geometry placed in a ``size`` x ``size`` image (native pixel coordinates)."""

    geo: FaceGeometry
    face: _Projection  # face points -> pixels
    body: _Projection  # neck and clothes: they turn with a third of the head's yaw and roll
    landmarks: np.ndarray  # [68, 2]
    scale: float  # pixels per face unit
    centre: np.ndarray  # [2] mean of the nose points: the light's origin
    light: np.ndarray  # [2] unit direction of the light's gradient
    size: int

    def project(self, pts: np.ndarray) -> np.ndarray:
        """[N, 3] face points -> [N, 2] pixels."""
        return self.face.project(pts)


def frame_face(spec: FaceSpec, size: int) -> FaceLayout:
    """Pose the face and frame it: the landmark box gets ``face_frac`` of the image, shifted at random
    but kept inside (in units of ``size - 1``, so the framing does not depend on the size)."""
    geo, pose = build_geometry(spec), spec.pose
    pose0 = _Projection(math.radians(pose.yaw), math.radians(pose.pitch), math.radians(pose.roll))
    lm0 = pose0.project(geo.lm)
    lo, hi = lm0.min(0), lm0.max(0)
    scale = pose.face_frac * (size - 1) / float((hi - lo).max())
    half = (hi - lo) * scale / 2
    margin = 0.05 * (size - 1)
    slack = np.maximum((size - 1) / 2 - margin - half, 0.0)
    centre = (size - 1) / 2 + np.array(pose.shift) * slack * 0.8
    centre[1] = min(centre[1] + 0.15 * slack[1], (size - 1) / 2 + slack[1])  # faces sit a bit low
    cx, cy = centre - (lo + hi) / 2 * scale
    face = _Projection(pose0.yaw, pose0.pitch, pose0.roll, scale, float(cx), float(cy))
    lm = face.project(geo.lm)
    angle = spec.lighting.angle
    return FaceLayout(
        geo=geo,
        face=face,
        body=_Projection(pose0.yaw * 0.3, 0.0, pose0.roll * 0.3, scale, float(cx), float(cy)),
        landmarks=lm,
        scale=scale,
        centre=lm[27:36].mean(0),
        light=np.array([math.cos(angle), math.sin(angle)]),
        size=size,
    )


# --------------------------------------------------------------------------------------------- canvas


class Canvas:
    """A supersampled RGB canvas and a native-resolution label canvas drawn with the same polygons."""

    def __init__(self, image: Image.Image, size: int) -> None:
        self.size = size
        self.img = image  # [2S, 2S] RGB
        self.opaque = ImageDraw.Draw(image)
        self.blend = ImageDraw.Draw(image, "RGBA")  # ~5x slower: used only for translucent colours
        self.mask = Image.new("L", (size, size), _BG)  # [S, S] LAPA_CLASSES indices
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

    def ellipse(self, centre: np.ndarray, r: float, colour: Colour) -> None:
        x, y = centre * _SS + (_SS - 1) / 2
        rr = r * _SS
        draw, colour = self.pen(colour)
        draw.ellipse((x - rr, y - rr, x + rr, y + rr), fill=colour)

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


def _shade(c: Colour, f: float, alpha: int = 255) -> Colour:
    return (*(min(255, int(v * f)) for v in c[:3]), alpha)


# ---------------------------------------------------------------------------------------------- drawing steps
# Each step paints one part of ``spec`` onto the canvas (RGB and labels), over what the steps before it
# painted; render_spec runs them in DRAW_STEPS order.


def draw_background(spec: FaceSpec, size: int) -> Image.Image:
    """The [2S, 2S] RGB canvas: smooth colour field plus translucent clutter shapes, drawn at [S, S]."""
    bg = spec.background
    base = np.array(bg.grid)
    img = Image.fromarray(np.clip(base, 0, 255).astype(np.uint8)).resize((size, size), Image.BILINEAR)
    draw = ImageDraw.Draw(img, "RGBA")
    for shape in bg.shapes:
        x0, y0, bw, bh = (v * size for v in shape.box)
        if shape.kind == "ellipse":
            draw.ellipse((x0, y0, x0 + bw, y0 + bh), fill=shape.colour)
        elif shape.kind == "rectangle":
            draw.rectangle((x0, y0, x0 + bw, y0 + bh), fill=shape.colour)
        elif shape.kind == "polygon":
            draw.polygon([v * size for v in shape.polygon], fill=shape.colour)
        else:
            draw.line([x0, y0, x0 + bw, y0 + bh], fill=shape.colour, width=1 + int(0.03 * size * shape.width))
    return img.resize((_SS * size, _SS * size), Image.NEAREST)


def draw_clothes(spec: FaceSpec, lay: FaceLayout, cv: Canvas) -> None:
    """Shoulders and collar (labelled background)."""
    outline = _pts([-0.45, -0.7, -2.6, -3.2, 3.2, 2.6, 0.7, 0.45], [1.6, 2.1, 2.4, 6, 6, 2.4, 2.1, 1.6], 0)
    cv.poly(lay.body.project(outline), spec.accessories.clothes)


def draw_back_hair(spec: FaceSpec, lay: FaceLayout, cv: Canvas) -> None:
    """Medium and long hair hanging behind the head and neck."""
    hair, h = spec.hair, spec.head
    if hair.style not in ("medium", "long"):
        return
    w, vol = h.cheek_w, hair.volume
    top = _pts(
        w * vol * 1.02 * np.cos(_ARC11), h.jaw_top - 0.1 - (h.head_h + 0.08) * vol * np.sin(_ARC11), -0.6
    )
    ln, spread = hair.length, 0.25 if hair.style == "long" else 0.08
    sides = _pts(
        [-w * vol - spread, -w * vol - spread * 0.6, w * vol + spread * 0.6, w * vol + spread],
        [ln * 0.7, ln, ln, ln * 0.7],
        -0.6,
    )
    cv.poly(lay.project(np.concatenate([top, sides])), hair.colour, _HAIR)


def draw_head(spec: FaceSpec, lay: FaceLayout, cv: Canvas) -> None:
    """Neck (background), ears (the far one hides behind the head at large yaw) and the face (skin), lit
    by concentric lighter layers for a rounded look, with optional blush."""
    skin, ss, lm = spec.head.skin, lay.scale, lay.landmarks
    cv.poly(lay.body.project(_pts([-0.5, -0.52, 0.52, 0.5], [0.6, 2.3, 2.3, 0.6], -0.3)), _shade(skin, 0.78))
    for ear, sign in ((lay.geo.ear_r, -1.0), (lay.geo.ear_l, 1.0)):
        if sign * spec.pose.yaw < 22:
            cv.poly(lay.project(ear), _shade(skin, 0.9), _SKIN)
    face = np.concatenate([lm[:17], lay.project(lay.geo.head)])
    cv.poly(face, _shade(skin, 0.88), _SKIN)
    rim_c = lay.centre + lay.light * (0.08 * ss)
    for k, f in ((0.95, 0.94), (0.88, 1.0)):
        cv.poly(rim_c + (face - rim_c) * k, _shade(skin, f))
    if spec.head.blush:
        feat = spec.features
        for side in (-1, 1):
            cheek = lay.project(_pts([side * (feat.eye_x + 0.05)], [feat.nose_len + 0.05], 0.1))[0]
            cv.ellipse(cheek, 0.17 * ss, (230, 90, 90, 38))


def draw_beard(spec: FaceSpec, lay: FaceLayout, cv: Canvas) -> None:
    """A translucent beard in the hair colour from the lower jaw up to the cheeks (labelled skin)."""
    if not spec.hair.beard:
        return
    f, w = spec.features, spec.head.cheek_w
    my, mw, nl = f.nose_len + 0.08 + f.mouth_gap, f.mouth_w, f.nose_len
    inner = _pts(
        [0.8 * w, mw + 0.09, mw * 0.5, 0.0, -mw * 0.5, -mw - 0.09, -0.8 * w],
        [my - 0.15, my - 0.04, nl + 0.16, nl + 0.15, nl + 0.16, my - 0.04, my - 0.15],
        0.25,
    )
    cv.poly(
        np.concatenate([lay.landmarks[3:14], lay.project(inner)]),
        (*spec.hair.colour[:3], spec.hair.beard_alpha),
    )


def draw_brows(spec: FaceSpec, lay: FaceLayout, cv: Canvas) -> None:
    """Both brows, hanging below their landmarks (the upper edge)."""
    cv.poly(lay.project(lay.geo.rbrow), spec.features.brow, _LBROW)
    cv.poly(lay.project(lay.geo.lbrow), spec.features.brow, _RBROW)


def draw_nose(spec: FaceSpec, lay: FaceLayout, cv: Canvas) -> None:
    """Faint fill, a shadow line on the side away from the light, nostrils."""
    skin, ss, lm = spec.head.skin, lay.scale, lay.landmarks
    cv.poly(lay.project(lay.geo.nose), _shade(skin, 0.96), _NOSE)
    dark_side = lm[31] if lay.light[0] > 0 else lm[35]
    cv.line(
        np.stack([lm[27], lm[28] + (dark_side - lm[33]) * 0.3, dark_side]), _shade(skin, 0.7, 90), 0.02 * ss
    )
    nr = max(0.4, 0.035 * ss)
    for i, j in ((32, 31), (34, 35)):
        cv.ellipse(lm[i] * 0.7 + lm[j] * 0.3 - np.array([0, 0.2 * nr]), nr, _shade(skin, 0.35, 200))


def draw_eyes(spec: FaceSpec, lay: FaceLayout, cv: Canvas) -> None:
    """Lid crease, white, (open eyes) iris, pupil and highlight clipped to the eye, lid line."""
    f, skin, ss, lm = spec.features, spec.head.skin, lay.scale, lay.landmarks
    iris_r = f.eye_w * 0.48 * ss
    for idx, label in ((slice(36, 42), _LEYE), (slice(42, 48), _REYE)):
        eye = lm[idx]
        up = (lm[27] - lm[30]) / max(float(np.linalg.norm(lm[27] - lm[30])), 1e-6)  # face "up" in the image
        cv.line(eye[[0, 1, 2, 3]] + up * (0.045 * ss), _shade(skin, 0.8), 0.015 * ss)  # lid crease
        cv.poly(eye, (236, 234, 228), label)
        if f.eye_open > 0.25:
            ic = eye.mean(0) + (eye[3] - eye[0]) * 0.06 * math.sin(math.radians(spec.pose.yaw))

            def paint(d: ImageDraw.ImageDraw, to: Callable, ic: np.ndarray = ic) -> None:
                for rad, col in ((iris_r, f.iris), (iris_r * 0.45, (12, 10, 10))):
                    x0, y0, x1, y1 = to(np.array([ic - rad, ic + rad]))
                    d.ellipse((x0, y0, x1, y1), fill=col)
                hx, hy = to(ic - iris_r * 0.35)
                d.ellipse(
                    (hx - iris_r * 0.4, hy - iris_r * 0.4, hx + iris_r * 0.4, hy + iris_r * 0.4),
                    fill=(250,) * 3,
                )

            cv.clipped(eye, paint)
        cv.line(eye[[0, 1, 2, 3]], _shade(skin, 0.25, 230), 0.022 * ss)


def draw_mouth(spec: FaceSpec, lay: FaceLayout, cv: Canvas) -> None:
    """Lips, and the inner mouth with teeth when open (a closed mouth gets a line)."""
    lip, ss, lm = spec.features.lip, lay.scale, lay.landmarks
    cv.poly(np.concatenate([lm[48:55], lm[[64, 63, 62, 61, 60]]]), _shade(lip, 0.88), _ULIP)
    cv.poly(np.concatenate([lm[54:60], lm[[48, 60, 67, 66, 65, 64]]]), lip, _LLIP)
    if spec.features.mouth_open > 0:  # after the lips: even a slightly open mouth keeps its label
        inner = lm[60:68]

        def paint_mouth(d: ImageDraw.ImageDraw, to: Callable) -> None:
            d.polygon(to(inner), fill=(70, 18, 28))
            top = inner[[0, 1, 2, 3, 4]]
            teeth = np.concatenate([top, top[::-1] + np.array([0.0, 0.09 * ss])])
            d.polygon(to(teeth), fill=(238, 234, 222))

        cv.poly(inner, None, _MOUTH)
        cv.clipped(inner, paint_mouth)
    else:
        cv.line(lm[60:65], _shade(lip, 0.5, 220), 0.012 * ss)


def draw_hair(spec: FaceSpec, lay: FaceLayout, cv: Canvas) -> None:
    """Hair on top of the head down to the hairline (a fringe reaches the brows), with strands."""
    hair, h, f = spec.hair, spec.head, spec.features
    style = hair.style
    if style == "bald":
        return
    y_side = {"buzz": -0.3, "short": -0.05, "fringe": -0.05}.get(style, 0.05)
    top_y = h.jaw_top - h.head_h
    v = hair.volume if style != "buzz" else 1.02
    ry = (y_side - top_y) + 0.08 * v
    outer = _pts(
        h.cheek_w * v * np.cos(_ARC13), y_side - ry * np.sin(_ARC13), -0.05 - 0.3 * np.abs(np.cos(_ARC13))
    )
    hb = _ARC13[::-1]
    hl = hair.hairline if style != "fringe" else f.brow_y - f.brow_raise - f.brow_arch - 0.1
    t_y = min(y_side, -0.3) - 0.05
    peak = np.sin(hb) ** 0.5 * (1.0 - 0.25 * hair.part * np.cos(hb))
    line_y = t_y + (hl - t_y) * peak
    if style == "fringe":
        line_y[1:-1:2] -= 0.07
    hline = _pts(h.cheek_w * 0.93 * np.cos(hb), line_y, 0.15 - 0.3 * np.abs(np.cos(hb)))
    cap = lay.project(np.concatenate([outer, hline]))
    cv.poly(cap, hair.colour, _HAIR)
    n_out = len(outer)
    for j in range(1, len(hb) - 1, 2):  # strands
        a, b = cap[n_out // 2 + (j - 6) // 3], cap[n_out + j]
        cv.line(
            np.stack([a * 0.85 + b * 0.15, a * 0.05 + b * 0.95]),
            _shade(hair.colour, 0.7, 120),
            0.012 * lay.scale,
        )


def draw_glasses(spec: FaceSpec, lay: FaceLayout, cv: Canvas) -> None:
    """Tinted lenses, rims, bridge and temples (transparent to the mask)."""
    acc, ss, lm = spec.accessories, lay.scale, lay.landmarks
    if not acc.glasses:
        return
    gcol = (*acc.glasses_colour, 255)
    gw = spec.features.eye_w * 1.5
    gh = spec.features.eye_w * (1.05 if acc.glasses_round else 0.85)
    pw = 2.0 / (2.0 if acc.glasses_round else 5.0)
    ca, sa = np.cos(_RIM20), np.sin(_RIM20)
    rims = []
    for idx in (slice(36, 42), slice(42, 48)):
        c = lay.geo.lm[idx].mean(0) + np.array([0.0, 0.01, 0.06])
        rim = _pts(
            c[0] + gw * np.sign(ca) * np.abs(ca) ** pw, c[1] + gh * np.sign(sa) * np.abs(sa) ** pw, c[2]
        )
        rims.append(lay.project(rim))
    for rim in rims:
        cv.poly(rim, (200, 220, 235, 40))
        cv.line(np.concatenate([rim, rim[:1]]), gcol, 0.025 * ss)
    cv.line(np.stack([rims[0][0], rims[1][10]]), gcol, 0.025 * ss)  # bridge
    for rim, j, temple in ((rims[0], 10, lm[0]), (rims[1], 0, lm[16])):
        cv.line(np.stack([rim[j], temple]), gcol, 0.02 * ss)


def draw_hat(spec: FaceSpec, lay: FaceLayout, cv: Canvas) -> None:
    """Crown and brim (labelled background)."""
    acc, h, f = spec.accessories, spec.head, spec.features
    if not acc.hat:
        return
    w = h.cheek_w
    hy = min(spec.hair.hairline + 0.05, f.brow_y - 0.22)
    top_y = h.jaw_top - h.head_h - 0.25
    crown = _pts(
        np.array([-1.05, -0.95, -0.7, 0.7, 0.95, 1.05]) * w,
        [hy, top_y + 0.3, top_y, top_y, top_y + 0.3, hy],
        0.0,
    )
    cv.poly(lay.project(crown), acc.hat_colour, _BG)
    brim = _pts(np.array([-1.25, 1.25, 1.3, -1.3]) * w, [hy - 0.12, hy - 0.12, hy + 0.04, hy + 0.04], 0.1)
    cv.poly(lay.project(brim), _shade(acc.hat_colour, 0.8), _BG)


_PALM = np.array([[-0.35, -0.25], [0.35, -0.25], [0.4, 0.35], [-0.38, 0.35]])
_THUMB = np.array([[0.3, 0.1], [0.42, 0.0], [0.75, -0.25], [0.7, -0.35], [0.35, -0.15]])


def _finger(f: int) -> np.ndarray:
    """Finger ``f`` (0-3) of the hand, [4, 2] hand units; the middle fingers are the longest."""
    fx, tip = -0.3 + f * 0.2, -0.75 + abs(f - 1.5) * 0.1
    return np.array([[fx - 0.08, -0.25], [fx + 0.08, -0.25], [fx + 0.07, tip], [fx - 0.07, tip]])


_HAND = (_PALM, *(_finger(f) for f in range(4)), _THUMB)


def draw_occluder(spec: FaceSpec, lay: FaceLayout, cv: Canvas) -> None:
    """A face mask over nose, mouth and jaw with ear loops, or a hand in front of the face (background)."""
    acc, lm = spec.accessories, lay.landmarks
    if acc.occluder == "facemask":
        w = spec.head.cheek_w
        upper = lay.project(
            _pts(np.array([0.95, 0.5, 0.0, -0.5, -0.95]) * w, [0.3, 0.22, 0.2, 0.22, 0.3], 0.5)
        )
        mpoly = np.concatenate([lm[2:15], upper])
        cv.poly(mpoly, acc.facemask_colour, _BG)
        for a, b in ((mpoly[0], lm[0]), (mpoly[12], lm[16])):
            cv.line(np.stack([a, b]), _shade(acc.facemask_colour, 0.9), 0.02 * lay.scale)
    elif acc.occluder == "hand":
        ox, oy, ang = acc.occluder_pos
        ca, sa = math.cos(ang), math.sin(ang)
        for sh in _HAND:
            q = sh @ np.array([[ca, sa], [-sa, ca]]) + np.array([ox, oy])
            cv.poly(lay.project(_pts(q[:, 0], q[:, 1], 0.7)), acc.hand, _BG)


DRAW_STEPS: tuple[Callable[[FaceSpec, FaceLayout, Canvas], None], ...] = (
    draw_clothes,
    draw_back_hair,
    draw_head,
    draw_beard,
    draw_brows,
    draw_nose,
    draw_eyes,
    draw_mouth,
    draw_hair,
    draw_glasses,
    draw_hat,
    draw_occluder,
)


# ------------------------------------------------------------------------------------------- lighting, camera


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


def shading(spec: FaceSpec, lay: FaceLayout, mask: np.ndarray) -> np.ndarray:
    """[S, S] float gain in [0.5, 1.5]: a linear gradient along the light from the nose, over a face
    width, full strength on labelled pixels and 0.4 of it on the background."""
    gx, gy = pixel_grid(lay.size)
    radius = max(float(np.ptp(lay.landmarks[:, 0])), 1.0)
    (cx, cy), (lx, ly) = lay.centre, lay.light
    g = np.clip(((gx - cx) * lx + (gy - cy) * ly) * (spec.lighting.strength / radius), -0.5, 0.5)
    return 1.0 + np.where(mask > 0, g, 0.4 * g)


def develop(spec: FaceSpec, lay: FaceLayout, cv: Canvas) -> np.ndarray:
    """The final [S, S, 3] uint8 image: downsample (antialiasing), blur, light, expose, add sensor noise."""
    lit, size = spec.lighting, lay.size
    img = cv.img.reduce(_SS)
    if lit.blur > 0:
        img = img.filter(ImageFilter.BoxBlur(lit.blur * size / 128))
    shade = shading(spec, lay, np.asarray(cv.mask))
    img = ImageChops.multiply(img, Image.fromarray((shade * 170.0).astype(np.uint8)).convert("RGB"))  # / 1.5
    black, grey = _flat(size, 0), _flat(size, 128)
    img = Image.blend(grey, Image.blend(black, img, 1.5 * lit.brightness), lit.contrast)
    if lit.noise > 0:
        ox, oy = (int((size - 0.01) * v) for v in spec.background.noise_at)
        noise = _noise_bank(size).crop((ox, oy, ox + size, oy + size))
        img = Image.blend(img, ImageChops.add(img, noise, 1.0, -128), lit.noise / _NOISE_SD)
    return np.asarray(img).copy()


# --------------------------------------------------------------------------------------------- public API


def face_attributes(spec: FaceSpec) -> np.ndarray:
    """[len(ATTRIBUTES)] uint8 flags of ``spec``."""
    f, acc = spec.features, spec.accessories
    flags = (
        acc.glasses,
        f.smile > 0.5,
        f.mouth_open > 0,
        f.eye_open < 0.25,
        spec.hair.style == "bald",
        spec.hair.beard,
        acc.hat,
        acc.occluder != "none",
    )
    return np.array(flags, dtype=np.uint8)


def render_spec(spec: FaceSpec, size: int) -> SyntheticFace:
    """Draw ``spec`` at ``size`` x ``size`` pixels with its ground truth."""
    lay = frame_face(spec, size)
    cv = Canvas(draw_background(spec, size), size)
    for step in DRAW_STEPS:
        step(spec, lay, cv)
    return SyntheticFace(
        image=develop(spec, lay, cv),
        landmarks=lay.landmarks.astype(np.float32),
        mask=np.asarray(cv.mask).copy(),
        attributes=face_attributes(spec),
        params=spec.params(),
        spec=spec,
    )


def render_face(seed: int, index: int, size: int = 128) -> SyntheticFace:
    """Render face ``index`` of dataset ``seed`` at ``size`` x ``size`` pixels.

    Deterministic per ``(seed, index, size)`` (bit-identical in any process, independent of global RNG
    state); the face geometry and appearance do not depend on ``size``.
    """
    if size < 16:
        raise ValueError(f"size must be >= 16, got {size}")
    return render_spec(sample_face_spec(np.random.default_rng([seed, index])), size)


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
