"""Site fidelity: does a synthetic patch look like it comes from the site it was conditioned on?

A site classifier (class-balanced logistic regression on frozen features) is
trained on real patches with their site as the label. It then predicts the
site of every synthetic patch. The table reports, per (class, intended site)
cell, how often the prediction is the intended site. Cells that have no real
training patch (``in_training`` False) are exactly the combinations a
site-conditioned model has to invent, and the ones that matter most for
rebalancing.

For reference, the same classifier's cross-validated accuracy on the real
patches is reported per cell (``source == "real"``): synthetic site accuracy
can only be read against what the classifier achieves on real data.
"""

from __future__ import annotations

import logging
import math

import numpy as np
import pandas as pd
from sklearn.model_selection import KFold

from medi_core.evaluation.encoders import FeatureEncoder
from medi_core.evaluation.patches import LabeledPatches
from medi_core.evaluation.probe import DEFAULT_C, fit_probe

logger = logging.getLogger(__name__)

CROSS_VALIDATION_FOLDS = 5  # folds for the real-data reference accuracy
COLUMNS = [
    "source", "class", "site", "n", "n_real_train", "in_training", "site_accuracy", "most_predicted_site", "chance",
]


def _cell_rows(
    source: str,
    labels: np.ndarray,
    intended: np.ndarray,
    predicted: np.ndarray,
    real_counts: dict[tuple[str, str], int],
    known_sites: set[str],
) -> list[dict[str, object]]:
    rows = []
    chance = 1.0 / len(known_sites)
    for label, site in sorted(set(zip(labels.tolist(), intended.tolist(), strict=True))):
        mask = (labels == label) & (intended == site)
        values, counts = np.unique(predicted[mask], return_counts=True)
        accuracy = float(np.mean(predicted[mask] == site)) if site in known_sites else math.nan
        rows.append({
            "source": source,
            "class": label,
            "site": site,
            "n": int(mask.sum()),
            "n_real_train": real_counts.get((label, site), 0),
            "in_training": real_counts.get((label, site), 0) > 0,
            "site_accuracy": accuracy,
            "most_predicted_site": str(values[np.argmax(counts)]),
            "chance": chance,
        })
    return rows


def site_fidelity(
    real: LabeledPatches,
    synthetic: LabeledPatches,
    *,
    encoder: FeatureEncoder,
    C: float = DEFAULT_C,
    seed: int = 0,
) -> pd.DataFrame:
    """Return site accuracy per (class, intended site) for ``synthetic`` and, cross-validated, for ``real``.

    ``synthetic.sites`` must hold the site each patch was conditioned on. A
    site the classifier never saw in ``real`` gets NaN accuracy and a warning.
    """
    real_features = encoder.embed(real.images)
    known_sites = set(real.site_names)
    real_counts = real.cell_counts()
    classifier = fit_probe(real_features, real.sites, C=C, context="site classifier")

    unseen = sorted(set(synthetic.site_names) - known_sites)
    if unseen:
        logger.warning("site fidelity: synthetic sites %s have no real patches, so their accuracy is undefined", unseen)
    predicted = np.asarray(classifier.predict(encoder.embed(synthetic.images))).astype(str)
    rows = _cell_rows("synthetic", synthetic.labels, synthetic.sites, predicted, real_counts, known_sites)

    folds = min(CROSS_VALIDATION_FOLDS, len(real))
    if folds >= 2:
        cross_predicted = np.empty(len(real), dtype=object)
        for train_rows, test_rows in KFold(folds, shuffle=True, random_state=seed).split(real_features):
            fold_classifier = fit_probe(real_features[train_rows], real.sites[train_rows], C=C, context="site classifier fold")
            cross_predicted[test_rows] = fold_classifier.predict(real_features[test_rows])
        rows += _cell_rows("real", real.labels, real.sites, cross_predicted.astype(str), real_counts, known_sites)
    table = pd.DataFrame(rows, columns=COLUMNS)
    table.attrs["encoder"] = encoder.name
    return table


__all__ = ["site_fidelity"]
