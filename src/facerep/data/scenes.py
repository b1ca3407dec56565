"""Synthetic full scenes with several faces, and img2dataset-layout shards of them.

``facerep prepare`` turns web photos into face crops, and ``facerep predict`` runs a model on whole
photos; both need images where the faces are somewhere in a larger picture and their truth is known.
A scene is a cluttered background with 1-3 (by default) faces of :func:`facerep.data.synthetic.render_face`
pasted at random sizes and places, never overlapping.  Each face is cut out along its parsing mask
(dilated and feathered, so hair and skin blend into the scene; hands, hats and face masks are labelled
background by the renderer and so are left out), and its 68 landmarks, box and five points are moved
into scene pixels.

:func:`write_scene_shards` writes such scenes exactly as img2dataset writes LAION-Face (``NNNNN.tar`` with
``key.jpg``, ``key.txt``, ``key.json`` carrying ``SAMPLE_ID``) plus a ``sample2detect.pth`` in LAION-Face's
released detection layout (``int(SAMPLE_ID) -> [(box, five points, score), ...]``) built from the truth, so
the whole LAION-Face path of ``facerep prepare`` runs and is measured offline.
"""

from __future__ import annotations

import io
import json
import os
import tarfile
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

from facerep.data.downstream.base import landmarks_box
from facerep.data.downstream.transforms import five_points
from facerep.data.synthetic import render_face
from facerep.runtime.atomic import atomic_torch_save, atomic_write_bytes

__all__ = ["Scene", "SceneFace", "render_scene", "write_scene_shards"]

_FACE_SEED = 20_000  # render_face seed of scene faces: apart from pre-training (0) and downstream (1000+)


@dataclass
class SceneFace:
    """One planted face, in scene pixels (centre of pixel ``(i, j)`` at ``x = i, y = j``)."""

    box: np.ndarray  # [4] float32 (x1, y1, x2, y2): the 68 landmarks' tight box (synthetic_alignment's box)
    landmarks: np.ndarray  # [68, 2] float32, iBUG order
    points: np.ndarray  # [5, 2] float32: image-left, image-right eye centre, nose tip, mouth corners


@dataclass
class Scene:
    image: np.ndarray  # [H, W, 3] uint8 RGB
    mask: np.ndarray  # [H, W] uint8 LaPa classes of the planted faces (0 elsewhere)
    faces: list[SceneFace]


def _span(value: int | tuple[int, int]) -> tuple[int, int]:
    lo, hi = (value, value) if isinstance(value, int) else (int(value[0]), int(value[1]))
    if lo < 0 or hi < lo:
        raise ValueError(f"expected 0 <= lo <= hi, got {value}")
    return lo, hi


def _background(rng: np.random.Generator, width: int, height: int) -> Image.Image:
    """A smooth random colour field with translucent rectangles, ellipses and lines, plus mild noise."""
    k = int(rng.integers(2, 5))
    field = rng.uniform(30, 230, (k, k, 3)).astype(np.uint8)
    img = Image.fromarray(field).resize((width, height), Image.BILINEAR)
    draw = ImageDraw.Draw(img, "RGBA")
    for _ in range(int(rng.integers(4, 12))):
        x0, y0 = rng.uniform(-0.1, 1.0) * width, rng.uniform(-0.1, 1.0) * height
        x1, y1 = x0 + rng.uniform(0.05, 0.5) * width, y0 + rng.uniform(0.05, 0.5) * height
        colour = (*(int(c) for c in rng.integers(0, 256, 3)), int(rng.integers(60, 256)))
        shape = int(rng.integers(0, 3))
        if shape == 0:
            draw.rectangle((x0, y0, x1, y1), fill=colour)
        elif shape == 1:
            draw.ellipse((x0, y0, x1, y1), fill=colour)
        else:
            draw.line((x0, y0, x1, y1), fill=colour, width=int(rng.integers(1, 8)))
    noise = rng.normal(0.0, 6.0, (height, width, 3))
    return Image.fromarray(np.clip(np.asarray(img, dtype=np.float64) + noise, 0, 255).astype(np.uint8))


def _place(
    rng: np.random.Generator, sizes: list[int], width: int, height: int, tries: int = 60
) -> list[tuple[int, int, int]]:
    """Top-left corners for square tiles of ``sizes`` inside the scene, pairwise disjoint; tiles that find
    no free spot in ``tries`` draws are dropped."""
    placed: list[tuple[int, int, int]] = []
    for s in sizes:
        if s > width or s > height:
            continue
        for _ in range(tries):
            x, y = int(rng.integers(0, width - s + 1)), int(rng.integers(0, height - s + 1))
            if all(x + s <= px or px + ps <= x or y + s <= py or py + ps <= y for px, py, ps in placed):
                placed.append((x, y, s))
                break
    return placed


