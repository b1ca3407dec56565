"""The pre-training data loader: an endless stream of batches of the views and masks a method declared.

Batches are ``{"views": [[B, 3, S, S], ...], "masks": [[B, L], ...], "skipped": [...]}`` (see
:mod:`facerep.data.views`); ``skipped`` names the bad inputs skipped or replaced while building them.
When the method's :class:`BatchSpec` has ``text``, they also hold ``"texts": [B, T]`` int64 (the
captions, tokenized) and ``"captions"`` (list of B strings); an image without a caption is skipped
(reported as ``"<name> (no caption)"``) or captioned ``""``, as ``data.missing_caption`` says.

Map-style sources (synthetic, folder, lmdb) are exactly deterministic and resumable: an infinite
sampler walks epochs ``e = 0, 1, ...``; epoch ``e`` is ``torch.randperm(N)`` under a generator seeded
from ``(seed, e)``, padded by wrapping to ``ceil(N / W) * W`` positions, and rank ``r`` of ``W`` takes
positions ``r, r + W, ...``. Each sample has a *draw id* ``e * N + index``; its augmentation is drawn
(views, then masks) under ``torch.manual_seed(mix(seed, draw))`` inside ``fork_rng``, so batches do not
depend on ``num_workers`` and ``start_sample`` (samples this rank already consumed) resumes exactly.

Webdataset shards are split by shard: every epoch the shard list is permuted with ``(seed, epoch)``,
rank ``r`` takes ``perm[r::W]`` and DataLoader worker ``w`` of ``K`` takes every ``K``-th of those, so
one epoch reads every shard exactly once. Where there are fewer than ``W * K`` shards (``facerep prepare`` of
fewer than 1,000 photos writes one), each rank runs ``K = shards // W`` workers instead (at least 1) and rank
0 prints one line saying so; fewer shards than ranks is a :class:`DataError`.
Samples without an image, or without a caption when captions are needed and skipped, are dropped from
the stream before the shuffle buffer. Resume skips ``start_sample`` samples of the rank's stream
without decoding them; it is exact when ``num_workers`` and ``batch_size`` are unchanged and
``start_sample`` is a multiple of ``batch_size`` (always true for a trainer consuming whole batches),
except that each image in the skipped prefix that only fails at decode time (e.g. truncated) shifts
the resumed stream by one sample.

Fine-tuning's class-balanced order (``data.sampler=balanced``) is :class:`BalancedSampler` here too, fed by
:func:`class_labels` (a downstream dataset's ``labels()``, read without decoding images).
"""

from __future__ import annotations

import hashlib
import math
import random
from collections import deque
from collections.abc import Iterable, Iterator, Sequence
from itertools import islice
from typing import Any

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset, IterableDataset, Sampler, get_worker_info

import facerep
from facerep.config import ConfigError, DataConfig
from facerep.data.sources import (
    NO_CAPTION,
    DataError,
    MapSource,
    WebDatasetSource,
    build_source,
    load_item_with_fallback,
)
from facerep.data.transforms import BadImage, build_pretrain_transform
from facerep.data.views import BatchSpec, draw_sample, stack_views

_MASK64 = (1 << 64) - 1
# Consecutive undecodable webdataset samples after which the stream is declared unreadable.
WDS_MAX_CONSECUTIVE_BAD = 1000

# (views [3, S, S] each, masks [L] each, skipped names, name of the loaded item, caption, its ids [T]);
# caption and ids are None unless the spec asks for text.
Sample = tuple[list[Tensor], list[Tensor], list[str], str, str | None, Tensor | None]


