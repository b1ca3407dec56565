"""The synthetic renderer's outputs, bit for bit, as recorded before it was split into named steps.

Every offline command, test and benchmark renders these faces, so a change of a single pixel, landmark,
label, attribute or sampled parameter is a change of every dataset.  The digests below were recorded
from the single-function renderer; seeds 0-19 of item 5 cover every attribute, hair style and occluder.
"""

from __future__ import annotations

import hashlib

import pytest

from facerep.data.scenes import render_scene
from facerep.data.synthetic import ATTRIBUTES, SyntheticFaceDataset, render_face

SEEDS = range(20)
INDEX = 5
OUTPUTS = ("image", "landmarks", "mask", "attributes", "params")
# sha256 over the 20 faces of each size, one digest per output, recorded from the single-function renderer
GOLDEN = {
    32: {
        "image": "74875bd357bb0677d14b837f7e0ca8874fc78cad93f7bbdf42fd5d05a1eabe4d",
        "landmarks": "1e25a2c75111107a9edcbd9dd7acdd83a26d88ba98e77c2356e43d69544341a9",
        "mask": "3738523f75875836c4079894846397ed76c3c0f08f6047a37dc377912229dc73",
    },
    64: {
        "image": "b37faf31c3f1de09b2d595a53e2f6bb7d287cd69bc248534ad9325b517604b45",
        "landmarks": "c85a31cc9c705dd6e3c0b6164f0df0fc11d2820667b481d8443219906b7a1f24",
        "mask": "7e564fcf0a7096b356b339e2c27882b6f2a567022bf8148929aa64cc96e5ec5e",
    },
    128: {
        "image": "c2fa1d685478ee5e089ea11f8b0094bcf650ee1d64824cd26cdb303ea999af5f",
        "landmarks": "b6b761c40bdd831cd9dca71c2ad724cdf22a8772946876a65992e04b360abf57",
        "mask": "9e25aba76db7009ea8649afd5078a22b4fb9869db0fd7533d5f09756ac900d6a",
    },
}
SIZE_FREE = {  # the same at every size
    "attributes": "135eb881e9c5e2f2f1e93371265261f10403901c020afa2a23f417830c8a34d9",
    "params": "07a498484405c3c69a32f34edec9a48375ccfb3df3dd12f5c4a1c02772d307fe",
}
SCENES = {
    "image": "74cdfb07ccbdfafb08d400efc532eb23cc00acd45f5559233d03ac7d650f1256",
    "mask": "d9ecafca4459105b6ae5127988190e6220ff6b11ea4ca15cfcf1fc63ae5c148d",
}


def face_digests(size: int) -> dict[str, str]:
    """sha256 per output of ``render_face(seed, INDEX, size)`` for all seeds, in seed order."""
    digests = {name: hashlib.sha256() for name in OUTPUTS}
    for seed in SEEDS:
        face = render_face(seed, INDEX, size)
        for name in OUTPUTS[:4]:
            digests[name].update(getattr(face, name).tobytes())
        digests["params"].update(repr(sorted(face.params.items())).encode())
    return {name: d.hexdigest() for name, d in digests.items()}


def scene_digests() -> dict[str, str]:
    """sha256 of the image and mask of three small scenes (faces rendered at several sizes, pasted)."""
    digests = {name: hashlib.sha256() for name in ("image", "mask")}
    for seed in range(3):
        scene = render_scene(seed, 1, width=200, height=150, faces=(1, 3), face_size=(32, 64))
        digests["image"].update(scene.image.tobytes())
        digests["mask"].update(scene.mask.tobytes())
    return {name: d.hexdigest() for name, d in digests.items()}


@pytest.mark.parametrize("size", sorted(GOLDEN))
def test_faces_match_recorded_digests(size: int) -> None:
    assert face_digests(size) == GOLDEN[size] | SIZE_FREE


def test_scenes_match_recorded_digests() -> None:
    assert scene_digests() == SCENES


def test_dataset_items_are_render_face() -> None:
    ds = SyntheticFaceDataset(8, size=32, seed=3)
    assert ds[INDEX].image.tobytes() == render_face(3, INDEX, 32).image.tobytes()


def test_golden_seeds_cover_every_branch() -> None:
    faces = [render_face(seed, INDEX, 32) for seed in SEEDS]
    assert all(any(f.attributes[i] for f in faces) for i in range(len(ATTRIBUTES)))
    assert {f.params["hair_style"] for f in faces} == {"bald", "buzz", "short", "fringe", "medium", "long"}
    assert {f.params["occluder"] for f in faces} == {"none", "hand", "facemask"}
    assert any(f.params["glasses"] and f.params["glasses_round"] for f in faces)
    assert any(f.params["blur"] > 0 for f in faces) and any(f.params["blush"] for f in faces)
