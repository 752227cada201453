"""Read, filter and JPEG-encode a slide's planned tiles, several at a time, in plan order.

Each tile's work (OpenSlide read and decode, resize, background and blur
filters, JPEG encoding) runs in a small thread pool. OpenSlide's C reads,
its pixel conversion, Pillow's resize and JPEG encoder and large numpy
operations release the GIL, so reading one tile overlaps encoding another.
Results come back in plan order, and at most ``threads * TILES_IN_FLIGHT_PER_THREAD``
tiles are in memory at once, whatever the slide size.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Literal

import numpy as np
from PIL import Image

from medi_core.errors import SlideReadError
from medi_core.wsi.reader import SlideReader
from medi_core.wsi.store import encode_jpeg
from medi_core.wsi.tiler import TileSpec
from medi_core.wsi.tissue import TileFilterConfig, background_fraction, sharpness

TileStatus = Literal["kept", "background", "blurred", "unreadable"]

# Tiles submitted per thread ahead of the one being written: enough to keep every
# thread busy while the caller writes, small enough to bound memory (a 256 px tile
# is 192 KiB decoded).
TILES_IN_FLIGHT_PER_THREAD = 4


@dataclass(frozen=True)
class TileOutcome:
    """The outcome of one planned tile, with its JPEG bytes when kept and the error when unreadable."""

    spec: TileSpec
    status: TileStatus
    jpeg: bytes = b""
    error: str = ""


def process_tile(
    reader: SlideReader,
    spec: TileSpec,
    *,
    tile_size: int,
    filters: TileFilterConfig,
    jpeg_quality: int,
) -> TileOutcome:
    """Read one tile, resize it to ``tile_size`` px, apply the filters and encode it if kept."""
    try:
        image = reader.read_image((spec.x, spec.y), spec.level, (spec.read_size, spec.read_size))
    except SlideReadError as err:
        return TileOutcome(spec, "unreadable", error=str(err))
    if spec.read_size != tile_size:
        image = image.resize((tile_size, tile_size), Image.Resampling.BILINEAR)
    pixels = np.asarray(image)  # (S, S, 3) uint8, a view of the image's buffer
    if background_fraction(pixels, filters) > filters.max_background_fraction:
        return TileOutcome(spec, "background")
    if filters.min_sharpness > 0 and sharpness(image) < filters.min_sharpness:
        return TileOutcome(spec, "blurred")
    return TileOutcome(spec, "kept", jpeg=encode_jpeg(image, jpeg_quality))


def iter_tile_outcomes(
    reader: SlideReader,
    tiles: Sequence[TileSpec],
    *,
    tile_size: int,
    filters: TileFilterConfig,
    jpeg_quality: int,
    threads: int,
) -> Iterator[TileOutcome]:
    """Yield the outcome of every tile in ``tiles``, in order, using ``threads`` threads.

    Close the iterator (or exhaust it) before closing ``reader``: closing waits
    for the reads still running and drops the tiles not yet started.
    """
    options = dict(tile_size=tile_size, filters=filters, jpeg_quality=jpeg_quality)
    if threads <= 1:
        for spec in tiles:
            yield process_tile(reader, spec, **options)
        return
    window = threads * TILES_IN_FLIGHT_PER_THREAD
    with ThreadPoolExecutor(max_workers=threads, thread_name_prefix="tile") as pool:
        pending: deque[Future[TileOutcome]] = deque()
        upcoming = iter(tiles)
        try:
            for spec in upcoming:
                pending.append(pool.submit(process_tile, reader, spec, **options))
                if len(pending) >= window:
                    break
            while pending:
                outcome = pending.popleft().result()
                next_spec = next(upcoming, None)
                if next_spec is not None:
                    pending.append(pool.submit(process_tile, reader, next_spec, **options))
                yield outcome
        finally:
            for future in pending:
                future.cancel()  # the pool's exit then waits only for tiles already being read


__all__ = ["TILES_IN_FLIGHT_PER_THREAD", "TileOutcome", "TileStatus", "iter_tile_outcomes", "process_tile"]
