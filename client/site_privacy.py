"""A site's DP-SGD settings for a round: the server's proposal, bounded by the site's own max-epsilon.

The server proposes the DP options in each round's config (``dp-*`` keys of
`medi_core.protocol`). The site decides what it trains with:

| node config ``max-epsilon`` | server proposes | the site trains with |
|---|---|---|
| 0 | anything | no DP (a proposal is logged and ignored) |
| M > 0 | ``dp-noise-multiplier`` s > 0 | noise multiplier s until the next round would pass M |
| M > 0 | ``dp-target-epsilon`` T > 0 | noise calibrated so the planned run spends min(T, M) |
| M > 0 | neither | noise calibrated so the planned run spends M |

M stays a hard ceiling in every case: `PrivateTrainer.train_steps` raises
`PrivacyBudgetExceeded` before a round that would pass it, and the client
declines that round.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

from medi_core import protocol as P
from medi_core.privacy import PrivacyConfig, PrivateTrainer
from medi_client.site import SiteConfig

logger = logging.getLogger(__name__)

DEFAULT_MAX_GRAD_NORM = 1.0  # used when the server sends no dp-max-grad-norm (an older server)


def site_privacy(site: SiteConfig, config: Mapping[str, Any], *, server_round: int) -> PrivacyConfig | None:
    """Return the DP-SGD settings this site trains with this round, or None when its max-epsilon is 0."""
    proposed_target = float(config.get(P.DP_TARGET_EPSILON, 0.0))
    noise_multiplier = float(config.get(P.DP_NOISE_MULTIPLIER, 0.0))
    if site.max_epsilon <= 0:
        if proposed_target > 0 or noise_multiplier > 0:
            logger.warning(
                "site %s, round %d: the server proposes DP-SGD (%s=%g, %s=%g), but this site's max-epsilon is 0, "
                "so it trains without differential privacy; set --max-epsilon to train privately",
                site.site_id, server_round, P.DP_TARGET_EPSILON, proposed_target, P.DP_NOISE_MULTIPLIER, noise_multiplier,
            )
        return None
    delta = float(config.get(P.DP_DELTA, 0.0))
    common = dict(
        enabled=True,
        max_grad_norm=float(config.get(P.DP_MAX_GRAD_NORM, DEFAULT_MAX_GRAD_NORM)),
        noise_multiplicity=int(config.get(P.DP_NOISE_MULTIPLICITY, 1)),
        delta=delta if delta > 0 else None,
    )
    if noise_multiplier > 0:
        return PrivacyConfig(noise_multiplier=noise_multiplier, **common)
    target = site.max_epsilon
    if proposed_target > site.max_epsilon:
        logger.warning(
            "site %s, round %d: the server proposes %s=%g, above this site's max-epsilon %g; "
            "calibrating the noise for %g instead",
            site.site_id, server_round, P.DP_TARGET_EPSILON, proposed_target, site.max_epsilon, site.max_epsilon,
        )
    elif proposed_target > 0:
        target = proposed_target
    return PrivacyConfig(target_epsilon=target, **common)


def warn_if_plan_exceeds_max(private: PrivateTrainer, site: SiteConfig, *, planned_steps: int) -> None:
    """Log once, before the first private step, when a fixed noise multiplier cannot last the planned run."""
    if private.accountant.steps > 0 or private.privacy.noise_multiplier is None:
        return
    projected = private.accountant.projected_epsilon(
        noise_multiplier=private.noise_multiplier, sample_rate=private.sample_rate, num_steps=planned_steps
    )
    if projected > site.max_epsilon:
        logger.warning(
            "site %s: with noise multiplier %g the planned %d steps would reach epsilon %.4g, above this site's "
            "max-epsilon %g; the site stops training before the first round that would pass it",
            site.site_id, private.noise_multiplier, planned_steps, projected, site.max_epsilon,
        )
