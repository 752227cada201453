"""End-to-end tests of a prepare run on the real slides, including bad inputs next to a good slide."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import tifffile
from PIL import Image

from medi_core.data import metadata_counts, open_patch_source
from medi_core.errors import DatasetError, MetadataError
from medi_core.wsi.config import PrepareConfig
from medi_core.wsi.prepare import prepare_slides
from medi_core.wsi.preview import KEPT_COLOUR
from medi_core.wsi.process import process_slide
from medi_core.wsi.synthetic import write_synthetic_slide
from medi_core.wsi.tiler import TilingConfig
from medi_core.wsi.tissue import TileFilterConfig

WSI = Path(__file__).resolve().parents[2] / "shared" / "data" / "wsi"
CMU = WSI / "CMU-1-Small-Region.svs"
FROZEN = WSI / "TCGA-CR-7395-01A-01-TS1.svs"
NDPI = WSI / "hamamatsu-fluorescence-dapi.ndpi"
pytestmark = pytest.mark.skipif(not CMU.is_file(), reason=f"real slides not found in {WSI}")

# Tiles kept on CMU-1-Small-Region at 256 px, 0.5 µm/px, 50 % tissue: counted by
# hand on the preview, row by row from the top of the 8 x 11 grid:
# 0 + 1 + 1 + 2 + 3 + 2 + 2 + 3 + 4 + 4 + 5 = 27.
CMU_PATCHES = 27


def _slides(tmp_path: Path, *sources: Path) -> Path:
    folder = tmp_path / "slides"
    folder.mkdir(exist_ok=True)
    for source in sources:
        os.symlink(source, folder / source.name)
    return folder


def _csv(tmp_path: Path, text: str, encoding: str = "utf-8") -> Path:
    path = tmp_path / "slides.csv"
    path.write_bytes(text.encode(encoding))
    return path


def _config(**overrides) -> PrepareConfig:
    return PrepareConfig(workers=1, **overrides)


def _by_id(report) -> dict:
    return {s.slide_id: s for s in report.slides}


def _run_with_cmu(tmp_path: Path, bad: Path, config: PrepareConfig | None = None):
    folder = _slides(tmp_path, CMU)
    csv = _csv(tmp_path, f"slide_id,class\nCMU-1-Small-Region,skin\n{bad.stem},skin\n")
    return prepare_slides([folder, bad], csv, tmp_path / "store", config or _config())


def test_prepare_cmu_patch_count(tmp_path):
    folder = _slides(tmp_path, CMU)
    report = prepare_slides([folder], _csv(tmp_path, "slide_id,class\nCMU-1-Small-Region,skin\n"), tmp_path / "s", _config())
    assert report.num_patches == CMU_PATCHES


def test_prepare_cmu_full_grid(tmp_path):
    folder = _slides(tmp_path, CMU)
    config = _config(
        tiling=TilingConfig(min_tissue_fraction=0.0),
        filters=TileFilterConfig(max_background_fraction=1.0, min_sharpness=0.0),
    )
    report = prepare_slides([folder], _csv(tmp_path, "slide_id,class\nCMU-1-Small-Region,skin\n"), tmp_path / "s", config)
    assert report.num_patches == 8 * 11  # floor(2220 / 256) x floor(2967 / 256)


def test_prepare_store_loads_as_dataset(tmp_path):
    folder = _slides(tmp_path, CMU)
    prepare_slides([folder], _csv(tmp_path, "slide_id,class,site\nCMU-1-Small-Region,skin,'--\n"), tmp_path / "s", _config())
    dataset = open_patch_source(tmp_path / "s", image_size=32)
    counts = metadata_counts(dataset)
    assert counts.to_dict("records") == [{"class": "skin", "site": None, "count": CMU_PATCHES}]
    assert dataset[0][0].shape == (3, 32, 32)
    assert dataset.records["mpp"].iloc[0] == pytest.approx(0.499)


def test_prepare_frozen_refused_without_mpp(tmp_path):
    folder = _slides(tmp_path, FROZEN)
    report = prepare_slides([folder], _csv(tmp_path, f"slide_id,class\n{FROZEN.stem},HNSC\n"), tmp_path / "s", _config())
    result = _by_id(report)[FROZEN.stem]
    assert result.status == "skipped"
    assert "no usable resolution" in result.reason
    assert "--mpp" in result.reason


def test_prepare_frozen_jpeg2000_tiles_are_tissue(tmp_path):
    folder = _slides(tmp_path, FROZEN)
    csv = _csv(tmp_path, f"slide_id,class\n{FROZEN.stem},HNSC\n")
    report = prepare_slides([folder], csv, tmp_path / "s", _config(default_mpp=0.5))
    result = _by_id(report)[FROZEN.stem]
    assert result.status == "done"
    assert result.mpp_source == "user --mpp"
    dataset = open_patch_source(tmp_path / "s", image_size=256)
    assert dataset.records["site"].unique().tolist() == ["CR"]  # from the TCGA barcode
    for index in range(0, len(dataset), 10):
        pixels = np.asarray(dataset.load_image(index), dtype=np.float32)
        assert 60 < pixels.mean() < 225, f"tile {index} is black or blank (mean {pixels.mean():.0f})"
        assert pixels.std() > 10, f"tile {index} is flat (std {pixels.std():.1f})"


def test_prepare_frozen_accepted_with_mpp_column(tmp_path):
    folder = _slides(tmp_path, FROZEN)
    csv = _csv(tmp_path, f"slide_id,class,mpp\n{FROZEN.stem},HNSC,0.5\n")
    report = prepare_slides([folder], csv, tmp_path / "s", _config())
    assert _by_id(report)[FROZEN.stem].mpp_source == "user column"


def test_prepare_ndpi_fluorescence_skipped(tmp_path):
    folder = _slides(tmp_path, NDPI)
    report = prepare_slides([folder], _csv(tmp_path, f"slide_id,class\n{NDPI.stem},x\n"), tmp_path / "s", _config())
    assert "not a brightfield scan" in _by_id(report)[NDPI.stem].reason
    assert f"see previews/{NDPI.stem}.png" in _by_id(report)[NDPI.stem].reason
    assert Image.open(tmp_path / "s" / "previews" / f"{NDPI.stem}.png").size[0] > 0  # to check the reason by eye


def test_bad_missing_path(tmp_path):
    report = _run_with_cmu(tmp_path, tmp_path / "gone.svs")
    assert "not found" in _by_id(report)["gone"].reason
    assert _by_id(report)["CMU-1-Small-Region"].num_patches == CMU_PATCHES


def test_bad_png_as_slide(tmp_path):
    from PIL import Image

    png = tmp_path / "photo.png"
    Image.new("RGB", (512, 512), (200, 100, 160)).save(png)
    report = _run_with_cmu(tmp_path, png)
    assert "not in a slide format OpenSlide supports" in _by_id(report)["photo"].reason
    assert _by_id(report)["CMU-1-Small-Region"].num_patches == CMU_PATCHES


def test_bad_truncated_svs(tmp_path):
    truncated = tmp_path / "truncated.svs"
    truncated.write_bytes(CMU.read_bytes()[:1_000_000])
    report = _run_with_cmu(tmp_path, truncated)
    assert "damaged or truncated" in _by_id(report)["truncated"].reason
    assert _by_id(report)["CMU-1-Small-Region"].num_patches == CMU_PATCHES


def _corrupt_level0_tiles(source: Path, target: Path, tiles: range) -> None:
    if source != target:
        shutil.copy(source, target)
    with tifffile.TiffFile(target) as tif:
        offsets, counts = tif.pages[0].dataoffsets, tif.pages[0].databytecounts
    with open(target, "r+b") as handle:
        for index in tiles:
            handle.seek(offsets[index])
            handle.write(b"\xff\x00" * (counts[index] // 2))


def test_bad_corrupt_tile_data(tmp_path):
    corrupt = tmp_path / "corrupt.svs"
    # TIFF tile rows 4-5 (level-0 y 960-1440), through the tissue. The thumbnail comes
    # from the intact embedded image, so the first tissue tile read fails.
    _corrupt_level0_tiles(CMU, corrupt, range(40, 60))
    report = _run_with_cmu(tmp_path, corrupt)
    assert "tiles are unreadable" in _by_id(report)["corrupt"].reason
    assert _by_id(report)["CMU-1-Small-Region"].num_patches == CMU_PATCHES


def test_bad_corrupt_tiles_in_pyramid(tmp_path):
    slide = write_synthetic_slide(tmp_path / "pyramid.svs", width=2048, height=2048, mpp=0.5, downsamples=(1, 4))
    # level 0 is 8 x 8 TIFF tiles of 256 px; tiles 27, 28, 35, 36 are the centre of the tissue.
    # The thumbnail comes from the intact 4x level, so only the tile reads fail.
    _corrupt_level0_tiles(slide, slide, range(27, 29))
    _corrupt_level0_tiles(slide, slide, range(35, 37))
    report = _run_with_cmu(tmp_path, slide)
    # 1 % of the 20 tissue tiles allows none, so the first unreadable tile rejects the slide
    assert "1 of 20 tiles are unreadable" in _by_id(report)["pyramid"].reason
    assert not (tmp_path / "store" / "slides" / "pyramid.shard").exists()
    assert _by_id(report)["CMU-1-Small-Region"].num_patches == CMU_PATCHES


def test_corrupt_tiles_within_limit_skipped(tmp_path):
    slide = write_synthetic_slide(tmp_path / "pyramid.svs", width=2048, height=2048, mpp=0.5, downsamples=(1, 4))
    _corrupt_level0_tiles(slide, slide, range(27, 28))
    report = _run_with_cmu(tmp_path, slide, _config(max_unreadable_fraction=0.2))
    result = _by_id(report)["pyramid"]
    assert result.unreadable_tiles == 1
    assert result.status == "done"


@pytest.mark.parametrize("attempt", range(4))
def test_corrupt_tile_fails_only_itself_with_threads(tmp_path, attempt):
    # A read error breaks the shared OpenSlide handle; concurrent good reads must still succeed.
    slide = write_synthetic_slide(tmp_path / "pyramid.svs", width=2048, height=2048, mpp=0.5, downsamples=(1, 4))
    _corrupt_level0_tiles(slide, slide, range(27, 28))
    report = _run_with_cmu(tmp_path, slide, _config(max_unreadable_fraction=0.2, tile_threads=4))
    assert _by_id(report)["pyramid"].unreadable_tiles == 1


def test_bad_slide_without_tissue(tmp_path):
    blank = write_synthetic_slide(tmp_path / "blank.svs", width=1024, height=1024, mpp=0.5, downsamples=(1,), tissue=False)
    report = _run_with_cmu(tmp_path, blank)
    assert "no tissue found" in _by_id(report)["blank"].reason
    assert "see previews/blank.png" in _by_id(report)["blank"].reason
    assert (tmp_path / "store" / "previews" / "blank.png").is_file()
    assert _by_id(report)["CMU-1-Small-Region"].num_patches == CMU_PATCHES


def test_bad_latin1_csv(tmp_path):
    folder = _slides(tmp_path, CMU)
    csv = _csv(tmp_path, "slide_id,class,hospital\nCMU-1-Small-Region,skin,Universit\u00e4t\n", encoding="latin-1")
    with pytest.raises(MetadataError, match=r"slides\.csv is not UTF-8"):
        prepare_slides([folder], csv, tmp_path / "s", _config())


def test_bad_csv_without_class(tmp_path):
    folder = _slides(tmp_path, CMU)
    csv = _csv(tmp_path, "slide_id,diagnosis\nCMU-1-Small-Region,skin\n")
    with pytest.raises(MetadataError, match=r"slides\.csv lacks the required column\(s\) \['class'\]"):
        prepare_slides([folder], csv, tmp_path / "s", _config())


def test_bad_csv_column_case_names_options(tmp_path):
    folder = _slides(tmp_path, CMU)
    csv = _csv(tmp_path, "Slide_ID,Class\nCMU-1-Small-Region,skin\n")
    with pytest.raises(MetadataError) as raised:
        prepare_slides([folder], csv, tmp_path / "s", _config())
    assert "--slide-column Slide_ID" in str(raised.value)
    assert "--class-column Class" in str(raised.value)


def test_bad_csv_semicolon_separated(tmp_path):
    folder = _slides(tmp_path, CMU)
    csv = _csv(tmp_path, "slide_id;class\nCMU-1-Small-Region;skin\n")
    with pytest.raises(MetadataError, match="separated by semicolons: save the file as comma-separated CSV"):
        prepare_slides([folder], csv, tmp_path / "s", _config())


def test_bad_duplicate_slide_ids(tmp_path):
    folder = _slides(tmp_path, CMU)
    csv = _csv(tmp_path, "slide_id,class\nCMU-1-Small-Region,skin\nCMU-1-Small-Region,skin\n")
    report = prepare_slides([folder], csv, tmp_path / "s", _config())
    assert report.join.duplicate_ids == ["CMU-1-Small-Region"]
    assert _by_id(report)["CMU-1-Small-Region"].status == "done"  # identical rows count once
    assert _by_id(report)["CMU-1-Small-Region"].metadata["class"] == "skin"
    assert "duplicate slide ids in the CSV" in (tmp_path / "s" / "report.md").read_text()


def test_bad_conflicting_duplicate_rows(tmp_path):
    folder = _slides(tmp_path, CMU, FROZEN)
    csv = _csv(
        tmp_path,
        "slide_id,class,mpp\nCMU-1-Small-Region,skin,\nCMU-1-Small-Region,tumour,\n"
        f"{FROZEN.stem},tumour,0.5\n",
    )
    report = prepare_slides([folder], csv, tmp_path / "s", _config())
    skipped = _by_id(report)["CMU-1-Small-Region"]
    assert skipped.status == "skipped"
    assert "disagree (class 'skin' vs 'tumour')" in skipped.reason
    assert "keep one row per slide" in skipped.reason
    assert _by_id(report)[FROZEN.stem].status == "done"  # the other slide is still tiled
    assert report.join.rows_without_slide == []
    assert "disagree (class 'skin' vs 'tumour')" in (tmp_path / "s" / "report.md").read_text()


def test_unlisted_slide_and_row_reported(tmp_path):
    folder = _slides(tmp_path, CMU, NDPI)
    csv = _csv(tmp_path, "slide_id,class\nCMU-1-Small-Region,skin\nTCGA-A7-A0D9-01Z-00-DX2,tumour\n")
    report = prepare_slides([folder], csv, tmp_path / "s", _config())
    assert report.join.rows_without_slide == ["TCGA-A7-A0D9-01Z-00-DX2"]
    assert f"no row with slide id {NDPI.stem!r}" in _by_id(report)[NDPI.stem].reason


def test_csv_id_with_extension_hint(tmp_path, caplog):
    folder = _slides(tmp_path, CMU)
    csv = _csv(tmp_path, "slide_id,class\nCMU-1-Small-Region.svs,skin\n")
    report = prepare_slides([folder], csv, tmp_path / "s", _config())
    assert report.join.rows_without_slide == ["CMU-1-Small-Region.svs"]
    assert "write 'CMU-1-Small-Region.svs' as 'CMU-1-Small-Region'" in caplog.text


def test_prepare_resumes(tmp_path):
    folder = _slides(tmp_path, CMU)
    csv = _csv(tmp_path, "slide_id,class\nCMU-1-Small-Region,skin\n")
    prepare_slides([folder], csv, tmp_path / "s", _config())
    shard = tmp_path / "s" / "slides" / "CMU-1-Small-Region.shard"
    written = shard.stat().st_mtime_ns
    report = prepare_slides([folder], csv, tmp_path / "s", _config())
    assert _by_id(report)["CMU-1-Small-Region"].status == "already done"
    assert report.num_patches == CMU_PATCHES
    assert shard.stat().st_mtime_ns == written


def test_resume_takes_corrected_class(tmp_path):
    folder = _slides(tmp_path, CMU)
    prepare_slides([folder], _csv(tmp_path, "slide_id,class,site\nCMU-1-Small-Region,skin,A1\n"), tmp_path / "s", _config())
    shard = tmp_path / "s" / "slides" / "CMU-1-Small-Region.shard"
    written = shard.stat().st_mtime_ns
    corrected = _csv(tmp_path, "slide_id,class,site\nCMU-1-Small-Region,tumour,A1\n")
    report = prepare_slides([folder], corrected, tmp_path / "s", _config())
    assert _by_id(report)["CMU-1-Small-Region"].status == "already done"
    assert _by_id(report)["CMU-1-Small-Region"].metadata["class"] == "tumour"
    assert shard.stat().st_mtime_ns == written
    dataset = open_patch_source(tmp_path / "s", image_size=32)
    assert dataset.records["class"].unique().tolist() == ["tumour"]
    assert dataset.records["site"].unique().tolist() == ["A1"]


def test_resume_notes_slide_without_row(tmp_path):
    folder = _slides(tmp_path, CMU)
    prepare_slides([folder], _csv(tmp_path, "slide_id,class\nCMU-1-Small-Region,skin\n"), tmp_path / "s", _config())
    report = prepare_slides([folder], _csv(tmp_path, "slide_id,class\nother,skin\n"), tmp_path / "s", _config())
    assert report.num_patches == 0
    assert len(report.extra_notes) == 1
    assert "CMU-1-Small-Region" in report.extra_notes[0]
    assert "Training still reads their patches" in (tmp_path / "s" / "report.md").read_text()
    assert len(open_patch_source(tmp_path / "s", image_size=32)) == CMU_PATCHES


@pytest.mark.parametrize(
    ("changed", "message"),
    [
        (dict(tiling=TilingConfig(tile_size=128)), "written with tile_size=256, but this run uses tile_size=128"),
        (dict(jpeg_quality=80), "written with jpeg_quality=90, but this run uses jpeg_quality=80"),
    ],
)
def test_store_rejects_other_settings(tmp_path, changed, message):
    folder = _slides(tmp_path, CMU)
    csv = _csv(tmp_path, "slide_id,class\nCMU-1-Small-Region,skin\n")
    prepare_slides([folder], csv, tmp_path / "s", _config())
    with pytest.raises(DatasetError, match=message):
        prepare_slides([folder], csv, tmp_path / "s", _config(**changed))


def test_prepare_writes_preview_and_report(tmp_path):
    folder = _slides(tmp_path, CMU)
    prepare_slides([folder], _csv(tmp_path, "slide_id,class\nCMU-1-Small-Region,skin\n"), tmp_path / "s", _config())
    report = json.loads((tmp_path / "s" / "report.json").read_text())
    assert report["patches_per_class"] == {"skin": CMU_PATCHES}
    preview = np.asarray(Image.open(tmp_path / "s" / "previews" / "CMU-1-Small-Region.png"))
    assert preview.shape == (370, 277, 3)  # the 4 µm/px thumbnail of 2220 x 2967 px at 0.499 µm/px
    assert np.all(preview == KEPT_COLOUR, axis=2).sum() > CMU_PATCHES * 4  # outlines of the kept tiles


def crash_on_frozen(job, out, config):
    """Stand-in for process_slide that kills its worker on the frozen section (module level: pickled)."""
    if job.slide_id == FROZEN.stem:
        os._exit(3)  # a hard crash, as a codec segfault would cause
    return process_slide(job, out, config)


def test_prepare_parallel_survives_worker_crash(tmp_path, monkeypatch):
    monkeypatch.setattr("medi_core.wsi.prepare.process_slide", crash_on_frozen)
    folder = _slides(tmp_path, CMU, FROZEN)
    csv = _csv(tmp_path, f"slide_id,class\nCMU-1-Small-Region,skin\n{FROZEN.stem},HNSC\n")
    report = prepare_slides([folder], csv, tmp_path / "s", PrepareConfig(workers=2, default_mpp=0.5))
    assert "worker process crashed" in _by_id(report)[FROZEN.stem].reason
    assert _by_id(report)["CMU-1-Small-Region"].num_patches == CMU_PATCHES


def test_prepare_threads_write_same_store(tmp_path):
    folder = _slides(tmp_path, CMU)
    csv = _csv(tmp_path, "slide_id,class\nCMU-1-Small-Region,skin\n")
    prepare_slides([folder], csv, tmp_path / "one", _config(tile_threads=1))
    prepare_slides([folder], csv, tmp_path / "three", _config(tile_threads=3))
    for name in ("CMU-1-Small-Region.shard", "CMU-1-Small-Region.patches.csv"):
        one = (tmp_path / "one" / "slides" / name).read_bytes()
        assert one == (tmp_path / "three" / "slides" / name).read_bytes(), name


def test_store_numeric_metadata_is_number(tmp_path):
    folder = _slides(tmp_path, CMU)
    csv = _csv(tmp_path, "slide_id,class,site,age_at_index\nCMU-1-Small-Region,skin,01,61\n")
    prepare_slides([folder], csv, tmp_path / "s", _config())
    metadata = open_patch_source(tmp_path / "s", image_size=32).metadata(0)
    assert metadata["age_at_index"] == 61
    assert isinstance(metadata["age_at_index"], int)
    assert metadata["site"] == "01"  # site codes stay text


def test_skipped_slide_not_retried(tmp_path, monkeypatch):
    folder = _slides(tmp_path, CMU, NDPI)
    csv = _csv(tmp_path, f"slide_id,class\nCMU-1-Small-Region,skin\n{NDPI.stem},x\n")
    prepare_slides([folder], csv, tmp_path / "s", _config())
    opened: list[str] = []
    monkeypatch.setattr("medi_core.wsi.prepare.process_slide", lambda job, out, config: opened.append(job.slide_id))
    report = prepare_slides([folder], csv, tmp_path / "s", _config())
    assert opened == []
    assert _by_id(report)[NDPI.stem].status == "already skipped"
    assert "not a brightfield scan" in _by_id(report)[NDPI.stem].reason
    assert "--retry-skipped tries it again" in (tmp_path / "s" / "report.md").read_text()


def test_skipped_slide_retried_on_request(tmp_path):
    folder = _slides(tmp_path, NDPI)
    csv = _csv(tmp_path, f"slide_id,class\n{NDPI.stem},x\n")
    prepare_slides([folder], csv, tmp_path / "s", _config())
    report = prepare_slides([folder], csv, tmp_path / "s", _config(), retry_skipped=True)
    assert _by_id(report)[NDPI.stem].status == "skipped"  # processed again, skipped again


def test_skipped_slide_retried_after_settings_change(tmp_path):
    folder = _slides(tmp_path, FROZEN)
    csv = _csv(tmp_path, f"slide_id,class\n{FROZEN.stem},HNSC\n")
    first = prepare_slides([folder], csv, tmp_path / "s", _config())
    assert _by_id(first)[FROZEN.stem].status == "skipped"  # no resolution metadata
    second = prepare_slides([folder], csv, tmp_path / "s", _config(default_mpp=0.5))
    assert _by_id(second)[FROZEN.stem].status == "done"
    assert not (tmp_path / "s" / "skipped" / f"{FROZEN.stem}.json").exists()


def test_mpp_retries_only_slides_without_resolution(tmp_path, monkeypatch):
    folder = _slides(tmp_path, NDPI, FROZEN)
    (folder / "cut.svs").write_bytes(CMU.read_bytes()[:4096])  # cannot be opened
    csv = _csv(tmp_path, f"slide_id,class\n{NDPI.stem},x\n{FROZEN.stem},HNSC\ncut,x\n")
    first = prepare_slides([folder], csv, tmp_path / "s", _config())
    assert {s.status for s in first.slides} == {"skipped"}
    opened: list[str] = []

    def record_and_process(job, out, config):
        opened.append(job.slide_id)
        return process_slide(job, out, config)

    monkeypatch.setattr("medi_core.wsi.prepare.process_slide", record_and_process)
    second = prepare_slides([folder], csv, tmp_path / "s", _config(default_mpp=0.5))
    assert opened == [FROZEN.stem]  # the NDPI has its own MPP, and the cut file never opened
    assert _by_id(second)[FROZEN.stem].status == "done"
    assert _by_id(second)[NDPI.stem].status == "already skipped"
    assert _by_id(second)["cut"].status == "already skipped"


def test_synthetic_he_slide_tiles_look_like_he(tmp_path):
    textures = sorted((WSI.parent / "patches" / "brca-m2c" / "images").glob("*.png"))[:4]
    if not textures:
        pytest.skip("BRCA-M2C patches not found")
    slide = write_synthetic_slide(tmp_path / "he.svs", width=2048, height=2048, mpp=0.5, texture_images=textures)
    csv = _csv(tmp_path, "slide_id,class\nhe,x\n")
    report = prepare_slides([slide], csv, tmp_path / "s", _config())
    assert report.num_patches > 0  # pale crops (fat, lumen) may fail the tissue mask, so no exact count
    pixels = np.asarray(open_patch_source(tmp_path / "s", image_size=256).load_image(0), dtype=np.float32)
    red, green, blue = pixels.reshape(-1, 3).mean(axis=0)
    assert green < red  # eosin and haematoxylin absorb green most
    assert green < blue
