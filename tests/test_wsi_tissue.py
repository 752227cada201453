"""Tests of tissue detection, the brightfield check and the tile filters."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from scipy import ndimage
from skimage import morphology

from medi_core.wsi.reader import SlideReader
from medi_core.wsi.tissue import (
    TileFilterConfig,
    TissueConfig,
    background_fraction,
    detect_tissue,
    disk_dilation,
    disk_erosion,
    is_brightfield,
    saturation,
    sharpness,
)

WSI = Path(__file__).resolve().parents[2] / "shared" / "data" / "wsi"
needs_slides = pytest.mark.skipif(not (WSI / "CMU-1-Small-Region.svs").is_file(), reason=f"real slides not found in {WSI}")


def _thumbnail(name: str, mpp: float) -> np.ndarray:
    with SlideReader(WSI / name) as reader:
        return reader.thumbnail(4.0 / mpp)


def test_saturation_hand_values():
    pixels = np.array([[[255, 255, 255], [200, 100, 150], [0, 0, 0]]], dtype=np.uint8)
    # white 0, (200 - 100) / 200 = 0.5, black 0
    assert saturation(pixels)[0].tolist() == pytest.approx([0.0, 0.5, 0.0])


@pytest.mark.parametrize("shape", [(1, 1), (1, 6), (6, 1), (2, 3), (37, 41)])
@pytest.mark.parametrize("radius", [1, 2, 3])
def test_disk_morphology_matches_scipy(shape, radius):
    # the cross-step shortcut (radius <= 2) and the scipy fallback give scipy's result, borders included
    rng = np.random.default_rng(radius)
    for density in (0.2, 0.5, 0.85):
        mask = rng.random(shape) < density
        disk = morphology.disk(radius)
        assert np.array_equal(disk_erosion(mask, radius), ndimage.binary_erosion(mask, structure=disk))
        assert np.array_equal(disk_dilation(mask, radius), ndimage.binary_dilation(mask, structure=disk))


def test_blank_image_has_no_tissue():
    glass = np.full((100, 100, 3), 240, dtype=np.uint8)
    glass += np.random.default_rng(0).integers(0, 8, glass.shape, dtype=np.uint8)  # sensor noise
    assert not detect_tissue(glass, TissueConfig()).any()


def test_tissue_square_found():
    image = np.full((60, 60, 3), 240, dtype=np.uint8)
    image[20:40, 20:40] = (200, 100, 160)  # stained square of 400 px
    # opening with the 3 x 3 cross (disk of radius 1) trims the 4 corner pixels: 400 - 4
    assert detect_tissue(image, TissueConfig()).sum() == 396


def test_small_holes_filled():
    image = np.full((60, 60, 3), 240, dtype=np.uint8)
    image[10:50, 10:50] = (200, 100, 160)
    image[28:32, 28:32] = 240  # 16 px glass hole inside the tissue, below max_hole_px
    # 40 x 40 = 1600 px with the hole filled, minus the 4 corners trimmed by the opening
    assert detect_tissue(image, TissueConfig()).sum() == 1596


@needs_slides
def test_tissue_found_on_cmu():
    mask = detect_tissue(_thumbnail("CMU-1-Small-Region.svs", 0.499), TissueConfig())
    assert 0.2 < mask.mean() < 0.5  # the strip of skin covers about a third of the region


@needs_slides
def test_tissue_found_on_frozen_section():
    mask = detect_tissue(_thumbnail("TCGA-CR-7395-01A-01-TS1.svs", 0.5), TissueConfig())
    assert 0.4 < mask.mean() < 0.8  # the section covers most of the scan, with glass at the corners


@needs_slides
def test_brightfield_check_accepts_he():
    assert is_brightfield(_thumbnail("CMU-1-Small-Region.svs", 0.499))[0]


@needs_slides
def test_brightfield_check_rejects_fluorescence():
    assert not is_brightfield(_thumbnail("hamamatsu-fluorescence-dapi.ndpi", 0.228))[0]


def test_background_fraction_half_glass():
    tile = np.full((64, 64, 3), 250, dtype=np.uint8)
    tile[:, 32:] = (200, 100, 160)
    assert background_fraction(tile, TileFilterConfig()) == pytest.approx(0.5)


@needs_slides
def test_sharpness_separates_blurred_tile():
    with SlideReader(WSI / "CMU-1-Small-Region.svs") as reader:
        tile = reader.read_rgb((1024, 1536), 0, (256, 256))
    blurred = ndimage.gaussian_filter(tile, sigma=(3, 3, 0))
    threshold = TileFilterConfig().min_sharpness
    assert sharpness(tile) > threshold
    assert sharpness(blurred) < threshold
