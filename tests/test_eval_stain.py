"""Tests of the HED stain augmentation on real BRCA-M2C patches."""

from __future__ import annotations


import numpy as np
import pytest
import torch

from medi_core.errors import EvaluationError
from eval_support import load_brca_patches

from medi_core.evaluation.patches import LabeledPatches
from medi_core.evaluation.stain import hed_jitter, hed_to_rgb, rgb_to_hed, stain_augment



@pytest.fixture(scope="module")
def brca_patches() -> LabeledPatches:
    return load_brca_patches()


def test_hed_round_trip(brca_patches: LabeledPatches) -> None:
    rgb = ((brca_patches.images[:8].permute(0, 2, 3, 1).double() + 1) / 2).numpy()
    assert np.abs(hed_to_rgb(rgb_to_hed(rgb)) - rgb).max() < 1e-6


def test_hed_of_white_is_zero() -> None:
    # White transmits all light: optical density 0, so no stain.
    assert np.abs(rgb_to_hed(np.ones((1, 3)))).max() == 0.0


def test_hed_jitter_zero_strength_identity(brca_patches: LabeledPatches) -> None:
    out = hed_jitter(brca_patches.images, sigma=0.0, bias=0.0, rng=np.random.default_rng(0))
    assert torch.allclose(out, brca_patches.images, atol=1e-5)


def test_hed_jitter_keeps_range(brca_patches: LabeledPatches) -> None:
    out = hed_jitter(brca_patches.images, sigma=0.5, bias=0.1, rng=np.random.default_rng(0))
    assert out.shape == brca_patches.images.shape
    assert out.min() >= -1.0
    assert out.max() <= 1.0


def test_hed_jitter_moves_mean_colour(brca_patches: LabeledPatches) -> None:
    # With the defaults an image's mean colour moves by 0.08 on average on a [0, 1]
    # scale (measured on these 120 patches); accept 0.03-0.15.
    out = hed_jitter(brca_patches.images, rng=np.random.default_rng(0))
    shift = ((out - brca_patches.images) / 2).mean(dim=(2, 3)).abs().mean().item()
    assert 0.03 < shift < 0.15


def test_hed_jitter_seeded(brca_patches: LabeledPatches) -> None:
    first = hed_jitter(brca_patches.images[:4], rng=np.random.default_rng(3))
    again = hed_jitter(brca_patches.images[:4], rng=np.random.default_rng(3))
    assert torch.equal(first, again)


def test_hed_jitter_rejects_bad_sigma(brca_patches: LabeledPatches) -> None:
    with pytest.raises(EvaluationError, match="0 <= sigma < 1"):
        hed_jitter(brca_patches.images[:1], sigma=1.5, rng=np.random.default_rng(0))


def test_stain_augment_count_and_labels(brca_patches: LabeledPatches) -> None:
    ac = brca_patches.where(brca_patches.sites == "AC")  # 16 stromal, 1 tumour
    augmented = stain_augment(ac, 40, rng=np.random.default_rng(0))
    assert len(augmented) == 40
    assert set(augmented.sites) == {"AC"}
    # 40 = 2 full passes over the 17 patches + 6 more, so the tumour patch appears 2 or 3 times.
    assert int((augmented.labels == "tumor_epithelial").sum()) in (2, 3)


def test_stain_augment_zero_count(brca_patches: LabeledPatches) -> None:
    assert len(stain_augment(brca_patches, 0, rng=np.random.default_rng(0))) == 0
