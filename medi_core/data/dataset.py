"""`PatchDataset`: labelled patches from any source as (image in [-1, 1], metadata) pairs."""

from __future__ import annotations

import io
import logging
import math
import mmap
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from PIL import Image, UnidentifiedImageError
from torch.utils.data import Dataset

from medi_core.errors import DatasetError
from medi_core.metadata import CLASS_FIELD, SITE_FIELD

logger = logging.getLogger(__name__)

SLIDE_FIELD = "slide_id"
REQUIRED_COLUMNS = (CLASS_FIELD, SITE_FIELD, SLIDE_FIELD)

# Storage columns start with "_": they locate the image and are not metadata.
PATH_COLUMN = "_path"
SHARD_COLUMN = "_shard"
OFFSET_COLUMN = "_offset"
NBYTES_COLUMN = "_nbytes"


def _to_metadata_value(value: Any) -> Any:
    """Convert pandas missing values to None and numpy scalars to Python ones."""
    if value is None or value is pd.NA:
        return None
    if isinstance(value, float) and math.isnan(value):
        return None
    if isinstance(value, np.generic):
        value = value.item()
        if isinstance(value, float) and math.isnan(value):
            return None
    return value


def image_to_tensor(image: Image.Image, image_size: int) -> torch.Tensor:
    """Centre-crop to a square, resize to ``image_size`` and scale to [-1, 1]; returns (3, S, S)."""
    image = image.convert("RGB")
    width, height = image.size
    side = min(width, height)
    if width != height:
        left, top = (width - side) // 2, (height - side) // 2
        image = image.crop((left, top, left + side, top + side))
    if side != image_size:
        # PIL widens the bilinear kernel when shrinking, so downscaling is antialiased.
        image = image.resize((image_size, image_size), Image.Resampling.BILINEAR)
    array = np.asarray(image, dtype=np.uint8)  # (S, S, 3) in [0, 255]
    tensor = torch.from_numpy(array.copy()).permute(2, 0, 1).float()  # (3, S, S)
    return tensor / 127.5 - 1.0  # (3, S, S) in [-1, 1]


class _ShardReader:
    """Memory-maps patch-store shards on first use and returns one patch's bytes."""

    def __init__(self) -> None:
        self._maps: dict[str, mmap.mmap] = {}

    def read(self, shard: str, offset: int, nbytes: int) -> bytes:
        mapped = self._maps.get(shard)
        if mapped is None:
            try:
                with open(shard, "rb") as handle:
                    mapped = mmap.mmap(handle.fileno(), 0, access=mmap.ACCESS_READ)
            except (FileNotFoundError, ValueError) as err:
                raise DatasetError(f"patch store shard {shard} is missing or empty ({err}); re-run prepare") from None
            self._maps[shard] = mapped
        if offset + nbytes > len(mapped):
            raise DatasetError(
                f"patch store shard {shard} is shorter than its index expects (needs byte "
                f"{offset + nbytes}, has {len(mapped)}); delete the slide's .json record and re-run prepare"
            )
        return mapped[offset : offset + nbytes]

    def __getstate__(self) -> dict[str, Any]:
        return {"_maps": {}}  # memory maps cannot be pickled into DataLoader workers


