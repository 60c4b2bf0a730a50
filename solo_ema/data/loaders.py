"""DataLoaders for pretraining (multi-crop batches with indexes) and for evaluation."""

from __future__ import annotations

import math
import os
from collections.abc import Iterator, Sequence

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, DistributedSampler, Subset

from solo_ema.data.augment import MultiViewTransform, build_view_transform, eval_transform
from solo_ema.data.datasets import DATASETS, DatasetInfo, IndexedDataset, build_dataset
from solo_ema.data.views import ViewRecipe

__all__ = ["EpochSampler", "build_eval_loader", "build_pretrain_loader", "pretrain_transform", "random_subset"]


def _info(dataset: str) -> DatasetInfo:
    """Return the DatasetInfo of `dataset` or raise a ValueError listing the valid names."""
    if dataset not in DATASETS:
        raise ValueError(f"unknown dataset '{dataset}'; valid names: {', '.join(sorted(DATASETS))}")
    return DATASETS[dataset]


def pretrain_transform(dataset: str, recipes: Sequence[ViewRecipe]) -> MultiViewTransform:
    """Build the multi-crop transform of `recipes`, normalised with the dataset's mean and std."""
    info = _info(dataset)
    if not recipes:
        raise ValueError("pretraining needs at least one ViewRecipe")
    return MultiViewTransform([(build_view_transform(r, info.mean, info.std), r.num_crops) for r in recipes])


def random_subset(dataset: Dataset, size: int | None, seed: int = 0) -> Dataset:
    """Keep a fixed, seeded random subset of `size` items (in their original order); None keeps all."""
    if size is None:
        return dataset
    n = len(dataset)  # type: ignore[arg-type]
    if size < 1:
        raise ValueError(f"subset size must be >= 1, got {size}")
    if size >= n:
        return dataset
    g = torch.Generator().manual_seed(seed)
    keep = torch.randperm(n, generator=g)[:size].sort().values.tolist()
    return Subset(dataset, keep)


class EpochSampler(DistributedSampler):
    """Training order and augmentation seeds as a function of (seed, epoch), so a resumed run replays them.

    Each epoch draws a permutation and one seed per image from a generator seeded with (seed, epoch); it yields
    (index, image seed) keys for `IndexedDataset`. With several processes (`shard`) each takes every
    world_size-th key of the order, padded to a multiple of world_size as DistributedSampler does (being one,
    Lightning keeps it instead of adding its own). `skip_batches` starts the next epoch that far in.
    """

    def __init__(self, dataset: Dataset, batch_size: int, seed: int = 0) -> None:
        """One process, epoch 0; `batch_size` sizes the skip of a resumed epoch."""
        super().__init__(dataset, num_replicas=1, rank=0, shuffle=True, seed=seed, drop_last=False)
        self.batch_size = int(batch_size)
        self.skip_batches = 0

    def shard(self, rank: int, world_size: int) -> None:
        """Read only this process's share of every epoch."""
        self.rank, self.num_replicas = int(rank), int(world_size)
        self.num_samples = math.ceil(len(self.dataset) / self.num_replicas)  # type: ignore[arg-type]
        self.total_size = self.num_samples * self.num_replicas

    def _key_tensors(self, epoch: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Image indexes and image seeds of this process in `epoch`, before any skip."""
        n = len(self.dataset)  # type: ignore[arg-type]
        state = np.random.SeedSequence([int(self.seed), int(epoch)]).generate_state(1, np.uint64)
        gen = torch.Generator().manual_seed(int(state[0]) >> 1)
        order = torch.randperm(n, generator=gen)
        seeds = torch.randint(0, 2**62, (n,), generator=gen)
        pad = self.total_size - n
        if pad:
            order, seeds = torch.cat([order, order[:pad]]), torch.cat([seeds, seeds[:pad]])
        mine = slice(self.rank, self.total_size, self.num_replicas)
        return order[mine], seeds[mine]

    def keys(self, epoch: int) -> list[tuple[int, int]]:
        """The (index, image seed) keys of this process in `epoch`, before any skip."""
        return list(zip(*(t.tolist() for t in self._key_tensors(epoch)), strict=True))

    def __iter__(self) -> Iterator[tuple[int, int]]:
        """This epoch's keys, past the skipped batches (the skip applies once)."""
        start, self.skip_batches = self.skip_batches * self.batch_size, 0
        order, seeds = self._key_tensors(self.epoch)
        for i in range(start, len(order), 4096):  # in chunks: no list of Python ints for a whole large epoch
            yield from zip(order[i : i + 4096].tolist(), seeds[i : i + 4096].tolist(), strict=True)

    def __len__(self) -> int:
        """Keys per process in a whole epoch (a resumed epoch yields fewer)."""
        return self.num_samples

    def batches_per_epoch(self) -> int:
        """Batches of a whole epoch on this process (the last partial batch dropped)."""
        return self.num_samples // self.batch_size


def build_pretrain_loader(
    dataset: str,
    train_path: str | os.PathLike | None,
    recipes: Sequence[ViewRecipe],
    batch_size: int,
    num_workers: int,
    download: bool = False,
    subset: int | None = None,
    seed: int = 0,
) -> DataLoader:
    """Build the shuffled pretraining loader; batches are [indexes, [crops, pipeline 0 first], targets].

    Its `EpochSampler` makes order and augmentations a function of (seed, epoch, position), whatever the workers;
    its own generator draws the workers' base seeds, so iterating it leaves the global random state alone (a
    run resumed inside an epoch, which starts that epoch's iterator again, keeps the uninterrupted run's state).
    """
    transform = pretrain_transform(dataset, recipes)
    data = random_subset(build_dataset(dataset, train_path, True, transform, download=download), subset, seed)
    if len(data) < batch_size:  # type: ignore[arg-type]
        raise ValueError(
            f"{dataset}: {len(data)} training images is fewer than batch_size={batch_size}; "  # type: ignore[arg-type]
            "with drop_last there would be no batch"
        )
    indexed = IndexedDataset(data)
    return DataLoader(
        indexed,
        batch_size=batch_size,
        sampler=EpochSampler(indexed, batch_size, seed),
        num_workers=num_workers,
        pin_memory=False,
        drop_last=True,
        persistent_workers=num_workers > 0,
        generator=torch.Generator().manual_seed(seed),
    )


def build_eval_loader(
    dataset: str,
    path: str | os.PathLike | None,
    train: bool,
    batch_size: int,
    num_workers: int,
    download: bool = False,
    subset: int | None = None,
    seed: int = 0,
) -> DataLoader:
    """Build a deterministic, unshuffled loader of (x, y) batches with the evaluation transform.

    Its own generator draws the workers' base seeds: iterating it leaves the global random state alone.
    """
    info = _info(dataset)
    transform = eval_transform(info.image_size, info.mean, info.std)
    data = random_subset(build_dataset(dataset, path, train, transform, download=download), subset, seed)
    return DataLoader(
        data,
        batch_size=batch_size,
        shuffle=False,
        num_workers=num_workers,
        pin_memory=False,
        drop_last=False,
        persistent_workers=num_workers > 0,
        generator=torch.Generator().manual_seed(seed),
    )
