"""Patch store on disk: per-slide JPEG shards with a CSV index, written resumably.

Layout of a store folder::

    store.json                    format version and tiling settings of the run
    slides/<key>.shard            the slide's patches as concatenated JPEG files
    slides/<key>.patches.csv      one row per patch: offset, nbytes, x, y, level, ...
    slides/<key>.json             slide record (id, MPP, metadata); written last

A slide counts as finished only when its ``.json`` record exists, and that
record is written by an atomic rename after the shard and index are complete.
A crashed run therefore leaves no half-finished slide that a re-run would skip.
Reasons for the layout are in docs/PATCH_STORE.md.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import logging
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from PIL import Image

from medi_core.errors import DatasetError
from medi_core.metadata import CLASS_FIELD, SITE_FIELD

logger = logging.getLogger(__name__)

STORE_FORMAT = "medi-patch-store"
STORE_VERSION = 1
STORE_MANIFEST = "store.json"
SLIDES_DIR = "slides"

# Columns of a slide's patch index, in order. (x, y) is the tile's top-left
# corner in level-0 pixels; level is the pyramid level it was read from.
PATCH_COLUMNS = ("offset", "nbytes", "x", "y", "level", "tissue_fraction")


def slide_key(slide_id: str) -> str:
    """Return a file-name-safe key for a slide id, unique for distinct ids."""
    safe = re.sub(r"[^A-Za-z0-9._-]", "_", slide_id)
    if safe != slide_id or safe.startswith("."):
        digest = hashlib.sha1(slide_id.encode("utf-8")).hexdigest()[:8]
        safe = f"{safe.lstrip('.')}-{digest}"
    return safe


def encode_jpeg(tile: np.ndarray | Image.Image, quality: int) -> bytes:
    """Encode an RGB tile, uint8 (H, W, 3) or a PIL image, as a baseline JPEG."""
    image = tile if isinstance(tile, Image.Image) else Image.fromarray(tile, mode="RGB")
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=quality)
    return buffer.getvalue()


@dataclass
class StoreSettings:
    """Tiling settings recorded in ``store.json``; every tile in a store has the same size and MPP."""

    tile_size: int  # px, width and height of every stored tile
    mpp: float  # µm/px of the stored tiles
    jpeg_quality: int

    def to_dict(self) -> dict[str, Any]:
        return {
            "format": STORE_FORMAT,
            "version": STORE_VERSION,
            "tile_size": self.tile_size,
            "mpp": self.mpp,
            "jpeg_quality": self.jpeg_quality,
        }


def _atomic_write_text(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


def open_store_for_writing(root: Path, settings: StoreSettings) -> None:
    """Create a store folder, or check that an existing one used the same settings."""
    manifest = root / STORE_MANIFEST
    (root / SLIDES_DIR).mkdir(parents=True, exist_ok=True)
    if manifest.exists():
        existing = read_store_manifest(root)
        # jpeg_quality too: store.json states one quality for every patch in the store
        for name in ("tile_size", "mpp", "jpeg_quality"):
            if float(existing[name]) != float(getattr(settings, name)):
                raise DatasetError(
                    f"patch store {root} was written with {name}={existing[name]}, but this run "
                    f"uses {name}={getattr(settings, name)}; use a new --out folder or the same settings"
                )
        return
    _atomic_write_text(manifest, json.dumps(settings.to_dict(), indent=2))


def read_store_manifest(root: Path) -> dict[str, Any]:
    """Read and check ``store.json`` of a patch store folder."""
    manifest = root / STORE_MANIFEST
    try:
        data = json.loads(manifest.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise DatasetError(f"{root} is not a patch store: {STORE_MANIFEST} is missing") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise DatasetError(f"{manifest} is not valid JSON ({err}); the store is damaged") from None
    if data.get("format") != STORE_FORMAT or int(data.get("version", -1)) != STORE_VERSION:
        raise DatasetError(
            f"{manifest}: expected format {STORE_FORMAT!r} version {STORE_VERSION}, "
            f"got {data.get('format')!r} version {data.get('version')!r}"
        )
    return data


def finished_slide_ids(root: Path) -> set[str]:
    """Return the ids of slides whose record is complete (used to resume a run)."""
    ids = set()
    for record_path in sorted((root / SLIDES_DIR).glob("*.json")):
        ids.add(json.loads(record_path.read_text(encoding="utf-8"))["slide_id"])
    return ids


@dataclass
class SlideShardWriter:
    """Appends one slide's patches to its shard; `finish` publishes the slide record."""

    root: Path
    slide_id: str
    jpeg_quality: int
    rows: list[tuple[int, int, int, int, int, float]] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.key = slide_key(self.slide_id)
        self.shard_path = self.root / SLIDES_DIR / f"{self.key}.shard"
        self._file = open(self.shard_path, "wb")  # truncates the leftovers of a crashed run
        self._offset = 0

    def add(self, tile: np.ndarray, *, x: int, y: int, level: int, tissue_fraction: float) -> None:
        """Encode and append a tile (H, W, 3) uint8 read at level-0 position (x, y)."""
        self.add_jpeg(encode_jpeg(tile, self.jpeg_quality), x=x, y=y, level=level, tissue_fraction=tissue_fraction)

    def add_jpeg(self, data: bytes, *, x: int, y: int, level: int, tissue_fraction: float) -> None:
        """Append a tile already encoded as JPEG (at ``jpeg_quality``), read at level-0 position (x, y)."""
        self._file.write(data)
        self.rows.append((self._offset, len(data), x, y, level, round(float(tissue_fraction), 4)))
        self._offset += len(data)

    def abort(self) -> None:
        """Close and delete the partial shard of a slide that failed."""
        self._file.close()
        self.shard_path.unlink(missing_ok=True)

    def close_shard(self) -> None:
        """Flush the shard to disk and close it; `finish` does this when it was not done."""
        if self._file.closed:
            return
        self._file.flush()
        # fdatasync writes the data and the file size, all a later read needs, and
        # skips timestamps; fsync where the platform lacks it
        getattr(os, "fdatasync", os.fsync)(self._file.fileno())
        self._file.close()

    def finish(self, record: Mapping[str, Any]) -> None:
        """Close the shard, write the index and then the slide record (the done marker)."""
        self.close_shard()
        index_path = self.root / SLIDES_DIR / f"{self.key}.patches.csv"
        tmp = index_path.with_name(index_path.name + ".tmp")
        # the csv module, not pandas: this runs once per slide and pandas' writer costs milliseconds
        with open(tmp, "w", encoding="utf-8", newline="") as handle:
            table = csv.writer(handle, lineterminator="\n")
            table.writerow(PATCH_COLUMNS)
            table.writerows(self.rows)
        os.replace(tmp, index_path)
        full = {"slide_id": self.slide_id, "key": self.key, "num_patches": len(self.rows), **record}
        _atomic_write_text(self.root / SLIDES_DIR / f"{self.key}.json", json.dumps(full, indent=2))


