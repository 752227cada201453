"""Downstream metrics on held-out sites (balanced accuracy overall, per site, worst site, MCC) and mean ± SEM over seeds."""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import pandas as pd
from sklearn.metrics import matthews_corrcoef

from medi_core.errors import EvaluationError

ALL_SITES = "(all)"  # site value of rows that describe the whole test set

BALANCED_ACCURACY = "balanced_accuracy"
SITE_BALANCED_ACCURACY = "site_balanced_accuracy"
WORST_SITE_BALANCED_ACCURACY = "worst_site_balanced_accuracy"
MCC = "mcc"
SUMMARY_METRICS = (BALANCED_ACCURACY, SITE_BALANCED_ACCURACY, WORST_SITE_BALANCED_ACCURACY, MCC)


def balanced_accuracy(y_true: np.ndarray, y_pred: np.ndarray) -> float:
    """Return the mean recall over the classes present in ``y_true``.

    This equals scikit-learn's ``balanced_accuracy_score`` but is quiet when a
    site's test patches cover only some classes, which is common per site.
    """
    y_true, y_pred = np.asarray(y_true), np.asarray(y_pred)
    if y_true.shape != y_pred.shape or y_true.size == 0:
        raise EvaluationError(f"balanced accuracy needs equal, non-empty label arrays, got {y_true.shape} and {y_pred.shape}")
    recalls = [float(np.mean(y_pred[y_true == label] == label)) for label in np.unique(y_true)]
    return float(np.mean(recalls))


def per_site_balanced_accuracy(y_true: np.ndarray, y_pred: np.ndarray, sites: np.ndarray) -> dict[str, float]:
    """Return the balanced accuracy of each site's test patches, keyed by site name (sorted)."""
    y_true, y_pred, sites = np.asarray(y_true), np.asarray(y_pred), np.asarray(sites)
    return {
        str(site): balanced_accuracy(y_true[sites == site], y_pred[sites == site]) for site in sorted(set(sites.tolist()))
    }


def classification_metrics(y_true: np.ndarray, y_pred: np.ndarray, sites: np.ndarray) -> dict[str, float]:
    """Return overall, site-averaged and worst-site balanced accuracy and the MCC.

    The site-averaged value weights every test site equally, however many
    patches it has, so a model that fails on small sites scores low.
    """
    per_site = per_site_balanced_accuracy(y_true, y_pred, sites)
    values = list(per_site.values())
    return {
        BALANCED_ACCURACY: balanced_accuracy(y_true, y_pred),
        SITE_BALANCED_ACCURACY: float(np.mean(values)),
        WORST_SITE_BALANCED_ACCURACY: float(np.min(values)),
        MCC: float(matthews_corrcoef(y_true, y_pred)),
    }


def standard_error(values: Sequence[float] | np.ndarray) -> float:
    """Return the standard error of the mean (sample std with ddof=1 over sqrt(n)); NaN for one value."""
    array = np.asarray(values, dtype=float)
    if array.size < 2:
        return math.nan
    return float(array.std(ddof=1) / math.sqrt(array.size))


def summarise_over_seeds(results: pd.DataFrame, by: Sequence[str] = ("configuration",)) -> pd.DataFrame:
    """Aggregate a tidy results table to mean, SEM and seed count per ``by`` + site + metric."""
    keys = [*by, "site", "metric"]
    missing = [c for c in [*keys, "seed", "value"] if c not in results.columns]
    if missing:
        raise EvaluationError(f"results table lacks column(s) {missing}; it has {list(results.columns)}")
    grouped = results.groupby(keys, sort=False, dropna=False)["value"]
    summary = grouped.agg(mean="mean", sem=standard_error, n_seeds="count").reset_index()
    return summary


def format_mean_sem(mean: float, sem: float, digits: int = 3) -> str:
    """Format ``mean ± sem``; only the mean when the SEM is undefined (one seed)."""
    if math.isnan(sem):
        return f"{mean:.{digits}f}"
    return f"{mean:.{digits}f} ± {sem:.{digits}f}"


__all__ = [
    "ALL_SITES",
    "BALANCED_ACCURACY",
    "MCC",
    "SITE_BALANCED_ACCURACY",
    "SUMMARY_METRICS",
    "WORST_SITE_BALANCED_ACCURACY",
    "balanced_accuracy",
    "classification_metrics",
    "format_mean_sem",
    "per_site_balanced_accuracy",
    "standard_error",
    "summarise_over_seeds",
]
