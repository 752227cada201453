"""Tests of slide opening, resolution fallbacks and recovery from read errors."""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

import numpy as np
import pytest
import tifffile
from PIL import Image

from medi_core.errors import SlideReadError
from medi_core.wsi.reader import SlideReader, resolve_mpp

WSI = Path(__file__).resolve().parents[2] / "shared" / "data" / "wsi"
CMU = WSI / "CMU-1-Small-Region.svs"
FROZEN = WSI / "TCGA-CR-7395-01A-01-TS1.svs"
NDPI = WSI / "hamamatsu-fluorescence-dapi.ndpi"
needs_slides = pytest.mark.skipif(not CMU.is_file(), reason=f"real slides not found in {WSI}")


def test_mpp_from_slide_property():
    mpp, source = resolve_mpp({"openslide.mpp-x": "0.499", "openslide.mpp-y": "0.499"}, "s")
    assert (mpp, source) == (pytest.approx(0.499), "slide MPP")


def test_mpp_from_tiff_centimetres(caplog):
    # 43826 px/cm -> 1e4 / 43826 = 0.22818 µm/px
    properties = {"tiff.XResolution": "43826", "tiff.YResolution": "43826", "tiff.ResolutionUnit": "centimeter"}
    with caplog.at_level(logging.WARNING):
        mpp, source = resolve_mpp(properties, "slide-7")
    assert mpp == pytest.approx(0.22818, abs=1e-5)
    assert source == "TIFF resolution"
    assert "slide slide-7: no usable openslide.mpp-x/y" in caplog.text


def test_mpp_ignores_72_dpi_default():
    # 72 px/inch is 352.8 µm/px, a file default, not a scan resolution
    properties = {"tiff.XResolution": "72", "tiff.YResolution": "72", "tiff.ResolutionUnit": "inch",
                  "openslide.objective-power": "40"}
    mpp, source = resolve_mpp(properties, "s")
    assert (mpp, source) == (pytest.approx(0.25), "objective power")


def test_mpp_from_objective_power_logged(caplog):
    with caplog.at_level(logging.WARNING):
        mpp, _ = resolve_mpp({"openslide.objective-power": "20"}, "slide-9")
    assert mpp == pytest.approx(0.5)
    assert "slide slide-9: estimating MPP as 0.500 from objective power 20" in caplog.text


def test_mpp_missing_names_fixes():
    with pytest.raises(SlideReadError, match=r"slide s: no usable resolution .* --mpp .* MPP column"):
        resolve_mpp({}, "s")


def test_mpp_default_used_last():
    assert resolve_mpp({}, "s", default_mpp=0.5) == (0.5, "user --mpp")


def test_mpp_column_wins():
    properties = {"openslide.mpp-x": "0.25", "openslide.mpp-y": "0.25"}
    assert resolve_mpp(properties, "s", column_mpp=0.5) == (0.5, "user column")


def test_mpp_column_implausible():
    with pytest.raises(SlideReadError, match="outside the plausible range"):
        resolve_mpp({}, "s", column_mpp=250.0)


def test_reader_missing_file(tmp_path):
    with pytest.raises(SlideReadError, match=r"file .*gone\.svs not found"):
        SlideReader(tmp_path / "gone.svs")


def test_reader_png_rejected(tmp_path):
    from PIL import Image

    path = tmp_path / "photo.png"
    Image.new("RGB", (64, 64), (255, 255, 255)).save(path)
    with pytest.raises(SlideReadError, match="not in a slide format OpenSlide supports"):
        SlideReader(path)


@needs_slides
def test_reader_truncated_svs(tmp_path):
    path = tmp_path / "half.svs"
    data = CMU.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(SlideReadError, match="damaged or truncated"):
        SlideReader(path)


