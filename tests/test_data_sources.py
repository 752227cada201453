"""Tests of open_patch_source on the real patch folders and on generated manifests."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from medi_core.data import metadata_counts, open_patch_source
from medi_core.errors import DatasetError

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
BRCA = DATA / "patches" / "brca-m2c"
TILES = DATA / "patches" / "tcga-tiles"
SLIDE_3X = "TCGA-3X-AAVA-01Z-00-DX1"
SLIDE_AD = "TCGA-AD-6964-01Z-00-DX1"

needs_data = pytest.mark.skipif(not BRCA.is_dir() or not TILES.is_dir(), reason=f"real patch data not found at {DATA}")


@needs_data
def test_brca_m2c_loads_all_patches():
    dataset = open_patch_source(BRCA, image_size=32)
    assert len(dataset) == 120


@needs_data
def test_brca_m2c_classes_from_dominant_cell_class():
    dataset = open_patch_source(BRCA, image_size=32)
    assert set(dataset.records["class"]) == {"lymphocyte", "stromal", "tumor_epithelial"}


@needs_data
def test_brca_m2c_site_counts():
    counts = metadata_counts(open_patch_source(BRCA, image_size=32), fields=("site",))
    per_site = dict(zip(counts["site"], counts["count"], strict=True))
    assert (per_site["A7"], per_site["A8"], per_site["AC"]) == (36, 47, 17)


@needs_data
def test_brca_m2c_twelve_sites():
    dataset = open_patch_source(BRCA, image_size=32)
    assert dataset.records["site"].nunique() == 12


@needs_data
def test_brca_m2c_item_shape_and_range():
    image, metadata = open_patch_source(BRCA, image_size=32)[0]
    assert image.shape == (3, 32, 32)
    assert image.min() >= -1.0
    assert image.max() <= 1.0
    assert metadata["slide_id"] == "TCGA-A7-A0D9-01Z-00-DX2"
    assert metadata["n_tumor_epithelial"] == 180


@needs_data
def test_tcga_ut_slide_layout_needs_class():
    with pytest.raises(DatasetError, match="give the class of all its patches"):
        open_patch_source(TILES, image_size=32)


@needs_data
def test_tcga_ut_slide_layout_sites_from_barcodes():
    dataset = open_patch_source(TILES, image_size=64, class_name="CHOL")
    counts = metadata_counts(dataset, fields=("class", "site"))
    assert counts.to_dict("records") == [
        {"class": "CHOL", "site": "3X", "count": 6},
        {"class": "CHOL", "site": "AD", "count": 3},
    ]


@needs_data
def test_tcga_ut_class_layout(tmp_path):
    shutil.copytree(TILES / SLIDE_3X, tmp_path / "CHOL" / SLIDE_3X)
    shutil.copytree(TILES / SLIDE_AD, tmp_path / "COAD" / SLIDE_AD)
    dataset = open_patch_source(tmp_path, kind="tcga_ut", image_size=16)
    counts = metadata_counts(dataset)
    assert counts.to_dict("records") == [
        {"class": "CHOL", "site": "3X", "count": 6},
        {"class": "COAD", "site": "AD", "count": 3},
    ]


@needs_data
def test_tcga_ut_class_layout_rejects_class_name(tmp_path):
    shutil.copytree(TILES / SLIDE_3X, tmp_path / "CHOL" / SLIDE_3X)
    with pytest.raises(DatasetError, match="class comes from the folder names"):
        open_patch_source(tmp_path, image_size=16, class_name="COAD")


def _write_manifest(folder: Path, text: str, encoding: str = "utf-8") -> Path:
    from PIL import Image

    (folder / "img").mkdir()
    for name in ("a.png", "b.png"):
        Image.new("RGB", (8, 8), (200, 100, 50)).save(folder / "img" / name)
    csv = folder / "manifest.csv"
    csv.write_bytes(text.encode(encoding))
    return csv


def test_manifest_site_from_barcode(tmp_path):
    csv = _write_manifest(
        tmp_path,
        "path,class,slide_id,age\nimg/a.png,TUM,TCGA-A7-A0D9-01Z-00-DX2,61\nimg/b.png,STR,TCGA-AC-A2FB-01Z-00-DX1,'--\n",
    )
    dataset = open_patch_source(csv, image_size=8)
    assert dataset.records["site"].tolist() == ["A7", "AC"]


def test_manifest_gdc_marker_is_missing(tmp_path):
    csv = _write_manifest(tmp_path, "path,class,age\nimg/a.png,TUM,61\nimg/b.png,STR,'--\n")
    _, metadata = open_patch_source(csv, image_size=8)[1]
    assert metadata["age"] is None


def test_manifest_numeric_column_parsed(tmp_path):
    csv = _write_manifest(tmp_path, "path,class,age\nimg/a.png,TUM,61\nimg/b.png,STR,Unknown\n")
    _, metadata = open_patch_source(csv, image_size=8)[0]
    assert metadata["age"] == 61


def test_manifest_latin1_rejected(tmp_path):
    csv = _write_manifest(tmp_path, "path,class,hospital\nimg/a.png,TUM,Universit\u00e4t\n", encoding="latin-1")
    with pytest.raises(DatasetError, match="is not UTF-8"):
        open_patch_source(csv, image_size=8)


def test_manifest_without_class_column(tmp_path):
    csv = _write_manifest(tmp_path, "path,site\nimg/a.png,A7\n")
    with pytest.raises(DatasetError, match="has no class column"):
        open_patch_source(csv, image_size=8)


def test_manifest_class_name_fills_class(tmp_path):
    csv = _write_manifest(tmp_path, "path,site\nimg/a.png,A7\n")
    dataset = open_patch_source(csv, image_size=8, class_name="TUM")
    assert dataset.records["class"].tolist() == ["TUM"]


def test_manifest_missing_image_file(tmp_path):
    csv = _write_manifest(tmp_path, "path,class\nimg/a.png,TUM\nimg/gone.png,TUM\n")
    with pytest.raises(DatasetError, match="1 image file\\(s\\) not found"):
        open_patch_source(csv, image_size=8)


def test_manifest_missing_image_file_skipped(tmp_path):
    csv = _write_manifest(tmp_path, "path,class\nimg/a.png,TUM\nimg/gone.png,TUM\n")
    assert len(open_patch_source(csv, image_size=8, on_missing_file="skip")) == 1


def test_source_missing_path(tmp_path):
    with pytest.raises(DatasetError, match="not found"):
        open_patch_source(tmp_path / "nowhere", image_size=8)
