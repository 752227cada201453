"""Privacy accountant of one site, persisted on the site's disk, with budget checks.

The accountant records every private step as ``(noise_multiplier, sample_rate,
steps)`` (the Poisson-subsampled Gaussian mechanism of DP-SGD) and converts the
history to epsilon at a fixed delta with Opacus's RDP or PRV accountant. Its
state lives in one JSON file that is rewritten atomically after every step, so
a restarted client continues from the epsilon already spent instead of zero.
"""

from __future__ import annotations

import json
import logging
import math
import os
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from opacus.accountants import create_accountant

from medi_core.errors import PrivacyBudgetExceeded, PrivacyError
from medi_core.privacy.config import AccountantKind

logger = logging.getLogger(__name__)

STATE_FORMAT_VERSION = 1
# Bisection on the noise multiplier stops when the bracket is this narrow
# relative to its upper end; the upper end is returned, so epsilon stays <= target.
CALIBRATION_RELATIVE_TOLERANCE = 1e-4
# Noise multipliers above this are treated as "no useful training possible".
MAX_NOISE_MULTIPLIER = 1e4

HistoryEntry = tuple[float, float, int]  # (noise_multiplier, sample_rate, steps)


def epsilon_of(history: Sequence[HistoryEntry], *, delta: float, kind: AccountantKind) -> float:
    """Return the epsilon spent by a step history at ``delta``; 0.0 for an empty history."""
    entries = [(float(s), float(q), int(n)) for s, q, n in history if int(n) > 0]
    if not entries:
        return 0.0
    accountant = create_accountant(mechanism=kind)
    accountant.history = entries
    return float(accountant.get_epsilon(delta=delta))


def calibrate_noise_multiplier(
    *,
    target_epsilon: float,
    delta: float,
    sample_rate: float,
    num_steps: int,
    history: Sequence[HistoryEntry] = (),
    kind: AccountantKind = "rdp",
) -> float:
    """Return the smallest noise multiplier (to a relative 1e-4) that keeps epsilon <= target.

    ``history`` is what the site already spent; the returned multiplier is for
    the ``num_steps`` steps still planned, so a resumed run still ends at
    ``target_epsilon``. Raises `PrivacyBudgetExceeded` when the history alone
    already reaches the target.
    """
    if num_steps < 1:
        raise PrivacyError(f"cannot calibrate noise for {num_steps} planned steps; plan at least one step")
    spent = epsilon_of(history, delta=delta, kind=kind)
    if spent >= target_epsilon:
        raise PrivacyBudgetExceeded(
            f"this site already spent epsilon={spent:.4g} of its target {target_epsilon:.4g} "
            f"(delta={delta:.3g}); no noise level makes further steps fit the target"
        )

    def total(sigma: float) -> float:
        return epsilon_of([*history, (sigma, sample_rate, num_steps)], delta=delta, kind=kind)

    low, high = 0.0, 1.0
    while total(high) > target_epsilon:
        low, high = high, 2.0 * high
        if high > MAX_NOISE_MULTIPLIER:
            raise PrivacyBudgetExceeded(
                f"target epsilon {target_epsilon:.4g} over {num_steps} steps at sample rate "
                f"{sample_rate:.4g} needs a noise multiplier above {MAX_NOISE_MULTIPLIER:g}; "
                "raise the target epsilon, plan fewer steps or use a smaller batch"
            )
    while high - low > CALIBRATION_RELATIVE_TOLERANCE * high:
        middle = 0.5 * (low + high)
        if total(middle) > target_epsilon:
            low = middle
        else:
            high = middle
    return high


