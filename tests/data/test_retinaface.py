"""RetinaFace from biubug6/Pytorch_Retinaface weight files: the reference's key layout, priors, decoding, the
whole pipeline against this file's own loop-by-loop reading of the reference's ``detect.py`` and against
batch-face's independent copy of it (``pip install --no-deps batch-face``; skipped without it), the
weight file's errors, pickling.  Weights are random (seeded), their BatchNorm statistics measured on the
photo so activations keep their scale, the face logit biased so that a few dozen priors pass 0.6."""

from __future__ import annotations

import importlib.util
import itertools
import json
import math
import pickle
from collections import OrderedDict
from pathlib import Path
from types import ModuleType

import numpy as np
import pytest
import torch
from skimage import data as skdata
from torch import nn

from facerep.config import ConfigError
from facerep.data.detect import DETECTORS, build_detector
from facerep.data.retinaface import RetinaFace, RetinaFaceDetector, decode_boxes, decode_points, prior_boxes

# Exact names from the reference's models/net.py and models/retinaface.py (IntermediateLayerGetter keeps
# the backbone's children up to the last returned layer): a renamed module fails here.
MNET_KEYS = [
    "body.stage1.0.0.weight", "body.stage1.0.1.weight", "body.stage1.0.1.bias",
    "body.stage1.0.1.running_mean", "body.stage1.0.1.running_var", "body.stage1.0.1.num_batches_tracked",
    "body.stage1.1.0.weight", "body.stage1.1.1.weight", "body.stage1.1.3.weight",
    "body.stage1.1.4.running_var", "body.stage1.5.3.weight", "body.stage2.0.0.weight", "body.stage2.5.4.bias",
    "body.stage3.0.0.weight", "body.stage3.1.4.running_mean", "fpn.output1.0.weight", "fpn.output1.1.bias",
    "fpn.output2.0.weight", "fpn.output3.0.weight", "fpn.merge1.0.weight", "fpn.merge2.1.running_var",
    "ssh1.conv3X3.0.weight", "ssh1.conv3X3.1.weight", "ssh1.conv5X5_1.0.weight", "ssh1.conv5X5_2.0.weight",
    "ssh1.conv7X7_2.0.weight", "ssh1.conv7x7_3.0.weight", "ssh2.conv7x7_3.1.bias",
    "ssh3.conv5X5_1.1.running_mean", "ClassHead.0.conv1x1.weight", "ClassHead.2.conv1x1.bias",
    "BboxHead.0.conv1x1.weight", "BboxHead.1.conv1x1.bias", "LandmarkHead.0.conv1x1.weight",
    "LandmarkHead.2.conv1x1.bias",
]  # fmt: skip
MNET_SHAPES = {
    "body.stage1.0.0.weight": (8, 3, 3, 3), "body.stage1.1.0.weight": (8, 1, 3, 3),
    "body.stage3.1.3.weight": (256, 256, 1, 1), "fpn.output1.0.weight": (64, 64, 1, 1),
    "fpn.output3.0.weight": (64, 256, 1, 1), "ssh1.conv3X3.0.weight": (32, 64, 3, 3),
    "ssh1.conv7x7_3.0.weight": (16, 16, 3, 3), "ClassHead.0.conv1x1.weight": (4, 64, 1, 1),
    "BboxHead.0.conv1x1.weight": (8, 64, 1, 1), "LandmarkHead.0.conv1x1.weight": (20, 64, 1, 1),
}  # fmt: skip
R50_KEYS = [
    "body.conv1.weight", "body.bn1.running_mean", "body.layer1.0.conv1.weight",
    "body.layer1.0.downsample.0.weight", "body.layer1.0.downsample.1.running_var", "body.layer2.3.bn3.bias",
    "body.layer3.5.conv2.weight", "body.layer4.2.bn3.running_mean", "fpn.output1.0.weight",
    "fpn.merge2.0.weight", "ssh3.conv7x7_3.1.weight", "ClassHead.1.conv1x1.weight",
    "BboxHead.2.conv1x1.weight", "LandmarkHead.1.conv1x1.bias",
]  # fmt: skip
R50_SHAPES = {
    "body.conv1.weight": (64, 3, 7, 7), "body.layer4.2.conv3.weight": (2048, 512, 1, 1),
    "fpn.output1.0.weight": (256, 512, 1, 1), "fpn.output3.0.weight": (256, 2048, 1, 1),
    "ssh1.conv3X3.0.weight": (128, 256, 3, 3), "ClassHead.0.conv1x1.weight": (4, 256, 1, 1),
}  # fmt: skip
FACES = 30  # priors set to score >= 0.6 before NMS


