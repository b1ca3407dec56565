"""Captions of synthetic faces, written from the generator's own ground truth (for image-text pre-training).

:func:`synthetic_caption` describes a :class:`~facerep.data.synthetic.SyntheticFace` in plain English:
its binary attributes, hair style and colour, pose, and now and then skin tone, background or blur, e.g.
``"a photo of a smiling person wearing glasses, with short black hair and facing the camera."``. The
template, the order of the phrases and the optional ones are drawn from ``(dataset seed, index)`` alone,
so an item always gets the same caption (in any process, at any render size).

Every attribute that is present is stated with the fixed phrase of :data:`ATTRIBUTE_PHRASES` (the
phrase is always a substring of the caption), and absent ones are not mentioned, except a rare
``"without glasses"``; zero-shot evaluation builds its prompts from the same table
(:func:`attribute_prompt`). Pose is told as seen in the image: a face "turned to the right" has its nose
towards the image's right side.
"""

from __future__ import annotations

import colorsys
from types import MappingProxyType

import numpy as np

from facerep.data.synthetic import _HAIR_COLOURS, ATTRIBUTES, SyntheticFace

__all__ = ["ATTRIBUTE_PHRASES", "HAIR_COLOUR_NAMES", "attribute_prompt", "synthetic_caption"]

# Attribute (synthetic.ATTRIBUTES) -> the phrase every caption of a face with that attribute contains.
ATTRIBUTE_PHRASES: MappingProxyType[str, str] = MappingProxyType(
    {
        "glasses": "wearing glasses",
        "smiling": "smiling",
        "mouth_open": "with an open mouth",
        "eyes_closed": "with closed eyes",
        "bald": "bald",
        "beard": "with a beard",
        "hat": "wearing a hat",
        "occluded": "with the face partly hidden",  # + " by a hand" / " by a face mask"
    }
)
# Names of synthetic._HAIR_COLOURS' rows, in order; dyed colours are named by hue instead.
HAIR_COLOUR_NAMES = ("black", "dark brown", "brown", "auburn", "blond", "grey", "white")
# Attributes that read as adjectives before "person" ("a smiling bald person").
_ADJECTIVES = ("smiling", "bald")
_OCCLUDERS = {"hand": "by a hand", "facemask": "by a face mask"}
_HAIR_STYLE_PHRASES = {
    "buzz": ("with a {c} buzz cut", "with very short {c} hair"),
    "short": ("with short {c} hair",),
    "fringe": ("with {c} hair and a fringe", "with short {c} hair and bangs"),
    "medium": ("with medium-length {c} hair", "with shoulder-length {c} hair"),
    "long": ("with long {c} hair",),
}
_TEMPLATES = (
    "a photo of {np}{details}.",
    "{np}{details}.",
    "close-up of {np}{details}.",
    "a portrait of {np}{details}.",
    "a picture of {np}{details}.",
    "headshot of {np}{details}.",
    "a face photo of {np}{details}",
)
_HUES = (
    (15, "red"),
    (45, "orange"),
    (70, "yellow"),
    (160, "green"),
    (200, "teal"),
    (260, "blue"),
    (290, "purple"),
    (340, "pink"),
    (361, "red"),
)  # upper hue bound in degrees -> name
_SKIN_NAMES = ((185.0, "light"), (145.0, "medium"), (95.0, "brown"), (0.0, "dark"))
_CAPTION_STREAM = 0xCA9  # keeps caption draws apart from the generator's own stream of (seed, index)

assert len(HAIR_COLOUR_NAMES) == len(_HAIR_COLOURS) and set(ATTRIBUTE_PHRASES) == set(ATTRIBUTES)


def attribute_prompt(attribute: str) -> str:
    """A zero-shot prompt for ``attribute`` in the captions' own wording, e.g. ``"a photo of a person
    wearing glasses"`` or ``"a photo of a smiling person"``."""
    phrase = ATTRIBUTE_PHRASES[attribute]
    return f"a photo of a {phrase} person" if attribute in _ADJECTIVES else f"a photo of a person {phrase}"