def mix_seed(*values: int) -> int:
    """Deterministic 63-bit seed from integers (splitmix64 chain; not Python's salted ``hash``)."""
    h = 0x9E3779B97F4A7C15
    for v in values:
        h = (h ^ (int(v) & _MASK64)) & _MASK64
        h = (h + 0x9E3779B97F4A7C15) & _MASK64
        h = ((h ^ (h >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
        h = ((h ^ (h >> 27)) * 0x94D049BB133111EB) & _MASK64
        h ^= h >> 31
    return h >> 1


def _str_hash(text: str) -> int:
    return int.from_bytes(hashlib.blake2b(text.encode("utf-8"), digest_size=8).digest(), "little")


class InfiniteShuffleSampler(Sampler[int]):
    """Endless stream of draw ids ``e * N + index`` for one rank (see the module docstring).

    Starts at this rank's sample ``start_sample``; each epoch gives every rank ``ceil(N / W)`` draws.
    """

    def __init__(
        self, n: int, *, seed: int, rank: int = 0, world_size: int = 1, start_sample: int = 0
    ) -> None:
        if n <= 0:
            raise ValueError(f"sampler needs a non-empty dataset, got n={n}")
        self.n, self.seed, self.rank, self.world_size = n, seed, rank, world_size
        self.start_sample = start_sample
        self.per_rank = math.ceil(n / world_size)

    def epoch_order(self, epoch: int) -> list[int]:
        """The permutation of ``range(N)`` all ranks share in ``epoch``."""
        gen = torch.Generator().manual_seed(mix_seed(self.seed, epoch))
        return torch.randperm(self.n, generator=gen).tolist()

    def __iter__(self) -> Iterator[int]:
        epoch, pos = divmod(self.start_sample, self.per_rank)
        while True:
            order = self.epoch_order(epoch)
            base = epoch * self.n
            for j in range(pos, self.per_rank):
                yield base + order[(self.rank + j * self.world_size) % self.n]
            epoch, pos = epoch + 1, 0


class BalancedSampler(Sampler[int]):
    """Class-balanced fine-tuning order for one rank (the ``ImbalancedDatasetSampler`` of FRA's and DAN's
    reference code, made deterministic and DDP-aware).

    Each epoch draws ``num_samples`` (default ``len(labels)``) indices with replacement, index ``i`` with
    probability proportional to ``1 / count(labels[i])``: every class present is drawn equally often in
    expectation, and the samples of a class uniformly. The draw of epoch ``e`` is the same on every rank
    (a generator seeded with ``mix_seed(seed, e)``), padded by wrapping to ``ceil(n / W) * W`` positions;
    rank ``r`` of ``W`` takes positions ``r, r + W, ...``, so the ranks' shares are disjoint and together
    cover the draw, and a run resumed at epoch ``e`` draws exactly what it would have. Call
    :meth:`set_epoch` before iterating (as for ``DistributedSampler``).
    """

    def __init__(
        self,
        labels: Sequence[int] | np.ndarray,
        *,
        seed: int = 0,
        rank: int = 0,
        world_size: int = 1,
        num_samples: int | None = None,
    ) -> None:
        labels = np.asarray(labels)
        if labels.ndim != 1 or labels.size == 0 or not np.issubdtype(labels.dtype, np.integer):
            raise ValueError(f"BalancedSampler needs a non-empty 1-D array of class ids, got {labels.shape}")
        if labels.min() < 0:
            raise ValueError(f"BalancedSampler: class ids must be >= 0, got {labels.min()}")
        if not 0 <= rank < world_size:
            raise ValueError(f"BalancedSampler: rank {rank} is not in [0, {world_size})")
        self.class_counts = np.bincount(labels)
        self.weights = torch.from_numpy(1.0 / self.class_counts[labels])  # float64 [N]
        self.num_samples = len(labels) if num_samples is None else int(num_samples)
        self.seed, self.rank, self.world_size, self.epoch = seed, rank, world_size, 0
        self.per_rank = math.ceil(self.num_samples / world_size)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def epoch_draw(self, epoch: int) -> Tensor:
        """The ``num_samples`` indices (int64) all ranks share in ``epoch``."""
        gen = torch.Generator().manual_seed(mix_seed(self.seed, epoch))
        return torch.multinomial(self.weights, self.num_samples, replacement=True, generator=gen)

    def __iter__(self) -> Iterator[int]:
        draw = self.epoch_draw(self.epoch)
        positions = torch.arange(self.rank, self.per_rank * self.world_size, self.world_size)
        return iter(draw[positions % self.num_samples].tolist())

    def __len__(self) -> int:
        return self.per_rank


def class_labels(dataset: Any, name: str) -> np.ndarray:
    """One class id per sample of a downstream ``dataset`` (its ``labels()``, read without decoding images)
    for :class:`BalancedSampler`; a one-line :class:`~facerep.config.ConfigError` when it has none."""
    why = None
    task = facerep.find_task(getattr(dataset, "task", None))  # the task its labels are for
    if task is None or not task.balanced_sampling:
        why = f"it is a {getattr(dataset, 'task', '?')} dataset"
    elif getattr(dataset, "multi_label", False):
        why = f"it is multi-label ({len(dataset.attribute_names)} attributes)"
    elif not callable(getattr(dataset, "labels", None)):
        why = "it does not list its labels (labels())"
    if why is not None:
        raise ConfigError(
            f"data.sampler=balanced needs one class label per training sample; dataset={name}: {why}"
        )
    return np.asarray(dataset.labels(), dtype=np.int64).reshape(len(dataset))


def _tokens(spec: BatchSpec, caption: str | None) -> Tensor | None:
    return spec.text(caption) if spec.text is not None and caption is not None else None


class MapStyleDataset(Dataset):
    """Draw id -> :data:`Sample` for a :class:`MapSource` (captions read only when ``spec.text`` is set)."""

    def __init__(self, source: MapSource, spec: BatchSpec, seed: int, missing_caption: str = "skip") -> None:
        self.source, self.spec, self.seed = source, spec, seed
        self.missing_caption = missing_caption

    def __len__(self) -> int:
        return len(self.source)

    def __getitem__(self, draw: int) -> Sample:
        policy = self.missing_caption if self.spec.text is not None else None
        img, caption, used, skipped = load_item_with_fallback(self.source, draw % len(self.source), policy)
        views, masks = draw_sample(self.spec, img, mix_seed(self.seed, draw))
        return views, masks, skipped, self.source.name(used), caption, _tokens(self.spec, caption)


def _shuffle_buffer(items: Iterable[Any], size: int, rng: random.Random) -> Iterator[Any]:
    """Reservoir-style shuffle of a stream with a buffer of ``size`` items (``size <= 1``: no-op)."""
    if size <= 1:
        yield from items
        return
    buf: list[Any] = []
    for item in items:
        if len(buf) < size:
            buf.append(item)
            continue
        j = rng.randrange(size)
        yield buf[j]
        buf[j] = item
    rng.shuffle(buf)
    yield from buf


class WebDatasetStream(IterableDataset):
    """Endless, shard-split sample stream of one rank (see the module docstring); yields ``Sample`` s."""

    def __init__(
        self,
        source: WebDatasetSource,
        spec: BatchSpec,
        *,
        seed: int,
        rank: int,
        world_size: int,
        batch_size: int,
        start_sample: int,
        shuffle_buffer: int,
        missing_caption: str = "skip",
    ) -> None:
        super().__init__()
        self.source, self.spec, self.seed = source, spec, seed
        self.rank, self.world_size, self.batch_size = rank, world_size, batch_size
        self.start_sample, self.shuffle_buffer = start_sample, shuffle_buffer
        self.missing_caption = missing_caption

    def _raw(self, worker: int, num_workers: int, pending: list[str]) -> Iterator[tuple[int, dict[str, Any]]]:
        """``(epoch, raw sample)`` of logical worker ``worker``; cheaply detected bad ones (no image, or
        no caption when those are skipped) go to pending."""
        shards = self.source.shards
        need_caption = self.spec.text is not None and self.missing_caption == "skip"
        epoch = 0
        while True:
            gen = torch.Generator().manual_seed(mix_seed(self.seed, epoch))
            order = [shards[i] for i in torch.randperm(len(shards), generator=gen).tolist()]
            mine = order[self.rank :: self.world_size][worker::num_workers]
            good = uncaptioned = 0
            for url in mine:
                for sample in self.source.shard_samples(url, pending.append):
                    try:
                        WebDatasetSource.image_bytes(sample)
                    except BadImage as err:
                        pending.append(err.name)
                        continue
                    if need_caption and WebDatasetSource.caption(sample) is None:
                        pending.append(WebDatasetSource.sample_name(sample) + NO_CAPTION)
                        uncaptioned += 1
                        if uncaptioned >= WDS_MAX_CONSECUTIVE_BAD:
                            raise self._no_captions(uncaptioned, sample)
                        continue
                    good, uncaptioned = good + 1, 0
                    yield epoch, sample
            if good == 0:
                if uncaptioned:
                    raise self._no_captions(uncaptioned, None)
                raise DataError(
                    f"webdataset source: no readable samples in {len(mine)} shard(s) starting "
                    f"{mine[0] if mine else None} (rank {self.rank}, worker {worker}, epoch {epoch})"
                )
            epoch += 1

    def _no_captions(self, count: int, last: dict[str, Any] | None) -> DataError:
        upto = f" up to {WebDatasetSource.sample_name(last)}" if last is not None else ""
        return DataError(
            f"webdataset source: {count} consecutive samples without a caption{upto}; captions are read "
            f'from {self.source.captions_from} (data.missing_caption=empty uses "" instead)'
        )

    def __iter__(self) -> Iterator[Sample]:
        info = get_worker_info()
        num_workers, physical = (info.num_workers, info.id) if info is not None else (1, 0)
        full, rem = divmod(self.start_sample, self.batch_size)
        # The DataLoader asks workers for batches round-robin from worker 0, so after `full` batches the
        # next batch belonged to worker `full % K`: rotate so physical worker 0 plays that one.
        worker = (physical + full) % num_workers
        skip = len(range(worker, full, num_workers)) * self.batch_size + (
            rem if worker == full % num_workers else 0
        )
        pending: list[str] = []
        rng = random.Random(mix_seed(self.seed, self.rank, worker, num_workers, 0x5EED))
        stream = _shuffle_buffer(self._raw(worker, num_workers, pending), self.shuffle_buffer, rng)
        if skip:
            deque(islice(stream, skip), maxlen=0)
            pending.clear()  # already reported before the resume point
        bad_run = 0
        for epoch, sample in stream:
            name = WebDatasetSource.sample_name(sample)
            try:
                img = WebDatasetSource.decode(sample)
            except BadImage as err:
                pending.append(err.name)
                bad_run += 1
                if bad_run >= WDS_MAX_CONSECUTIVE_BAD:
                    raise DataError(
                        f"webdataset source: {bad_run} consecutive undecodable samples up to {name} "
                        f"(last: {err.reason}); the data looks unreadable"
                    ) from None
                continue
            bad_run = 0
            seed = mix_seed(
                self.seed, epoch, _str_hash(sample.get("__url__", "")), _str_hash(sample["__key__"])
            )
            views, masks = draw_sample(self.spec, img, seed)
            caption = (WebDatasetSource.caption(sample) or "") if self.spec.text is not None else None
            skipped, pending[:] = list(pending), []
            yield views, masks, skipped, name, caption, _tokens(self.spec, caption)


class CollateBatch:
    """``Sample`` s -> ``{"views": [...], "masks": [...], "skipped": [...]}`` (+ ``"texts"`` ``[B, T]`` and
    ``"captions"`` when the samples carry them, + ``"keys"`` if asked)."""

    def __init__(self, return_keys: bool = False) -> None:
        self.return_keys = return_keys

    def __call__(self, samples: list[Sample]) -> dict[str, Any]:
        views, masks = stack_views([(s[0], s[1]) for s in samples])
        batch: dict[str, Any] = {
            "views": views,
            "masks": masks,
            "skipped": [name for s in samples for name in s[2]],
        }
        if samples and samples[0][5] is not None:
            batch["texts"] = torch.stack([s[5] for s in samples])
            batch["captions"] = [s[4] for s in samples]
        if self.return_keys:
            batch["keys"] = [s[3] for s in samples]
        return batch


def _one_line_data_error(err: DataError) -> DataError:
    """A worker's DataError arrives with a traceback in its message; keep the original one line."""
    lines = [line.strip() for line in str(err).splitlines() if line.strip()]
    if len(lines) <= 1:
        return err
    last = lines[-1]
    marker = "DataError: "
    return DataError(last.split(marker, 1)[1] if marker in last else last)


class PretrainLoader:
    """Iterable of batches that never ends; each ``iter()`` restarts at ``start_sample``.

    Attributes: ``source``, ``dataset``, ``loader`` (the torch ``DataLoader``).
    """

    def __init__(self, source: MapSource | WebDatasetSource, dataset: Dataset, loader: DataLoader) -> None:
        self.source, self.dataset, self.loader = source, dataset, loader

    def __iter__(self) -> Iterator[dict[str, Any]]:
        it = iter(self.loader)
        while True:
            failure: Exception | None = None
            try:
                batch = next(it)
            except DataError as err:
                failure = _one_line_data_error(err)
            except StopIteration:  # cannot happen: both datasets are endless
                failure = RuntimeError("pre-training data stream ended unexpectedly")
            if failure is not None:
                # Stop the workers now: if the iterator were only freed later by the cycle collector
                # (exception tracebacks keep it alive), its queues could be finalised before the
                # workers are told to exit, and shutdown would hang for the join timeouts.
                self.close(it)
                raise failure
            yield batch

    def close(self, it: Any = None) -> None:
        """Shut down the worker processes (a later ``iter()`` starts fresh ones)."""
        it = it if it is not None else getattr(self.loader, "_iterator", None)
        shutdown = getattr(it, "_shutdown_workers", None)
        if shutdown is not None:
            shutdown()
        if getattr(self.loader, "_iterator", None) is it:
            self.loader._iterator = None


def shard_workers(cfg: DataConfig, shards: int, num_workers: int, rank: int, world_size: int) -> int:
    """The DataLoader workers a rank runs over ``shards`` webdataset shards: ``num_workers`` where every
    worker of every rank gets a shard, else as many as the rank's share of shards (at least 1; rank 0 prints
    one line saying so); fewer shards than ranks is a one-line :class:`DataError`."""
    if shards < world_size:
        raise DataError(
            f"webdataset source {cfg.path!r}: {shards} shard(s) cannot be split over {world_size} rank(s); "
            f"need at least {world_size} shards"
        )
    if shards >= world_size * max(1, num_workers):
        return num_workers
    fewer = max(1, shards // world_size)
    if rank == 0:
        print(
            f"[facerep] data: {shards} webdataset shard(s) over {world_size} rank(s): {fewer} loader "
            f"worker(s) per rank instead of data.num_workers={num_workers} (a worker reads whole shards)",
            flush=True,
        )
    return fewer


def build_pretrain_loader(
    cfg: DataConfig,
    *,
    spec: BatchSpec | None = None,
    batch_size: int,
    seed: int,
    rank: int = 0,
    world_size: int = 1,
    start_sample: int = 0,
    pin_memory: bool = False,
    drop_last: bool = True,
    return_keys: bool = False,
) -> PretrainLoader:
    """Endless loader of ``{"views": [[B, 3, S, S] float32, ...], "masks": [[B, L] int64, ...],
    "skipped": list[str]}`` batches (+ ``"texts": [B, T]`` int64 and ``"captions": list[str]`` when
    ``spec.text`` is set).

    ``spec`` is what the method needs (default: one view through :func:`build_pretrain_transform`, no
    masks, no text). ``skipped`` names the bad inputs skipped or replaced while building that batch.
    ``start_sample`` is the number of samples this rank already consumed. ``return_keys`` adds
    ``"keys"``: the name of each sample's image (for tests and debugging). Building (and iterating) the
    loader does not touch torch's global RNG.
    """
    if batch_size <= 0:
        raise ValueError(f"batch_size must be positive, got {batch_size}")
    if world_size <= 0 or not 0 <= rank < world_size:
        raise ValueError(f"need 0 <= rank < world_size, got rank={rank}, world_size={world_size}")
    if start_sample < 0:
        raise ValueError(f"start_sample must be >= 0, got {start_sample}")
    num_workers = max(0, int(cfg.num_workers))
    source = build_source(cfg)
    spec = spec or BatchSpec((build_pretrain_transform(cfg),))
    kwargs: dict[str, Any] = {}
    if isinstance(source, WebDatasetSource):
        num_workers = shard_workers(cfg, len(source.shards), num_workers, rank, world_size)
        dataset: Dataset = WebDatasetStream(
            source,
            spec,
            seed=seed,
            rank=rank,
            world_size=world_size,
            batch_size=batch_size,
            start_sample=start_sample,
            shuffle_buffer=int(cfg.shuffle_buffer),
            missing_caption=cfg.missing_caption,
        )
    else:
        dataset = MapStyleDataset(source, spec, seed, cfg.missing_caption)
        kwargs["sampler"] = InfiniteShuffleSampler(
            len(source), seed=seed, rank=rank, world_size=world_size, start_sample=start_sample
        )
    loader = DataLoader(
        dataset,
        batch_size=batch_size,
        num_workers=num_workers,
        collate_fn=CollateBatch(return_keys),
        pin_memory=pin_memory,
        drop_last=drop_last,
        persistent_workers=num_workers > 0,
        generator=torch.Generator().manual_seed(seed),
        **kwargs,
    )
    return PretrainLoader(source, dataset, loader)


def dataset_length(cfg: DataConfig) -> int | None:
    """Images in one epoch of ``cfg``'s source; ``None`` for webdataset unless img2dataset
    ``<shard>_stats.json`` files give the count."""
    source = build_source(cfg)
    if isinstance(source, WebDatasetSource):
        return source.local_length()
    return len(source)
