"""Tests of the preview PNG: the encoder round-trips through Pillow, and outlines mark kept tiles."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from medi_core.wsi.preview import KEPT_COLOUR, REJECTED_COLOUR, encode_png, render_preview_base, write_preview


@pytest.mark.parametrize("shape", [(1, 1), (1, 7), (5, 1), (37, 53), (256, 300)])
def test_png_round_trips_through_pillow(shape):
    pixels = np.random.default_rng(sum(shape)).integers(0, 256, (*shape, 3), dtype=np.uint8)
    decoded = Image.open(io.BytesIO(encode_png(pixels)))
    decoded.load()  # checks the chunk CRCs and the zlib stream
    assert decoded.mode == "RGB"
    assert np.array_equal(np.asarray(decoded), pixels)


def test_png_rejects_non_rgb():
    with pytest.raises(ValueError, match="RGB uint8"):
        encode_png(np.zeros((4, 4), dtype=np.uint8))
    with pytest.raises(ValueError, match="RGB uint8"):
        encode_png(np.zeros((4, 4, 3), dtype=np.float32))


def test_preview_outlines_kept_and_rejected_tiles(tmp_path: Path):
    thumbnail = np.full((40, 60, 3), 240, dtype=np.uint8)
    mask = np.zeros((40, 60), dtype=bool)
    mask[10:30, 10:50] = True
    # thumbnail at 16 level-0 px per px; tiles of 160 level-0 px are 10 preview px wide
    base = render_preview_base(thumbnail, mask, 16.0, max_px=1024)
    path = tmp_path / "previews" / "slide.png"
    write_preview(path, base, 160.0, kept=[(160, 160)], rejected=[(480, 160)])
    preview = np.asarray(Image.open(path))
    assert preview.shape == (40, 60, 3)
    assert tuple(preview[10, 12]) == KEPT_COLOUR  # top edge of the kept tile at preview (10, 10)
    assert tuple(preview[15, 30]) == REJECTED_COLOUR  # left edge of the rejected tile at preview (30, 10)
    assert tuple(preview[20, 45]) != tuple(preview[5, 5])  # tissue is tinted, glass is not
