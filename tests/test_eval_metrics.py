"""Tests of the downstream metrics and the mean ± SEM summary, against hand-computed values."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import balanced_accuracy_score

from medi_core.errors import EvaluationError
from medi_core.evaluation.metrics import (
    ALL_SITES,
    balanced_accuracy,
    classification_metrics,
    format_mean_sem,
    per_site_balanced_accuracy,
    standard_error,
    summarise_over_seeds,
)

# Six test patches at two held-out sites.
# site P: a a b b   predicted a b b b   -> recall a 1/2, b 2/2 -> 0.75
# site Q: a c       predicted a a       -> recall a 1/1, c 0/1 -> 0.5
TRUE = np.array(["a", "a", "b", "b", "a", "c"])
PRED = np.array(["a", "b", "b", "b", "a", "a"])
SITES = np.array(["P", "P", "P", "P", "Q", "Q"])


def test_balanced_accuracy_hand_computed() -> None:
    # recall a = 2/3, b = 2/2, c = 0/1 -> (2/3 + 1 + 0) / 3
    assert balanced_accuracy(TRUE, PRED) == pytest.approx((2 / 3 + 1.0 + 0.0) / 3)


def test_balanced_accuracy_matches_sklearn() -> None:
    assert balanced_accuracy(TRUE, PRED) == pytest.approx(balanced_accuracy_score(TRUE, PRED))


def test_balanced_accuracy_ignores_absent_classes() -> None:
    # Only class "a" is present; predicting "z" for one of two is recall 1/2.
    assert balanced_accuracy(np.array(["a", "a"]), np.array(["a", "z"])) == 0.5


def test_balanced_accuracy_rejects_empty() -> None:
    with pytest.raises(EvaluationError, match="non-empty"):
        balanced_accuracy(np.array([]), np.array([]))


def test_per_site_balanced_accuracy_values() -> None:
    assert per_site_balanced_accuracy(TRUE, PRED, SITES) == {"P": 0.75, "Q": 0.5}


def test_classification_metrics_site_average() -> None:
    assert classification_metrics(TRUE, PRED, SITES)["site_balanced_accuracy"] == pytest.approx(0.625)


def test_classification_metrics_worst_site() -> None:
    assert classification_metrics(TRUE, PRED, SITES)["worst_site_balanced_accuracy"] == 0.5


def test_classification_metrics_mcc() -> None:
    # Multiclass MCC from the confusion matrix C (rows true a, b, c; columns predicted a, b, c):
    # C = [[2, 1, 0], [0, 2, 0], [1, 0, 0]], s = 6, c = trace = 4,
    # t = true counts (3, 2, 1), p = predicted counts (3, 3, 0):
    # (c*s - t.p) / sqrt((s^2 - p.p) (s^2 - t.t)) = (24 - 15) / sqrt((36 - 18) (36 - 14)).
    expected = 9 / math.sqrt(18 * 22)
    assert classification_metrics(TRUE, PRED, SITES)["mcc"] == pytest.approx(expected)


def test_standard_error_hand_computed() -> None:
    # values 1, 2, 3: sample std 1, n 3 -> 1 / sqrt(3)
    assert standard_error([1.0, 2.0, 3.0]) == pytest.approx(1 / math.sqrt(3))


def test_standard_error_one_value_is_nan() -> None:
    assert math.isnan(standard_error([0.7]))


def test_summarise_over_seeds_mean_and_sem() -> None:
    results = pd.DataFrame({
        "configuration": ["real", "real", "real+x", "real+x"],
        "seed": [0, 1, 0, 1],
        "site": [ALL_SITES] * 4,
        "metric": ["mcc"] * 4,
        "value": [0.2, 0.4, 0.5, 0.5],
    })
    summary = summarise_over_seeds(results).set_index("configuration")
    assert summary.loc["real", "mean"] == pytest.approx(0.3)
    assert summary.loc["real", "sem"] == pytest.approx(0.1)  # std 0.1414 / sqrt(2)
    assert summary.loc["real+x", "sem"] == 0.0
    assert summary.loc["real", "n_seeds"] == 2


def test_summarise_over_seeds_missing_column() -> None:
    with pytest.raises(EvaluationError, match=r"lacks column\(s\) \['seed'\]"):
        summarise_over_seeds(pd.DataFrame({"configuration": [], "site": [], "metric": [], "value": []}))


def test_format_mean_sem() -> None:
    assert format_mean_sem(0.8123, 0.0151) == "0.812 ± 0.015"
    assert format_mean_sem(0.5, math.nan) == "0.500"