@pytest.fixture(scope="module")
def astronaut() -> np.ndarray:
    return skdata.astronaut()


def network_input(rgb: np.ndarray) -> torch.Tensor:
    """The reference's input: BGR float minus (104, 117, 123), [1, 3, H, W]."""
    bgr = rgb[..., ::-1].astype(np.float32) - np.array([104, 117, 123], np.float32)
    return torch.from_numpy(bgr.transpose(2, 0, 1).copy())[None]


def randomise(net: nn.Module, image: np.ndarray, seed: int = 0) -> nn.Module:
    """Random weights in place (any module with the reference's layout), from ``seed``: BatchNorm affine
    random, its statistics measured on ``image``; face logits spread (x4), shifted: FACES priors reach 0.6."""
    torch.manual_seed(seed)
    for m in net.modules():
        if isinstance(m, nn.Conv2d):
            m.reset_parameters()
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.uniform_(m.weight, 0.5, 1.5)
            nn.init.uniform_(m.bias, -0.5, 0.5)
            m.momentum = None  # one batch: running statistics = that batch's
    x = network_input(image)
    with torch.no_grad():
        net.train()(x)
        net.eval()
        for head in net.ClassHead:
            head.conv1x1.weight *= 4
            head.conv1x1.bias.zero_()
        conf = net(x)[1][0]
        logit = torch.sort(torch.log(conf[:, 1] / conf[:, 0]), descending=True).values
        shift = math.log(0.6 / 0.4) - float(logit[FACES - 1] + logit[FACES]) / 2
        for head in net.ClassHead:
            head.conv1x1.bias[1::2] += shift
    return net


def save_reference_layout(net: nn.Module, path: Path, legacy: bool = True) -> Path:
    """``net``'s state dict as the released files hold it: DataParallel's ``module.`` prefix, an
    OrderedDict, pickled in torch's pre-1.6 (non-zip) format when ``legacy``."""
    state = OrderedDict((f"module.{k}", v) for k, v in net.state_dict().items())
    torch.save(state, path, _use_new_zipfile_serialization=not legacy)
    return path


@pytest.fixture(scope="module")
def mnet(astronaut: np.ndarray, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, RetinaFace]:
    net = randomise(RetinaFace("mobilenet0.25"), astronaut)
    return save_reference_layout(net, tmp_path_factory.mktemp("rf") / "mobilenet0.25_Final.pth"), net


def test_key_layout_is_the_reference_one() -> None:
    with torch.device("meta"):
        mnet, r50 = RetinaFace("mobilenet0.25"), RetinaFace("resnet50")
    keys = {k: tuple(v.shape) for k, v in mnet.state_dict().items()}
    assert len(keys) == 300 and all(k in keys for k in MNET_KEYS)
    assert {k: keys[k] for k in MNET_SHAPES} == MNET_SHAPES
    assert not any(k.startswith(("body.avg", "body.fc")) for k in keys)  # dropped after stage3
    keys = {k: tuple(v.shape) for k, v in r50.state_dict().items()}
    assert len(keys) == 456 and all(k in keys for k in R50_KEYS)
    assert {k: keys[k] for k in R50_SHAPES} == R50_SHAPES
    assert not any(k.startswith("body.fc") for k in keys)


