"""FRA's expression fine-tuning recipe (configs/finetune_rafdb_resnet50.yaml) against its ``main_fer.py``: the
normalisation, the train and test transforms, and an end-to-end run of the recipe on a tiny RAF-DB."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import torchvision.transforms as T
from PIL import Image

from facerep.commands.cli import main
from facerep.config import FinetuneConfig, PretrainConfig, load_config
from facerep.tasks import build_task

CONFIGS = Path(__file__).resolve().parents[2] / "configs"
RECIPE = CONFIGS / "finetune_rafdb_resnet50.yaml"
# FRA's data/transforms.py IMG_MEAN / IMG_STD["vggface2"], main_fer.py's --data_norm default
VGGFACE2_MEAN, VGGFACE2_STD = [0.5231, 0.4044, 0.3489], [0.2536, 0.2194, 0.2070]
AFFECTNET = ["dataset=affectnet", "data.sampler=balanced", "data.options.crop=image"]  # the README's variant


def fra_train(size: int) -> T.Compose:
    """main_fer.py's ``transform_train``, written with plain torchvision (v1) as FRA does."""
    return T.Compose([
        T.Resize([size, size]),
        T.RandomHorizontalFlip(),
        T.RandomApply([T.ColorJitter(brightness=0.5, contrast=0.5, saturation=0.5)], p=0.5),
        T.RandomApply([T.RandomAffine(0, translate=(0.2, 0.2))], p=0.5),
        T.RandomApply([T.RandomRotation(10)], p=0.5),
        T.ToTensor(),
        T.Normalize(mean=VGGFACE2_MEAN, std=VGGFACE2_STD),
        T.RandomErasing(),
    ])  # fmt: skip


def fra_test(size: int) -> T.Compose:
    """main_fer.py's ``transform_test``."""
    normalize = T.Normalize(mean=VGGFACE2_MEAN, std=VGGFACE2_STD)
    return T.Compose([T.Resize([size, size]), T.ToTensor(), normalize])


def recipe_transform(train: bool, *overrides: str):
    return build_task(load_config(FinetuneConfig, RECIPE, list(overrides))).transform(train)


def face(height: int, width: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)


@pytest.mark.parametrize("overrides", [[], AFFECTNET], ids=["rafdb", "affectnet"])
def test_recipe_normalises_with_fras_vggface2_statistics_as_its_pretraining(overrides):
    cfg = load_config(FinetuneConfig, RECIPE, overrides)
    augment = build_task(cfg).augment_config()
    assert augment.classify == "fra" and augment.hflip_prob == 0.5
    assert augment.mean == pytest.approx(VGGFACE2_MEAN) and augment.std == pytest.approx(VGGFACE2_STD)
    pretraining = load_config(PretrainConfig, CONFIGS / "fra_resnet50.yaml").data
    assert (augment.mean, augment.std) == (pretraining.mean, pretraining.std)
    assert cfg.data.image_size == 224


@pytest.mark.parametrize(("shape", "size", "seeds"), [((100, 100), 224, 4), ((20, 30), 24, 40)])
def test_train_transform_is_fras_chain_for_the_same_seed(shape, size, seeds):
    """RAF-DB's aligned 100 x 100 faces at the recipe's 224 px, and a tiny case over enough seeds that every
    random branch (each p = 0.5) is taken and skipped many times."""
    image = face(*shape)
    ours, theirs = recipe_transform(True, f"data.image_size={size}"), fra_train(size)
    outputs = []
    for seed in range(seeds):
        torch.manual_seed(seed)
        expected = theirs(Image.fromarray(image))
        torch.manual_seed(seed)
        got = ours({"image": image, "label": 3})
        assert torch.equal(got["image"], expected), f"seed {seed}"
        assert got["label"].item() == 3
        outputs.append(expected)
    assert len({o.sum().item() for o in outputs}) >= seeds * 3 // 4  # (all five ops skipped: p = 1/32)


def test_test_transform_is_resize_totensor_normalize():
    ours = recipe_transform(False)
    for shape in ((100, 100), (37, 23)):
        image = face(*shape, seed=1)
        assert torch.equal(ours({"image": image, "label": 0})["image"], fra_test(224)(Image.fromarray(image)))


def test_a_generator_drives_the_chain_and_leaves_the_global_rng_alone():
    image = face(20, 30, seed=2)
    transform = recipe_transform(True, "data.image_size=24")
    runs = []
    for global_seed in (0, 1):
        torch.manual_seed(global_seed)
        state = torch.get_rng_state()
        runs.append(transform({"image": image, "label": 0}, generator=torch.Generator().manual_seed(5)))
        assert torch.equal(torch.get_rng_state(), state)
    assert torch.equal(runs[0]["image"], runs[1]["image"])


def make_rafdb(root: Path) -> Path:
    """RAF-DB basic's layout with aligned 100 x 100 JPEGs: 4 train, 2 test faces."""
    entries = [("train_00001.jpg", 1), ("train_00002.jpg", 4), ("train_00003.jpg", 7), ("train_00004.jpg", 4),
               ("test_0001.jpg", 4), ("test_0002.jpg", 7)]  # fmt: skip
    (root / "EmoLabel").mkdir(parents=True)
    (root / "EmoLabel" / "list_patition_label.txt").write_text("".join(f"{n} {c}\n" for n, c in entries))
    (root / "Image" / "aligned").mkdir(parents=True)
    for i, (name, _) in enumerate(entries):
        path = root / "Image" / "aligned" / name.replace(".jpg", "_aligned.jpg")
        Image.fromarray(face(100, 100, seed=i)).save(path, format="JPEG")
    return root


@pytest.mark.slow
def test_recipe_fine_tunes_end_to_end_from_the_cli(tmp_path):
    root, out = make_rafdb(tmp_path / "rafdb"), tmp_path / "run"
    args = ["finetune", "-c", str(RECIPE), f"data.root={root}", f"output_dir={out}", "backbone_arch=resnet18",
            "data.image_size=32", "data.num_workers=0", "train.epochs=1", "train.batch_size=2",
            "train.progress=log"]  # fmt: skip
    assert main(args) == 0
    results = json.loads((out / "results.json").read_text())
    assert results["last"]["epoch"] == 1
    assert set(results["last"]["full"]) == {"accuracy", "mean_class_accuracy"}
    saved = load_config(FinetuneConfig, out / "config.yaml")
    assert saved.augment["classify"] == "fra" and saved.augment["mean"] == pytest.approx(VGGFACE2_MEAN)
