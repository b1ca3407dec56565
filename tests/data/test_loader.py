"""The pre-training loader contract: shapes, determinism, exact resume, rank/worker splitting, RNG."""

from __future__ import annotations

import pickle
from collections import Counter
from dataclasses import replace
from itertools import islice

import pytest
import torch

from facerep.config import DataConfig
from facerep.data.loader import InfiniteShuffleSampler, build_pretrain_loader, dataset_length
from facerep.data.sources import DataError
from facerep.data.transforms import build_pretrain_transform
from facerep.data.views import BatchSpec


def _synthetic(n: int = 12, workers: int = 0) -> DataConfig:
    return DataConfig(
        source="synthetic", synthetic_length=n, synthetic_render_size=24, image_size=16, num_workers=workers
    )


def _batches(cfg: DataConfig, count: int, **kwargs) -> list[dict]:
    loader = build_pretrain_loader(cfg, **{"batch_size": 4, "seed": 7, "return_keys": True, **kwargs})
    return list(islice(loader, count))


def _images(batches: list[dict]) -> torch.Tensor:
    return torch.cat([b["views"][0] for b in batches])


def _two_views_two_masks(cfg: DataConfig) -> BatchSpec:
    flip = build_pretrain_transform(DataConfig(**{**cfg.__dict__, "hflip": 1.0}))
    return BatchSpec((build_pretrain_transform(cfg), flip), masks=2, num_patches=9)


def test_batch_shape_and_keys() -> None:
    (batch,) = _batches(_synthetic(), 1, batch_size=5)
    assert set(batch) == {"views", "masks", "skipped", "keys"}
    (view,) = batch["views"]
    assert view.shape == (5, 3, 16, 16) and view.dtype == torch.float32 and batch["masks"] == []
    assert batch["skipped"] == [] and all(k.startswith("synthetic:") for k in batch["keys"])
    plain = next(iter(build_pretrain_loader(_synthetic(), batch_size=2, seed=0)))
    assert set(plain) == {"views", "masks", "skipped"}


def test_the_pipeline_draws_the_views_and_masks_a_method_declares() -> None:
    cfg = _synthetic()
    spec = _two_views_two_masks(cfg)
    batches = _batches(cfg, 3, spec=spec)
    for batch in batches:
        first, flipped = batch["views"]
        assert first.shape == flipped.shape == (4, 3, 16, 16)
        assert len(batch["masks"]) == 2 and all(
            m.shape == (4, 9) and m.dtype == torch.int64 for m in batch["masks"]
        )
        for m in batch["masks"]:  # each row a permutation of the patch indices
            assert torch.equal(m.sort(dim=1).values, torch.arange(9).expand(4, -1))
        assert not torch.equal(batch["masks"][0], batch["masks"][1])  # drawn independently
    # view 2 (always flipped) is view 1 mirrored where view 1 was not flipped, else equal to it
    first, flipped = (torch.cat([b["views"][i] for b in batches]) for i in (0, 1))
    mirrored = [torch.equal(f, v.flip(-1)) for v, f in zip(first, flipped, strict=True)]
    same = [torch.equal(f, v) for v, f in zip(first, flipped, strict=True)]
    assert all(m or s for m, s in zip(mirrored, same, strict=True)) and any(mirrored) and any(same)
    # masks are a pure function of (seed, sample): the same with workers and after a resume
    masks = torch.cat([b["masks"][0] for b in batches])
    with_workers = _batches(_synthetic(workers=2), 3, spec=spec)
    assert torch.equal(torch.cat([b["masks"][0] for b in with_workers]), masks)
    resumed = _batches(cfg, 2, spec=spec, start_sample=4)
    assert torch.equal(torch.cat([b["masks"][0] for b in resumed]), masks[4:])


def test_same_seed_same_batches_other_seed_differs() -> None:
    a, b = _batches(_synthetic(), 4), _batches(_synthetic(), 4)
    assert torch.equal(_images(a), _images(b)) and [x["keys"] for x in a] == [x["keys"] for x in b]
    c = _batches(_synthetic(), 4, seed=8)
    assert [x["keys"] for x in a] != [x["keys"] for x in c]


def test_resume_and_worker_count_give_identical_stream() -> None:
    full = _batches(_synthetic(10), 8)  # 32 samples: crosses epochs 0..3 of 10 images
    flat_keys = [k for b in full for k in b["keys"]]
    assert Counter(flat_keys[:10]) == Counter(f"synthetic:{i}" for i in range(10))
    assert flat_keys[:10] != flat_keys[10:20]  # reshuffled per epoch
    workers = _batches(_synthetic(10, workers=2), 8)
    assert torch.equal(_images(workers), _images(full))
    for start, workers_n in ((8, 0), (13, 2)):  # resume at a batch boundary and mid-batch
        resumed = _batches(_synthetic(10, workers=workers_n), 4, start_sample=start)
        assert torch.equal(_images(resumed), _images(full)[start : start + 16])
        assert [k for b in resumed for k in b["keys"]] == flat_keys[start : start + 16]


