"""Tests of the frozen feature encoders (random convolutions, small CNN, timm loading errors)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from medi_core.errors import EvaluationError, MissingDependencyError
from medi_core.evaluation.encoders import (
    EncoderConfig,
    RandomConvEncoder,
    build_encoder,
    load_timm_encoder,
    train_cnn_encoder,
)
from medi_core.evaluation.metrics import balanced_accuracy
from eval_support import load_brca_patches

from medi_core.evaluation.patches import LabeledPatches
from medi_core.evaluation.probe import fit_probe



@pytest.fixture(scope="module")
def brca_patches() -> LabeledPatches:
    return load_brca_patches()


def test_random_encoder_shape(brca_patches: LabeledPatches) -> None:
    # 6 colour statistics + 16 + 32 + 64 pooled channels
    assert RandomConvEncoder(width=16).embed(brca_patches.images[:5]).shape == (5, 6 + 7 * 16)


def test_random_encoder_fixed_by_seed(brca_patches: LabeledPatches) -> None:
    images = brca_patches.images[:5]
    assert np.array_equal(RandomConvEncoder(seed=1).embed(images), RandomConvEncoder(seed=1).embed(images))
    assert not np.allclose(RandomConvEncoder(seed=1).embed(images), RandomConvEncoder(seed=2).embed(images))


def test_random_encoder_separates_sites(brca_patches: LabeledPatches) -> None:
    # Sites A7 and A8 differ in stain, so even untrained features tell them apart:
    # a probe trained on the odd patches classifies the even ones well above chance (0.5).
    both = brca_patches.where(np.isin(brca_patches.sites, ["A7", "A8"]))
    features = RandomConvEncoder().embed(both.images)
    probe = fit_probe(features[1::2], both.sites[1::2])
    assert balanced_accuracy(both.sites[::2], probe.predict(features[::2])) > 0.75


def test_cnn_encoder_learns_classes(brca_patches: LabeledPatches) -> None:
    encoder = train_cnn_encoder(brca_patches, epochs=15, seed=0)
    features = encoder.embed(brca_patches.images)
    probe = fit_probe(features, brca_patches.labels)
    assert balanced_accuracy(brca_patches.labels, probe.predict(features)) > 0.8


def test_cnn_encoder_reproducible(brca_patches: LabeledPatches) -> None:
    subset = brca_patches.subset(np.arange(0, 120, 3))
    first = train_cnn_encoder(subset, epochs=2, seed=4).embed(subset.images[:3])
    again = train_cnn_encoder(subset, epochs=2, seed=4).embed(subset.images[:3])
    assert np.allclose(first, again)


def test_cnn_encoder_restores_threads(brca_patches: LabeledPatches) -> None:
    before = torch.get_num_threads()
    train_cnn_encoder(brca_patches.subset(np.arange(12)), epochs=1)
    assert torch.get_num_threads() == before


def test_cnn_encoder_needs_two_classes(brca_patches: LabeledPatches) -> None:
    stromal = brca_patches.where(brca_patches.labels == "stromal")
    with pytest.raises(EvaluationError, match="at least two classes"):
        train_cnn_encoder(stromal)


def test_build_encoder_cnn_needs_train() -> None:
    with pytest.raises(EvaluationError, match="pass train="):
        build_encoder(EncoderConfig(kind="cnn"))


def test_build_encoder_timm_needs_weights() -> None:
    with pytest.raises(EvaluationError, match="needs timm_model and weights_path"):
        build_encoder(EncoderConfig(kind="timm", timm_model="resnet18"))


def test_timm_encoder_missing_weights(tmp_path: Path) -> None:
    with pytest.raises(EvaluationError, match="encoder weights .*absent.pth not found"):
        load_timm_encoder("resnet18", tmp_path / "absent.pth")


def test_timm_encoder_import_failure_explained(tmp_path: Path) -> None:
    try:
        import timm  # noqa: F401
    except ImportError:
        pass
    else:
        pytest.skip("timm imports here, so the missing-package message cannot be checked")
    weights = tmp_path / "weights.pth"
    torch.save({}, weights)
    with pytest.raises(MissingDependencyError, match="torchvision build that matches torch"):
        load_timm_encoder("resnet18", weights)


def test_embed_rejects_wrong_shape() -> None:
    with pytest.raises(EvaluationError, match=r"shape \(N, 3, S, S\)"):
        RandomConvEncoder().embed(torch.zeros(2, 1, 8, 8))
