"""Differential privacy at a site: DP-SGD with Opacus, a persistent accountant, a memorisation check.

Typical use at a client::

    private = make_private(trainer, privacy=config, num_examples=len(dataset),
                           state_path=site_dir / "privacy_accountant.json",
                           planned_steps=rounds * local_steps, max_epsilon=node_max_epsilon)
    result = private.train_steps(dataset, local_steps, round_id=server_round)
    result.privacy_metrics()  # epsilon spent so far, per round, delta, sigma, q
"""

from medi_core.privacy.accountant import SiteAccountant, calibrate_noise_multiplier, epsilon_of
from medi_core.privacy.config import DEFAULT_DELTA_FRACTION, AccountantKind, GradSampleMode, PrivacyConfig
from medi_core.privacy.grad_sample import (
    GradSampler,
    force_contiguous_conv_inputs,
    per_sample_gradients_autograd,
    relative_errors,
)
from medi_core.privacy.memorisation import (
    DistanceSummary,
    MemorisationReport,
    RandomConvFeatures,
    memorisation_check,
)
from medi_core.privacy.engine import make_private
from medi_core.privacy.private_trainer import PrivateTrainer, PrivateTrainResult, poisson_batch_indices

__all__ = [
    "DEFAULT_DELTA_FRACTION",
    "AccountantKind",
    "DistanceSummary",
    "GradSampleMode",
    "GradSampler",
    "MemorisationReport",
    "PrivacyConfig",
    "PrivateTrainResult",
    "PrivateTrainer",
    "RandomConvFeatures",
    "SiteAccountant",
    "calibrate_noise_multiplier",
    "epsilon_of",
    "force_contiguous_conv_inputs",
    "make_private",
    "memorisation_check",
    "per_sample_gradients_autograd",
    "poisson_batch_indices",
    "relative_errors",
]