def render_scene(
    seed: int,
    index: int,
    width: int = 640,
    height: int = 480,
    faces: int | tuple[int, int] = (1, 3),
    face_size: int | tuple[int, int] = (96, 192),
) -> Scene:
    """Scene ``index`` of set ``seed``: ``faces`` (a count or an inclusive range) synthetic faces rendered at
    ``face_size`` pixels (a tile side or an inclusive range) and pasted at random places.

    Deterministic per arguments.  Fewer faces than drawn are planted when they do not fit without
    overlapping (a 640 x 480 scene always fits three 192 px tiles).
    """
    if width < 16 or height < 16:
        raise ValueError(f"scene must be at least 16 x 16, got {width} x {height}")
    rng = np.random.default_rng([seed, index])
    lo, hi = _span(faces)
    size_lo, size_hi = _span(face_size)
    count = int(rng.integers(lo, hi + 1))
    sizes = [int(rng.integers(max(size_lo, 16), max(size_hi, 16) + 1)) for _ in range(count)]
    canvas = _background(rng, width, height)
    mask = np.zeros((height, width), dtype=np.uint8)
    planted: list[SceneFace] = []
    for k, (x, y, s) in enumerate(_place(rng, sizes, width, height)):
        face = render_face(_FACE_SEED + seed, index * 16 + k, s)
        alpha = Image.fromarray(((face.mask > 0) * 255).astype(np.uint8))
        alpha = alpha.filter(ImageFilter.MaxFilter(5)).filter(ImageFilter.GaussianBlur(1.5))
        canvas.paste(Image.fromarray(face.image), (x, y), alpha)
        region = mask[y : y + s, x : x + s]
        region[face.mask > 0] = face.mask[face.mask > 0]
        landmarks = (face.landmarks + np.array([x, y], dtype=np.float32)).astype(np.float32)
        points = five_points(landmarks)
        assert points is not None  # 68 points always have their five
        planted.append(SceneFace(landmarks_box(landmarks), landmarks, points.astype(np.float32)))
    return Scene(np.asarray(canvas, dtype=np.uint8).copy(), mask, planted)


def _caption(scene: Scene) -> str:
    n = len(scene.faces)
    return "a photo with no one in it" if n == 0 else f"a photo of {n} {'person' if n == 1 else 'people'}"


def _tar_bytes(members: Iterable[tuple[str, bytes]]) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size, info.mode, info.mtime = len(data), 0o644, 0
            tar.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


def write_scene_shards(
    out_dir: str | os.PathLike,
    count: int,
    shard_size: int = 100,
    seed: int = 0,
    width: int = 640,
    height: int = 480,
    jpeg_quality: int = 90,
    faces: int | tuple[int, int] = (1, 3),
    face_size: int | tuple[int, int] = (96, 192),
) -> list[Path]:
    """Write ``count`` scenes as img2dataset shards ``out_dir/NNNNN.tar`` and ``out_dir/sample2detect.pth``.

    Sample ``i`` has key ``f"{shard:05d}{i_in_shard:04d}"`` (img2dataset's naming) and ``SAMPLE_ID = i``;
    its detections are the planted faces' truth (box, five points, score 1.0) as numpy float32 arrays.
    Returns the shard paths.  Every file is written atomically.
    """
    if count < 0 or shard_size < 1:
        raise ValueError(f"count must be >= 0 and shard_size >= 1, got {count} and {shard_size}")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    detections: dict[int, list[tuple[np.ndarray, np.ndarray, np.float32]]] = {}
    shards: list[Path] = []
    for shard, start in enumerate(range(0, count, shard_size)):
        members: list[tuple[str, bytes]] = []
        for offset, sample_id in enumerate(range(start, min(start + shard_size, count))):
            scene = render_scene(seed, sample_id, width, height, faces, face_size)
            key = f"{shard:05d}{offset:04d}"
            jpeg = io.BytesIO()
            Image.fromarray(scene.image).save(jpeg, format="JPEG", quality=jpeg_quality)
            caption = _caption(scene)
            meta = {
                "key": key, "status": "success", "url": f"synthetic://scene/{seed}/{sample_id}",
                "caption": caption, "width": width, "height": height, "original_width": width,
                "original_height": height, "SAMPLE_ID": sample_id, "error_message": None,
            }  # fmt: skip
            members += [
                (f"{key}.jpg", jpeg.getvalue()),
                (f"{key}.txt", caption.encode()),
                (f"{key}.json", json.dumps(meta).encode()),
            ]
            detections[sample_id] = [(f.box.copy(), f.points.copy(), np.float32(1.0)) for f in scene.faces]
        path = out / f"{shard:05d}.tar"
        data = _tar_bytes(members)
        atomic_write_bytes(path, data)
        shards.append(path)
    atomic_torch_save(detections, out / "sample2detect.pth")
    return shards