def test_prior_boxes_by_hand() -> None:
    """A 24 x 16 (w x h) input: 3 x 2 cells at stride 8, 2 x 1 at 16, 1 at 32; two sizes per cell."""
    p = prior_boxes(16, 24)
    assert p.shape == (2 * (6 + 2 + 1), 4) and p.dtype == np.float32
    w, h = 24, 16
    expected = [
        [4 / w, 4 / h, 16 / w, 16 / h], [4 / w, 4 / h, 32 / w, 32 / h],  # stride 8, row 0, column 0
        [12 / w, 4 / h, 16 / w, 16 / h],  # row 0, column 1
    ]  # fmt: skip
    np.testing.assert_allclose(p[:3], expected, rtol=1e-6)
    np.testing.assert_allclose(p[6], [4 / w, 12 / h, 16 / w, 16 / h], rtol=1e-6)  # row 1, column 0
    np.testing.assert_allclose(p[12:16], [[8 / w, 8 / h, 64 / w, 64 / h], [8 / w, 8 / h, 128 / w, 128 / h],
                                          [24 / w, 8 / h, 64 / w, 64 / h], [24 / w, 8 / h, 128 / w, 128 / h]],
                               rtol=1e-6)  # fmt: skip
    np.testing.assert_allclose(
        p[16:], [[16 / w, 16 / h, 256 / w, 256 / h], [16 / w, 16 / h, 512 / w, 512 / h]]
    )


def test_decoding_against_the_formulas() -> None:
    rng = np.random.default_rng(0)
    priors = rng.uniform(0.1, 0.9, (7, 4)).astype(np.float32)
    loc, pre = rng.normal(size=(7, 4)).astype(np.float32), rng.normal(size=(7, 10)).astype(np.float32)
    boxes = decode_boxes(torch.from_numpy(loc), torch.from_numpy(priors)).numpy()
    points = decode_points(torch.from_numpy(pre), torch.from_numpy(priors)).numpy()
    for (cx, cy, pw, ph), d, q, box, pts in zip(priors, loc, pre, boxes, points, strict=True):
        x, y = cx + 0.1 * d[0] * pw, cy + 0.1 * d[1] * ph
        bw, bh = pw * math.exp(0.2 * d[2]), ph * math.exp(0.2 * d[3])
        np.testing.assert_allclose(
            box, [x - bw / 2, y - bh / 2, x + bw / 2, y + bh / 2], rtol=1e-5, atol=1e-6
        )
        for k in range(5):
            np.testing.assert_allclose(
                pts[k], [cx + 0.1 * q[2 * k] * pw, cy + 0.1 * q[2 * k + 1] * ph], rtol=1e-5
            )


def reference_detect(loc: np.ndarray, conf: np.ndarray, landm: np.ndarray, h: int, w: int, vis: float):
    """The reference's detect.py on raw outputs [P, 4], [P, 2], [P, 10], loop by loop: priors, decoding,
    candidates > 0.02, the best 5000, NMS 0.4 (inclusive extents), the best 750, score >= ``vis``."""
    priors = []
    for step, sizes in zip((8, 16, 32), ((16, 32), (64, 128), (256, 512)), strict=True):
        for i, j in itertools.product(range(math.ceil(h / step)), range(math.ceil(w / step))):
            priors += [[(j + 0.5) * step / w, (i + 0.5) * step / h, s / w, s / h] for s in sizes]
    priors = np.array(priors)
    centre = priors[:, :2] + loc[:, :2] * 0.1 * priors[:, 2:]
    size = priors[:, 2:] * np.exp(loc[:, 2:] * 0.2)
    boxes = np.concatenate([centre - size / 2, centre + size / 2], axis=1) * [w, h, w, h]
    points = (priors[:, None, :2] + landm.reshape(-1, 5, 2) * 0.1 * priors[:, None, 2:]) * [w, h]
    scores = conf[:, 1]
    idx = np.where(scores > 0.02)[0]
    idx = idx[scores[idx].argsort()[::-1][:5000]]
    b = boxes[idx]
    area = (b[:, 2] - b[:, 0] + 1) * (b[:, 3] - b[:, 1] + 1)
    alive = np.ones(len(idx), bool)
    keep = []
    for n in range(len(idx)):  # idx is best first
        if not alive[n]:
            continue
        keep.append(n)
        iw = np.maximum(0, np.minimum(b[n, 2], b[:, 2]) - np.maximum(b[n, 0], b[:, 0]) + 1)
        ih = np.maximum(0, np.minimum(b[n, 3], b[:, 3]) - np.maximum(b[n, 1], b[:, 1]) + 1)
        alive &= ~((iw * ih / (area[n] + area - iw * ih) > 0.4) & (np.arange(len(idx)) > n))
    idx = idx[keep][:750]
    idx = idx[scores[idx] >= vis]
    return boxes[idx], points[idx], scores[idx]


