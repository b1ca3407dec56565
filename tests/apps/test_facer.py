"""facer's released TorchScript models in ``facerep predict``: small TorchScript stand-ins with facer's
contracts (a LaPa parser: ``[N, 3, 448, 448]`` -> ``(logits [N, 11, 448, 448], aux)``; a 300-W aligner: a
traced heatmap head with FaRL's ViT + FPN weights as the archive's ``backbone`` extra file) run from the
command line on the astronaut, checked against facer's geometry written out here (pixel-edge coordinates,
``make_tanh_warp_grid`` / ``tanh_warp_transform``, ``get_quad``)."""

from __future__ import annotations

import io
import json

import numpy as np
import pytest
import torch
import torch.nn.functional as nnf
from PIL import Image
from skimage import data as skdata
from torch import Tensor, nn

from facerep.apps.facer import FACER_MODELS, FarlFeatures, facer_crop, load_facer
from facerep.backbones.clip_layout import vit_to_clip
from facerep.backbones.vit import CLIP_TOWER, ViTArch, build_vit
from facerep.commands.cli import main
from facerep.data.detect import DETECTORS, Detection
from facerep.models.dense import FPNAdapters

S = 448
# the astronaut's five points and box (tests/data/test_detect.py)
POINTS = np.array([[204, 101], [246, 102], [224, 126], [202, 142], [244, 142]], dtype=np.float32)
BOX = np.array([182.5, 89.5, 272.5, 184.5], dtype=np.float32)
TEMPLATE = np.array([[196, 226], [316, 226], [256, 286], [220, 360.4], [292, 360.4]]) / 256 - 1
DISC = 0.5  # the parser's face disc: radius in normalised warped-crop units
LAPA = "face_parsing.farl.lapa.main_ema_136500_jit191.pt"
IBUG = "face_alignment.farl.ibug300w.main_ema_jit.pt"


# ----------------------------------------------------------------------------- facer's geometry, written out


def facer_similarity(src: np.ndarray, dst: np.ndarray) -> np.ndarray:
    """facer's ``get_similarity_transform_matrix`` (least squares, 3x3)."""
    ms, md = src.mean(0), dst.mean(0)
    f, t = src - ms, dst - md
    a1 = (f**2).sum()
    a, b = (t * f).sum() / a1, (t[:, 0] * f[:, 1] - t[:, 1] * f[:, 0]).sum() / a1
    return np.array(
        [[a, b, md[0] - a * ms[0] - b * ms[1]], [-b, a, md[1] + b * ms[0] - a * ms[1]], [0, 0, 1]]
    )


def facer_edge_matrix(name: str, pts: np.ndarray) -> np.ndarray:
    """facer's ``get_matrix_fn``: photo -> aligned crop in pixel-edge coordinates."""
    if name == "celebm/448":
        rot = lambda v: np.array([-v[1], v[0]])  # noqa: E731
        eye, mouth = (pts[0] + pts[1]) * 0.5 + 0.5, (pts[3] + pts[4]) * 0.5 + 0.5
        e2e, e2m = pts[1] - pts[0], mouth - eye
        x = e2e - rot(e2m)
        x = x / np.hypot(*x) * max(np.hypot(*e2e) * 2.0, np.hypot(*e2m) * 1.8)
        y, c = rot(x), eye + e2m * 0.1
        quad = np.stack([c - x - y, c - x + y, c + x + y, c + x - y])[[0, 3, 2, 1]]
        return facer_similarity(quad, np.array([[0, 0], [S, 0], [S, S], [0, S]], dtype=np.float64))
    scale = FACER_MODELS[name].face_scale
    return facer_similarity(pts.astype(np.float64), (TEMPLATE * scale + 1) * (S - 1) / 2)


def facer_warp(coords: np.ndarray, f: float, inverse: bool) -> np.ndarray:
    """facer's tanh warp of normalised coordinates (``inverse``: its ``_safe_arctanh`` unwarp)."""
    if f == 0:
        return coords
    fn = (lambda z: np.arctanh(np.clip(z, -0.999, 0.999))) if inverse else np.tanh
    hi, lo = coords > 1 - f, coords < -1 + f
    out = np.where(hi, fn((coords - 1 + f) / f) * f + 1 - f, coords)
    return np.where(lo, fn((coords + 1 - f) / f) * f - 1 + f, out)


