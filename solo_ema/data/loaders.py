"""DataLoaders for pretraining (multi-crop batches with indexes) and for evaluation."""

from __future__ import annotations

import os
from collections.abc import Sequence

import torch
from torch.utils.data import DataLoader, Dataset, Subset

from solo_ema.data.augment import MultiViewTransform, ViewRecipe, build_view_transform, eval_transform
from solo_ema.data.datasets import DATASETS, DatasetInfo, IndexedDataset, build_dataset

__all__ = ["build_eval_loader", "build_pretrain_loader", "pretrain_transform", "random_subset"]


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
    """Build the shuffled pretraining loader; batches are [indexes, [crops, pipeline 0 first], targets]."""
    transform = pretrain_transform(dataset, recipes)
    data = random_subset(build_dataset(dataset, train_path, True, transform, download=download), subset, seed)
    if len(data) < batch_size:  # type: ignore[arg-type]
        raise ValueError(
            f"{dataset}: {len(data)} training images is fewer than batch_size={batch_size}; "  # type: ignore[arg-type]
            "with drop_last there would be no batch"
        )
    return DataLoader(
        IndexedDataset(data),
        batch_size=batch_size,
        shuffle=True,
        num_workers=num_workers,
        pin_memory=False,
        drop_last=True,
        persistent_workers=num_workers > 0,
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
    """Build a deterministic, unshuffled loader of (x, y) batches with the evaluation transform."""
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
    )
