"""Process one slide: resolution, brightfield check, tissue mask, tiles, filters, shard and preview.

Runs inside a worker process. Every expected failure is returned as a skipped
`SlideResult` with its reason, so one bad slide never stops a run.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
from PIL import Image

from medi_core.errors import SlideReadError
from medi_core.wsi.config import PrepareConfig
from medi_core.wsi.preview import write_preview
from medi_core.wsi.reader import SlideReader, resolve_mpp
from medi_core.wsi.slide_table import SlideJob
from medi_core.wsi.store import SlideShardWriter, slide_key
from medi_core.wsi.tiler import make_grid, plan_tiles, tissue_fractions
from medi_core.wsi.tissue import background_fraction, detect_tissue, is_brightfield, sharpness

logger = logging.getLogger(__name__)

SlideStatus = Literal["done", "skipped", "already done"]
PREVIEW_DIR = "previews"


@dataclass
class SlideResult:
    """Outcome of one slide, as listed in the run report."""

    slide_id: str
    path: str
    status: SlideStatus
    reason: str = ""
    num_patches: int = 0
    metadata: dict[str, Any] = field(default_factory=dict)
    mpp: float | None = None  # level-0 µm/px
    mpp_source: str = ""
    grid_tiles: int = 0  # whole tiles that fit the slide at the target resolution
    tissue_tiles: int = 0  # of those, tiles with enough tissue in the thumbnail mask
    rejected_background: int = 0
    rejected_blur: int = 0
    unreadable_tiles: int = 0
    seconds: float = 0.0


def _parse_column_mpp(job: SlideJob) -> float | None:
    if job.column_mpp is None:
        return None
    try:
        value = float(job.column_mpp)
    except ValueError:
        raise SlideReadError(
            f"slide {job.slide_id}: MPP column value {job.column_mpp!r} is not a number; give µm/px, e.g. 0.25"
        ) from None
    if not math.isfinite(value):
        raise SlideReadError(f"slide {job.slide_id}: MPP column value {job.column_mpp!r} is not finite")
    return value


def process_slide(job: SlideJob, out: Path, config: PrepareConfig) -> SlideResult:
    """Tile one slide into the store at ``out``; failures come back as a skipped result."""
    start = time.perf_counter()
    result = SlideResult(job.slide_id, str(job.path), "skipped", metadata=dict(job.metadata))
    try:
        with SlideReader(job.path, job.slide_id) as reader:
            _tile_slide(reader, job, out, config, result)
    except SlideReadError as err:
        result.status = "skipped"
        result.reason = str(err)
        logger.warning("skipped %s", err)
    except Exception as err:  # noqa: BLE001 - one slide's unforeseen failure must not stop the run
        logger.exception("slide %s (%s): unexpected error, slide skipped", job.slide_id, job.path)
        result.status = "skipped"
        result.reason = f"slide {job.slide_id}: unexpected error {type(err).__name__}: {err}; see the log"
    result.seconds = time.perf_counter() - start
    return result


def _tile_slide(reader: SlideReader, job: SlideJob, out: Path, config: PrepareConfig, result: SlideResult) -> None:
    mpp, source = resolve_mpp(
        reader.properties, job.slide_id, column_mpp=_parse_column_mpp(job), default_mpp=config.default_mpp
    )
    result.mpp, result.mpp_source = mpp, source

    thumb_downsample = max(1.0, config.tissue.thumbnail_mpp / mpp)  # level-0 px per thumbnail px
    thumbnail = reader.thumbnail(thumb_downsample)  # (H, W, 3) uint8
    brightfield, dark = is_brightfield(thumbnail)
    if not brightfield:
        raise SlideReadError(
            f"slide {job.slide_id}: not a brightfield scan ({dark:.0%} of the thumbnail is dark, as in "
            "fluorescence or dark-field images); only H&E and other brightfield slides are tiled"
        )
    mask = detect_tissue(thumbnail, config.tissue)
    if not mask.any():
        raise SlideReadError(f"slide {job.slide_id}: no tissue found in the thumbnail; is the slide blank?")

    grid = make_grid(reader.dimensions, reader.level_downsamples, mpp, config.tiling)
    result.grid_tiles = grid.columns * grid.rows
    tiles = list(plan_tiles(grid, tissue_fractions(mask, grid, thumb_downsample), config.tiling.min_tissue_fraction))
    result.tissue_tiles = len(tiles)
    if not tiles:
        raise SlideReadError(
            f"slide {job.slide_id}: no {config.tiling.tile_size} px tile at {config.tiling.mpp} µm/px has "
            f"{config.tiling.min_tissue_fraction:.0%} tissue (grid of {result.grid_tiles} tiles)"
        )

    writer = SlideShardWriter(out, job.slide_id, config.jpeg_quality)
    kept: list[tuple[int, int]] = []
    rejected: list[tuple[int, int]] = []
    max_unreadable = math.floor(config.max_unreadable_fraction * len(tiles))
    size = config.tiling.tile_size
    try:
        for spec in tiles:
            try:
                tile = reader.read_rgb((spec.x, spec.y), spec.level, (spec.read_size, spec.read_size))
            except SlideReadError as err:
                result.unreadable_tiles += 1
                if result.unreadable_tiles > max_unreadable:
                    raise SlideReadError(
                        f"slide {job.slide_id}: {result.unreadable_tiles} of {len(tiles)} tiles are unreadable "
                        f"(corrupt tile data, limit {config.max_unreadable_fraction:.0%}); last error: {err}"
                    ) from None
                continue
            if spec.read_size != size:
                tile = np.asarray(Image.fromarray(tile).resize((size, size), Image.Resampling.BILINEAR))
            if background_fraction(tile, config.filters) > config.filters.max_background_fraction:
                result.rejected_background += 1
                rejected.append((spec.x, spec.y))
                continue
            if sharpness(tile) < config.filters.min_sharpness:
                result.rejected_blur += 1
                rejected.append((spec.x, spec.y))
                continue
            writer.add(tile, x=spec.x, y=spec.y, level=spec.level, tissue_fraction=spec.tissue_fraction)
            kept.append((spec.x, spec.y))
    except BaseException:
        writer.abort()
        raise
    if not kept:
        writer.abort()
        raise SlideReadError(
            f"slide {job.slide_id}: all {len(tiles)} tissue tiles were rejected "
            f"({result.rejected_background} mostly background, {result.rejected_blur} blurred)"
        )

    write_preview(
        out / PREVIEW_DIR / f"{slide_key(job.slide_id)}.png",
        thumbnail, mask, thumb_downsample, grid.footprint, kept, rejected,
        max_px=config.preview_max_px,
    )
    result.status = "done"
    result.num_patches = len(kept)
    writer.finish(
        {
            "source_path": str(job.path),
            "vendor": reader.vendor,
            "slide_mpp": mpp,
            "mpp_source": source,
            "tile_mpp": grid.stored_mpp(mpp, size),
            "level": grid.level,
            "read_size": grid.read_size,
            "grid_tiles": result.grid_tiles,
            "tissue_tiles": result.tissue_tiles,
            "rejected_background": result.rejected_background,
            "rejected_blur": result.rejected_blur,
            "unreadable_tiles": result.unreadable_tiles,
            "metadata": job.metadata,
        }
    )


__all__ = ["PREVIEW_DIR", "SlideResult", "SlideStatus", "process_slide"]