def facer_reference_crop(name: str, photo: Tensor, pts: np.ndarray) -> Tensor:
    """facer's ``make_tanh_warp_grid`` + ``grid_sample`` of a ``[3, H, W]`` photo."""
    m, f = facer_edge_matrix(name, pts), FACER_MODELS[name].warp_factor
    yy, xx = np.meshgrid(np.arange(S) + 0.5, np.arange(S) + 0.5, indexing="ij")
    v = np.stack([xx, yy], -1).reshape(-1, 2) / S * 2 - 1
    u = (facer_warp(v, f, inverse=True) + 1) / 2 * S
    src = (np.c_[u, np.ones(len(u))] @ np.linalg.inv(m).T)[:, :2]
    h, w = photo.shape[-2:]
    grid = torch.from_numpy(src / np.array([w, h]) * 2 - 1).float().reshape(1, S, S, 2)
    return nnf.grid_sample(photo[None], grid, mode="bilinear", align_corners=False)[0]


# ------------------------------------------------------------------------------------------ stand-in models


class Parser(nn.Module):
    """LaPa contract: class 1 (face) where the warped-crop position is inside :data:`DISC`, else class 0."""

    def __init__(self, classes: int = 11) -> None:
        super().__init__()
        v = (torch.arange(S, dtype=torch.float32) * 2 + 1) / S - 1
        disc = DISC**2 - (v[None, :] ** 2 + v[:, None] ** 2)
        logits = torch.full((classes, S, S), -10.0)
        logits[0], logits[1] = 0.0, disc * 100
        self.register_buffer("logits", logits)

    def forward(self, image: Tensor) -> tuple[Tensor, Tensor]:
        zero = 0 * image.mean((1, 2, 3))
        return self.logits[None] + zero[:, None, None, None], zero


