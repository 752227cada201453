"""The MeDi downstream experiment: one linear probe per training configuration, tested on held-out sites.

Configurations compared (names as they appear in the results table):

- ``real``: real training patches only;
- ``real+stain``: plus HED stain-jittered copies of real patches;
- ``real+<name>``: plus synthetic patches from each entry of the
  ``synthetic`` mapping, for example ``cls-only`` (class-only diffusion model),
  ``medi-fed`` (site-conditioned, federated) and ``medi-central``
  (site-conditioned, trained on pooled data).

The encoder is frozen and built once by the caller, so every configuration
uses the same feature space. Seeds vary what is random per run: the real patches
kept per class, the training sites kept, the synthetic patches drawn and the
stain jitter. With none of these options set, ``real`` gives the same result
for every seed and its SEM is 0.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Literal

import numpy as np
import pandas as pd

from medi_core.errors import EvaluationError
from medi_core.evaluation.encoders import FeatureEncoder
from medi_core.evaluation.metrics import ALL_SITES, BALANCED_ACCURACY, classification_metrics, per_site_balanced_accuracy
from medi_core.evaluation.patches import LabeledPatches, sample_per_class
from medi_core.evaluation.probe import DEFAULT_C, DEFAULT_MAX_ITER, fit_probe
from medi_core.evaluation.stain import DEFAULT_BIAS, DEFAULT_SIGMA, stain_augment

logger = logging.getLogger(__name__)

REAL = "real"
STAIN = "real+stain"
SweepParameter = Literal["synthetic_ratio", "real_per_class", "num_train_sites"]
RESULT_COLUMNS = ["configuration", "seed", "site", "metric", "value", "n_real", "n_added"]


@dataclass
class EvaluationConfig:
    """Options of the downstream experiment."""

    seeds: tuple[int, ...] = (0, 1, 2)
    synthetic_ratio: float | None = 1.0  # added patches per real training patch; None adds the whole synthetic set
    real_per_class: int | None = None  # keep at most this many real training patches per class; None keeps all
    num_train_sites: int | None = None  # keep the real (and synthetic) patches of this many random training sites
    include_stain: bool = True  # run the real+stain configuration
    stain_sigma: float = DEFAULT_SIGMA
    stain_bias: float = DEFAULT_BIAS
    C: float = DEFAULT_C  # inverse L2 strength of the logistic regression
    max_iter: int = DEFAULT_MAX_ITER


def configuration_name(synthetic_name: str) -> str:
    """Return the results-table name of the configuration that adds ``synthetic_name``."""
    return f"{REAL}+{synthetic_name}"


@dataclass(frozen=True)
class _Embedded:
    """Patch labels with their frozen features, so sweeps embed every set once."""

    patches: LabeledPatches
    features: np.ndarray  # (N, D)

    def take(self, rows: np.ndarray) -> _Embedded:
        return _Embedded(self.patches.subset(rows), self.features[rows])


def _embed(patches: LabeledPatches, encoder: FeatureEncoder) -> _Embedded:
    return _Embedded(patches, encoder.embed(patches.images))


def _check_inputs(train: LabeledPatches, test: LabeledPatches, synthetic: Mapping[str, LabeledPatches]) -> None:
    if len(train) == 0 or len(test) == 0:
        raise EvaluationError(f"evaluation needs real training and test patches, got {len(train)} and {len(test)}")
    shared = sorted(set(train.site_names) & set(test.site_names))
    if shared:
        raise EvaluationError(
            f"sites {shared} occur in both the training and the test patches; the test set must hold out "
            "whole sites (split with medi_sim.tcga_split)"
        )
    unseen = sorted(set(test.classes) - set(train.classes))
    if unseen:
        logger.warning("test classes %s have no real training patches; their recall can only come from added patches", unseen)
    for name in synthetic:
        if configuration_name(name) in (REAL, STAIN):
            raise EvaluationError(f"synthetic set name {name!r} clashes with a built-in configuration name")


def _draw(pool: _Embedded, count: int | None, rng: np.random.Generator) -> _Embedded:
    """Draw ``count`` patches from ``pool`` without replacement (all of them when count is None or larger)."""
    if count is None or count >= len(pool.patches):
        return pool
    return pool.take(np.sort(rng.choice(len(pool.patches), size=count, replace=False)))


def _score(
    rows: list[dict[str, object]],
    configuration: str,
    seed: int,
    train_features: np.ndarray,
    train_labels: np.ndarray,
    test: _Embedded,
    n_real: int,
    n_added: int,
    config: EvaluationConfig,
) -> None:
    probe = fit_probe(train_features, train_labels, C=config.C, max_iter=config.max_iter, context=f"{configuration}, seed {seed}")
    predicted = probe.predict(test.features)
    truth, sites = test.patches.labels, test.patches.sites
    common = {"configuration": configuration, "seed": seed, "n_real": n_real, "n_added": n_added}
    for metric, value in classification_metrics(truth, predicted, sites).items():
        rows.append({**common, "site": ALL_SITES, "metric": metric, "value": value})
    for site, value in per_site_balanced_accuracy(truth, predicted, sites).items():
        rows.append({**common, "site": site, "metric": BALANCED_ACCURACY, "value": value})


def _run_embedded(
    train: _Embedded,
    test: _Embedded,
    synthetic: Mapping[str, _Embedded],
    encoder: FeatureEncoder,
    config: EvaluationConfig,
) -> pd.DataFrame:
    rows: list[dict[str, object]] = []
    train_sites = list(train.patches.site_names)
    if config.num_train_sites is not None and not 1 <= config.num_train_sites <= len(train_sites):
        raise EvaluationError(
            f"num_train_sites must be between 1 and {len(train_sites)} (the training sites {train_sites}), "
            f"got {config.num_train_sites}"
        )
    short_pools: set[str] = set()  # synthetic sets already reported as smaller than requested
    for seed in config.seeds:
        rng = np.random.default_rng(seed)
        real = train
        kept_sites = train_sites
        if config.num_train_sites is not None:
            kept_sites = sorted(rng.choice(train_sites, size=config.num_train_sites, replace=False).tolist())
            real = real.take(np.flatnonzero(np.isin(real.patches.sites, kept_sites)))
        if config.real_per_class is not None:
            real = real.take(sample_per_class(real.patches.labels, config.real_per_class, rng))
        n_real = len(real.patches)
        n_added = None if config.synthetic_ratio is None else int(round(config.synthetic_ratio * n_real))

        _score(rows, REAL, seed, real.features, real.patches.labels, test, n_real, 0, config)

        if config.include_stain:
            augmented = stain_augment(
                real.patches, n_real if n_added is None else n_added, rng=rng, sigma=config.stain_sigma, bias=config.stain_bias
            )
            features = np.concatenate([real.features, encoder.embed(augmented.images)]) if len(augmented) else real.features
            labels = np.concatenate([real.patches.labels, augmented.labels])
            _score(rows, STAIN, seed, features, labels, test, n_real, len(augmented), config)

        for name, pool in synthetic.items():
            if config.num_train_sites is not None:
                pool = pool.take(np.flatnonzero(np.isin(pool.patches.sites, kept_sites)))
            if n_added is not None and n_added > len(pool.patches) and name not in short_pools:
                short_pools.add(name)
                logger.warning(
                    "synthetic set %s: ratio %s asks for %d patches but only %d exist; using all of them "
                    "(the n_added column has the actual count)", name, config.synthetic_ratio, n_added, len(pool.patches),
                )
            drawn = _draw(pool, n_added, rng)
            features = np.concatenate([real.features, drawn.features])
            labels = np.concatenate([real.patches.labels, drawn.patches.labels])
            _score(rows, configuration_name(name), seed, features, labels, test, n_real, len(drawn.patches), config)
    return pd.DataFrame(rows, columns=RESULT_COLUMNS)


def _embed_all(
    train: LabeledPatches, test: LabeledPatches, synthetic: Mapping[str, LabeledPatches], encoder: FeatureEncoder
) -> tuple[_Embedded, _Embedded, dict[str, _Embedded]]:
    _check_inputs(train, test, synthetic)
    logger.info("embedding %d training, %d test and %d synthetic patches with %s",
                len(train), len(test), sum(len(s) for s in synthetic.values()), encoder.name)
    return (
        _embed(train, encoder),
        _embed(test, encoder),
        {name: _embed(patches, encoder) for name, patches in synthetic.items() if len(patches)},
    )


def run_configurations(
    train: LabeledPatches,
    test: LabeledPatches,
    synthetic: Mapping[str, LabeledPatches],
    *,
    encoder: FeatureEncoder,
    config: EvaluationConfig | None = None,
) -> pd.DataFrame:
    """Train one probe per configuration and seed, and score it on the held-out ``test`` sites.

    Returns a tidy table with columns ``configuration, seed, site, metric,
    value, n_real, n_added``. Rows with ``site == "(all)"`` hold the four
    summary metrics and the other rows hold each test site's balanced accuracy.
    Aggregate with `summarise_over_seeds`.
    """
    config = config or EvaluationConfig()
    embedded_train, embedded_test, embedded_synthetic = _embed_all(train, test, synthetic, encoder)
    return _run_embedded(embedded_train, embedded_test, embedded_synthetic, encoder, config)


def run_sweep(
    train: LabeledPatches,
    test: LabeledPatches,
    synthetic: Mapping[str, LabeledPatches],
    *,
    encoder: FeatureEncoder,
    parameter: SweepParameter,
    values: Sequence[float | int | None],
    config: EvaluationConfig | None = None,
) -> pd.DataFrame:
    """Run `run_configurations` once per value of ``parameter``, embedding every patch set only once.

    The result has the columns of `run_configurations` plus ``parameter`` and
    ``parameter_value``. Summarise with
    ``summarise_over_seeds(table, by=("parameter_value", "configuration"))``.
    """
    if parameter not in ("synthetic_ratio", "real_per_class", "num_train_sites"):
        raise EvaluationError(
            f"sweep parameter must be synthetic_ratio, real_per_class or num_train_sites, got {parameter!r}"
        )
    config = config or EvaluationConfig()
    embedded_train, embedded_test, embedded_synthetic = _embed_all(train, test, synthetic, encoder)
    tables = []
    for value in values:
        table = _run_embedded(embedded_train, embedded_test, embedded_synthetic, encoder, replace(config, **{parameter: value}))
        tables.append(table.assign(parameter=parameter, parameter_value=value))
    return pd.concat(tables, ignore_index=True)


__all__ = [
    "REAL",
    "RESULT_COLUMNS",
    "STAIN",
    "EvaluationConfig",
    "SweepParameter",
    "configuration_name",
    "run_configurations",
    "run_sweep",
]
