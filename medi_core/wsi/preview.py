"""Per-slide preview PNG: the thumbnail with the tissue mask tinted and kept tiles outlined.

Built in two steps so the costly one can overlap tile reading: `render_preview_base`
needs only the thumbnail and mask (scale, tint), and `write_preview` draws the tile
outlines once the tiles are known and encodes the PNG.
"""

from __future__ import annotations

import struct
import zlib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

KEPT_COLOUR = (0, 160, 0)  # green outline: tile written to the store
REJECTED_COLOUR = (220, 0, 0)  # red outline: enough tissue, but rejected by a tile filter
MASK_TINT = np.array([40, 90, 255], dtype=np.uint16)  # blue tint over detected tissue
MASK_TINT_ALPHA_256 = 64  # tint weight in 1/256 steps (25 %)
# zlib level and strategy of the preview PNG. Pillow's PNG encoder tries every row
# filter on every row; the preview uses the "up" filter throughout and zlib's
# run-length strategy at level 1. On CMU-1's 277 x 370 px preview this encoded in
# 4.6 ms against 12.5 ms for Pillow at level 1, and the file was 3 % smaller.
PNG_COMPRESS_LEVEL = 1
PNG_STRATEGY = zlib.Z_RLE
PNG_FILTER_UP = 2  # PNG filter type byte: each byte minus the byte above it


@dataclass
class PreviewBase:
    """The scaled, tinted thumbnail and its scale in preview px per level-0 px."""

    image: Image.Image  # RGB
    px_per_level0: float


def render_preview_base(
    thumbnail: np.ndarray,
    mask: np.ndarray,
    thumbnail_downsample: float,
    *,
    max_px: int,
) -> PreviewBase:
    """Scale the thumbnail to at most ``max_px`` px and tint its tissue.

    ``thumbnail`` is RGB uint8 (H, W, 3) at ``thumbnail_downsample`` level-0 px
    per px and ``mask`` its tissue mask, bool (H, W).
    """
    height, width = mask.shape
    scale = min(1.0, max_px / max(width, height))
    image = Image.fromarray(thumbnail)
    if scale < 1.0:
        # scale first, so the tint touches only the preview's pixels
        size = (max(1, round(width * scale)), max(1, round(height * scale)))
        image = image.resize(size, Image.Resampling.BILINEAR)
        mask = np.asarray(Image.fromarray(mask).resize(size, Image.Resampling.NEAREST))
    pixels = np.array(image)  # (h, w, 3) uint8, writable copy
    tissue = pixels[mask].astype(np.uint16)  # (N, 3)
    pixels[mask] = ((256 - MASK_TINT_ALPHA_256) * tissue + MASK_TINT_ALPHA_256 * MASK_TINT + 128) >> 8
    return PreviewBase(Image.fromarray(pixels), scale / thumbnail_downsample)


def write_preview(
    path: Path,
    base: PreviewBase,
    footprint: float,
    kept: Sequence[tuple[int, int]],
    rejected: Sequence[tuple[int, int]],
) -> None:
    """Outline tiles of side ``footprint`` level-0 px at their (x, y) level-0 corners and write the PNG."""
    preview = base.image.copy()
    draw = ImageDraw.Draw(preview)
    side = footprint * base.px_per_level0
    for corners, colour in ((rejected, REJECTED_COLOUR), (kept, KEPT_COLOUR)):
        for x, y in corners:
            left, top = x * base.px_per_level0, y * base.px_per_level0
            draw.rectangle((left, top, left + side - 1, top + side - 1), outline=colour)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(encode_png(np.asarray(preview)))


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def encode_png(pixels: np.ndarray) -> bytes:
    """Encode an RGB uint8 image (H, W, 3) as an 8-bit, non-interlaced PNG."""
    if pixels.dtype != np.uint8 or pixels.ndim != 3 or pixels.shape[2] != 3:
        raise ValueError(f"encode_png needs RGB uint8 pixels (H, W, 3), got {pixels.dtype} {pixels.shape}")
    height, width, _ = pixels.shape
    rows = np.ascontiguousarray(pixels).reshape(height, width * 3)
    filtered = np.empty((height, width * 3 + 1), dtype=np.uint8)  # each row: filter type byte, then the row
    filtered[:, 0] = PNG_FILTER_UP
    filtered[0, 1:] = rows[0]  # the row above the first counts as zeros
    np.subtract(rows[1:], rows[:-1], out=filtered[1:, 1:])  # uint8 arithmetic wraps modulo 256, as PNG defines
    compressor = zlib.compressobj(PNG_COMPRESS_LEVEL, zlib.DEFLATED, zlib.MAX_WBITS, 9, PNG_STRATEGY)
    stream = compressor.compress(filtered.data) + compressor.flush()
    # IHDR: width, height, bit depth 8, colour type 2 (RGB), deflate, adaptive filtering, no interlace
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", header) + _png_chunk(b"IDAT", stream) + _png_chunk(b"IEND", b"")


__all__ = ["PreviewBase", "encode_png", "render_preview_base", "write_preview"]
