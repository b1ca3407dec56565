"""Synthetic multi-face scenes and their img2dataset / LAION-Face-detection layout."""

from __future__ import annotations

import io
import json
import tarfile

import numpy as np
import torch
from PIL import Image

from facerep.data.downstream.transforms import five_points
from facerep.data.scenes import render_scene, write_scene_shards


def test_scene_is_deterministic_and_faces_are_where_the_truth_says() -> None:
    a, b = render_scene(3, 5), render_scene(3, 5)
    assert np.array_equal(a.image, b.image) and len(a.faces) == len(b.faces)
    assert a.image.shape == (480, 640, 3) and a.mask.shape == (480, 640)
    assert not np.array_equal(a.image, render_scene(3, 6).image)
    counts = [len(render_scene(0, i).faces) for i in range(12)]
    assert min(counts) >= 1 and max(counts) <= 3 and len(set(counts)) > 1
    for face in a.faces:
        lm = face.landmarks
        assert lm.shape == (68, 2) and face.points.shape == (5, 2) and face.box.shape == (4,)
        assert np.allclose(face.box, [*lm.min(0), *lm.max(0)])
        assert np.allclose(face.points, five_points(lm))
        assert (lm >= 0).all() and (lm[:, 0] < 640).all() and (lm[:, 1] < 480).all()
        # the nose tip (iBUG 30) lies on the face's parsing mask in the scene
        x, y = np.rint(lm[30]).astype(int)
        assert a.mask[y, x] > 0


def test_faces_do_not_overlap_and_counts_and_sizes_are_honoured() -> None:
    scene = render_scene(1, 0, width=400, height=300, faces=4, face_size=64)
    boxes = [f.box for f in scene.faces]
    assert len(boxes) == 4
    for i in range(len(boxes)):
        for j in range(i + 1, len(boxes)):
            p, q = boxes[i], boxes[j]
            assert p[2] < q[0] or q[2] < p[0] or p[3] < q[1] or q[3] < p[1]
    assert render_scene(1, 0, faces=0).faces == []


def test_shards_follow_img2dataset_and_laion_face_detection_layouts(tmp_path) -> None:
    shards = write_scene_shards(tmp_path, count=5, shard_size=2, seed=7)
    assert [p.name for p in shards] == ["00000.tar", "00001.tar", "00002.tar"]
    with tarfile.open(shards[1]) as tar:
        names = tar.getnames()
        assert names == [f"00001000{i}.{ext}" for i in range(2) for ext in ("jpg", "txt", "json")]
        meta = json.loads(tar.extractfile("000010001.json").read())
        image = Image.open(io.BytesIO(tar.extractfile("000010001.jpg").read()))
        caption = tar.extractfile("000010001.txt").read().decode()
    assert meta["SAMPLE_ID"] == 3 and meta["key"] == "000010001" and meta["status"] == "success"
    assert image.size == (640, 480) and caption == meta["caption"]
    detections = torch.load(tmp_path / "sample2detect.pth", weights_only=False)
    assert sorted(detections) == [0, 1, 2, 3, 4]
    truth = render_scene(7, 3)
    assert len(detections[3]) == len(truth.faces)
    for (box, points, score), face in zip(detections[3], truth.faces, strict=True):
        assert box.dtype == np.float32 and points.shape == (5, 2) and float(score) == 1.0
        assert np.array_equal(box, face.box) and np.array_equal(points, face.points)
    assert not list(tmp_path.glob("*.tmp")) and not list(tmp_path.glob(".*tmp"))
