"""Downstream transforms (facerep.data.downstream.transforms): crop geometry, tanh warp, inverse maps,
augmentation, determinism.  (Named test_downstream_transforms.py: tests/ has no __init__.py files, so a second
``test_transforms.py`` would clash with tests/data/test_transforms.py under pytest's default import mode.)
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf
from scipy import ndimage
from torch.utils.data import default_collate

from facerep.data.downstream.transforms import (
    AlignmentTransform,
    AugmentConfig,
    ClassificationTransform,
    ParsingTransform,
    _box_blur,
    apply_photometric,
    landmarks_box,
    landmarks_to_image,
    logits_to_image,
    points_to_crop,
    similarity,
    tanh_unwarp,
    tanh_warp,
)
from facerep.data.synthetic import render_face

NO_PHOTO = dict(occlusion_prob=0.0, noise_prob=0.0, gray_prob=0.0, gamma_choices=[1.0], blur_prob=0.0)


def face_sample(index: int = 0, size: int = 128) -> dict:
    f = render_face(0, index, size)
    return {
        "image": f.image,
        "landmarks": f.landmarks,
        "box": landmarks_box(f.landmarks),
        "mask": f.mask,
        "name": f"face{index}",
    }


def dot_sample(point: tuple[float, float], hw: tuple[int, int] = (160, 200)) -> dict:
    """Dark image with one bright gaussian blob centred at ``point`` (x, y)."""
    h, w = hw
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float64)
    blob = np.exp(-((xx - point[0]) ** 2 + (yy - point[1]) ** 2) / (2 * 2.0**2))
    image = np.repeat((20 + 230 * blob)[..., None], 3, axis=2).round().astype(np.uint8)
    lms = np.array([point, (60.0, 50.0), (130.0, 120.0)], dtype=np.float32)
    return {"image": image, "landmarks": lms, "box": np.array([55, 45, 135, 125], dtype=np.float32)}


# ------------------------------------------------------------------------------------------ config


def test_config_defaults_match_farl_and_nest_in_omegaconf():
    cfg = AugmentConfig()
    assert (cfg.shift_sigma, cfg.rot_sigma, cfg.scale_sigma) == (0.05, 0.174, 0.1)
    assert cfg.crop_scale == 1.25 and cfg.warp == "affine"
    assert cfg.mean == [0.485, 0.456, 0.406] and cfg.std == [0.229, 0.224, 0.225]
    parsing = AugmentConfig.farl_parsing()
    assert (parsing.warp, parsing.warp_factor, parsing.rot_sigma, parsing.crop_scale) == (
        "tanh",
        0.8,
        0.314,
        1.0,
    )

    @dataclasses.dataclass
    class Outer:
        augment: AugmentConfig = dataclasses.field(default_factory=AugmentConfig)

    merged = OmegaConf.merge(OmegaConf.structured(Outer), OmegaConf.from_dotlist(["augment.warp=tanh"]))
    assert merged.augment.warp == "tanh"
    t = ParsingTransform(64, train=False, cfg=merged.augment)  # a DictConfig works as cfg
    assert t(face_sample(0, 64))["warp_factor"].item() == pytest.approx(0.8)
    with pytest.raises(ValueError, match="warp"):
        AlignmentTransform(64, cfg=AugmentConfig(warp="bogus"))


# ------------------------------------------------------------------------------------------ geometry


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_alignment_image_and_landmarks_move_together(seed):
    point = (83.3, 91.6)
    t = AlignmentTransform(128, train=True, cfg=AugmentConfig(**NO_PHOTO))
    torch.manual_seed(seed)
    out = t(dot_sample(point))
    img = out["image"][0]  # normalisation is monotonic per channel
    iy, ix = divmod(int(img.argmax()), img.shape[1])
    expected = out["landmarks"][0] * 128 - 0.5
    assert abs(ix - expected[0].item()) <= 1.0 and abs(iy - expected[1].item()) <= 1.0
    # the jitter really moved the crop (not the eval-mode placement)
    ev = AlignmentTransform(128, train=False, cfg=AugmentConfig(**NO_PHOTO))(dot_sample(point))
    assert not torch.allclose(ev["landmarks"], out["landmarks"], atol=1e-3)


def test_alignment_eval_geometry_is_farl_box_crop():
    s = dot_sample((83.3, 91.6))
    out = AlignmentTransform(100, train=False)(s)
    # box centre -> crop centre; box side * 1.25 -> crop side
    centre = points_to_crop(torch.tensor([[95.0, 85.0]], dtype=torch.float64), _c2i_inv(out), 100)
    assert torch.allclose(centre, torch.full((1, 2), 0.5, dtype=torch.float64), atol=1e-6)
    span = (out["landmarks"][2] - out["landmarks"][1]) * 100 * 1.25  # 70 px apart in the image
    assert torch.allclose(span, torch.tensor([70.0 * 100 / 80, 70.0 * 100 / 80]), atol=1e-3)


def _c2i_inv(out: dict) -> torch.Tensor:
    m = torch.eye(3, dtype=torch.float64)
    m[:2] = out["crop_to_image"].to(torch.float64)
    return torch.linalg.inv(m)[:2]


@pytest.mark.parametrize("train", [False, True])
@pytest.mark.parametrize("warp", ["affine", "tanh"])
def test_landmarks_to_image_inverts_the_crop(train, warp):
    cfg = AugmentConfig(warp=warp, warp_factor=0.5)
    t = AlignmentTransform(96, train=train, cfg=cfg)
    torch.manual_seed(3)
    samples = [face_sample(i) for i in range(3)]
    batch = default_collate([t(s) for s in samples])
    back = landmarks_to_image(batch["landmarks"], batch["crop_to_image"], 96, batch["warp_factor"])
    truth = torch.from_numpy(np.stack([s["landmarks"] for s in samples]))
    assert back.shape == truth.shape
    assert (back - truth).abs().max().item() < 1e-3


def test_tanh_warp_round_trip_and_shape():
    for f in (0.0, 0.3, 0.8, 1.0):
        # the inverse clips artanh's argument at 0.999 (artanh(0.999) ~ 3.8): stay inside that range
        lim = (1 - f) + f * 3.0 if f > 0 else 3.0
        u = torch.linspace(-lim, lim, 2001, dtype=torch.float64)
        v = tanh_warp(u, f)
        assert torch.all(v[1:] > v[:-1]), "monotonic"
        assert torch.allclose(tanh_unwarp(v, f), u, atol=1e-9)
        inner = u.abs() <= 1 - f
        assert torch.equal(v[inner], u[inner])  # linear core
        if f > 0:
            assert v.abs().max() < 1.0  # everything squeezed into the crop
    v = torch.linspace(-0.99, 0.99, 101)
    assert torch.allclose(tanh_warp(tanh_unwarp(v, 0.8), 0.8), v, atol=1e-6)


def test_similarity_recovers_known_transform():
    src = np.random.default_rng(0).uniform(0, 100, size=(5, 2))
    a, b = 1.7 * np.cos(0.3), 1.7 * np.sin(0.3)
    dst = src @ np.array([[a, -b], [b, a]]).T + np.array([12.0, -5.0])
    m = similarity(src, dst)
    assert np.allclose(m[:2], [[a, -b, 12.0], [b, a, -5.0]])


def _agreement(
    sample: dict, cfg: AugmentConfig, size: int, train: bool = False, min_inside: float = 0.5
) -> float:
    t = ParsingTransform(size, train=train, cfg=cfg)
    out = default_collate([t(sample)])
    onehot = torch.nn.functional.one_hot(out["mask"], 11).permute(0, 3, 1, 2).float()
    logits = logits_to_image(onehot, out["warp"], out["warp_factor"], out["orig_size"][0])
    pred = logits.argmax(1)[0].numpy()
    truth = sample["mask"].astype(np.int64)
    h, w = truth.shape
    # keep pixels whose crop position lies inside the crop with a 2-pixel margin ("except near borders")
    yy, xx = np.mgrid[0:h, 0:w]
    pts = torch.from_numpy(np.stack([xx, yy], -1).reshape(-1, 2).astype(np.float64))
    c = points_to_crop(pts, out["warp"][0].double(), size, out["warp_factor"][0].item()) * size
    inside = ((c >= 2) & (c <= size - 2)).all(-1).reshape(h, w).numpy()
    assert inside.mean() > min_inside
    return float((pred == truth)[inside].mean())


@pytest.mark.parametrize("warp", ["affine", "tanh"])
@pytest.mark.parametrize("index", [0, 1])
def test_mask_round_trip_through_logits_to_image(warp, index):
    sample = face_sample(index, 128)
    cfg = AugmentConfig.farl_parsing(warp=warp)
    assert _agreement(sample, cfg, 256) > 0.97
    torch.manual_seed(index)
    assert _agreement(sample, cfg, 256, train=True) > 0.97


def test_parsing_whole_image_and_box_modes_and_outside_is_background():
    sample = face_sample(2, 128)
    del sample["landmarks"], sample["box"]  # CelebAMask-HQ-like: the whole image, no warp
    assert _agreement(sample, AugmentConfig.farl_parsing(warp="affine"), 192) > 0.99
    box_sample = face_sample(2, 128)
    del box_sample["landmarks"]
    cfg = AugmentConfig.farl_parsing(warp="affine")
    cfg.crop_scale = 0.5  # crop smaller than the face: most of the image is outside the crop
    assert _agreement(box_sample, cfg, 128, min_inside=0.03) > 0.97
    out = default_collate([ParsingTransform(128, cfg=cfg)(box_sample)])
    onehot = torch.nn.functional.one_hot(out["mask"], 11).permute(0, 3, 1, 2).float()
    logits = logits_to_image(onehot, out["warp"], out["warp_factor"], (128, 128))
    assert logits.shape == (1, 11, 128, 128)
    assert torch.equal(logits[0, :, 0, 0], torch.tensor([0.0] + [-1e4] * 10))  # corner: outside the crop


def test_parsing_five_point_alignment_centres_the_face():
    sample = face_sample(1, 128)
    t = ParsingTransform(128, train=False, cfg=AugmentConfig.farl_parsing(warp="affine"))
    out = t(sample)
    lms = points_to_crop(torch.from_numpy(sample["landmarks"]).double(), out["warp"].double(), 128)
    eyes_y = lms[36:48, 1].mean().item()
    assert abs(lms[30, 0].item() - 0.5) < 0.06  # nose tip near the centre column
    assert 0.3 < eyes_y < 0.5  # template eyes at y = (226 / 256 - 1 + 1) / 2 ~ 0.44


# ------------------------------------------------------------------------------------------ outputs


def test_output_shapes_dtypes_and_collate():
    a = AlignmentTransform(64, train=True)
    p = ParsingTransform(80, train=True)
    c = ClassificationTransform(48, train=True)
    ab = default_collate([a(face_sample(i)) for i in range(2)])
    assert ab["image"].shape == (2, 3, 64, 64) and ab["image"].dtype == torch.float32
    assert ab["landmarks"].shape == (2, 68, 2) and ab["landmarks"].dtype == torch.float32
    assert ab["crop_to_image"].shape == (2, 2, 3) and ab["box"].shape == (2, 4)
    assert ab["visible"].dtype == torch.bool and ab["visible"].all()
    pb = default_collate([p(face_sample(i)) for i in range(2)])
    assert pb["image"].shape == (2, 3, 80, 80) and pb["mask"].shape == (2, 80, 80)
    assert pb["mask"].dtype == torch.int64 and pb["mask"].max() <= 10
    assert pb["warp"].shape == (2, 2, 3) and pb["orig_size"].tolist() == [[128, 128]] * 2
    single = c({"image": np.zeros((30, 50, 3), np.uint8), "label": 3})
    assert single["image"].shape == (3, 48, 48) and single["label"].dtype == torch.int64
    multi = c({"image": np.zeros((30, 50, 3), np.uint8), "label": np.array([0, 1, 1], np.uint8)})
    assert multi["label"].tolist() == [0, 1, 1]


def test_classification_flip():
    img = np.zeros((40, 40, 3), np.uint8)
    img[:, :10] = 255
    ev = ClassificationTransform(40, train=False)({"image": img, "label": 0})["image"]
    fl = ClassificationTransform(40, train=True, cfg=AugmentConfig(hflip_prob=1.0))(
        {"image": img, "label": 0}
    )
    assert torch.allclose(fl["image"], ev.flip(-1))


def test_visible_passes_through():
    s = face_sample(0)
    s["visible"] = np.arange(68) % 2 == 0
    out = AlignmentTransform(32)(s)
    assert out["visible"].tolist() == s["visible"].tolist()


# ------------------------------------------------------------------------------------------ photometric


def test_photometric_keeps_shape_dtype_and_landmarks():
    s = face_sample(0)
    on = AlignmentTransform(
        64, train=True, cfg=AugmentConfig(occlusion_prob=1.0, noise_prob=1.0, gray_prob=1.0)
    )
    off = AlignmentTransform(64, train=True, cfg=AugmentConfig(**NO_PHOTO))
    torch.manual_seed(5)
    a = on(s)
    torch.manual_seed(5)
    b = off(s)
    assert torch.equal(a["landmarks"], b["landmarks"])  # geometry is drawn before the photometric chain
    assert a["image"].shape == b["image"].shape and a["image"].dtype == torch.float32
    assert not torch.allclose(a["image"], b["image"])
    x = torch.rand(3, 50, 60)
    for kind in ("fusion", "gaussian"):
        for fill in ("zero", "color", "noise"):
            cfg = AugmentConfig(
                noise_kind=kind, occlusion_fill=fill, blur_kind="gaussian", blur_max_ratio=0.2
            )
            y = apply_photometric(x, cfg)
            assert y.shape == x.shape and y.dtype == x.dtype and y.min() >= 0 and y.max() <= 1


def test_photometric_ops():
    x = torch.rand(3, 40, 40)
    only = dict(NO_PHOTO)
    gray = apply_photometric(x, AugmentConfig(**{**only, "gray_prob": 1.0}))
    assert torch.allclose(gray[0], gray[1]) and torch.allclose(gray[1], gray[2])
    occ = apply_photometric(x, AugmentConfig(**{**only, "occlusion_prob": 1.0}))
    frac = (occ == 0).all(0).float().mean().item()
    assert 0.005 < frac < 0.3 and torch.equal(occ[:, (occ != 0).any(0)], x[:, (occ != 0).any(0)])
    gam = apply_photometric(x, AugmentConfig(**{**only, "gamma_choices": [2.0]}))
    assert torch.allclose(gam, x**2, atol=1e-6)
    # cv2.blur (reflect-101 borders) == scipy's 'mirror' uniform filter for odd kernels
    for k in (3, 5):
        ref = ndimage.uniform_filter(x.double().numpy(), size=(1, k, k), mode="mirror")
        assert np.allclose(_box_blur(x, k).numpy(), ref, atol=1e-5)
    assert _box_blur(x, 4).shape == x.shape


# ------------------------------------------------------------------------------------------ randomness


@pytest.mark.parametrize("cls", [AlignmentTransform, ParsingTransform, ClassificationTransform])
def test_determinism(cls):
    s = face_sample(4)
    s["label"] = 1
    t = cls(48, train=True)
    outs = []
    for seed in (7, 7, 8):
        torch.manual_seed(seed)
        outs.append(t(s)["image"])
    assert torch.equal(outs[0], outs[1])
    if cls is not ClassificationTransform:  # a flip of a symmetric-ish face could coincide; skip
        assert not torch.equal(outs[0], outs[2])
    g1, g2 = torch.Generator().manual_seed(11), torch.Generator().manual_seed(11)
    torch.manual_seed(0)
    a = t(s, generator=g1)["image"]
    torch.manual_seed(1)
    b = t(s, generator=g2)["image"]
    assert torch.equal(a, b)  # the generator, not the global RNG


def test_for_task_presets_and_overrides():
    assert AugmentConfig.for_task("alignment") == AugmentConfig()
    assert AugmentConfig.for_task("parsing") == AugmentConfig.farl_parsing()
    over = OmegaConf.create({"warp": "affine", "mean": [0.5, 0.5, 0.5]})
    cfg = AugmentConfig.for_task("parsing", **over)
    assert cfg.warp == "affine" and cfg.rot_sigma == 0.314 and cfg.mean == [0.5, 0.5, 0.5]
    assert type(cfg.mean) is list
    with pytest.raises(ValueError, match="bogus"):
        AugmentConfig.for_task("parsing", bogus=1)