class PatchDataset(Dataset):
    """Patches with metadata; ``dataset[i]`` is ``(image (3, S, S) in [-1, 1], metadata dict)``.

    ``records`` has one row per patch with at least ``class``, ``site`` and
    ``slide_id`` (None where unknown), plus any other metadata fields. Columns
    whose name starts with ``_`` locate the image (a file path, or a shard,
    offset and length in a patch store) and are left out of the metadata dict.
    """

    def __init__(
        self,
        records: pd.DataFrame,
        *,
        image_size: int,
        source: str = "",
        cache_images: bool = False,
    ) -> None:
        if int(image_size) != image_size or image_size < 1:
            raise DatasetError(f"image_size must be a positive number of pixels, got {image_size!r}")
        missing = [c for c in REQUIRED_COLUMNS if c not in records.columns]
        if missing:
            raise DatasetError(f"patch records from {source or 'the source'} lack the column(s) {missing}")
        has_path = PATH_COLUMN in records.columns
        has_shard = SHARD_COLUMN in records.columns
        if not (has_path or has_shard):
            raise DatasetError(
                f"patch records from {source or 'the source'} need a {PATH_COLUMN!r} column "
                f"or the patch-store columns {SHARD_COLUMN!r}, {OFFSET_COLUMN!r}, {NBYTES_COLUMN!r}"
            )
        self.records = records.reset_index(drop=True)
        self.image_size = int(image_size)
        self.source = source
        self.cache_images = cache_images
        self._metadata_columns = [c for c in self.records.columns if not str(c).startswith("_")]
        self._shards = _ShardReader()
        self._cache: dict[int, torch.Tensor] = {}

    def __len__(self) -> int:
        return len(self.records)

    def __repr__(self) -> str:
        return f"PatchDataset({len(self)} patches, image_size={self.image_size}, source={self.source!r})"

    def metadata(self, index: int) -> dict[str, Any]:
        """Return the metadata of patch ``index`` (no image decoding)."""
        row = self.records.iloc[index]
        return {name: _to_metadata_value(row[name]) for name in self._metadata_columns}

    def load_image(self, index: int) -> Image.Image:
        """Return patch ``index`` as a PIL image at its stored size."""
        row = self.records.iloc[index]
        path = row.get(PATH_COLUMN)
        if isinstance(path, str) and path:
            try:
                with Image.open(path) as image:
                    image.load()
                    return image
            except FileNotFoundError:
                raise DatasetError(f"patch image {path} not found; was it moved after the source was opened?") from None
            except (UnidentifiedImageError, OSError) as err:
                raise DatasetError(f"patch image {path} could not be decoded: {err}") from None
        data = self._shards.read(str(row[SHARD_COLUMN]), int(row[OFFSET_COLUMN]), int(row[NBYTES_COLUMN]))
        try:
            with Image.open(io.BytesIO(data)) as image:
                image.load()
                return image
        except (UnidentifiedImageError, OSError) as err:
            raise DatasetError(
                f"patch {index} of slide {row.get(SLIDE_FIELD)!r} in shard {row[SHARD_COLUMN]} "
                f"could not be decoded: {err}"
            ) from None

    def __getitem__(self, index: int) -> tuple[torch.Tensor, dict[str, Any]]:
        if not -len(self) <= index < len(self):
            raise IndexError(f"patch index {index} out of range for {len(self)} patches")
        index = index % len(self)
        tensor = self._cache.get(index)
        if tensor is None:
            # (3, S, S) in [-1, 1]
            tensor = image_to_tensor(self.load_image(index), self.image_size)
            if self.cache_images:
                self._cache[index] = tensor
        return tensor, self.metadata(index)

    def subset(self, selection: Sequence[int] | Sequence[bool] | np.ndarray | pd.Series) -> PatchDataset:
        """Return a dataset over a boolean mask or integer indices of ``records``."""
        keys = np.asarray(selection)
        if keys.dtype == bool:
            if keys.shape != (len(self),):
                raise DatasetError(f"subset mask has shape {keys.shape}, expected ({len(self)},)")
            rows = self.records[keys]
        else:
            if keys.size and (keys.min() < -len(self) or keys.max() >= len(self)):
                raise DatasetError(f"subset indices must be in [0, {len(self)}), got {keys.min()}..{keys.max()}")
            rows = self.records.iloc[keys.astype(np.int64)]
        return PatchDataset(rows, image_size=self.image_size, source=self.source, cache_images=self.cache_images)

    def with_image_size(self, image_size: int) -> PatchDataset:
        """Return the same patches resized to another ``image_size``."""
        return PatchDataset(self.records, image_size=image_size, source=self.source, cache_images=self.cache_images)


def split_by_site(
    dataset: PatchDataset,
    sites: Sequence[str],
    *,
    rest: str | None = "rest",
) -> dict[str, PatchDataset]:
    """Split a dataset into one part per listed site, plus the other sites merged as ``rest``.

    With ``rest=None`` the other sites are dropped. Listed sites without patches
    raise `DatasetError`, because a federated client with no data cannot train.
    """
    site_values = dataset.records[SITE_FIELD].astype(object)
    parts: dict[str, PatchDataset] = {}
    for site in sites:
        mask = (site_values == site).to_numpy(dtype=bool)
        if not mask.any():
            present = sorted(str(s) for s in site_values.dropna().unique())
            raise DatasetError(f"site {site!r} has no patches in {dataset.source}; sites present: {present}")
        parts[str(site)] = dataset.subset(mask)
    if rest is not None:
        if rest in parts:
            raise DatasetError(f"the name {rest!r} for the merged other sites is also a listed site")
        mask = (~site_values.isin(list(sites))).to_numpy(dtype=bool)
        if mask.any():
            parts[rest] = dataset.subset(mask)
    return parts


def concat_datasets(datasets: Sequence[PatchDataset], *, image_size: int | None = None) -> PatchDataset:
    """Concatenate the records of several datasets into one."""
    if not datasets:
        raise DatasetError("no datasets to concatenate")
    size = image_size if image_size is not None else datasets[0].image_size
    records = pd.concat([d.records for d in datasets], ignore_index=True)
    source = " + ".join(d.source for d in datasets)
    return PatchDataset(records, image_size=size, source=source)


def records_from_rows(rows: Sequence[Mapping[str, Any]]) -> pd.DataFrame:
    """Build a records table from dicts, adding absent required columns as None."""
    table = pd.DataFrame(list(rows))
    for column in REQUIRED_COLUMNS:
        if column not in table.columns:
            table[column] = None
    return table


__all__ = [
    "PatchDataset",
    "SLIDE_FIELD",
    "concat_datasets",
    "image_to_tensor",
    "records_from_rows",
    "split_by_site",
]
