"""Tests of the split into virtual hospitals on the real BRCA-M2C patches and TCGA-UT tiles."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest

from medi_core.errors import ConfigError
from medi_sim.config import DataConfig, PrivacySimConfig, data_presets
from medi_sim.experiment import cap_per_cell
from medi_sim.sites import SiteSplit, open_manifest, open_source, plan_for, prepare_sites

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
BRCA = DATA / "patches" / "brca-m2c"
TILES = DATA / "patches" / "tcga-tiles"
SLIDE_CSV = DATA / "tcga" / "all_slide_metadata.csv"


def _require(path: Path) -> Path:
    if not path.exists():
        pytest.skip(f"real test data not found at {path}; the shared data folder is missing")
    return path


@pytest.fixture(scope="module")
def brca_split(tmp_path_factory: pytest.TempPathFactory) -> SiteSplit:
    data = DataConfig(path=str(_require(BRCA)))
    privacy = PrivacySimConfig(site_max_epsilon={"AC": 4.0})
    return prepare_sites(data, privacy, tmp_path_factory.mktemp("brca"), image_size=32)


def _train_counts(split: SiteSplit) -> dict[tuple[str, str], int]:
    train = split.counts[split.counts["split"] == "train"]
    return {(row.site, row["class"]): int(row["count"]) for _, row in train.iterrows()}


def test_brca_sites_in_partition_order(brca_split: SiteSplit) -> None:
    assert brca_split.sites == ["A7", "A8", "AC", "other"]


def test_brca_site_sizes(brca_split: SiteSplit) -> None:
    manifests = {site: pd.read_csv(path) for site, path in brca_split.manifests.items()}
    # A7: 10 + 4 + 22; A8: 4 + 5 + 38; AC: 16 + 1; other = UL, UU, W8, Z7 with 1 tumour patch each.
    assert {site: len(table) for site, table in manifests.items()} == {"A7": 36, "A8": 47, "AC": 17, "other": 4}


def test_brca_ac_lacks_lymphocytes(brca_split: SiteSplit) -> None:
    counts = _train_counts(brca_split)
    assert counts[("AC", "stromal")] == 16
    assert counts[("AC", "tumor_epithelial")] == 1
    assert ("AC", "lymphocyte") not in counts


def test_brca_holdout_sites_held_out(brca_split: SiteSplit) -> None:
    holdout = pd.read_csv(brca_split.holdout_manifest, keep_default_na=False)
    training_tss = set()
    for path in brca_split.manifests.values():
        training_tss |= set(pd.read_csv(path, keep_default_na=False)["tss"])
    assert len(holdout) == 16  # OL 5, PE 3, S3 4, WT 2, XX 2
    assert set(holdout["site"]) == {"OL", "PE", "S3", "WT", "XX"}
    assert not training_tss & set(holdout["site"])


def test_brca_merged_site_keeps_tss(brca_split: SiteSplit) -> None:
    other = pd.read_csv(brca_split.manifests["other"], keep_default_na=False)
    assert set(other["site"]) == {"other"}
    assert set(other["tss"]) == {"UL", "UU", "W8", "Z7"}


def test_brca_site_table_entries(brca_split: SiteSplit) -> None:
    table = json.loads(brca_split.site_table.read_text())
    assert sorted(table) == ["0", "1", "2", "3"]
    assert table["2"]["site-id"] == "AC"
    assert table["2"]["data-path"] == str(brca_split.manifests["AC"])
    assert table["2"]["max-epsilon"] == 4.0
    assert table["0"]["max-epsilon"] == 0.0


def test_site_table_rejects_unknown_site(tmp_path: Path) -> None:
    privacy = PrivacySimConfig(site_max_epsilon={"ZZ": 1.0})
    with pytest.raises(ConfigError, match="names sites \\['ZZ'\\]"):
        prepare_sites(DataConfig(path=str(_require(BRCA))), privacy, tmp_path, image_size=32)


def test_prepare_sites_missing_path(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="not found"):
        prepare_sites(DataConfig(path=str(tmp_path / "absent")), PrivacySimConfig(), tmp_path, image_size=32)


def test_prepare_sites_needs_two_sites(tmp_path: Path) -> None:
    # Left to train: S3 4 (the top-1 site, below 5 patches, so dropped) and other = PE 3, WT 2, XX 2, UL, UU, W8, Z7 = 11.
    data = DataConfig(path=str(_require(BRCA)), top_k=1, holdout_tss=["A7", "A8", "AC", "OL"], min_site_patches=5)
    with pytest.raises(ConfigError, match="leaves 1 training site\\(s\\) \\['other'\\]"):
        prepare_sites(data, PrivacySimConfig(), tmp_path, image_size=32)


def _tiles_config() -> DataConfig:
    _require(TILES)
    _require(SLIDE_CSV)
    preset = data_presets()["tcga-ut"]
    preset.path = str(TILES)
    preset.slide_metadata = str(SLIDE_CSV)
    preset.class_column = "project_id"
    preset.holdout_fraction = None
    preset.holdout_tss = ["AD"]
    return preset


def test_tcga_tiles_classes_from_slide_csv(tmp_path: Path) -> None:
    data = _tiles_config()
    plan, dataset = plan_for(data, open_source(data, tmp_path, image_size=32))
    counts = dataset.records.groupby("class").size().to_dict()
    # 6 tiles of TCGA-3X (cholangiocarcinoma), 3 of TCGA-AD (colon); the Kather tile is no slide folder.
    assert counts == {"TCGA-CHOL": 6, "TCGA-COAD": 3}


def test_tcga_tiles_plan_from_real_site_sizes(tmp_path: Path) -> None:
    data = _tiles_config()
    plan, _ = plan_for(data, open_source(data, tmp_path, image_size=32))
    # The 8 largest TSS codes of the 8,726 slides become sites; 3X is small, so it merges.
    assert len(plan.sites) == 9
    assert plan.site_for("3X") == "other"
    assert plan.site_for("AD") is None


def test_tcga_tiles_two_codes_rejected(tmp_path: Path) -> None:
    # 3X and AD: one training site and one held-out site, but a federation needs two training sites.
    with pytest.raises(ConfigError, match="contains patches of 2 tissue source site\\(s\\) \\['3X', 'AD'\\]"):
        prepare_sites(_tiles_config(), PrivacySimConfig(), tmp_path, image_size=32)


def test_tcga_preset_needs_path(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="data.path=FOLDER_OR_CSV"):
        prepare_sites(data_presets()["tcga-ut"], PrivacySimConfig(), tmp_path, image_size=32)


def test_cap_per_cell_limits_each_cell(brca_split: SiteSplit) -> None:
    dataset = open_manifest(brca_split.manifests["A7"], image_size=32)
    capped = cap_per_cell(dataset, 5, seed=0)
    counts = capped.records.groupby("class").size().to_dict()
    # A7 has lymphocyte 10, stromal 4, tumor_epithelial 22: every cell is cut to at most 5.
    assert counts == {"lymphocyte": 5, "stromal": 4, "tumor_epithelial": 5}


def test_cap_per_cell_none_keeps_all(brca_split: SiteSplit) -> None:
    dataset = open_manifest(brca_split.manifests["A7"], image_size=32)
    assert len(cap_per_cell(dataset, None, seed=0)) == 36