@pytest.mark.parametrize("threshold", [0.6, 0.02])
def test_pipeline_matches_the_reference_detect_py(
    mnet: tuple[Path, RetinaFace], astronaut: np.ndarray, threshold: float
) -> None:
    """At 0.6 a couple of dozen faces; at 0.02 (the reference's candidates) hundreds, many suppressed."""
    path, net = mnet
    found = build_detector("retinaface", weights=str(path), min_face=1, threshold=threshold)(astronaut)
    with torch.no_grad():
        loc, conf, landm = (t[0].double().numpy() for t in net(network_input(astronaut)))
    boxes, points, scores = reference_detect(loc, conf, landm, 512, 512, threshold)
    assert len(found) == len(scores) >= 10
    assert len(scores) < (conf[:, 1] >= threshold).sum()  # NMS dropped some
    np.testing.assert_allclose([d.score for d in found], scores, rtol=1e-6)
    np.testing.assert_allclose([d.box + 0.5 for d in found], boxes, atol=2e-3)  # pixel i: [i, i + 1] there
    np.testing.assert_allclose([d.points + 0.5 for d in found], points, atol=2e-3)


def test_defaults_and_min_face(mnet: tuple[Path, RetinaFace], astronaut: np.ndarray) -> None:
    det = build_detector("retinaface", weights=str(mnet[0]))
    assert isinstance(det, RetinaFaceDetector) and det.max_side is None and det.threshold == 0.6
    assert det.min_face == 40 and det.nms == 0.4 and det.device == "cpu"
    every = build_detector("retinaface", weights=str(mnet[0]), min_face=1)(astronaut)
    big = build_detector("retinaface", weights=str(mnet[0]), min_face=20)(astronaut)
    assert 0 < len(big) < len(every)
    assert [d for d in every if max(d.box[2:] - d.box[:2]) >= 20] == big


def batch_face_alignment() -> ModuleType:
    """batch-face's RetinaFace code (``face_detection/alignment.py``), loaded alone: the package's
    ``__init__`` imports its head-pose extra (sixdrepnet), which ``--no-deps`` leaves out."""
    spec = importlib.util.find_spec("batch_face")
    if spec is None or not spec.submodule_search_locations:
        pytest.skip("batch-face not installed (pip install --no-deps batch-face)")
    path = Path(next(iter(spec.submodule_search_locations))) / "face_detection" / "alignment.py"
    module_spec = importlib.util.spec_from_file_location("batch_face_retinaface_alignment", path)
    module = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(module)
    return module


def test_matches_batch_face_on_its_own_network(astronaut: np.ndarray, tmp_path: Path) -> None:
    """An independent run: batch-face's own network class and decoding, weights written from it."""
    bf = batch_face_alignment()
    ref_net = randomise(bf.RetinaFace(cfg=bf.cfg_mnet, phase="test"), astronaut, seed=1)
    path = save_reference_layout(ref_net, tmp_path / "mobilenet0.25_Final.pth", legacy=False)
    net = bf.load_net(str(path), torch.device("cpu"), "mobilenet")
    # batch-face feeds the array's channels as given (cv=False): BGR, as the reference reads images
    (theirs,) = bf.batch_detect(net, [astronaut[..., ::-1].copy()], torch.device("cpu"), threshold=0.02)
    theirs = [(box, pts, score) for box, pts, score in theirs if score >= 0.6]
    ours = build_detector("retinaface", weights=str(path), min_face=1)(astronaut)
    assert len(ours) == len(theirs) >= 3
    np.testing.assert_allclose([d.score for d in ours], [s for _, _, s in theirs], rtol=1e-5)
    np.testing.assert_allclose([d.box + 0.5 for d in ours], [b for b, _, _ in theirs], atol=1e-3)
    np.testing.assert_allclose([d.points + 0.5 for d in ours], [p for _, p, _ in theirs], atol=1e-3)


