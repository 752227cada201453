"""Batching for training: collate (image, metadata) pairs and draw endless shuffled batches."""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import pandas as pd
import torch

from medi_core.data.dataset import PatchDataset
from medi_core.errors import DatasetError
from medi_core.metadata import CLASS_FIELD, SITE_FIELD, MetadataSpec


def collate_patches(
    items: Sequence[tuple[torch.Tensor, Mapping[str, Any]]],
    spec: MetadataSpec,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Stack images and encode their metadata with ``spec``.

    Returns ``x`` (B, 3, S, S) in [-1, 1] and the condition dict of
    `MetadataSpec.encode` (categorical int64 (B,), continuous float32 (B,)).
    """
    if not items:
        raise DatasetError("cannot collate an empty batch")
    images = torch.stack([image for image, _ in items])  # (B, 3, S, S) in [-1, 1]
    cond = spec.encode([metadata for _, metadata in items])
    return images, cond


def iterate_batches(
    dataset: PatchDataset,
    spec: MetadataSpec,
    batch_size: int,
    *,
    generator: torch.Generator | None = None,
) -> Iterator[tuple[torch.Tensor, dict[str, torch.Tensor]]]:
    """Yield shuffled full batches forever, reshuffling at every pass over the data.

    Indices come from consecutive random permutations, so every batch has
    ``batch_size`` patches even when the dataset is smaller than one batch, and
    each patch is seen once per pass.
    """
    if len(dataset) == 0:
        raise DatasetError(f"cannot draw batches from {dataset.source or 'the dataset'}: it has no patches")
    if int(batch_size) != batch_size or batch_size < 1:
        raise DatasetError(f"batch_size must be a positive integer, got {batch_size!r}")
    pending: list[int] = []
    while True:
        while len(pending) < batch_size:
            pending.extend(torch.randperm(len(dataset), generator=generator).tolist())
        batch, pending = pending[:batch_size], pending[batch_size:]
        yield collate_patches([dataset[i] for i in batch], spec)


def metadata_counts(dataset: PatchDataset, fields: Sequence[str] = (CLASS_FIELD, SITE_FIELD)) -> pd.DataFrame:
    """Count patches per combination of ``fields``; missing values are counted as None.

    Returns a DataFrame with one column per field plus ``count``, sorted by the fields.
    """
    fields = list(fields)
    absent = [f for f in fields if f not in dataset.records.columns]
    if absent:
        raise DatasetError(
            f"metadata fields {absent} are not in {dataset.source or 'the dataset'}; "
            f"available: {[c for c in dataset.records.columns if not str(c).startswith('_')]}"
        )
    table = dataset.records[fields].astype(object)
    table = table.where(table.notna(), None)
    counts = table.groupby(fields, dropna=False, sort=False).size().reset_index(name="count")
    counts = counts.astype({f: object for f in fields})
    counts = counts.where(counts.notna(), None)
    order = counts[fields].map(lambda v: (v is None, "" if v is None else str(v)))
    counts = counts.iloc[sorted(range(len(counts)), key=lambda i: tuple(order.iloc[i]))]
    return counts.reset_index(drop=True)


__all__ = ["collate_patches", "iterate_batches", "metadata_counts"]
