"""Turn a `Trainer` into a `PrivateTrainer`: delta, sample rate, noise calibration, accountant state."""

from __future__ import annotations

import logging
import os

from medi_core.errors import ConfigError, PrivacyError
from medi_core.privacy.accountant import SiteAccountant, calibrate_noise_multiplier
from medi_core.privacy.config import PrivacyConfig
from medi_core.privacy.private_trainer import PrivateTrainer
from medi_core.training import Trainer

logger = logging.getLogger(__name__)


def make_private(
    trainer: Trainer,
    *,
    privacy: PrivacyConfig,
    num_examples: int,
    state_path: str | os.PathLike[str] | None,
    planned_steps: int | None = None,
    max_epsilon: float | None = None,
    site: str | None = None,
    seed: int | None = None,
) -> PrivateTrainer:
    """Make a trainer's local steps DP-SGD steps, resuming the accountant stored at ``state_path``.

    ``planned_steps`` (rounds x local steps of the whole run) is needed when
    ``privacy.target_epsilon`` sets the noise: the multiplier is calibrated so
    that the steps still planned, after those already recorded in the
    accountant, end exactly at the target. ``max_epsilon`` is the site's own
    hard limit from its node config. ``seed`` makes Poisson sampling and noise
    reproducible and is meant for tests only; by default both are seeded from
    the operating system.
    """
    if not privacy.enabled:
        raise ConfigError("make_private was called with privacy.enabled=false; set privacy.enabled=true")
    if num_examples < 1:
        raise PrivacyError(f"site {site}: cannot train privately on {num_examples} examples")
    delta = privacy.resolve_delta(num_examples)
    accountant = SiteAccountant.load_or_create(state_path, kind=privacy.accountant, delta=delta, site=site)
    sample_rate = min(1.0, trainer.config.batch_size / num_examples)
    if privacy.noise_multiplier is not None:
        noise_multiplier = privacy.noise_multiplier
    else:
        noise_multiplier = _calibrated_noise(accountant, privacy, sample_rate, planned_steps, site)
    if max_epsilon is not None and privacy.target_epsilon is not None and privacy.target_epsilon > max_epsilon:
        logger.warning(
            "site %s: target epsilon %.4g is above this site's maximum %.4g; training stops at the maximum",
            site, privacy.target_epsilon, max_epsilon,
        )
    return PrivateTrainer(
        trainer,
        privacy=privacy,
        num_examples=num_examples,
        accountant=accountant,
        noise_multiplier=noise_multiplier,
        max_epsilon=max_epsilon,
        site=site,
        seed=seed,
    )


def _calibrated_noise(
    accountant: SiteAccountant,
    privacy: PrivacyConfig,
    sample_rate: float,
    planned_steps: int | None,
    site: str | None,
) -> float:
    """Noise multiplier for the remaining planned steps, reusing the stored one when the plan is unchanged."""
    if planned_steps is None or planned_steps < 1:
        raise ConfigError(
            f"site {site}: privacy.target_epsilon needs planned_steps (rounds x local steps), "
            f"got {planned_steps}; or set privacy.noise_multiplier instead"
        )
    plan = {
        "target_epsilon": float(privacy.target_epsilon),
        "sample_rate": sample_rate,
        "planned_steps": int(planned_steps),
    }
    stored = accountant.calibration
    if stored is not None and all(stored.get(key) == value for key, value in plan.items()):
        return float(stored["noise_multiplier"])
    remaining = planned_steps - accountant.steps
    if remaining < 1:
        raise PrivacyError(
            f"site {site}: the accountant already holds {accountant.steps} steps, not fewer than the "
            f"{planned_steps} planned; raise planned_steps or set privacy.noise_multiplier"
        )
    sigma = calibrate_noise_multiplier(
        target_epsilon=privacy.target_epsilon,
        delta=accountant.delta,
        sample_rate=sample_rate,
        num_steps=remaining,
        history=accountant.history,
        kind=accountant.kind,
    )
    accountant.calibration = {**plan, "noise_multiplier": sigma}
    accountant.save()
    logger.info(
        "site %s: noise multiplier %.4g reaches epsilon %.4g after %d more steps at q=%.4g",
        site, sigma, privacy.target_epsilon, remaining, sample_rate,
    )
    return sigma


__all__ = ["make_private"]
