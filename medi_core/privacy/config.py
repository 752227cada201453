"""Differential-privacy options of local training (DP-SGD with Opacus)."""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass
from typing import Literal, get_args

from medi_core.errors import ConfigError

GradSampleMode = Literal["functorch", "hooks"]
AccountantKind = Literal["rdp", "prv"]

# delta defaults to DEFAULT_DELTA_FRACTION / N for N local examples. Publishing
# one randomly chosen record is already (0, 1/N)-DP, so a meaningful delta must
# stay well below 1/N; the default is ten times smaller.
DEFAULT_DELTA_FRACTION = 0.1


@dataclass
class PrivacyConfig:
    """DP-SGD settings of one site.

    Exactly one of ``target_epsilon`` and ``noise_multiplier`` is set when
    ``enabled`` is true. With ``target_epsilon`` the noise multiplier is
    calibrated so that the planned number of private steps (rounds x local
    steps) spends exactly that epsilon. The option strings are typed ``str``
    because OmegaConf structured configs reject ``Literal``; the accepted
    values are `GradSampleMode` and `AccountantKind`, checked on construction.
    """

    enabled: bool = False
    target_epsilon: float | None = None  # total epsilon over the planned run at this site
    noise_multiplier: float | None = None  # std of the Gaussian noise / max_grad_norm
    max_grad_norm: float = 1.0  # L2 bound of each example's gradient (clipping threshold C)
    delta: float | None = None  # None: DEFAULT_DELTA_FRACTION / number of local examples
    grad_sample_mode: str = "hooks"  # GradSampleMode; "hooks" always gets the contiguous-input fix
    noise_multiplicity: int = 1  # K noise/timestep draws averaged inside each example's loss
    accountant: str = "rdp"  # AccountantKind

    def __post_init__(self) -> None:
        if self.grad_sample_mode not in get_args(GradSampleMode):
            raise ConfigError(
                f"privacy.grad_sample_mode must be one of {list(get_args(GradSampleMode))}, "
                f"got {self.grad_sample_mode!r}; 'ghost' and 'ew' are not supported because "
                "noise multiplicity needs materialised per-sample gradients and 'ew' fails on "
                "embedding layers"
            )
        if self.accountant not in get_args(AccountantKind):
            raise ConfigError(
                f"privacy.accountant must be one of {list(get_args(AccountantKind))}, "
                f"got {self.accountant!r}"
            )
        if not (math.isfinite(self.max_grad_norm) and self.max_grad_norm > 0):
            raise ConfigError(f"privacy.max_grad_norm must be a positive number, got {self.max_grad_norm}")
        if isinstance(self.noise_multiplicity, bool) or int(self.noise_multiplicity) != self.noise_multiplicity:
            raise ConfigError(f"privacy.noise_multiplicity must be an integer, got {self.noise_multiplicity!r}")
        if self.noise_multiplicity < 1:
            raise ConfigError(f"privacy.noise_multiplicity must be at least 1, got {self.noise_multiplicity}")
        if self.delta is not None and not 0.0 < self.delta < 1.0:
            raise ConfigError(f"privacy.delta must be in (0, 1), got {self.delta}")
        if self.target_epsilon is not None and not (
            math.isfinite(self.target_epsilon) and self.target_epsilon > 0
        ):
            raise ConfigError(f"privacy.target_epsilon must be a positive number, got {self.target_epsilon}")
        if self.noise_multiplier is not None and not (
            math.isfinite(self.noise_multiplier) and self.noise_multiplier > 0
        ):
            raise ConfigError(f"privacy.noise_multiplier must be a positive number, got {self.noise_multiplier}")
        if self.enabled and (self.target_epsilon is None) == (self.noise_multiplier is None):
            raise ConfigError(
                "privacy is enabled, so set exactly one of privacy.target_epsilon (noise is calibrated "
                "over the planned steps) and privacy.noise_multiplier; got "
                f"target_epsilon={self.target_epsilon}, noise_multiplier={self.noise_multiplier}"
            )

    def resolve_delta(self, num_examples: int) -> float:
        """Return the configured delta, or the default DEFAULT_DELTA_FRACTION / num_examples."""
        if num_examples < 1:
            raise ConfigError(f"the number of local examples must be at least 1, got {num_examples}")
        if self.delta is None:
            return DEFAULT_DELTA_FRACTION / num_examples
        if self.delta >= 1.0 / num_examples:
            warnings.warn(
                f"privacy.delta={self.delta} is not below 1/N = {1.0 / num_examples:.3g} for "
                f"{num_examples} local examples, so the guarantee allows publishing a whole record; "
                "leave delta unset to use the default",
                stacklevel=2,
            )
        return self.delta


__all__ = ["DEFAULT_DELTA_FRACTION", "AccountantKind", "GradSampleMode", "PrivacyConfig"]
