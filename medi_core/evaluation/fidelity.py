"""Image fidelity: Fréchet distance and kernel (KID) distance on any encoder's features, and torch-fidelity FID/KID.

| code              | symbol   | meaning                                                         |
|-------------------|----------|-----------------------------------------------------------------|
| ``mu_a, mu_b``    | mu       | feature means of the two sets                                   |
| ``cov_a, cov_b``  | Sigma    | feature covariances (ddof=1)                                    |
| ``k(x, y)``       | k        | polynomial kernel ``(gamma x.y + coef0) ** degree``, gamma = 1/D |

1. Fréchet distance (the FID formula, applied to any features):
   ``|mu_a - mu_b|^2 + tr(cov_a) + tr(cov_b) - 2 tr((cov_a cov_b)^(1/2))``.
   The last trace is the sum of the square roots of the eigenvalues of
   ``cov_a cov_b``, which are real and non-negative for covariance matrices.
2. Kernel distance (the KID formula): the unbiased estimate of the squared
   MMD with kernel ``k``, averaged over random subsets of equal size drawn
   without replacement from both sets.

Both use the definitions of torch-fidelity 0.4 (``metric_fid.py``,
``metric_kid.py``): the same kernel defaults, subset draws and estimator.
With the features of torch-fidelity's Inception network these are FID and
KID. With another encoder (UNI, the project's small CNN) they measure the
same distances in that encoder's feature space, so their values are not
comparable with published FID numbers.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from medi_core.errors import EvaluationError, MissingDependencyError
from medi_core.evaluation.encoders import FeatureEncoder
from medi_core.evaluation.patches import LabeledPatches
from medi_core.evaluation.threads import single_thread

logger = logging.getLogger(__name__)

KID_SUBSETS = 100  # subsets averaged by the KID estimate, as torch-fidelity's default
KID_SUBSET_SIZE = 1000  # patches per subset, capped at the smaller set's size
ALL_CLASSES = "(all)"


def _check_features(a: np.ndarray, b: np.ndarray, minimum: int, what: str) -> None:
    if a.ndim != 2 or b.ndim != 2 or a.shape[1] != b.shape[1]:
        raise EvaluationError(f"{what}: feature arrays must be (N, D) with the same D, got {a.shape} and {b.shape}")
    if min(a.shape[0], b.shape[0]) < minimum:
        raise EvaluationError(f"{what} needs at least {minimum} samples per set, got {a.shape[0]} and {b.shape[0]}")


def frechet_distance(features_a: np.ndarray, features_b: np.ndarray) -> float:
    """Return the Fréchet distance between Gaussians fitted to two (N, D) feature sets."""
    _check_features(features_a, features_b, 2, "Fréchet distance")
    mu_a, mu_b = features_a.mean(axis=0), features_b.mean(axis=0)
    cov_a = np.atleast_2d(np.cov(features_a, rowvar=False))
    cov_b = np.atleast_2d(np.cov(features_b, rowvar=False))
    with single_thread():
        eigenvalues = np.linalg.eigvals(cov_a @ cov_b)
    trace_root = float(np.sum(np.sqrt(np.clip(eigenvalues.real, 0.0, None))))  # rounding can leave tiny negatives
    value = float(np.sum((mu_a - mu_b) ** 2) + np.trace(cov_a) + np.trace(cov_b) - 2.0 * trace_root)
    return max(value, 0.0)


def _unbiased_mmd2(x: np.ndarray, y: np.ndarray, degree: int, gamma: float, coef0: float) -> float:
    m = x.shape[0]
    k_xx = (gamma * x @ x.T + coef0) ** degree
    k_yy = (gamma * y @ y.T + coef0) ** degree
    k_xy = (gamma * x @ y.T + coef0) ** degree
    off_diagonal = m * (m - 1)
    return float(
        (k_xx.sum() - np.trace(k_xx)) / off_diagonal
        + (k_yy.sum() - np.trace(k_yy)) / off_diagonal
        - 2.0 * k_xy.mean()
    )


def kernel_distance(
    features_a: np.ndarray,
    features_b: np.ndarray,
    *,
    num_subsets: int = KID_SUBSETS,
    subset_size: int = KID_SUBSET_SIZE,
    degree: int = 3,
    gamma: float | None = None,
    coef0: float = 1.0,
    seed: int = 0,
) -> tuple[float, float]:
    """Return the mean and standard deviation over subsets of the unbiased squared MMD (KID)."""
    _check_features(features_a, features_b, 2, "kernel distance")
    size = min(subset_size, features_a.shape[0], features_b.shape[0])
    gamma = 1.0 / features_a.shape[1] if gamma is None else gamma
    rng = np.random.default_rng(seed)
    values = []
    with single_thread():
        for _ in range(num_subsets):
            x = features_a[rng.choice(features_a.shape[0], size=size, replace=False)]
            y = features_b[rng.choice(features_b.shape[0], size=size, replace=False)]
            values.append(_unbiased_mmd2(x, y, degree, gamma, coef0))
    return float(np.mean(values)), float(np.std(values))


def fidelity_table(
    real: LabeledPatches,
    synthetic: Mapping[str, LabeledPatches],
    *,
    encoder: FeatureEncoder,
    per_class: bool = True,
    num_subsets: int = KID_SUBSETS,
    seed: int = 0,
) -> pd.DataFrame:
    """Compare each synthetic set with the real patches in ``encoder``'s feature space.

    One row per synthetic set and class (``"(all)"`` for all classes pooled),
    with the Fréchet distance and KID mean and std. Cells with fewer than two
    patches on either side get NaN.
    """
    real_features = encoder.embed(real.images)
    rows = []
    for name, patches in synthetic.items():
        features = encoder.embed(patches.images)
        groups = [ALL_CLASSES] + (sorted(set(real.classes) | set(patches.classes)) if per_class else [])
        for label in groups:
            a = real_features if label == ALL_CLASSES else real_features[real.labels == label]
            b = features if label == ALL_CLASSES else features[patches.labels == label]
            row: dict[str, Any] = {"synthetic": name, "class": label, "n_real": len(a), "n_synthetic": len(b)}
            if min(len(a), len(b)) >= 2:
                row["frechet_distance"] = frechet_distance(a, b)
                row["kid_mean"], row["kid_std"] = kernel_distance(a, b, num_subsets=num_subsets, seed=seed)
            else:
                row["frechet_distance"] = row["kid_mean"] = row["kid_std"] = math.nan
            rows.append(row)
    table = pd.DataFrame(rows, columns=["synthetic", "class", "n_real", "n_synthetic", "frechet_distance", "kid_mean", "kid_std"])
    table.attrs["encoder"] = encoder.name
    return table


class _Uint8Images(torch.utils.data.Dataset):
    """(N, 3, H, W) in [-1, 1] served as uint8 (3, H, W) tensors, the input torch-fidelity expects."""

    def __init__(self, images: torch.Tensor) -> None:
        self.images = ((images.clamp(-1, 1) + 1.0) * 127.5).round().to(torch.uint8)

    def __len__(self) -> int:
        return self.images.shape[0]

    def __getitem__(self, index: int) -> torch.Tensor:
        return self.images[index]


def torch_fidelity_metrics(
    real: torch.Tensor,
    synthetic: torch.Tensor,
    *,
    inception_weights: str | Path,
    kid_subset_size: int = KID_SUBSET_SIZE,
    batch_size: int = 64,
    device: str = "cpu",
) -> dict[str, float]:
    """Compute FID and KID with torch-fidelity's Inception-v3 loaded from a local weights file.

    Images are (N, 3, H, W) in [-1, 1]. Nothing is downloaded, and
    torch-fidelity is imported only when this is called.
    """
    path = Path(inception_weights).expanduser()
    if not path.is_file():
        raise EvaluationError(
            f"Inception weights {path} not found; pass the local pt_inception-2015-12-05 file torch-fidelity uses"
        )
    try:
        import torch_fidelity  # noqa: PLC0415 (optional dependency)
    except ImportError as err:
        raise MissingDependencyError(
            f"FID/KID need the torch-fidelity package, which failed to import ({err}). Install torch-fidelity "
            f"together with the torchvision build that matches torch {torch.__version__}, or use fidelity_table, "
            "which computes the same distances on any encoder's features without extra packages"
        ) from err
    size = min(kid_subset_size, real.shape[0], synthetic.shape[0])
    metrics = torch_fidelity.calculate_metrics(
        input1=_Uint8Images(synthetic),
        input2=_Uint8Images(real),
        fid=True,
        kid=True,
        kid_subset_size=size,
        feature_extractor="inception-v3-compat",
        feature_extractor_weights_path=str(path),
        batch_size=batch_size,
        cuda=device.startswith("cuda"),
        cache=False,
        datasets_download=False,
        verbose=False,
    )
    return {
        "fid": float(metrics["frechet_inception_distance"]),
        "kid_mean": float(metrics["kernel_inception_distance_mean"]),
        "kid_std": float(metrics["kernel_inception_distance_std"]),
    }


__all__ = ["frechet_distance", "fidelity_table", "kernel_distance", "torch_fidelity_metrics"]
