"""Tests of splitting patch records by site with a site plan, on the real BRCA-M2C patches."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from medi_core.errors import MetadataError
from medi_sim.tcga_split import OTHER_SITE, plan_sites_for_records, record_tss, split_records

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
BRCA = DATA / "patches" / "brca-m2c"

pytestmark = pytest.mark.skipif(not (BRCA / "metadata.csv").is_file(), reason=f"BRCA-M2C patches not found at {BRCA}")


@pytest.fixture(scope="module")
def records() -> pd.DataFrame:
    table = pd.read_csv(BRCA / "metadata.csv", dtype=str, keep_default_na=False)
    return table.rename(columns={"tss_site": "site", "slide_barcode": "slide_id", "dominant_cell_class": "class"})


def test_records_top3_sites(records: pd.DataFrame) -> None:
    plan = plan_sites_for_records(records, grouping="top_k", top_k=3)
    assert plan.sites == ("A7", "A8", "AC", OTHER_SITE)


def test_records_top3_counts(records: pd.DataFrame) -> None:
    # A7 36, A8 47, AC 17 patches; the nine minor sites hold 5+3+4+1+1+1+2+2+1 = 20.
    split = split_records(records, plan_sites_for_records(records, grouping="top_k", top_k=3))
    sizes = {site: rows.size for site, rows in split.train.items()}
    assert sizes == {"A7": 36, "A8": 47, "AC": 17, OTHER_SITE: 20}
    assert split.holdout.size == 0


def test_records_holdout_counts(records: pd.DataFrame) -> None:
    # OL (5 patches) and PE (3) held out, so "other" keeps 20 - 8 = 12.
    plan = plan_sites_for_records(records, grouping="top_k", top_k=3, holdout_tss=["OL", "PE"])
    split = split_records(records, plan)
    assert split.train[OTHER_SITE].size == 12
    assert split.holdout.size == 8
    assert sorted(set(split.holdout_sites)) == ["OL", "PE"]


def test_records_holdout_disjoint(records: pd.DataFrame) -> None:
    plan = plan_sites_for_records(records, grouping="top_k", top_k=3, holdout_fraction=0.25, seed=1)
    split = split_records(records, plan)
    train_rows = np.concatenate(list(split.train.values()))
    train_tss = set(records["site"].to_numpy()[train_rows])
    holdout_tss = set(records["site"].to_numpy()[split.holdout])
    assert train_tss.isdisjoint(holdout_tss)
    assert train_rows.size + split.holdout.size == 120


def test_records_tss_from_barcode(records: pd.DataFrame) -> None:
    without_site = records.drop(columns=["site"])
    assert record_tss(without_site).tolist() == records["site"].tolist()


def test_records_missing_site_rejected() -> None:
    table = pd.DataFrame({"site": [None], "slide_id": ["slide-7"]})
    with pytest.raises(MetadataError, match="no 'site' and no TCGA barcode"):
        record_tss(table)


def test_records_split_patch_dataset() -> None:
    data = pytest.importorskip("medi_core.data", reason="the shared PatchDataset interface is not installed")
    dataset = data.open_patch_source(BRCA, image_size=32)
    split = split_records(dataset.records, plan_sites_for_records(dataset.records, grouping="top_k", top_k=3))
    part = dataset.subset(split.train["AC"])
    assert len(part) == 17
    assert set(part.records["site"]) == {"AC"}