def test_resnet50_file_loads_without_prefix_or_batch_counters(tmp_path: Path) -> None:
    """Tensors of the right shapes (random, not a network's initialisation), keys bare, no counters."""
    with torch.device("meta"):
        shapes = {k: v.shape for k, v in RetinaFace("resnet50").state_dict().items()}
    torch.manual_seed(0)
    state = {k: torch.randn(s) * 0.02 for k, s in shapes.items() if not k.endswith("num_batches_tracked")}
    state.update({k: torch.ones(shapes[k]) for k in state if k.endswith("running_var")})
    torch.save(state, tmp_path / "Resnet50_Final.pth")
    det = RetinaFaceDetector(weights=str(tmp_path / "Resnet50_Final.pth"), threshold=0, min_face=1)
    loaded = det._network().state_dict()
    assert det._network().backbone == "resnet50" and len(loaded) == len(shapes) == 456
    assert all(torch.equal(loaded[k], v) for k, v in state.items())
    assert int(loaded["body.bn1.num_batches_tracked"]) == 0
    assert len(det(np.zeros((40, 72, 3), np.uint8))) > 0  # runs, its outputs line up with the priors


def test_pickles_for_worker_processes(mnet: tuple[Path, RetinaFace], astronaut: np.ndarray) -> None:
    det = build_detector("retinaface", weights=str(mnet[0]), min_face=1)
    blob = pickle.dumps(det)
    assert len(blob) < 10_000  # the network stays behind and loads again from the file
    assert pickle.loads(blob)(astronaut) == det(astronaut)


def test_weight_file_errors_are_one_line_and_name_the_file(
    mnet: tuple[Path, RetinaFace], tmp_path: Path
) -> None:
    assert "retinaface" in DETECTORS
    with pytest.raises(ConfigError, match="needs weights=PATH"):
        build_detector("retinaface")
    garbage = tmp_path / "garbage.pth"
    garbage.write_bytes(b"not a torch file")
    other = tmp_path / "other.pth"
    torch.save({"conv.weight": torch.zeros(1)}, other)
    renamed = tmp_path / "renamed.pth"
    state = torch.load(mnet[0], weights_only=True)
    state["module.ssh1.conv7X7_3.0.weight"] = state.pop("module.ssh1.conv7x7_3.0.weight")
    torch.save(state, renamed)
    reshaped = tmp_path / "reshaped.pth"
    state = torch.load(mnet[0], weights_only=True)
    state["module.BboxHead.0.conv1x1.weight"] = torch.zeros(8, 32, 1, 1)
    torch.save(state, reshaped)
    module = tmp_path / "module.pth"
    torch.save(nn.Linear(2, 2), module)
    cases = [
        (tmp_path / "absent.pth", "no such weights file"),
        (garbage, r"unreadable as a torch.save file \(Unsupported operand"),
        (module, "it pickles torch.nn.modules.linear.Linear, which a weights-only load refuses"),
        (other, r"not a RetinaFace state dict .* first keys: conv.weight"),
        (renamed, r"mobilenet0.25 layout: missing ssh1.conv7x7_3.0.weight \(1\); unexpected ssh1.conv7X7_3"),
        (reshaped, r"BboxHead.0.conv1x1.weight has shape \[8, 32, 1, 1\].* has \[8, 64, 1, 1\]"),
    ]
    for path, message in cases:
        with pytest.raises(ConfigError, match=message) as e:
            build_detector("retinaface", weights=str(path))
        assert str(path) in str(e.value) and "\n" not in str(e.value)


def test_prepare_from_the_command_line_with_detector_weights(
    mnet: tuple[Path, RetinaFace], astronaut: np.ndarray, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    from PIL import Image

    from facerep.commands.cli import main

    (tmp_path / "photos").mkdir()
    Image.fromarray(astronaut).save(tmp_path / "photos" / "astronaut.png")
    common = ["prepare", f"input={tmp_path / 'photos'}", "workers=1", "progress=false", "detector=retinaface"]
    rule = ["crop.min_face=20", "crop.min_score=0.5", "crop.max_faces=0"]
    assert main([*common, f"output_dir={tmp_path / 'crops'}", f"detector_weights={mnet[0]}", *rule]) == 0
    expected = build_detector("retinaface", weights=str(mnet[0]), min_face=20)(astronaut)
    stats = json.loads((tmp_path / "crops" / "crops-00000_stats.json").read_text())
    assert stats["faces"] == len(expected) > 0
    assert stats["crops"] == sum(d.score >= 0.5 and max(d.box[2:] - d.box[:2]) >= 20 for d in expected)
    capsys.readouterr()
    assert main([*common, f"output_dir={tmp_path / 'none'}", *rule]) == 2  # no weights: one line
    assert "face detector 'retinaface' needs weights=PATH" in capsys.readouterr().err
