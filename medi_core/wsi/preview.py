"""Per-slide preview PNG: the thumbnail with the tissue mask tinted and kept tiles outlined."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

KEPT_COLOUR = (0, 160, 0)  # green outline: tile written to the store
REJECTED_COLOUR = (220, 0, 0)  # red outline: enough tissue, but rejected by a tile filter
MASK_TINT = np.array([40, 90, 255], dtype=np.float32)  # blue tint over detected tissue
MASK_TINT_ALPHA = 0.25


def write_preview(
    path: Path,
    thumbnail: np.ndarray,
    mask: np.ndarray,
    thumbnail_downsample: float,
    footprint: float,
    kept: Sequence[tuple[int, int]],
    rejected: Sequence[tuple[int, int]],
    *,
    max_px: int,
) -> None:
    """Write the preview of one slide.

    ``thumbnail`` is RGB uint8 (H, W, 3) at ``thumbnail_downsample`` level-0 px
    per px, ``mask`` its tissue mask (H, W), ``kept`` and ``rejected`` the (x, y)
    level-0 corners of tiles of side ``footprint`` level-0 px.
    """
    image = thumbnail.astype(np.float32)
    image[mask] = (1 - MASK_TINT_ALPHA) * image[mask] + MASK_TINT_ALPHA * MASK_TINT
    preview = Image.fromarray(image.round().astype(np.uint8))
    scale = min(1.0, max_px / max(preview.size))
    if scale < 1.0:
        preview = preview.resize(
            (max(1, round(preview.width * scale)), max(1, round(preview.height * scale))), Image.Resampling.BILINEAR
        )
    draw = ImageDraw.Draw(preview)
    px_per_level0 = scale / thumbnail_downsample
    side = footprint * px_per_level0
    for corners, colour in ((rejected, REJECTED_COLOUR), (kept, KEPT_COLOUR)):
        for x, y in corners:
            left, top = x * px_per_level0, y * px_per_level0
            draw.rectangle((left, top, left + side - 1, top + side - 1), outline=colour)
    path.parent.mkdir(parents=True, exist_ok=True)
    preview.save(path)


__all__ = ["write_preview"]