def heat_centres(k: int = 68) -> np.ndarray:
    """Where the aligner's heatmap peaks are, in 112-pixel heatmap coordinates ``[K, 2]``."""
    i = np.arange(k)
    return np.stack([20 + (i % 9) * 9, 24 + (i // 9) * 8], -1).astype(np.float64)


class Head(nn.Module):
    """The aligner's heatmap head: four FPN maps -> logits ``[N, K, 112, 112]`` with a sharp bump at each of
    :func:`heat_centres`."""

    def __init__(self) -> None:
        super().__init__()
        ys, xs = torch.meshgrid(torch.arange(112.0), torch.arange(112.0), indexing="ij")
        c = torch.from_numpy(heat_centres()).float()
        d2 = (xs[None] - c[:, 0, None, None]) ** 2 + (ys[None] - c[:, 1, None, None]) ** 2
        self.register_buffer("logits", -30 + 60 * torch.exp(-d2 / (2 * 1.5**2)))

    def forward(self, features: list[Tensor]) -> Tensor:
        zero = sum(0 * f.mean((1, 2, 3)) for f in features)
        return self.logits[None] + zero[:, None, None, None]


def backbone_bytes(dim: int = 64) -> bytes:
    """FaRL's ``FaRLVisualFeatures`` state dict (a 12-block CLIP tower at 448 px, ``fpns``, mean/std) saved
    as facer saves it beside the traced head."""
    torch.manual_seed(0)
    vit = build_vit(ViTArch(embed_dim=dim, depth=12, num_heads=1, patch_size=16, img_size=S, **CLIP_TOWER))
    state = vit_to_clip({k: v for k, v in vit.state_dict().items() if not k.startswith("head")})
    names = {"up4.": "fpns.0.", "up2.": "fpns.1."}
    state.update({names[k[:4]] + k[4:]: v for k, v in FPNAdapters(dim).state_dict().items()})
    state["image_mean"] = torch.tensor([0.48145466, 0.4578275, 0.40821073]).view(1, 3, 1, 1)
    state["image_std"] = torch.tensor([0.26862954, 0.26130258, 0.27577711]).view(1, 3, 1, 1)
    buffer = io.BytesIO()
    torch.save(state, buffer)
    return buffer.getvalue()


# ------------------------------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def astronaut() -> np.ndarray:
    return skdata.astronaut()


@pytest.fixture
def photo(tmp_path, astronaut, monkeypatch):
    """The astronaut as a PNG, and a detector ``fixed`` giving its face (no MTCNN in these tests)."""
    monkeypatch.setitem(DETECTORS._entries, "fixed", lambda: lambda image: [Detection(BOX, POINTS, 0.99)])
    path = tmp_path / "astronaut.png"
    Image.fromarray(astronaut).save(path)
    return path


@pytest.fixture(scope="module")
def parser_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("facer") / LAPA
    torch.jit.save(torch.jit.trace(Parser(), torch.rand(1, 3, S, S)), str(path))
    return path


@pytest.fixture(scope="module")
def aligner_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("facer") / IBUG
    maps = [torch.rand(1, 64, s, s) for s in (112, 56, 28, 14)]
    head = torch.jit.trace(Head(), (maps,))  # as facer traced its heads
    torch.jit.save(head, str(path), _extra_files={"backbone": backbone_bytes()})
    return path


def predict(tmp_path, checkpoint, photo, *extra: str) -> dict:
    out = tmp_path / "out"
    args = [f"checkpoint={checkpoint}", f"input={photo}", f"output_dir={out}", "detector=fixed", *extra]
    assert main(["predict", *args]) == 0
    assert (out / "astronaut_overlay.png").is_file()
    return json.loads((out / "astronaut.json").read_text())


# ---------------------------------------------------------------------------------------------------- tests


@pytest.mark.parametrize("name", ["lapa/448", "celebm/448", "ibug300w/448"])
def test_crop_is_facers(astronaut, name):
    photo = torch.from_numpy(astronaut).permute(2, 0, 1).float() / 255
    crop, _ = facer_crop(FACER_MODELS[name], photo, POINTS)
    assert crop.shape == (3, S, S)
    assert float((crop - facer_reference_crop(name, photo, POINTS)).abs().max()) < 1e-4


def test_lapa_parser_mask_lands_where_facer_puts_it(tmp_path, photo, parser_file, astronaut):
    doc = predict(tmp_path, parser_file, photo)
    assert doc["task"] == "parsing" and doc["classes"] == list(FACER_MODELS["lapa/448"].class_names)
    mask = np.asarray(Image.open(tmp_path / "out" / doc["mask"]))
    h, w = astronaut.shape[:2]
    yy, xx = np.meshgrid(np.arange(h) + 0.5, np.arange(w) + 0.5, indexing="ij")  # pixel centres, edge coords
    m = facer_edge_matrix("lapa/448", POINTS)
    crop = (np.stack([xx, yy, np.ones_like(xx)], -1).reshape(-1, 3) @ m.T)[:, :2]
    v = facer_warp(crop / S * 2 - 1, 0.8, inverse=False)
    truth = ((v**2).sum(1) < DISC**2).reshape(h, w)
    assert set(np.unique(mask)) == {0, 1}
    assert truth.sum() > 2000  # the face disc covers the face
    assert (mask.astype(bool) != truth).sum() < 0.01 * truth.sum()  # only boundary pixels may differ


def test_parser_named_by_its_outputs(tmp_path, photo, parser_file):
    renamed = tmp_path / "my_parser.pt"
    renamed.write_bytes(parser_file.read_bytes())
    assert load_facer(renamed)[1]["facer"] == "lapa/448"
    assert predict(tmp_path, renamed, photo, "facer=lapa/448")["classes"][1] == "face"


def test_ibug_aligner_landmarks_map_back(tmp_path, photo, aligner_file):
    doc = predict(tmp_path, aligner_file, photo)
    (face,) = doc["faces"]
    got = np.asarray(face["landmarks"])
    assert doc["task"] == "alignment" and got.shape == (68, 2)
    crop_edge = (heat_centres() + 0.5) / 112 * S  # the peaks in the 448 crop, pixel-edge coordinates
    m = np.linalg.inv(facer_edge_matrix("ibug300w/448", POINTS))
    want = (np.c_[crop_edge, np.ones(68)] @ m.T)[:, :2] - 0.5  # facer's denormalize_points: pixel centres
    assert np.abs(got - want).max() < 0.05


def test_farl_features_are_four_fpn_maps(aligner_file):
    extra = {"backbone": ""}
    torch.jit.load(str(aligner_file), _extra_files=extra)
    state = torch.load(io.BytesIO(extra["backbone"]), weights_only=True)
    maps = FarlFeatures.from_state(state, "test")(torch.rand(2, 3, S, S))
    assert [tuple(m.shape) for m in maps] == [
        (2, 64, 112, 112),
        (2, 64, 56, 56),
        (2, 64, 28, 28),
        (2, 64, 14, 14),
    ]


class Unknown(nn.Module):
    def forward(self, image: Tensor) -> Tensor:
        return image.mean((2, 3))


def test_one_line_errors(tmp_path, photo, parser_file, capsys):
    unknown = tmp_path / "model.pt"
    torch.jit.save(torch.jit.trace(Unknown(), torch.rand(1, 3, 8, 8)), str(unknown))
    pickled = tmp_path / LAPA
    torch.save({"weights": torch.zeros(3)}, pickled)
    cases = [
        ([f"checkpoint={unknown}"], "cannot tell which facer model"),
        ([f"checkpoint={pickled}"], "not a TorchScript archive"),
        (
            [f"checkpoint={parser_file}", "facer=lapa/512"],
            "is not a facer model; known: lapa/448, celebm/448",
        ),
        ([f"checkpoint={parser_file}", "facer=wflw/448"], "facer=wflw/448 is a facer alignment model"),
    ]
    for args, message in cases:
        assert (
            main(["predict", *args, f"input={photo}", f"output_dir={tmp_path / 'o'}", "detector=fixed"]) == 2
        )
        err = capsys.readouterr().err.strip()
        assert message in err and "\n" not in err, err