def _corrupt_tiles(source: Path, target: Path, tiles: range) -> None:
    shutil.copy(source, target)
    with tifffile.TiffFile(source) as tif:
        offsets, counts = tif.pages[0].dataoffsets, tif.pages[0].databytecounts
    with open(target, "r+b") as handle:
        for index in tiles:
            handle.seek(offsets[index])
            handle.write(b"\xff\x00" * (counts[index] // 2))


@needs_slides
def test_reader_reopens_after_corrupt_tile(tmp_path):
    path = tmp_path / "corrupt.svs"
    _corrupt_tiles(CMU, path, range(0, 1))  # first 240 px TIFF tile, at level-0 (0, 0)
    with SlideReader(path) as reader:
        with pytest.raises(SlideReadError, match="failed twice"):
            reader.read_rgb((0, 0), 0, (64, 64))
        tile = reader.read_rgb((1024, 1024), 0, (64, 64))  # the reopened handle reads intact tiles
    assert tile.shape == (64, 64, 3)


@needs_slides
def test_reader_ndpi_levels():
    with SlideReader(NDPI) as reader:
        assert reader.level_downsamples[:3] == (1.0, 2.0, 4.0)
        assert reader.best_level(3.0).level == 1


@needs_slides
def test_thumbnail_size_and_white_outside():
    with SlideReader(FROZEN) as reader:
        thumbnail = reader.thumbnail(8.0)
    # 4443 / 8 = 555.4 -> 555, 3567 / 8 = 445.9 -> 446
    assert thumbnail.shape == (446, 555, 3)


def test_thumbnail_chunked_matches_whole(tmp_path, monkeypatch):
    from medi_core.wsi.synthetic import write_synthetic_slide

    # one level and no embedded thumbnail, so the thumbnail is read from level 0
    path = write_synthetic_slide(tmp_path / "flat.svs", width=1500, height=1000, mpp=0.5, downsamples=(1,))
    with SlideReader(path) as reader:
        whole = reader.thumbnail(8.0)
        monkeypatch.setattr("medi_core.wsi.reader.THUMBNAIL_CHUNK_PX", 256)
        chunked = reader.thumbnail(8.0)
    assert chunked.shape == whole.shape
    # chunk seams are resampled separately, so allow a small mean difference (0-255)
    assert abs(chunked.astype(float) - whole.astype(float)).mean() < 3.0


@needs_slides
def test_thumbnail_embedded_matches_level():
    with SlideReader(CMU) as reader:
        embedded = reader.thumbnail(8.0)  # level 0 is 16x larger than the output: embedded thumbnail
        from_level = reader.thumbnail(1.9)  # level 0 is 3.6x larger: read from the level
    resized = np.asarray(Image.fromarray(from_level).resize(embedded.shape[1::-1], Image.Resampling.BILINEAR))
    assert abs(resized.astype(float) - embedded.astype(float)).mean() < 10.0


def _levels_read(reader: SlideReader, monkeypatch) -> list[int]:
    levels: list[int] = []
    original = reader.read_image

    def spy(location, level, size):
        levels.append(level)
        return original(location, level, size)

    monkeypatch.setattr(reader, "read_image", spy)
    return levels


def test_thumbnail_upsample_reads_coarser_level(tmp_path, monkeypatch):
    from medi_core.wsi.synthetic import write_synthetic_slide

    path = write_synthetic_slide(tmp_path / "p.svs", width=2048, height=2048, mpp=0.5, downsamples=(1, 4, 16))
    with SlideReader(path) as reader:
        levels = _levels_read(reader, monkeypatch)
        thumbnail = reader.thumbnail(8.0, max_upsample=2.0)  # the 16x level is 2x coarser than 8x
    assert set(levels) == {2}
    assert thumbnail.shape == (256, 256, 3)  # 2048 / 8


def test_thumbnail_default_reads_finer_level(tmp_path, monkeypatch):
    from medi_core.wsi.synthetic import write_synthetic_slide

    path = write_synthetic_slide(tmp_path / "p.svs", width=2048, height=2048, mpp=0.5, downsamples=(1, 4, 16))
    with SlideReader(path) as reader:
        levels = _levels_read(reader, monkeypatch)
        reader.thumbnail(8.0)
    assert set(levels) == {1}


def test_thumbnail_upsample_below_one_rejected(tmp_path):
    from medi_core.wsi.synthetic import write_synthetic_slide

    path = write_synthetic_slide(tmp_path / "p.svs", width=512, height=512, mpp=0.5, downsamples=(1,))
    with SlideReader(path) as reader, pytest.raises(ValueError, match="max_upsample must be at least 1.0, got 0.5"):
        reader.thumbnail(8.0, max_upsample=0.5)


@needs_slides
def test_reader_threaded_reads_match_serial():
    from concurrent.futures import ThreadPoolExecutor

    corners = [(x, y) for x in range(0, 1800, 256) for y in range(0, 2400, 600)]  # 28 tiles
    with SlideReader(CMU) as reader:  # threaded first, so those reads find OpenSlide's tile cache empty
        with ThreadPoolExecutor(max_workers=4) as pool:
            threaded = list(pool.map(lambda xy: reader.read_rgb(xy, 0, (256, 256)), corners))
    with SlideReader(CMU) as reader:
        serial = [reader.read_rgb(xy, 0, (256, 256)) for xy in corners]
    for expected, actual in zip(serial, threaded, strict=True):
        assert np.array_equal(expected, actual)