class SiteAccountant:
    """Epsilon bookkeeping of one site, saved to ``state_path`` after every change.

    The JSON file stores the accountant kind, delta, the step history and one
    entry per finished round. ``delta`` is fixed when the file is created: a
    later request for another delta raises `PrivacyError`, because epsilons at
    different deltas cannot be added up.
    """

    def __init__(
        self,
        *,
        kind: AccountantKind,
        delta: float,
        state_path: str | os.PathLike[str] | None,
        site: str | None = None,
    ) -> None:
        if not 0.0 < delta < 1.0:
            raise PrivacyError(f"delta must be in (0, 1), got {delta}")
        self.kind: AccountantKind = kind
        self.delta = float(delta)
        self.state_path = Path(state_path) if state_path is not None else None
        self.site = site
        self.history: list[HistoryEntry] = []
        self.rounds: list[dict[str, Any]] = []
        self.calibration: dict[str, float] | None = None

    # -- persistence -----------------------------------------------------------

    @classmethod
    def load_or_create(
        cls,
        state_path: str | os.PathLike[str] | None,
        *,
        kind: AccountantKind,
        delta: float,
        site: str | None = None,
    ) -> SiteAccountant:
        """Load the accountant stored at ``state_path``, or start an empty one there."""
        accountant = cls(kind=kind, delta=delta, state_path=state_path, site=site)
        if accountant.state_path is None or not accountant.state_path.exists():
            if accountant.state_path is None:
                logger.warning("site %s: privacy accountant is not persisted (no state path)", site)
            return accountant
        try:
            state = json.loads(accountant.state_path.read_text())
        except (OSError, json.JSONDecodeError) as err:
            raise PrivacyError(
                f"site {site}: cannot read the privacy accountant state {accountant.state_path} ({err}); "
                "restore it from a backup. Deleting it would reset this site's spent epsilon to 0"
            ) from err
        accountant.load_state_dict(state)
        logger.info(
            "site %s: loaded privacy accountant from %s: %d steps, epsilon %.4g at delta %.3g",
            site, accountant.state_path, accountant.steps, accountant.epsilon(), accountant.delta,
        )
        return accountant

    def state_dict(self) -> dict[str, Any]:
        return {
            "format_version": STATE_FORMAT_VERSION,
            "mechanism": self.kind,
            "delta": self.delta,
            "site": self.site,
            "history": [list(entry) for entry in self.history],
            "rounds": list(self.rounds),
            "calibration": self.calibration,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        where = self.state_path or "the given state"
        try:
            mechanism = state["mechanism"]
            delta = float(state["delta"])
            history = [(float(s), float(q), int(n)) for s, q, n in state["history"]]
        except (KeyError, TypeError, ValueError) as err:
            raise PrivacyError(f"site {self.site}: privacy accountant state {where} is malformed ({err})") from err
        if mechanism != self.kind:
            raise PrivacyError(
                f"site {self.site}: the accountant state {where} uses {mechanism!r} but the config "
                f"asks for {self.kind!r}; set privacy.accountant={mechanism!r} to keep this budget"
            )
        if not math.isclose(delta, self.delta, rel_tol=1e-9):
            raise PrivacyError(
                f"site {self.site}: the accountant state {where} was created with delta={delta:.6g} "
                f"but the config asks for delta={self.delta:.6g}; set privacy.delta={delta!r} "
                "(the default delta changes with the number of local examples)"
            )
        self.history = history
        self.rounds = list(state.get("rounds", []))
        self.calibration = state.get("calibration")

    def save(self) -> None:
        """Write the state atomically (temporary file, then rename); no-op without a path."""
        if self.state_path is None:
            return
        self.state_path.parent.mkdir(parents=True, exist_ok=True)
        text = json.dumps(self.state_dict(), indent=2)
        handle, tmp_name = tempfile.mkstemp(dir=self.state_path.parent, prefix=".accountant-", suffix=".tmp")
        try:
            with os.fdopen(handle, "w") as tmp:
                tmp.write(text)
                tmp.flush()
                os.fsync(tmp.fileno())
            os.replace(tmp_name, self.state_path)
        except BaseException:
            Path(tmp_name).unlink(missing_ok=True)
            raise

    # -- accounting --------------------------------------------------------------

    @property
    def steps(self) -> int:
        """Number of private steps recorded so far."""
        return sum(n for _, _, n in self.history)

    def epsilon(self) -> float:
        """Epsilon spent so far at this accountant's delta."""
        return epsilon_of(self.history, delta=self.delta, kind=self.kind)

    def projected_epsilon(self, *, noise_multiplier: float, sample_rate: float, num_steps: int) -> float:
        """Epsilon after ``num_steps`` more steps with these parameters."""
        return epsilon_of(
            [*self.history, (noise_multiplier, sample_rate, num_steps)], delta=self.delta, kind=self.kind
        )

    def record_step(self, *, noise_multiplier: float, sample_rate: float) -> None:
        """Add one private step to the history and save the state."""
        if self.history and self.history[-1][:2] == (noise_multiplier, sample_rate):
            sigma, rate, count = self.history[-1]
            self.history[-1] = (sigma, rate, count + 1)
        else:
            self.history.append((float(noise_multiplier), float(sample_rate), 1))
        self.save()

    def record_round(self, round_id: int | str | None, *, steps: int, epsilon: float) -> None:
        """Append a per-round summary (for reports) and save the state."""
        self.rounds.append({"round": round_id, "steps": int(steps), "epsilon": float(epsilon)})
        self.save()

    def check_budget(
        self,
        *,
        noise_multiplier: float,
        sample_rate: float,
        num_steps: int,
        max_epsilon: float | None,
        round_id: int | str | None = None,
    ) -> float:
        """Return the epsilon after ``num_steps`` more steps; raise if it would exceed ``max_epsilon``."""
        projected = self.projected_epsilon(
            noise_multiplier=noise_multiplier, sample_rate=sample_rate, num_steps=num_steps
        )
        if max_epsilon is not None and projected > max_epsilon:
            raise PrivacyBudgetExceeded(
                f"site {self.site}, round {round_id}: training {num_steps} more steps would raise "
                f"epsilon from {self.epsilon():.4g} to {projected:.4g} (delta={self.delta:.3g}), above "
                f"this site's maximum {max_epsilon:.4g}; the site does not train this round. Raise "
                "max-epsilon in the node config only if the data owner agrees"
            )
        return projected


__all__ = ["SiteAccountant", "calibrate_noise_multiplier", "epsilon_of"]