def test_two_ranks_cover_each_index_once_per_epoch() -> None:
    for n in (12, 11):  # 11: one padded (wrapped) draw
        per_rank = -(-n // 2)
        keys = []
        for rank in (0, 1):
            (batch,) = _batches(_synthetic(n), 1, batch_size=per_rank, rank=rank, world_size=2)
            keys += batch["keys"]
        counts = Counter(keys)
        assert set(counts) == {f"synthetic:{i}" for i in range(n)}
        assert sum(counts.values()) == 2 * per_rank and max(counts.values()) == 1 + (n % 2)


def test_sampler_draw_ids() -> None:
    draws = [list(islice(InfiniteShuffleSampler(7, seed=1, rank=r, world_size=3), 6)) for r in range(3)]
    epoch0 = [d for rank in draws for d in rank[:3]]  # ceil(7 / 3) = 3 per rank, 2 padded draws
    assert set(epoch0) == set(range(7)) and len(epoch0) == 9
    assert all(7 <= d < 14 for rank in draws for d in rank[3:])  # epoch 1: e * N + index
    resumed = list(islice(InfiniteShuffleSampler(7, seed=1, rank=2, world_size=3, start_sample=4), 2))
    assert resumed == draws[2][4:6]


def test_building_and_iterating_keeps_global_rng(wds_shards) -> None:
    pattern, _, _ = wds_shards
    state = torch.get_rng_state()
    for cfg in (_synthetic(workers=0), _synthetic(workers=2)):
        loader = build_pretrain_loader(cfg, batch_size=4, seed=3)
        next(iter(loader))
        loader.close()
    wds = DataConfig(source="webdataset", path=pattern, image_size=8, num_workers=0)
    next(iter(build_pretrain_loader(wds, batch_size=4, seed=3)))
    assert torch.equal(state, torch.get_rng_state())


def _wds_keys(pattern: str, *, rank: int, batches: int, start: int = 0, buffer: int = 0) -> list[list[str]]:
    cfg = DataConfig(source="webdataset", path=pattern, image_size=8, num_workers=2, shuffle_buffer=buffer)
    loader = build_pretrain_loader(
        cfg, batch_size=5, seed=11, rank=rank, world_size=2, start_sample=start, return_keys=True
    )
    out = [b["keys"] for b in islice(loader, batches)]
    loader.close()
    return out


def test_webdataset_ranks_and_workers_split_shards(wds_shards) -> None:
    pattern, good, bad = wds_shards
    keys: list[str] = []
    for rank in (0, 1):
        batches = _wds_keys(pattern, rank=rank, batches=2)  # 2 workers x 1 shard of 5 good samples
        assert all(len({k.split(":")[0] for k in b}) == 1 for b in batches)  # a batch = one worker's shard
        keys += [k for b in batches for k in b]
    names = [k.rsplit(":", 1)[1] for k in keys]
    assert sorted(names) == sorted(good) and len(set(names)) == len(names)
    assert not set(names) & set(bad)


def test_webdataset_resume_matches_uninterrupted(wds_shards) -> None:
    pattern, _, _ = wds_shards
    full = _wds_keys(pattern, rank=1, batches=6, buffer=3)
    assert _wds_keys(pattern, rank=1, batches=3, start=15, buffer=3) == full[3:]


def test_webdataset_too_few_shards_for_the_workers_runs_fewer_workers(wds_shards, capsys) -> None:
    """``facerep prepare`` of a small folder writes one shard; the default 2 workers then become 1."""
    pattern, good, _ = wds_shards
    one = pattern.replace("{00000..00003}", "00000")
    loader = build_pretrain_loader(
        DataConfig(source="webdataset", path=one, image_size=8, num_workers=2), batch_size=5, seed=0,
        return_keys=True,
    )  # fmt: skip
    assert loader.loader.num_workers == 1
    assert capsys.readouterr().out == (
        "[facerep] data: 1 webdataset shard(s) over 1 rank(s): 1 loader worker(s) per rank instead of "
        "data.num_workers=2 (a worker reads whole shards)\n"
    )
    (batch,) = islice(loader, 1)
    loader.close()
    assert {k.rsplit(":", 1)[1] for k in batch["keys"]} <= {g for g in good if g.startswith("00000")}
    # 4 shards over 2 ranks x 3 workers: 2 workers each, said once (rank 0), and the split stays exact
    cfg = DataConfig(source="webdataset", path=pattern, image_size=8, num_workers=3)
    for rank in (0, 1):
        built = build_pretrain_loader(cfg, batch_size=2, seed=0, rank=rank, world_size=2)
        assert built.loader.num_workers == 2
    assert capsys.readouterr().out.count("\n") == 1
    assert build_pretrain_loader(replace(cfg, num_workers=0), batch_size=2, seed=0).loader.num_workers == 0
    assert capsys.readouterr().out == ""


def test_webdataset_fewer_shards_than_ranks(wds_shards) -> None:
    pattern, _, _ = wds_shards
    cfg = DataConfig(source="webdataset", path=pattern, num_workers=3)
    with pytest.raises(
        DataError, match=r"4 shard\(s\) cannot be split over 5 rank\(s\); need at least 5"
    ) as info:
        build_pretrain_loader(cfg, batch_size=2, seed=0, rank=0, world_size=5)
    assert "\n" not in str(info.value)
    assert dataset_length(cfg) is None


def test_bad_arguments() -> None:
    with pytest.raises(ValueError, match="rank"):
        build_pretrain_loader(_synthetic(), batch_size=2, seed=0, rank=2, world_size=2)
    with pytest.raises(ValueError, match="batch_size"):
        build_pretrain_loader(_synthetic(), batch_size=0, seed=0)


def test_datasets_pickle_for_spawned_workers(image_folder, wds_shards) -> None:
    root, _, _ = image_folder
    for cfg in (_synthetic(), DataConfig(source="folder", path=str(root), image_size=16)):
        dataset = build_pretrain_loader(cfg, batch_size=2, seed=5).dataset
        clone = pickle.loads(pickle.dumps(dataset))
        assert torch.equal(clone[3][0][0], dataset[3][0][0]) and clone[3][3] == dataset[3][3]
    wds = DataConfig(source="webdataset", path=wds_shards[0], image_size=8, num_workers=0)
    stream = pickle.loads(pickle.dumps(build_pretrain_loader(wds, batch_size=2, seed=5).dataset))
    assert next(iter(stream))[0][0].shape == (3, 8, 8)
