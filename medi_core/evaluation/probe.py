"""Linear probe on frozen features: standardised, class-balanced logistic regression (scikit-learn)."""

from __future__ import annotations

import logging
import warnings

import numpy as np
from sklearn.exceptions import ConvergenceWarning
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import Pipeline, make_pipeline
from sklearn.preprocessing import StandardScaler

from medi_core.errors import EvaluationError
from medi_core.evaluation.threads import single_thread

logger = logging.getLogger(__name__)

DEFAULT_C = 1.0  # inverse L2 strength; scikit-learn's default, and features are standardised first
DEFAULT_MAX_ITER = 2000  # lbfgs iterations; 100 (the default) stops early on a few hundred features


class ConstantProbe:
    """Predicts the single class seen in training; used when a training set has one class only."""

    def __init__(self, label: str) -> None:
        self.label = label
        self.classes_ = np.array([label])

    def predict(self, features: np.ndarray) -> np.ndarray:
        return np.full(features.shape[0], self.label, dtype=object)


def fit_probe(
    features: np.ndarray,
    labels: np.ndarray,
    *,
    C: float = DEFAULT_C,
    max_iter: int = DEFAULT_MAX_ITER,
    context: str = "",
) -> Pipeline | ConstantProbe:
    """Fit a class-balanced logistic regression on (N, D) features and (N,) string labels.

    ``class_weight="balanced"`` weights each class by ``N / (n_classes * n_class)``,
    so a rare class counts as much as a common one. With a single class in
    ``labels`` the probe predicts that class, and a warning names ``context``.
    """
    if features.ndim != 2 or features.shape[0] != len(labels) or features.shape[0] == 0:
        raise EvaluationError(
            f"probe {context}: features {features.shape} do not match {len(labels)} labels (or are empty)"
        )
    classes = np.unique(labels)
    if classes.size == 1:
        logger.warning("probe %s: training set has one class (%s), predicting it everywhere", context, classes[0])
        return ConstantProbe(str(classes[0]))
    probe = make_pipeline(StandardScaler(), LogisticRegression(C=C, max_iter=max_iter, class_weight="balanced"))
    with warnings.catch_warnings(record=True) as caught, single_thread():
        warnings.simplefilter("always", ConvergenceWarning)
        probe.fit(features, labels)
    if any(issubclass(w.category, ConvergenceWarning) for w in caught):
        logger.warning("probe %s: logistic regression did not converge in %d iterations", context, max_iter)
    return probe


__all__ = ["DEFAULT_C", "DEFAULT_MAX_ITER", "ConstantProbe", "fit_probe"]
