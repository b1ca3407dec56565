"""``facerep finetune`` / ``evaluate`` from the command line on fixtures in official layouts (300W, LaPa),
drawn by the synthetic generator so the files hold faces with consistent ground truth."""

import json

import numpy as np
import pytest
from PIL import Image

from facerep.backbones.io import export_backbone
from facerep.backbones.vit import build_vit
from facerep.commands.cli import main
from facerep.data.synthetic import render_face

COMMON = [
    "data.image_size=64", "data.num_workers=0", "head.blocks=[0,1,2,3]", "head.channels=16",
    "train.epochs=1", "train.batch_size=2", "train.progress=log",
]  # fmt: skip


def write_300w(root):
    """HRNet lists: ``image_name, scale, center_w, center_h, original_i_x, original_i_y ...``."""
    header = ["image_name", "scale", "center_w", "center_h"]
    header += [c for i in range(68) for c in (f"original_{i}_x", f"original_{i}_y")]
    lists = {
        "train": ["afw/1.jpg", "afw/2.jpg", "afw/3.jpg", "afw/4.jpg"],
        "valid_common": ["helen/5.jpg"],
        "valid_challenge": ["ibug/6.jpg"],
    }
    for suffix, names in lists.items():
        rows = [",".join(header)]
        for name in names:
            face = render_face(7, int(name.split("/")[1][0]), 80)
            (root / "images" / name).parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(face.image).save(root / "images" / name)
            pts = face.landmarks + 2.0  # FaRL subtracts 2 from HRNet coordinates
            (x1, y1), (x2, y2) = pts.min(0), pts.max(0)
            scale = max(x2 - x1, y2 - y1) / 200
            rows.append(",".join([name, f"{scale}", f"{(x1 + x2) / 2}", f"{(y1 + y2) / 2}",
                                  *(f"{v:.3f}" for v in pts.reshape(-1))]))  # fmt: skip
        (root / f"face_landmarks_300w_{suffix}.csv").write_text("\n".join(rows) + "\n")


def write_lapa(root):
    """``{split}/images/*.jpg``, ``labels/*.png`` (class ids), ``landmarks/*.txt`` (106 points)."""
    for split, count in (("train", 4), ("test", 2)):
        for i in range(count):
            face = render_face(11, i + 10 * (split == "test"), 80)
            for sub in ("images", "labels", "landmarks"):
                (root / split / sub).mkdir(parents=True, exist_ok=True)
            Image.fromarray(face.image).save(root / split / "images" / f"{i}.jpg")
            Image.fromarray(face.mask).save(root / split / "labels" / f"{i}.png")
            pts = np.concatenate([face.landmarks, face.landmarks[:38]])  # 106 points (last 38 are stand-ins)
            lines = ["106", *(f"{x:.2f} {y:.2f}" for x, y in pts)]
            (root / split / "landmarks" / f"{i}.txt").write_text("\n".join(lines) + "\n")


@pytest.fixture(scope="module")
def backbone(tmp_path_factory):
    model = build_vit("vit_tiny_patch16_224", img_size=64, depth=4, embed_dim=64, num_heads=2)
    return export_backbone(model, tmp_path_factory.mktemp("backbone"))


@pytest.mark.slow
def test_300w_alignment_from_the_cli(tmp_path, backbone, capsys):
    write_300w(tmp_path / "300w")
    out = tmp_path / "ft"
    root = tmp_path / "300w"
    args = ["finetune", "task=alignment", "dataset=300w", f"data.root={root}", f"backbone={backbone}",
            f"output_dir={out}", *COMMON]  # fmt: skip
    assert main(args) == 0
    results = json.loads((out / "results.json").read_text())
    assert set(results["last"]) >= {"full", "common", "challenging"}
    assert results["last"]["full"]["nme"] > 0
    assert main(["evaluate", f"checkpoint={out / 'finetune.pt'}", "overlays=1"]) == 0
    assert "challenging" in capsys.readouterr().out
    assert (out / "eval" / "overlays" / "00000.png").exists()


@pytest.mark.slow
def test_lapa_parsing_with_tanh_warp_from_the_cli(tmp_path, backbone):
    write_lapa(tmp_path / "lapa")
    out = tmp_path / "ft"
    root = tmp_path / "lapa"
    args = ["finetune", "task=parsing", "dataset=lapa", f"data.root={root}", f"backbone={backbone}",
            f"output_dir={out}", "augment.warp=tanh", *COMMON]  # fmt: skip
    assert main(args) == 0
    results = json.loads((out / "results.json").read_text())
    assert 0.0 <= results["last"]["full"]["mean_f1"] <= 1.0 and "f1_hair" in results["last"]["full"]
    assert main(["evaluate", f"checkpoint={out / 'finetune.pt'}", "overlays=2"]) == 0
    assert len(list((out / "eval" / "overlays").glob("*.png"))) == 2


def write_rafdb(root):
    """``EmoLabel/list_patition_label.txt`` (labels 1..7) + ``Image/aligned/{stem}_aligned.jpg``."""
    entries = [(f"train_{i:05d}.jpg", 1 + i % 7) for i in range(1, 7)] + [
        ("test_0001.jpg", 4),
        ("test_0002.jpg", 7),
    ]
    (root / "EmoLabel").mkdir(parents=True)
    (root / "EmoLabel" / "list_patition_label.txt").write_text(
        "".join(f"{n} {label}\n" for n, label in entries)
    )
    (root / "Image" / "aligned").mkdir(parents=True)
    for i, (name, _) in enumerate(entries):
        image = Image.fromarray(render_face(5, i, 64).image)
        image.save(root / "Image" / "aligned" / name.replace(".jpg", "_aligned.jpg"))


@pytest.mark.slow
@pytest.mark.parametrize("probe", [False, True])
def test_rafdb_expression_classification_from_the_cli(tmp_path, backbone, probe):
    write_rafdb(tmp_path / "rafdb")
    out = tmp_path / "ft"
    root, probe_flag = tmp_path / "rafdb", f"train.probe={str(probe).lower()}"
    args = ["finetune", "task=classification", "dataset=rafdb", f"data.root={root}", f"backbone={backbone}",
            f"output_dir={out}", probe_flag, *COMMON]  # fmt: skip
    assert main(args) == 0
    results = json.loads((out / "results.json").read_text())
    assert results["primary_metric"] == "accuracy"
    assert {"accuracy", "mean_class_accuracy"} <= set(results["last"]["full"])