def update_slide_metadata(record_path: Path, record: Mapping[str, Any], metadata: Mapping[str, Any]) -> None:
    """Rewrite a finished slide's record with new metadata; its shard and index stay as they are."""
    _atomic_write_text(record_path, json.dumps({**record, "metadata": dict(metadata)}, indent=2))


def read_store_records(root: Path) -> pd.DataFrame:
    """Read every finished slide of a store into one patch table.

    Columns: ``slide_id``, ``x``, ``y`` (level 0 px), ``level``, ``mpp`` (µm/px of
    the stored tile), ``tissue_fraction``, the slide metadata fields (``class``,
    ``site``, ...), and the storage columns ``_shard``, ``_offset``, ``_nbytes``.
    A metadata field other than class and site whose present values all parse as
    numbers (age, counts) becomes a numeric column, as in manifest sources;
    missing values are then NaN.
    """
    manifest = read_store_manifest(root)
    frames = []
    metadata_fields: set[str] = set()
    for record_path in sorted((root / SLIDES_DIR).glob("*.json")):
        record = json.loads(record_path.read_text(encoding="utf-8"))
        key = record["key"]
        index_path = root / SLIDES_DIR / f"{key}.patches.csv"
        shard_path = root / SLIDES_DIR / f"{key}.shard"
        if not index_path.exists() or not shard_path.exists():
            raise DatasetError(
                f"patch store {root}: slide {record['slide_id']!r} has a record but its "
                f"{index_path.name} or {shard_path.name} is missing; delete {record_path.name} "
                "and re-run prepare to rebuild that slide"
            )
        patches = pd.read_csv(index_path)
        if patches.empty:
            continue
        table = pd.DataFrame({"slide_id": record["slide_id"]}, index=patches.index)
        for column in ("x", "y", "level", "tissue_fraction"):
            table[column] = patches[column]
        table["mpp"] = float(record.get("tile_mpp", manifest["mpp"]))  # actual µm/px of the stored tiles
        for name, value in record.get("metadata", {}).items():
            if name not in table.columns:
                table[name] = value
                metadata_fields.add(name)
        table["_shard"] = str(shard_path)
        table["_offset"] = patches["offset"].astype("int64")
        table["_nbytes"] = patches["nbytes"].astype("int64")
        frames.append(table)
    if not frames:
        return pd.DataFrame(columns=["slide_id", "x", "y", "level", "mpp", "tissue_fraction", "_shard"])
    # imported here: medi_core.data's package imports this module, so a top-level import would be circular
    from medi_core.data.tables import numbers_if_numeric

    records = pd.concat(frames, ignore_index=True)
    # class and site stay text, as in manifest sources: site codes such as "01" are labels
    for name in sorted(metadata_fields - {CLASS_FIELD, SITE_FIELD}):
        records[name] = numbers_if_numeric(records[name])
    return records


__all__ = [
    "STORE_MANIFEST",
    "SlideShardWriter",
    "StoreSettings",
    "finished_slide_ids",
    "open_store_for_writing",
    "read_store_manifest",
    "read_store_records",
    "slide_key",
]
