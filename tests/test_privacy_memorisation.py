"""Memorisation check on real patches: copies of training patches stand out, new real patches do not."""

from __future__ import annotations

import pytest
import torch

from medi_core.errors import EvaluationError
from medi_core.privacy import RandomConvFeatures, memorisation_check
from privacy_support import brca


@pytest.fixture(scope="module")
def patches() -> torch.Tensor:
    dataset = brca(64)
    generator = torch.Generator().manual_seed(0)
    order = torch.randperm(len(dataset), generator=generator).tolist()  # mixes sites across the splits
    return torch.stack([dataset[i][0] for i in order])  # (120, 3, 64, 64) in [-1, 1]


def test_memorisation_flags_copies(patches):
    train, holdout = patches[:60], patches[60:100]
    copies = (train[:20] + 0.01 * torch.randn(train[:20].shape, generator=torch.Generator().manual_seed(1))).clamp(-1, 1)
    report = memorisation_check(train, copies, holdout)
    assert report.median_ratio < 0.5
    assert report.close_fraction == 1.0


def test_memorisation_passes_new_real_patches(patches):
    train, holdout, unseen = patches[:60], patches[60:100], patches[100:]
    report = memorisation_check(train, unseen, holdout)
    assert 0.5 < report.median_ratio < 2.0
    assert report.close_fraction < 0.5


def test_memorisation_report_has_only_summaries(patches):
    report = memorisation_check(patches[:30], [patches[30:40], patches[40:45]], patches[45:60])
    values = list(report.to_dict()["synthetic"].values()) + list(report.to_dict()["holdout"].values())
    assert report.synthetic.count == 15
    assert all(isinstance(v, (int, float)) for v in values)


def test_memorisation_features_ignore_global_seed(patches):
    torch.manual_seed(123)
    first = RandomConvFeatures()(patches[:4])
    torch.manual_seed(456)
    second = RandomConvFeatures()(patches[:4])
    assert torch.equal(first, second)


def test_memorisation_rejects_empty_synthetic(patches):
    with pytest.raises(EvaluationError, match="at least one synthetic patch"):
        memorisation_check(patches[:10], patches[:0], patches[10:20])
