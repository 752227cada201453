"""Downstream evaluation on held-out sites: frozen encoders, linear probes, stain augmentation, fidelity.

Typical use, with real training and held-out test patches and named synthetic sets::

    train = LabeledPatches.from_dataset(train_dataset, image_size=32)
    encoder = build_encoder(EncoderConfig(kind="cnn"), train)
    table = run_configurations(train, test, {"medi-fed": synthetic}, encoder=encoder)
    summary = summarise_over_seeds(table)
"""

from medi_core.evaluation.encoders import (
    EncoderConfig,
    EncoderKind,
    FeatureEncoder,
    RandomConvEncoder,
    build_encoder,
    load_timm_encoder,
    train_cnn_encoder,
)
from medi_core.evaluation.fidelity import fidelity_table, frechet_distance, kernel_distance, torch_fidelity_metrics
from medi_core.evaluation.metrics import (
    ALL_SITES,
    SUMMARY_METRICS,
    balanced_accuracy,
    classification_metrics,
    format_mean_sem,
    per_site_balanced_accuracy,
    summarise_over_seeds,
)
from medi_core.evaluation.patches import LabeledPatches, concat_patches
from medi_core.evaluation.runner import REAL, STAIN, EvaluationConfig, configuration_name, run_configurations, run_sweep
from medi_core.evaluation.site_fidelity import site_fidelity
from medi_core.evaluation.stain import hed_jitter, stain_augment

__all__ = [
    "ALL_SITES",
    "REAL",
    "STAIN",
    "SUMMARY_METRICS",
    "EncoderConfig",
    "EncoderKind",
    "EvaluationConfig",
    "FeatureEncoder",
    "LabeledPatches",
    "RandomConvEncoder",
    "balanced_accuracy",
    "build_encoder",
    "classification_metrics",
    "concat_patches",
    "configuration_name",
    "fidelity_table",
    "format_mean_sem",
    "frechet_distance",
    "hed_jitter",
    "kernel_distance",
    "load_timm_encoder",
    "per_site_balanced_accuracy",
    "run_configurations",
    "run_sweep",
    "site_fidelity",
    "stain_augment",
    "summarise_over_seeds",
    "torch_fidelity_metrics",
    "train_cnn_encoder",
]
