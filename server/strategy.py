"""Build the aggregation strategy from the settings: Flower's FedAvg, FedProx or FedAdam.

The strategies come unchanged from ``flwr.serverapp.strategy`` (Flower 1.42).
MeDi adds what they lack around them, in `medi_server.aggregation`: update
screening before averaging and the EMA after it. FedProx only sends
``proximal-mu`` to the clients; the proximal term itself is added to the
local loss by the client's trainer (Li et al., 2020). FedAdam keeps server
optimiser moments, which `strategy_state` / `load_strategy_state` carry
through checkpoints so a resumed run continues the same trajectory.
"""

from __future__ import annotations

import logging

import numpy as np
from flwr.serverapp.strategy import FedAdam, FedAvg, FedProx, Strategy

from medi_core import protocol as P
from medi_server.settings import FederationSettings

logger = logging.getLogger(__name__)


def build_strategy(settings: FederationSettings) -> Strategy:
    """The Flower strategy named by ``settings.strategy``, wired to MeDi's record names."""
    common = dict(
        fraction_train=1.0,
        fraction_evaluate=0.0,  # MeDi has no federated evaluation round
        min_train_nodes=settings.min_clients,
        min_available_nodes=settings.min_clients,
        weighted_by_key=P.NUM_EXAMPLES,
        arrayrecord_key=P.ARRAYS,
        configrecord_key=P.CONFIG,
    )
    if settings.strategy == "fedavg":
        return FedAvg(**common)
    if settings.strategy == "fedprox":
        return FedProx(**common, proximal_mu=settings.proximal_mu)
    if settings.strategy == "fedadam":
        # eta_l is only reported by Flower; the clients' own lr drives local training.
        return FedAdam(**common, eta=settings.server_lr, eta_l=settings.lr, tau=settings.server_tau)
    raise ValueError(f"unknown strategy {settings.strategy!r}")  # FederationSettings validated it


def strategy_state(strategy: Strategy) -> dict[str, np.ndarray]:
    """Arrays a strategy keeps between rounds (FedAdam's moments), keyed ``m/<name>`` and ``v/<name>``."""
    state: dict[str, np.ndarray] = {}
    for prefix, moments in (("m", getattr(strategy, "m_t", None)), ("v", getattr(strategy, "v_t", None))):
        for name, value in (moments or {}).items():
            state[f"{prefix}/{name}"] = np.asarray(value, dtype=np.float32)
    return state


def load_strategy_state(strategy: Strategy, state: dict[str, np.ndarray]) -> None:
    """Restore what `strategy_state` saved; a no-op for stateless strategies."""
    if not state:
        return
    if not hasattr(strategy, "m_t"):
        logger.warning("checkpoint holds optimiser moments, but strategy %s has none; ignoring them", type(strategy).__name__)
        return
    strategy.m_t = {k[2:]: v for k, v in state.items() if k.startswith("m/")} or None
    strategy.v_t = {k[2:]: v for k, v in state.items() if k.startswith("v/")} or None
