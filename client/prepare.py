"""`medi-client prepare`: tile a folder of whole-slide images into a local patch store.

Example::

    medi-client prepare --slides /data/wsi --metadata /data/slides.csv --out /data/patches
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from tqdm import tqdm

from medi_core.errors import ConfigError, DatasetError, MetadataError
from medi_core.wsi.config import PrepareConfig
from medi_core.wsi.prepare import prepare_slides
from medi_core.wsi.process import SlideResult
from medi_core.wsi.report import REPORT_MARKDOWN
from medi_core.wsi.tiler import TilingConfig
from medi_core.wsi.tissue import TileFilterConfig, TissueConfig

logger = logging.getLogger(__name__)

EXIT_STATUS_HELP = (
    "Exit status: 0 when at least one slide is in the store, even if others were skipped (report.md lists "
    "them). 1 when no slide is in the store or, with --strict, when any slide was skipped. 2 for invalid input: "
    "a missing slide folder, an unreadable CSV or an invalid setting."
)


def add_prepare_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the options of ``prepare`` to ``parser``."""
    tiling, tissue, filters, run = TilingConfig(), TissueConfig(), TileFilterConfig(), PrepareConfig()
    io = parser.add_argument_group("input and output")
    io.add_argument("--slides", type=Path, nargs="+", required=True, metavar="PATH",
                    help="slide files, or folders whose slide files (.svs, .ndpi, .tif, .mrxs, ...) are all used")
    io.add_argument("--metadata", type=Path, required=True, metavar="CSV",
                    help="UTF-8 slide metadata CSV: a slide id column (file name without extension), a class "
                         "column, optionally site, mpp (µm/px) and any other fields")
    io.add_argument("--out", type=Path, required=True, metavar="DIR",
                    help="patch store folder; re-running with the same folder skips finished slides")
    io.add_argument("--slide-column", default="slide_id", help="slide id column of the CSV (default: %(default)s)")
    io.add_argument("--class-column", default="class", help="class column of the CSV (default: %(default)s)")
    io.add_argument("--site-column", default="site",
                    help="site column of the CSV; when absent or empty the TCGA barcode gives the site "
                         "(default: %(default)s)")
    io.add_argument("--mpp-column", default="mpp",
                    help="per-slide resolution column of the CSV in µm/px, used before the slide's own "
                         "metadata (default: %(default)s)")

    tiles = parser.add_argument_group("tiling")
    tiles.add_argument("--tile-size", type=int, default=tiling.tile_size,
                       help="stored tile width and height in px (default: %(default)s)")
    tiles.add_argument("--tile-mpp", type=float, default=tiling.mpp,
                       help="resolution of the stored tiles in µm/px; 0.5 is a 20x scan (default: %(default)s)")
    tiles.add_argument("--mpp", type=float, default=None,
                       help="level-0 resolution in µm/px for slides that have no MPP, TIFF resolution or "
                            "objective power in their metadata (default: such slides are skipped)")
    tiles.add_argument("--min-tissue", type=float, default=tiling.min_tissue_fraction,
                       help="minimum tissue fraction of a tile, 0-1 (default: %(default)s)")
    tiles.add_argument("--thumbnail-mpp", type=float, default=tissue.thumbnail_mpp,
                       help="resolution in µm/px of the thumbnail used for tissue detection (default: %(default)s)")
    tiles.add_argument("--tissue-method", choices=["otsu_saturation", "saturation_threshold"], default=tissue.method,
                       help="tissue detection: Otsu on HSV saturation, or a fixed threshold "
                            "(--min-saturation) (default: %(default)s)")
    tiles.add_argument("--min-saturation", type=float, default=tissue.min_saturation,
                       help="HSV saturation (0-1) below which a thumbnail pixel is never tissue (default: %(default)s)")
    tiles.add_argument("--max-background", type=float, default=filters.max_background_fraction,
                       help="reject tiles with a larger share of white glass pixels, 0-1 (default: %(default)s)")
    tiles.add_argument("--min-sharpness", type=float, default=filters.min_sharpness,
                       help="reject tiles whose Laplacian variance (grey, 0-255) is lower, as blurred; "
                            "0 disables the check (default: %(default)s)")

    store = parser.add_argument_group("store and run")
    store.add_argument("--jpeg-quality", type=int, default=run.jpeg_quality,
                       help="JPEG quality of stored tiles, 1-100 (default: %(default)s)")
    store.add_argument("--workers", type=int, default=run.workers,
                       help="slides processed in parallel, one process each (default: %(default)s)")
    store.add_argument("--tile-threads", type=int, default=run.tile_threads,
                       help="threads per slide that read, filter and encode tiles (default: %(default)s)")
    store.add_argument("--keep-unlisted", action="store_true",
                       help="also tile slides that have no CSV row (their class is missing)")
    store.add_argument("--retry-skipped", action="store_true",
                       help="process slides that an earlier run into --out skipped, even when neither the slide "
                            "file nor the settings changed (changed ones are always tried again)")
    store.add_argument("--strict", action="store_true",
                       help="exit with status 1 when any slide is skipped, not only when none is done, so that "
                            "a scheduler flags the run")
    store.add_argument("--no-progress", action="store_true", help="hide the progress bar")


def config_from_args(args: argparse.Namespace) -> PrepareConfig:
    """Build the run settings from parsed ``prepare`` arguments."""
    return PrepareConfig(
        tiling=TilingConfig(tile_size=args.tile_size, mpp=args.tile_mpp, min_tissue_fraction=args.min_tissue),
        tissue=TissueConfig(method=args.tissue_method, thumbnail_mpp=args.thumbnail_mpp,
                            min_saturation=args.min_saturation),
        filters=TileFilterConfig(max_background_fraction=args.max_background, min_sharpness=args.min_sharpness),
        jpeg_quality=args.jpeg_quality,
        workers=args.workers,
        tile_threads=args.tile_threads,
        default_mpp=args.mpp,
        keep_unlisted=args.keep_unlisted,
    )


def run_prepare(args: argparse.Namespace) -> int:
    """Run ``prepare`` and return its exit status (see `EXIT_STATUS_HELP`)."""
    bar: tqdm | None = None

    def on_plan(total: int) -> None:
        nonlocal bar
        bar = tqdm(total=total, unit="slide", disable=args.no_progress)

    def on_result(result: SlideResult) -> None:
        if bar is not None:
            bar.update(1)
            bar.set_postfix_str(f"{result.slide_id}: {result.status}", refresh=False)

    try:
        config = config_from_args(args)
        report = prepare_slides(
            args.slides, args.metadata, args.out, config,
            on_plan=on_plan, on_result=on_result,
            slide_column=args.slide_column, class_column=args.class_column,
            site_column=args.site_column, mpp_column=args.mpp_column,
            retry_skipped=args.retry_skipped,
        )
    except (ConfigError, MetadataError, DatasetError) as err:
        logger.error("%s", err)
        return 2
    finally:
        if bar is not None:
            bar.close()
    logger.info(
        "%d slide(s) done, %d skipped, %d patches; report: %s",
        len(report.done), len(report.skipped), report.num_patches, args.out / REPORT_MARKDOWN,
    )
    for slide in report.skipped:
        earlier = " (by an earlier run; --retry-skipped tries again)" if slide.status == "already skipped" else ""
        logger.warning("skipped %s%s: %s", slide.path, earlier, slide.reason)
    if not report.done or (args.strict and report.skipped):
        return 1
    return 0


__all__ = ["EXIT_STATUS_HELP", "add_prepare_arguments", "config_from_args", "run_prepare"]
