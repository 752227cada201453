"""Process one slide: resolution, brightfield check, tissue mask, tiles, filters, shard and preview.

Runs inside a worker process. Every expected failure is returned as a skipped
`SlideResult` with its reason, so one bad slide never stops a run.
"""

from __future__ import annotations

import logging
import math
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import closing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np

from medi_core.errors import SlideReadError
from medi_core.wsi.config import PrepareConfig
from medi_core.wsi.preview import render_preview_base, write_preview
from medi_core.wsi.reader import SlideReader, resolve_mpp
from medi_core.wsi.skips import clear_skip_record, write_skip_record
from medi_core.wsi.slide_table import SlideJob
from medi_core.wsi.store import SlideShardWriter, slide_key
from medi_core.wsi.tile_pipeline import iter_tile_outcomes
from medi_core.wsi.tiler import TileGrid, TileSpec, make_grid, plan_tiles, tissue_fractions
from medi_core.wsi.tissue import detect_tissue, is_brightfield

logger = logging.getLogger(__name__)

# "already done" and "already skipped": decided by an earlier run's slide or skip record.
SlideStatus = Literal["done", "skipped", "already done", "already skipped"]
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
    """Tile one slide into the store at ``out``; failures come back as a skipped result.

    A skip caused by the slide itself (`SlideReadError`) is recorded, so a re-run
    with the same file and settings skips it without reading it again.
    Unexpected errors are not recorded: they may come from the machine (disk
    full, out of memory), and the next run should try again.
    """
    start = time.perf_counter()
    result = SlideResult(job.slide_id, str(job.path), "skipped", metadata=dict(job.metadata))
    opened = False
    try:
        with SlideReader(job.path, job.slide_id) as reader:
            opened = True
            _tile_slide(reader, job, out, config, result)
        clear_skip_record(out, job.slide_id)
    except SlideReadError as err:
        result.status = "skipped"
        result.reason = str(err)
        logger.warning("skipped %s", err)
        # --mpp can change the outcome only of an opened slide that had no resolution of its own
        default_mpp_matters = opened and (result.mpp is None or result.mpp_source == "user --mpp")
        write_skip_record(out, job, config, result.reason, default_mpp_matters=default_mpp_matters)
    except Exception as err:  # noqa: BLE001 - one slide's unforeseen failure must not stop the run
        logger.exception("slide %s (%s): unexpected error, slide skipped", job.slide_id, job.path)
        result.status = "skipped"
        result.reason = f"slide {job.slide_id}: unexpected error {type(err).__name__}: {err}; see the log"
    result.seconds = time.perf_counter() - start
    return result


@dataclass
class _SlidePlan:
    """The decisions `prepare` makes about a slide before reading tiles: resolution, tissue mask, tiles."""

    mpp: float  # level-0 µm/px
    mpp_source: str
    thumbnail: np.ndarray  # (H, W, 3) uint8
    thumbnail_downsample: float  # level-0 px per thumbnail px
    mask: np.ndarray  # (H, W) bool tissue mask of the thumbnail
    grid: TileGrid
    tiles: list[TileSpec]  # grid tiles with enough tissue, row by row


def _skip_with_preview(
    message: str, preview_path: Path, thumbnail: np.ndarray, mask: np.ndarray, downsample: float, config: PrepareConfig
) -> SlideReadError:
    """Write the preview of a slide skipped after its thumbnail was read; return the error naming it.

    The preview lets the user check the reason by eye: a blank or dark slide, or
    tissue the detector missed.
    """
    base = render_preview_base(thumbnail, mask, downsample, max_px=config.preview_max_px)
    write_preview(preview_path, base, footprint=1.0, kept=(), rejected=())
    return SlideReadError(f"{message}; see {preview_path.parent.name}/{preview_path.name}")


def _plan_slide(
    reader: SlideReader, job: SlideJob, config: PrepareConfig, result: SlideResult, preview_path: Path
) -> _SlidePlan:
    """Resolve the MPP, check brightfield, detect tissue and list the tiles to read."""
    mpp, source = resolve_mpp(
        reader.properties, job.slide_id, column_mpp=_parse_column_mpp(job), default_mpp=config.default_mpp
    )
    result.mpp, result.mpp_source = mpp, source

    thumb_downsample = max(1.0, config.tissue.thumbnail_mpp / mpp)  # level-0 px per thumbnail px
    thumbnail = reader.thumbnail(  # (H, W, 3) uint8
        thumb_downsample, max_upsample=config.tissue.max_thumbnail_upsample
    )
    brightfield, dark = is_brightfield(thumbnail)
    if not brightfield:
        raise _skip_with_preview(
            f"slide {job.slide_id}: not a brightfield scan ({dark:.0%} of the thumbnail is dark, as in "
            "fluorescence or dark-field images); only H&E and other brightfield slides are tiled",
            preview_path, thumbnail, np.zeros(thumbnail.shape[:2], dtype=bool), thumb_downsample, config,
        )
    mask = detect_tissue(thumbnail, config.tissue)
    if not mask.any():
        raise _skip_with_preview(
            f"slide {job.slide_id}: no tissue found in the thumbnail; is the slide blank?",
            preview_path, thumbnail, mask, thumb_downsample, config,
        )

    grid = make_grid(reader.dimensions, reader.level_downsamples, mpp, config.tiling)
    result.grid_tiles = grid.columns * grid.rows
    tiles = list(plan_tiles(grid, tissue_fractions(mask, grid, thumb_downsample), config.tiling.min_tissue_fraction))
    result.tissue_tiles = len(tiles)
    if not tiles:
        raise _skip_with_preview(
            f"slide {job.slide_id}: no {config.tiling.tile_size} px tile at {config.tiling.mpp} µm/px has "
            f"{config.tiling.min_tissue_fraction:.0%} tissue (grid of {result.grid_tiles} tiles)",
            preview_path, thumbnail, mask, thumb_downsample, config,
        )
    return _SlidePlan(mpp, source, thumbnail, thumb_downsample, mask, grid, tiles)


