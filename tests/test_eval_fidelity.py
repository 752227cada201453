"""Tests of the Fréchet and kernel distances (hand-computed cases) and of fidelity on real BRCA-M2C patches."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from medi_core.errors import EvaluationError, MissingDependencyError
from medi_core.evaluation.encoders import RandomConvEncoder
from medi_core.evaluation.fidelity import fidelity_table, frechet_distance, kernel_distance, torch_fidelity_metrics
from eval_support import load_brca_patches

from medi_core.evaluation.patches import LabeledPatches
from medi_core.evaluation.stain import hed_jitter



def test_frechet_one_dimension() -> None:
    # a = {0, 2}: mean 1, var 2;  b = {3, 7}: mean 5, var 8 (ddof=1).
    # (1 - 5)^2 + 2 + 8 - 2 sqrt(2 * 8) = 16 + 10 - 8 = 18
    a = np.array([[0.0], [2.0]])
    b = np.array([[3.0], [7.0]])
    assert frechet_distance(a, b) == pytest.approx(18.0)


def test_frechet_correlated_two_dimensions() -> None:
    # a = [[0, 5], [2, 9]]: mean (1, 7), cov_a = [[2, 4], [4, 8]]
    # b = [[3, 5], [7, 9]]: mean (5, 7), cov_b = [[8, 8], [8, 8]]
    # cov_a cov_b = [[48, 48], [96, 96]] has eigenvalues 144 and 0, so tr sqrt = 12.
    # FD = |(-4, 0)|^2 + 10 + 16 - 2 * 12 = 18
    a = np.array([[0.0, 5.0], [2.0, 9.0]])
    b = np.array([[3.0, 5.0], [7.0, 9.0]])
    assert frechet_distance(a, b) == pytest.approx(18.0)


def test_frechet_identical_sets_zero() -> None:
    features = np.random.default_rng(0).normal(size=(50, 4))
    assert frechet_distance(features, features) == pytest.approx(0.0, abs=1e-9)


def test_frechet_rejects_single_sample() -> None:
    with pytest.raises(EvaluationError, match="at least 2 samples"):
        frechet_distance(np.zeros((1, 3)), np.zeros((5, 3)))


def test_kernel_distance_hand_computed() -> None:
    # k(x, y) = (x y + 1)^3 with gamma = 1/D = 1, one subset holding both sets whole.
    # a = {0, 1}: off-diagonal k(0, 1) = 1 -> mean 1
    # b = {1, 2}: off-diagonal k(1, 2) = 27 -> mean 27
    # cross: k(0,1)=1, k(0,2)=1, k(1,1)=8, k(1,2)=27 -> mean 37/4
    # MMD^2 = 1 + 27 - 2 * 37/4 = 9.5
    mean, std = kernel_distance(np.array([[0.0], [1.0]]), np.array([[1.0], [2.0]]), num_subsets=1, subset_size=2)
    assert mean == pytest.approx(9.5)
    assert std == 0.0


def test_kernel_distance_same_distribution_small() -> None:
    rng = np.random.default_rng(1)
    same, _ = kernel_distance(rng.normal(size=(200, 8)), rng.normal(size=(200, 8)), num_subsets=20, subset_size=100)
    shifted, _ = kernel_distance(rng.normal(size=(200, 8)), rng.normal(1.0, size=(200, 8)), num_subsets=20, subset_size=100)
    assert abs(same) < 0.05
    assert shifted > 10 * abs(same)


@pytest.fixture(scope="module")
def brca_patches() -> LabeledPatches:
    return load_brca_patches()


def test_fidelity_table_ranks_stain_shift(brca_patches: LabeledPatches) -> None:
    # A strongly stain-shifted copy of the A8 patches must be further from the real
    # A8 patches than a lightly jittered copy, in the same encoder's feature space.
    a8 = brca_patches.where(brca_patches.sites == "A8")
    rng = np.random.default_rng(0)
    light = LabeledPatches(hed_jitter(a8.images, sigma=0.02, bias=0.0, rng=rng), a8.labels, a8.sites)
    strong = LabeledPatches(hed_jitter(a8.images, sigma=0.6, bias=0.1, rng=rng), a8.labels, a8.sites)
    table = fidelity_table(a8, {"light": light, "strong": strong}, encoder=RandomConvEncoder(), num_subsets=10)
    pooled = table[table["class"] == "(all)"].set_index("synthetic")
    assert pooled.loc["strong", "frechet_distance"] > pooled.loc["light", "frechet_distance"]
    assert pooled.loc["strong", "kid_mean"] > pooled.loc["light", "kid_mean"]


def test_fidelity_table_small_cells_nan(brca_patches: LabeledPatches) -> None:
    # Site AC has a single tumour patch, too few for a covariance.
    ac = brca_patches.where(brca_patches.sites == "AC")
    table = fidelity_table(ac, {"copy": ac}, encoder=RandomConvEncoder(), num_subsets=2).set_index("class")
    assert table.loc["tumor_epithelial", "n_real"] == 1
    assert np.isnan(table.loc["tumor_epithelial", "frechet_distance"])


def test_torch_fidelity_missing_weights(tmp_path: Path) -> None:
    images = torch.zeros(4, 3, 32, 32)
    with pytest.raises(EvaluationError, match="Inception weights .* not found"):
        torch_fidelity_metrics(images, images, inception_weights=tmp_path / "absent.pth")


def test_torch_fidelity_import_failure_explained(tmp_path: Path) -> None:
    try:
        import torch_fidelity  # noqa: F401
    except ImportError:
        pass
    else:
        pytest.skip("torch-fidelity imports here, so the missing-package message cannot be checked")
    weights = tmp_path / "inception.pth"
    weights.write_bytes(b"placeholder")
    images = torch.zeros(4, 3, 32, 32)
    with pytest.raises(MissingDependencyError, match="torchvision build that matches torch"):
        torch_fidelity_metrics(images, images, inception_weights=weights)