def hair_colour_name(rgb: tuple[int, ...] | np.ndarray) -> str:
    """The name of a generator hair colour: the palette row it is a brightness-scaled copy of, else
    ``"dyed <hue>"``."""
    c = np.asarray(rgb, dtype=np.float64)[:3]
    scale = np.clip(_HAIR_COLOURS @ c / (_HAIR_COLOURS**2).sum(1), 0.85, 1.15)  # the generator's range
    residual = np.linalg.norm(c - scale[:, None] * _HAIR_COLOURS, axis=1)
    best = int(residual.argmin())
    if residual[best] <= 6.0:  # rounding only
        return HAIR_COLOUR_NAMES[best]
    hue, light, sat = colorsys.rgb_to_hls(*(c / 255.0))
    if sat < 0.2:
        return "dyed grey" if 0.25 < light < 0.75 else ("dyed white" if light >= 0.75 else "dyed black")
    return "dyed " + next(name for top, name in _HUES if hue * 360.0 < top)


def _skin_name(rgb: tuple[int, ...]) -> str:
    lum = 0.299 * rgb[0] + 0.587 * rgb[1] + 0.114 * rgb[2]
    return next(name for low, name in _SKIN_NAMES if lum >= low)


def _join(parts: list[str]) -> str:
    if len(parts) <= 2:
        return " and ".join(parts)
    return ", ".join(parts[:-1]) + " and " + parts[-1]


def synthetic_caption(face: SyntheticFace, seed: int, index: int) -> str:
    """The caption of item ``index`` of synthetic dataset ``seed`` (``face = render_face(seed, index)``).

    A pure function of ``(face.params, face.attributes, seed, index)``; see the module docstring.
    """
    p = face.params
    present = {name for name, flag in zip(ATTRIBUTES, face.attributes.tolist(), strict=True) if flag}
    rng = np.random.default_rng([_CAPTION_STREAM, int(seed), int(index)])
    draw = rng.random(16).tolist()  # a fixed number of draws, each used for one choice below

    noun = "person" if draw[0] < 0.75 else "face" if draw[0] < 0.85 else "someone"
    adjectives = [a for a in _ADJECTIVES if a in present] if noun == "person" and draw[1] < 0.6 else []
    np_ = "someone" if noun == "someone" else f"a {' '.join([*adjectives, noun])}"
    if noun == "face":  # "a smiling face" reads well, "a bald face" does not
        adjectives = ["smiling"] if "smiling" in present else []
        np_ = f"a {' '.join([*adjectives, noun])}"

    details: list[str] = []
    for name in ATTRIBUTES:
        if name not in present or name in adjectives:
            continue
        phrase = ATTRIBUTE_PHRASES[name]
        if name == "bald":
            phrase = "with a bald head"
        elif name == "occluded":
            phrase = f"{phrase} {_OCCLUDERS.get(p.get('occluder', ''), 'by something')}"
        details.append(phrase)
    if "smiling" not in present and p.get("smile", 0.0) >= 0.3 and draw[3] < 0.5:
        details.append("with a slight smile")
    if "glasses" not in present and draw[4] < 0.05:
        details.append("without glasses")

    style = p.get("hair_style", "bald")
    if style in _HAIR_STYLE_PHRASES and draw[5] < 0.9:
        options = _HAIR_STYLE_PHRASES[style]
        phrase = options[int(draw[7] * len(options))]
        if draw[6] < 0.9:
            details.append(phrase.format(c=hair_colour_name(p["hair"])))
        else:  # no colour named
            details.append("with a fringe" if style == "fringe" else " ".join(phrase.format(c="").split()))

    yaw, roll = float(p.get("yaw", 0.0)), float(p.get("roll", 0.0))
    side = "right" if yaw > 0 else "left"
    if abs(yaw) >= 25.0 or draw[8] < 0.6:
        if abs(yaw) < 10.0:
            details.append("facing the camera" if draw[9] < 0.7 else "looking straight ahead")
        elif abs(yaw) < 25.0:
            details.append(f"slightly turned to the {side}")
        else:
            details.append(f"turned to the {side}" if draw[9] < 0.5 else f"facing {side}")
    if abs(roll) >= 15.0 and draw[10] < 0.8:
        details.append("with a tilted head")
    if draw[11] < 0.25 and "skin" in p:
        details.append(f"with {_skin_name(p['skin'])} skin")
    if draw[12] < 0.15:
        details.append("in front of a cluttered background")

    order = rng.permutation(len(details)).tolist()
    joined = _join([details[i] for i in order])
    template = _TEMPLATES[int(draw[14] * len(_TEMPLATES))]
    if p.get("blur", 0.0) > 0 and draw[13] < 0.3 and template.startswith("a photo"):
        template = template.replace("a photo", "a blurry photo", 1)
    text = template.format(np=np_, details=f" {joined}" if joined else "")
    return text[0].upper() + text[1:] if draw[15] < 0.5 else text