def _write_tiles(
    reader: SlideReader,
    job: SlideJob,
    tiles: list[TileSpec],
    config: PrepareConfig,
    writer: SlideShardWriter,
    result: SlideResult,
) -> tuple[list[tuple[int, int]], list[tuple[int, int]]]:
    """Read, filter and append the tiles to the shard; return the (x, y) of kept and of rejected tiles."""
    kept: list[tuple[int, int]] = []
    rejected: list[tuple[int, int]] = []
    max_unreadable = math.floor(config.max_unreadable_fraction * len(tiles))
    outcomes = iter_tile_outcomes(
        reader, tiles,
        tile_size=config.tiling.tile_size, filters=config.filters,
        jpeg_quality=config.jpeg_quality, threads=config.tile_threads,
    )
    # closing() stops the tile threads before the reader closes, also on an error
    with closing(outcomes):
        for outcome in outcomes:
            spec = outcome.spec
            if outcome.status == "unreadable":
                result.unreadable_tiles += 1
                if result.unreadable_tiles > max_unreadable:
                    raise SlideReadError(
                        f"slide {job.slide_id}: {result.unreadable_tiles} of {len(tiles)} tiles are unreadable "
                        f"(corrupt tile data, limit {config.max_unreadable_fraction:.0%}); last error: {outcome.error}"
                    )
            elif outcome.status == "kept":
                writer.add_jpeg(outcome.jpeg, x=spec.x, y=spec.y, level=spec.level, tissue_fraction=spec.tissue_fraction)
                kept.append((spec.x, spec.y))
            else:
                if outcome.status == "background":
                    result.rejected_background += 1
                else:
                    result.rejected_blur += 1
                rejected.append((spec.x, spec.y))
    if not kept:
        raise SlideReadError(
            f"slide {job.slide_id}: all {len(tiles)} tissue tiles were rejected "
            f"({result.rejected_background} mostly background, {result.rejected_blur} blurred)"
        )
    return kept, rejected


def _tile_slide(reader: SlideReader, job: SlideJob, out: Path, config: PrepareConfig, result: SlideResult) -> None:
    preview_path = out / PREVIEW_DIR / f"{slide_key(job.slide_id)}.png"
    plan = _plan_slide(reader, job, config, result, preview_path)
    writer = SlideShardWriter(out, job.slide_id, config.jpeg_quality)
    try:
        # One helper thread builds the preview while the tiles are read, and encodes its
        # PNG while the shard is synced to disk.
        with ThreadPoolExecutor(max_workers=1, thread_name_prefix="preview") as helper:
            base = helper.submit(
                render_preview_base, plan.thumbnail, plan.mask, plan.thumbnail_downsample,
                max_px=config.preview_max_px,
            )
            kept, rejected = _write_tiles(reader, job, plan.tiles, config, writer, result)
            preview = helper.submit(
                lambda: write_preview(preview_path, base.result(), plan.grid.footprint, kept, rejected)
            )
            writer.close_shard()
            preview.result()
    except BaseException:
        writer.abort()
        raise

    result.status = "done"
    result.num_patches = len(kept)
    writer.finish(
        {
            "source_path": str(job.path),
            "vendor": reader.vendor,
            "slide_mpp": plan.mpp,
            "mpp_source": plan.mpp_source,
            "tile_mpp": plan.grid.stored_mpp(plan.mpp, config.tiling.tile_size),
            "level": plan.grid.level,
            "read_size": plan.grid.read_size,
            "grid_tiles": result.grid_tiles,
            "tissue_tiles": result.tissue_tiles,
            "rejected_background": result.rejected_background,
            "rejected_blur": result.rejected_blur,
            "unreadable_tiles": result.unreadable_tiles,
            "metadata": job.metadata,
        }
    )


__all__ = ["PREVIEW_DIR", "SlideResult", "SlideStatus", "process_slide"]
