"""Balance plan: how many synthetic patches each (site, class) cell needs to match its peers.

The server sees, per site, how many patches of each class it holds
(k-anonymised: a count under k arrives as "<k"). For every class a target
count per site is set by a policy, and each site's deficit is the target
minus what it has:

| policy | target of class c |
|---|---|
| ``max`` | the largest count of c at any site (match the largest site) |
| ``median`` | the median count of c over all sites, absent cells counting 0 |
| ``fixed`` | the same given number for every class |

A suppressed count "<k" is only known to lie in 1..k-1. The plan counts it as
k-1 when it sets targets (so a tiny site never lowers the bar) and as 1 when
it computes that site's deficit (so the site is never under-served). The
client knows its exact counts and generates ``target - exact count``, which
never exceeds the planned deficit.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Literal

from medi_core.errors import ConfigError

BalancePolicy = Literal["max", "median", "fixed"]
BALANCE_POLICIES: tuple[str, ...] = ("max", "median", "fixed")


@dataclass(frozen=True)
class Count:
    """A cell count, exact (``low == high``) or known only by its bounds.

    A k-anonymised count "<k" is ``Count(1, k - 1)``; summing cells sums the
    bounds, so a marginal over suppressed cells stays honest.
    """

    low: int
    high: int

    def __post_init__(self) -> None:
        if not 0 <= self.low <= self.high:
            raise ConfigError(f"invalid count bounds {self.low}..{self.high}")

    @classmethod
    def exact(cls, value: int) -> Count:
        return cls(int(value), int(value))

    @classmethod
    def below(cls, k: int) -> Count:
        """The suppressed count "<k": at least 1 (the cell exists), at most k - 1."""
        return cls(1, int(k) - 1)

    @property
    def is_exact(self) -> bool:
        return self.low == self.high

    def __add__(self, other: Count) -> Count:
        return Count(self.low + other.low, self.high + other.high)

    def __str__(self) -> str:
        if self.is_exact:
            return str(self.low)
        if self.low == 1:
            return f"<{self.high + 1}"
        return f"{self.low}..{self.high}"

    @classmethod
    def parse(cls, text: str) -> Count:
        """Inverse of `str`: ``"12"``, ``"<5"`` or ``"3..8"``."""
        text = text.strip()
        if text.startswith("<"):
            return cls.below(int(text[1:]))
        if ".." in text:
            low, high = text.split("..", 1)
            return cls(int(low), int(high))
        return cls.exact(int(text))


@dataclass
class BalancePlan:
    """Targets per class and the synthetic patches each (site, class) cell needs."""

    policy: str
    targets: dict[str, int]  # class -> target count per site
    deficits: dict[str, dict[str, int]] = field(default_factory=dict)  # site -> class -> patches to add
    cap_per_cell: int | None = None

    def quota(self, site: str) -> dict[str, int]:
        """Class -> target count for ``site``, for the cells that need synthetic patches."""
        return {c: self.targets[c] for c, n in self.deficits.get(site, {}).items() if n > 0}

    def total(self, site: str | None = None) -> int:
        sites = [site] if site is not None else list(self.deficits)
        return sum(sum(self.deficits.get(s, {}).values()) for s in sites)

    def to_dict(self) -> dict:
        return {
            "policy": self.policy,
            "targets": dict(self.targets),
            "deficits": {s: dict(cells) for s, cells in self.deficits.items()},
            "cap_per_cell": self.cap_per_cell,
        }

    def rows(self) -> Iterable[tuple[str, str, int]]:
        """(site, class, deficit) for every cell that needs patches, sorted."""
        for site in sorted(self.deficits):
            for cls in sorted(self.deficits[site]):
                if self.deficits[site][cls] > 0:
                    yield site, cls, self.deficits[site][cls]


def _target(policy: str, counts: list[int], fixed_target: int | None) -> int:
    if policy == "max":
        return max(counts)
    if policy == "median":
        # Round half up, so a median of 2.5 asks for 3 patches rather than banker's 2.
        return int(math.floor(statistics.median(counts) + 0.5))
    return int(fixed_target or 0)  # plan_balance checked that "fixed" comes with a target


def plan_balance(
    counts: Mapping[str, Mapping[str, Count | int]],
    *,
    classes: Iterable[str] | None = None,
    policy: BalancePolicy = "max",
    fixed_target: int | None = None,
    cap_per_cell: int | None = None,
) -> BalancePlan:
    """Compute the balance plan from per-site class counts.

    ``counts`` maps site -> class -> count (an int or a `Count`); a class a site
    lacks counts 0. ``classes`` defaults to every class seen at any site.
    ``cap_per_cell`` bounds the deficit of a single cell (synthesis cost).
    """
    if policy not in BALANCE_POLICIES:
        raise ConfigError(f"balance policy must be one of {list(BALANCE_POLICIES)}, got {policy!r}")
    if policy == "fixed" and (fixed_target is None or fixed_target < 0):
        raise ConfigError(f"balance policy 'fixed' needs a target count >= 0 per cell, got {fixed_target!r}")
    if cap_per_cell is not None and cap_per_cell < 0:
        raise ConfigError(f"the cap of synthetic patches per cell must be >= 0, got {cap_per_cell}")
    if not counts:
        raise ConfigError("cannot plan a balance without any site counts")
    cells = {site: {c: (n if isinstance(n, Count) else Count.exact(n)) for c, n in per.items()} for site, per in counts.items()}
    all_classes = sorted(set(classes) if classes is not None else {c for per in cells.values() for c in per})

    targets: dict[str, int] = {}
    deficits: dict[str, dict[str, int]] = {site: {} for site in cells}
    for cls in all_classes:
        uppers = [cells[site][cls].high if cls in cells[site] else 0 for site in cells]
        target = _target(policy, uppers, fixed_target)
        targets[cls] = target
        for site in cells:
            have = cells[site][cls].low if cls in cells[site] else 0
            need = max(0, target - have)
            if cap_per_cell is not None:
                need = min(need, cap_per_cell)
            deficits[site][cls] = need
    return BalancePlan(policy=policy, targets=targets, deficits=deficits, cap_per_cell=cap_per_cell)


def local_deficit(target: int, exact_count: int, *, cap_per_cell: int | None = None) -> int:
    """Patches a site generates for one cell, from the server's target and its own exact count."""
    need = max(0, int(target) - int(exact_count))
    return need if cap_per_cell is None else min(need, cap_per_cell)


__all__ = ["BALANCE_POLICIES", "BalancePlan", "BalancePolicy", "Count", "local_deficit", "plan_balance"]
