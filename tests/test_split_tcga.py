"""Tests of the TCGA split by tissue source site on the real GDC slide metadata CSV."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

from medi_core.errors import DatasetError, MetadataError
from medi_sim.tcga_split import (
    OTHER_SITE,
    plan_sites,
    read_institution_map,
    read_slide_metadata,
    site_counts,
    split_slide_metadata,
    split_slides,
)

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
SLIDE_CSV = DATA / "tcga" / "all_slide_metadata.csv"

pytestmark = pytest.mark.skipif(not SLIDE_CSV.is_file(), reason=f"real TCGA slide metadata not found at {SLIDE_CSV}")


@pytest.fixture(scope="module")
def slides() -> pd.DataFrame:
    return read_slide_metadata(SLIDE_CSV)


def test_read_slide_metadata_counts(slides: pd.DataFrame) -> None:
    assert len(slides) == 8726
    assert slides["tss"].nunique() == 626


def test_read_slide_metadata_keeps_leading_zero(slides: pd.DataFrame) -> None:
    # "06" has 255 slides; read as a number it would become 6.
    assert (slides["tss"] == "06").sum() == 255


def test_read_slide_metadata_fills_na_site_from_barcode(slides: pd.DataFrame) -> None:
    # The 11 TCGA-UCS slides of TSS "NA" have an empty TSS cell in the CSV.
    assert (slides["tss"] == "NA").sum() == 11


def test_split_per_tss_holdout_counts(slides: pd.DataFrame) -> None:
    plan = plan_sites(slides["tss"].value_counts(), holdout_tss=["NA", "06"])
    table = split_slides(slides, plan)
    assert (table["split"] == "train").sum() == 8726 - 11 - 255
    assert (table["split"] == "holdout").sum() == 11 + 255
    assert len(plan.sites) == 624


def test_split_top_k_merges_rest(slides: pd.DataFrame) -> None:
    # HT (274 slides) is held out. The next five TSS by slide count are
    # DX 262, 06 255, 12 174, OR 150 and 2G 127. The other 619 codes merge.
    plan = plan_sites(slides["tss"].value_counts(), grouping="top_k", top_k=5, holdout_tss=["HT"])
    counts = site_counts(split_slides(slides, plan)).set_index(["split", "site"])["count"]
    assert plan.sites == ("06", "12", "2G", "DX", "OR", OTHER_SITE)
    assert counts[("train", "DX")] == 262
    assert counts[("train", "2G")] == 127
    assert counts[("train", OTHER_SITE)] == 8726 - 274 - (262 + 255 + 174 + 150 + 127)
    assert counts[("holdout", "HT")] == 274


def test_split_fraction_never_shares_tss() -> None:
    plan, table = split_slide_metadata(SLIDE_CSV, holdout_fraction=0.2, seed=0)
    train_tss = set(table.loc[table["split"] == "train", "tss"])
    holdout_tss = set(table.loc[table["split"] == "holdout", "tss"])
    assert train_tss.isdisjoint(holdout_tss)
    assert holdout_tss == set(plan.holdout_tss)


def test_split_fraction_holds_out_whole_sites(slides: pd.DataFrame) -> None:
    plan, table = split_slide_metadata(SLIDE_CSV, holdout_fraction=0.2, seed=0)
    slides_per_tss = slides["tss"].value_counts()
    held = table[table["split"] == "holdout"]["tss"].value_counts()
    for tss in plan.holdout_tss:
        assert held[tss] == slides_per_tss[tss], f"TSS {tss} is only partly held out"


def test_split_fraction_stratified_count() -> None:
    # Per project, round(0.2 * number of TSS codes) capped at n - 1, e.g. ACC 3 -> 1,
    # BRCA 37 -> 7, LUAD 33 -> 7; summed over the 32 projects: 124 of 626 codes.
    plan, table = split_slide_metadata(SLIDE_CSV, holdout_fraction=0.2, seed=0)
    assert len(plan.holdout_tss) == 124
    assert len(plan.sites) == 626 - 124


def test_split_fraction_keeps_every_project_training() -> None:
    _, table = split_slide_metadata(SLIDE_CSV, holdout_fraction=0.5, seed=3)
    projects_training = set(table.loc[table["split"] == "train", "project_id"])
    assert len(projects_training) == 32


def test_split_fraction_seed_reproducible() -> None:
    first, _ = split_slide_metadata(SLIDE_CSV, holdout_fraction=0.1, seed=7)
    again, _ = split_slide_metadata(SLIDE_CSV, holdout_fraction=0.1, seed=7)
    other, _ = split_slide_metadata(SLIDE_CSV, holdout_fraction=0.1, seed=8)
    assert first.holdout_tss == again.holdout_tss
    assert first.holdout_tss != other.holdout_tss


def test_split_institution_map(slides: pd.DataFrame, tmp_path: Path) -> None:
    # A7 (45 slides) and AR (45) map to one institution, E2 (64) to another; the rest merge.
    path = tmp_path / "institutions.csv"
    path.write_text("tss,institution\nA7,Christiana\nAR,Christiana\nE2,Roswell\n")
    plan = plan_sites(slides["tss"].value_counts(), grouping="map", institution_map=read_institution_map(path))
    counts = site_counts(split_slides(slides, plan)).set_index("site")["count"]
    assert counts["Christiana"] == 45 + 45
    assert counts["Roswell"] == 64
    assert counts[OTHER_SITE] == 8726 - 90 - 64


def test_split_institution_map_reject_unmapped(slides: pd.DataFrame) -> None:
    with pytest.raises(MetadataError, match="not in the institution map"):
        plan_sites(slides["tss"].value_counts(), grouping="map", institution_map={"A7": "X"}, on_unmapped="reject")


def test_plan_rejects_unknown_holdout(slides: pd.DataFrame) -> None:
    with pytest.raises(MetadataError, match=r"holdout TSS codes \['ZZ'\] do not occur"):
        plan_sites(slides["tss"].value_counts(), holdout_tss=["ZZ"])


def test_plan_top_k_needs_k(slides: pd.DataFrame) -> None:
    with pytest.raises(MetadataError, match="needs top_k >= 1"):
        plan_sites(slides["tss"].value_counts(), grouping="top_k")


def test_plan_rejects_list_and_fraction(slides: pd.DataFrame) -> None:
    with pytest.raises(MetadataError, match="either holdout_tss or holdout_fraction"):
        plan_sites(slides["tss"].value_counts(), holdout_tss=["A7"], holdout_fraction=0.1)


def test_per_tss_plan_rejects_unseen_code(slides: pd.DataFrame) -> None:
    plan = plan_sites(slides["tss"].value_counts())
    with pytest.raises(MetadataError, match="TSS 'Q9' is not in the site plan"):
        plan.site_for("Q9")


def test_read_slide_metadata_missing_file(tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match="not found"):
        read_slide_metadata(tmp_path / "absent.csv")


def test_read_slide_metadata_without_site_columns(tmp_path: Path) -> None:
    path = tmp_path / "slides.csv"
    path.write_text("project_id,age\nTCGA-BRCA,50\n")
    with pytest.raises(MetadataError, match="neither a 'tissue_source_site' nor"):
        read_slide_metadata(path)
