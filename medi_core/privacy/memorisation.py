"""Memorisation check at a site: are synthetic patches closer to training patches than new real ones?

For every synthetic patch the distance to its nearest training patch is
compared with the same distance for held-out real patches of the site, which
the generator never saw. A generator that copies its training data produces
synthetic distances far below the held-out ones. Only summary statistics
leave this module: no patch, feature vector, index or per-patch distance.

Feature space: a fixed random convolutional encoder (three strided 3x3/5x5
convolutions with ReLU, weights drawn from a fixed seed, He scaling), average
pooled to a 4x4 grid and L2-normalised, on patches resized to 64 px. It needs
no pretrained weights (none may be downloaded at a site), is identical at
every site and in every run, and keeps coarse layout, colour and texture,
which is what a copied patch shares with its source. It is not a perceptual
metric: use the distances to compare synthetic with held-out, never as
absolute numbers.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from torch import nn

from medi_core.errors import EvaluationError

FEATURE_SEED = 20250617  # fixed forever: changing it changes every reported distance
FEATURE_IMAGE_SIZE = 64  # px; patches are resized to this before encoding
# A synthetic patch is "close" when its nearest-training distance is below this
# quantile of the held-out distances; about this fraction is expected by chance.
CLOSE_QUANTILE = 0.05

Patches = torch.Tensor | Iterable[torch.Tensor]  # (N, 3, H, W) in [-1, 1], or batches of it


class RandomConvFeatures(nn.Module):
    """Fixed-seed random conv encoder: ``(B, 3, H, W)`` in [-1, 1] to unit vectors ``(B, 1024)``."""

    def __init__(self, seed: int = FEATURE_SEED) -> None:
        super().__init__()
        generator = torch.Generator().manual_seed(seed)
        self.layers = nn.ModuleList(
            [
                nn.Conv2d(3, 16, kernel_size=5, stride=2, padding=2),
                nn.Conv2d(16, 32, kernel_size=3, stride=2, padding=1),
                nn.Conv2d(32, 64, kernel_size=3, stride=2, padding=1),
            ]
        )
        with torch.no_grad():
            for conv in self.layers:
                fan_in = conv.in_channels * conv.kernel_size[0] * conv.kernel_size[1]
                conv.weight.copy_(torch.randn(conv.weight.shape, generator=generator) * (2.0 / fan_in) ** 0.5)
                conv.bias.zero_()
        self.requires_grad_(False)
        self.eval()

    @torch.no_grad()
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.interpolate(x.float(), size=(FEATURE_IMAGE_SIZE, FEATURE_IMAGE_SIZE), mode="bilinear", antialias=True)
        for conv in self.layers:
            x = F.relu(conv(x))  # 64 -> 32 -> 16 -> 8 px
        x = F.adaptive_avg_pool2d(x, 4).flatten(1)  # (B, 64 * 4 * 4)
        return F.normalize(x, dim=1)


@dataclass(frozen=True)
class DistanceSummary:
    """Summary of nearest-training-patch distances of one set of patches."""

    count: int
    minimum: float
    p05: float
    median: float
    mean: float


@dataclass(frozen=True)
class MemorisationReport:
    """What a site may share about memorisation: counts and distance summaries only."""

    feature_space: str
    num_train: int
    synthetic: DistanceSummary
    holdout: DistanceSummary
    median_ratio: float  # synthetic median / held-out median; well below 1 suggests copying
    close_fraction: float  # share of synthetic patches closer than the held-out 5th percentile

    def to_dict(self) -> dict:
        return asdict(self)


def _features(encoder: RandomConvFeatures, patches: Patches, batch_size: int, name: str) -> torch.Tensor:
    batches = [patches] if isinstance(patches, torch.Tensor) else patches
    parts = []
    for batch in batches:
        if batch.dim() != 4 or batch.shape[1] != 3:
            raise EvaluationError(f"{name} patches must be (N, 3, H, W) in [-1, 1], got shape {tuple(batch.shape)}")
        for chunk in batch.split(batch_size):
            parts.append(encoder(chunk.cpu()))
    if not parts or sum(p.shape[0] for p in parts) == 0:
        raise EvaluationError(f"the memorisation check needs at least one {name} patch, got none")
    return torch.cat(parts)  # (N, D)


def _nearest_distances(queries: torch.Tensor, references: torch.Tensor, chunk: int = 1024) -> torch.Tensor:
    out = [torch.cdist(q, references).min(dim=1).values for q in queries.split(chunk)]
    return torch.cat(out)  # (Q,)


def _summary(distances: torch.Tensor) -> DistanceSummary:
    return DistanceSummary(
        count=int(distances.numel()),
        minimum=float(distances.min()),
        p05=float(torch.quantile(distances, CLOSE_QUANTILE)),
        median=float(distances.median()),
        mean=float(distances.mean()),
    )


def memorisation_check(
    train: Patches,
    synthetic: Patches,
    holdout: Patches,
    *,
    batch_size: int = 64,
) -> MemorisationReport:
    """Compare nearest-training-patch distances of synthetic and held-out real patches.

    All three sets are ``(N, 3, H, W)`` tensors in [-1, 1] (or iterables of
    such batches); sizes may differ between sets. ``holdout`` must not
    overlap ``train``.
    """
    encoder = RandomConvFeatures()
    train_features = _features(encoder, train, batch_size, "training")
    synthetic_nn = _nearest_distances(_features(encoder, synthetic, batch_size, "synthetic"), train_features)
    holdout_nn = _nearest_distances(_features(encoder, holdout, batch_size, "held-out"), train_features)
    holdout_summary = _summary(holdout_nn)
    synthetic_summary = _summary(synthetic_nn)
    ratio = synthetic_summary.median / holdout_summary.median if holdout_summary.median > 0 else float("inf")
    close = float((synthetic_nn < holdout_summary.p05).double().mean())
    return MemorisationReport(
        feature_space=f"random-conv-{FEATURE_SEED}-{FEATURE_IMAGE_SIZE}px",
        num_train=int(train_features.shape[0]),
        synthetic=synthetic_summary,
        holdout=holdout_summary,
        median_ratio=ratio,
        close_fraction=close,
    )


__all__ = ["DistanceSummary", "MemorisationReport", "RandomConvFeatures", "memorisation_check"]
