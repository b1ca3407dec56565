"""``facerep zeroshot`` end to end with a tiny random CLIP written by ``save_clip``: attributes, classes,
retrieval on synthetic and folder captions, normalisation, one-line errors."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from facerep.apps.zeroshot import CLIP_MEAN, CLIP_STD
from facerep.backbones import build_vit
from facerep.commands.cli import main
from facerep.commands.zeroshot import ZeroShotConfig
from facerep.config import load_config
from facerep.data.synthetic import ATTRIBUTES
from facerep.models.clip import CLIPModel, save_clip
from facerep.models.text import TextArch

CONFIGS = Path(__file__).resolve().parents[2] / "configs"
FAST = ["num_workers=0", "device=cpu", "batch_size=16"]
RUN_MEAN, RUN_STD = [0.5, 0.4, 0.3], [0.2, 0.25, 0.3]


@pytest.fixture(scope="module")
def clip_files(tmp_path_factory) -> dict[str, Path]:
    """A tiny random CLIP (ViT 1 block at 32 px, text 1 block): ``"run"`` records a mean/std as a FaRL run
    does, ``"plain"`` records none (as released files)."""
    torch.manual_seed(0)
    visual = build_vit("vit_tiny_patch16_224", img_size=32, depth=1, embed_dim=64, num_heads=1, pre_norm=True,
                       act="quick_gelu", norm_eps=1e-5)  # fmt: skip
    model = CLIPModel(visual, TextArch(context_length=24, width=64, layers=1, heads=1, embed_dim=32))
    root = tmp_path_factory.mktemp("clip")
    (root / "run").mkdir()
    run = save_clip(model, root / "run" / "clip.safetensors", extra={"mean": RUN_MEAN, "std": RUN_STD})
    return {"run": run, "plain": save_clip(model, root / "plain.safetensors")}


def zeroshot(*args: str) -> int:
    return main(["zeroshot", *args, *FAST])


def in_unit_range(values) -> bool:
    return all(v is None or 0.0 <= v <= 1.0 for v in values)


def test_synthetic_attributes(clip_files, tmp_path, capsys):
    out = tmp_path / "out"
    assert zeroshot(f"backbone={clip_files['run']}", "dataset=synthetic_attributes", "length=24",
                    f"output_dir={out}") == 0  # fmt: skip
    result = json.loads((out / "zeroshot.json").read_text())
    assert (out / "config.yaml").is_file()
    assert {"dataset", "split", "backbone", "image_size", "normalize", "task", "num_samples", "zeroshot",
            "baseline", "baseline_rule", "prompts", "config"} <= set(result)  # fmt: skip
    assert result["task"] == "attributes" and result["num_samples"] == 24 and result["image_size"] == 32
    assert result["normalize"] == {"mean": RUN_MEAN, "std": RUN_STD, "from": "recorded in clip.safetensors"}
    ours, base = result["zeroshot"]["full"], result["baseline"]["full"]
    assert set(ours) == set(base)
    for key in ("mean_accuracy", "mean_balanced_accuracy", "mean_auc"):
        assert 0.0 <= ours[key] <= 1.0
    assert {f"{m}_{a}" for m in ("acc", "bacc", "auc") for a in ATTRIBUTES} <= set(ours)
    assert in_unit_range(ours.values()) and in_unit_range(base.values())
    assert base["mean_balanced_accuracy"] == 0.5 and base["mean_auc"] == 0.5
    assert set(result["prompts"]) == set(ATTRIBUTES)
    printed = capsys.readouterr().out
    assert "balanced acc." in printed and "ROC-AUC" in printed and "majority" in printed


def test_captions_retrieval_synthetic(clip_files, tmp_path, capsys):
    out = tmp_path / "out"
    # backbone = a run directory: its clip.safetensors is read
    assert zeroshot(f"backbone={clip_files['run'].parent}", "dataset=captions", "length=20",
                    f"output_dir={out}") == 0  # fmt: skip
    result = json.loads((out / "zeroshot.json").read_text())
    assert result["task"] == "retrieval" and result["source"] == "synthetic"
    assert result["num_images"] == 20 and 1 <= result["num_texts"] <= 20
    assert {"hit_rule", "baseline_rule", "skipped"} <= set(result)
    for part in ("zeroshot", "baseline"):
        assert set(result[part]) == {"image_to_text", "text_to_image"}
        for recalls in result[part].values():
            assert set(recalls) == {"recall@1", "recall@5", "recall@10"} and in_unit_range(recalls.values())
    assert result["baseline"]["image_to_text"]["recall@1"] == pytest.approx(1 / result["num_texts"])
    printed = capsys.readouterr().out
    assert "image->text" in printed and "identical" in printed


def test_captions_folder_with_duplicates_and_an_uncaptioned_image(clip_files, tmp_path):
    folder = tmp_path / "faces"
    folder.mkdir()
    for i, caption in enumerate(["a smiling person.", "a person wearing a hat.", "a smiling person.", None]):
        Image.fromarray(np.full((20, 24, 3), 40 * i, dtype=np.uint8)).save(folder / f"{i}.png")
        if caption is not None:
            (folder / f"{i}.txt").write_text(caption + "\n")
    out = tmp_path / "out"
    assert zeroshot(f"backbone={clip_files['plain']}", "dataset=captions", "source=folder", f"path={folder}",
                    f"output_dir={out}") == 0  # fmt: skip
    result = json.loads((out / "zeroshot.json").read_text())
    assert result["num_images"] == 3 and result["num_texts"] == 2
    assert result["skipped"] == {"no_caption": 1, "unreadable": 0}
    assert result["baseline"]["image_to_text"] == {"recall@1": 0.5, "recall@5": 1.0, "recall@10": 1.0}
    # "a smiling person." is 2 of 3 images: found at k = 1 with 2/3; the hat 1/3; mean 1/2
    assert result["baseline"]["text_to_image"]["recall@1"] == pytest.approx(0.5)
    assert result["normalize"] == {"mean": list(CLIP_MEAN), "std": list(CLIP_STD), "from": "clip"}


def test_generic_single_label_with_named_classes_and_prompt_override(clip_files, tmp_path, capsys):
    root = tmp_path / "expr"
    root.mkdir()
    rows = ["image,label"]
    for i, label in enumerate([0, 1, 1, 1, 0]):
        Image.fromarray(np.full((16, 16, 3), 50 * i, dtype=np.uint8)).save(root / f"{i}.png")
        rows.append(f"{i}.png,{label}")
    (root / "labels.csv").write_text("\n".join(rows) + "\n")
    out = tmp_path / "out"
    assert zeroshot(f"backbone={clip_files['plain']}", "dataset=generic", f"root={root}",
                    "options.classes=[happy,sad]", "prompts.sad=[sad,unhappy]", "normalize=imagenet",
                    f"output_dir={out}") == 0  # fmt: skip
    result = json.loads((out / "zeroshot.json").read_text())
    assert result["task"] == "classification" and result["num_samples"] == 5
    assert set(result["zeroshot"]["full"]) == {"accuracy", "mean_class_accuracy"}
    assert result["baseline"]["full"] == {"accuracy": 0.6, "mean_class_accuracy": 0.5}
    assert "a photo of a unhappy face." in result["prompts"]["sad"]
    assert result["normalize"]["from"] == "imagenet"
    assert "class prior" in capsys.readouterr().out


def test_celeba_config_on_a_tiny_celeba_layout(clip_files, tmp_path):
    root = tmp_path / "celeba"
    (root / "img_align_celeba").mkdir(parents=True)
    names = list(load_config(ZeroShotConfig, CONFIGS / "zeroshot_celeba_attr.yaml").prompts)
    lines = ["3", " ".join(names)]
    for i in range(3):
        Image.fromarray(np.full((22, 18, 3), 60 * i, dtype=np.uint8)).save(
            root / "img_align_celeba" / f"{i}.jpg"
        )
        lines.append(f"{i}.jpg " + " ".join("1" if (i + a) % 2 else "-1" for a in range(len(names))))
    (root / "list_attr_celeba.txt").write_text("\n".join(lines) + "\n")
    (root / "list_eval_partition.txt").write_text("".join(f"{i}.jpg 2\n" for i in range(3)))
    out = tmp_path / "out"
    assert zeroshot("-c", str(CONFIGS / "zeroshot_celeba_attr.yaml"), f"backbone={clip_files['plain']}",
                    f"root={root}", f"output_dir={out}") == 0  # fmt: skip
    result = json.loads((out / "zeroshot.json").read_text())
    assert result["prompts"]["Male"]["negative"][0] == "a photo of a woman."
    assert len([k for k in result["zeroshot"]["full"] if k.startswith("auc_")]) == 40


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["dataset=imagenet", "backbone=x"], "dataset must be one of celeba_attr, rafdb, affectnet, generic"),
        (["dataset=rafdb"], "needs backbone=PATH"),
        (["backbone={plain}"], "needs dataset=NAME"),
        (["dataset=rafdb", "backbone={missing}"], "checkpoint file not found"),
        (["dataset=synthetic_attributes", "backbone={plain}", "prompts.glasses=[]"], "no prompts for class"),
        (["dataset=synthetic_attributes", "backbone={plain}", "prompts.specs=[x]"], "has no class 'specs'"),
        (["dataset=captions", "backbone={plain}", "source=folder"], "source=folder needs path=DIR"),
        (["dataset=synthetic_attributes", "backbone={plain}", "normalize=custom"], "normalize=custom needs"),
        (
            ["dataset=rafdb", "backbone={plain}", "mean=[0.5,0.5,0.5]"],
            "mean and std apply with normalize=custom",
        ),
    ],
)
def test_one_line_errors_and_nothing_written(args, message, clip_files, tmp_path, capsys):
    out = tmp_path / "out"
    paths = {"plain": clip_files["plain"], "missing": tmp_path / "nope.safetensors"}
    assert zeroshot(*(a.format(**paths) for a in args), f"output_dir={out}") == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("facerep: error: ") and message in err and len(err.splitlines()) == 1
    assert not out.exists()


def test_help_describes_the_command(capsys):
    with pytest.raises(SystemExit):
        main(["zeroshot", "--help"])
    text = capsys.readouterr().out
    assert "dataset=captions" in text and "recall@1/5/10" in text and "-c CONFIG" in text


def test_output_dir_default_and_override_hold_every_output(clip_files, tmp_path, monkeypatch, capsys):
    """Without ``output_dir`` the results land in ``runs/zeroshot/<dataset>`` (of the working directory);
    with it, there and nowhere else; both written whole (no temporaries left)."""
    monkeypatch.chdir(tmp_path)
    args = (f"backbone={clip_files['run']}", "dataset=captions", "length=8")
    assert zeroshot(*args) == 0
    default = tmp_path / "runs" / "zeroshot" / "captions"
    assert sorted(p.name for p in default.iterdir()) == ["config.yaml", "zeroshot.json"]
    out = tmp_path / "elsewhere" / "zs"
    assert zeroshot(*args, f"output_dir={out}") == 0
    assert sorted(p.name for p in out.iterdir()) == ["config.yaml", "zeroshot.json"]
    assert json.loads((out / "zeroshot.json").read_text())["config"]["output_dir"] == str(out)
    assert f"wrote {out / 'zeroshot.json'}" in capsys.readouterr().out
    assert sorted(p.name for p in (tmp_path / "runs" / "zeroshot").iterdir()) == ["captions"]
