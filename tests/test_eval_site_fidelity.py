"""Tests of site fidelity (a real-data site classifier judging synthetic patches) on BRCA-M2C."""

from __future__ import annotations


import numpy as np
import pandas as pd
import pytest

from eval_support import load_brca_patches

from medi_core.evaluation import LabeledPatches, RandomConvEncoder, concat_patches, hed_jitter, site_fidelity



@pytest.fixture(scope="module")
def real() -> LabeledPatches:
    patches = load_brca_patches()
    return patches.where(np.isin(patches.sites, ["A7", "A8", "AC"]))


def _relabel(patches: LabeledPatches, site: str, rng: np.random.Generator) -> LabeledPatches:
    """Lightly jittered copies of ``patches`` that claim to come from ``site``."""
    images = hed_jitter(patches.images, sigma=0.02, bias=0.0, rng=rng)
    return LabeledPatches(images, patches.labels, np.full(len(patches), site), name=f"as {site}")


@pytest.fixture(scope="module")
def table(real: LabeledPatches) -> pd.DataFrame:
    rng = np.random.default_rng(0)
    a8 = real.where(real.sites == "A8")
    a7_lymphocytes = real.where((real.sites == "A7") & (real.labels == "lymphocyte"))
    synthetic = concat_patches([
        _relabel(a8.where(a8.labels == "tumor_epithelial"), "A8", rng),  # faithful
        _relabel(a8.where(a8.labels == "stromal"), "AC", rng),  # A8 stain claiming AC
        _relabel(a7_lymphocytes, "AC", rng),  # a (class, site) cell with no real patch
        _relabel(a7_lymphocytes.subset([0]), "ZZ", rng),  # a site the classifier never saw
    ])
    return site_fidelity(real, synthetic, encoder=RandomConvEncoder(seed=0)).set_index(["source", "class", "site"])


def test_site_fidelity_faithful_cell(table: pd.DataFrame) -> None:
    row = table.loc[("synthetic", "tumor_epithelial", "A8")]
    assert row["n"] == 38
    assert row["site_accuracy"] > 0.8


def test_site_fidelity_wrong_site_cell(table: pd.DataFrame) -> None:
    row = table.loc[("synthetic", "stromal", "AC")]
    assert row["site_accuracy"] < 0.5
    assert row["most_predicted_site"] == "A8"


def test_site_fidelity_absent_cell_flagged(table: pd.DataFrame) -> None:
    # Site AC has no real lymphocyte patch.
    row = table.loc[("synthetic", "lymphocyte", "AC")]
    assert not row["in_training"]
    assert row["n_real_train"] == 0


def test_site_fidelity_present_cell_flagged(table: pd.DataFrame) -> None:
    row = table.loc[("synthetic", "stromal", "AC")]
    assert row["in_training"]
    assert row["n_real_train"] == 16


def test_site_fidelity_unknown_site_nan(table: pd.DataFrame) -> None:
    assert np.isnan(table.loc[("synthetic", "lymphocyte", "ZZ"), "site_accuracy"])


def test_site_fidelity_real_reference(table: pd.DataFrame) -> None:
    real_rows = table.loc["real"]
    # A7, A8 and AC cells: lymphocyte A7, A8; stromal A7, A8, AC; tumour A7, A8, AC.
    assert len(real_rows) == 8
    assert real_rows["chance"].iloc[0] == pytest.approx(1 / 3)
