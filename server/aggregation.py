"""What happens to client replies before and after Flower's strategy averages them.

1. `screen_replies` decodes each reply's weight delta to fp32, rejects it
   with a logged reason (site, round) when it has no delta, a non-finite value
   or an L2 norm above the configured bound, and turns accepted deltas back
   into full fp32 weights (``w_global + delta``) so Flower's FedAvg, FedProx
   and FedAdam aggregate them unchanged.
2. `GlobalEMA` keeps the exponential moving average of the global weights
   over rounds; the sampler and the sample grids use it.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

import numpy as np
from flwr.app import Array, ArrayRecord, Message, MetricRecord, RecordDict

from medi_core import protocol as P
from medi_core import transfer

logger = logging.getLogger(__name__)


def to_numpy(record: ArrayRecord) -> dict[str, np.ndarray]:
    return {name: array.numpy() for name, array in record.items()}


def to_record(arrays: Mapping[str, np.ndarray]) -> ArrayRecord:
    return ArrayRecord({name: Array(np.ascontiguousarray(a)) for name, a in arrays.items()})


@dataclass
class ReplyOutcome:
    """What the screen decided about one reply, with the numbers the metrics log needs."""

    node_id: int
    site: str
    accepted: bool
    reason: str = ""
    norm: float = float("nan")
    bytes_received: int = 0
    metrics: dict[str, float] = field(default_factory=dict)


def screen_replies(
    replies: Iterable[Message],
    *,
    global_weights: Mapping[str, np.ndarray],
    server_round: int,
    sites: Mapping[int, str],
    max_update_norm: float,
) -> tuple[list[Message], list[ReplyOutcome]]:
    """Check every reply of a round; return the accepted ones (content replaced by full fp32 weights) and all outcomes."""
    accepted: list[Message] = []
    outcomes: list[ReplyOutcome] = []
    for msg in replies:
        node = msg.metadata.src_node_id
        site = sites.get(node, f"node {node}")
        outcome = ReplyOutcome(node_id=node, site=site, accepted=False)
        outcomes.append(outcome)
        if msg.has_error() and msg.error.code == P.DECLINED_ERROR_CODE:
            outcome.reason = f"declined: {msg.error.reason}"
            logger.warning("round %d: site %s declined to train and is left out of this round: %s",
                           server_round, site, msg.error.reason)
            continue
        if msg.has_error():
            outcome.reason = f"client error: {msg.error.reason}"
            logger.warning("round %d: site %s failed and is left out of this round: %s", server_round, site, msg.error.reason)
            continue
        content = msg.content
        if P.ARRAYS not in content.array_records or P.METRICS not in content.metric_records:
            outcome.reason = f"reply lacks the {P.ARRAYS!r} or {P.METRICS!r} record"
            logger.warning("round %d: rejected the update of site %s: %s", server_round, site, outcome.reason)
            continue
        record = content.array_records[P.ARRAYS]
        outcome.bytes_received = int(record.count_bytes())
        outcome.metrics = {k: float(v) for k, v in content.metric_records[P.METRICS].items() if isinstance(v, (int, float))}
        reason = _rejection_reason(record, global_weights, max_update_norm, outcome)
        if reason:
            outcome.reason = reason
            logger.warning("round %d: rejected the update of site %s: %s", server_round, site, reason)
            continue
        if outcome.metrics.get(P.NUM_EXAMPLES, 0) <= 0:
            outcome.reason = f"{P.NUM_EXAMPLES} must be > 0, got {outcome.metrics.get(P.NUM_EXAMPLES)}"
            logger.warning("round %d: rejected the update of site %s: %s", server_round, site, outcome.reason)
            continue
        weights = transfer.apply_delta(global_weights, transfer.decode(to_numpy(record)))
        msg.content = RecordDict({P.ARRAYS: to_record(weights), P.METRICS: MetricRecord(dict(content.metric_records[P.METRICS]))})
        outcome.accepted = True
        accepted.append(msg)
    return accepted, outcomes


def _rejection_reason(
    record: ArrayRecord, global_weights: Mapping[str, np.ndarray], max_update_norm: float, outcome: ReplyOutcome
) -> str:
    try:
        delta = transfer.decode(to_numpy(record))
        transfer.check_same_layout(delta, global_weights, what="weight delta")
    except (ValueError, TypeError) as err:
        return str(err)
    bad = transfer.first_non_finite(delta)
    if bad is not None:
        return f"non-finite values (NaN or inf) in array {bad!r}"
    outcome.norm = transfer.global_norm(delta)
    if max_update_norm > 0 and outcome.norm > max_update_norm:
        return f"update norm {outcome.norm:.4g} exceeds max-update-norm {max_update_norm:.4g}"
    return ""


class GlobalEMA:
    """EMA of the global weights across rounds: ``e = d * e + (1 - d) * w``.

    The decay warms up as ``min(d, (1 + n) / (10 + n))`` after n updates (the
    same rule as the local `medi_core.ema.EMA`), so a run of a few rounds is
    not dominated by the random initial weights.
    """

    def __init__(self, weights: Mapping[str, np.ndarray], decay: float, num_updates: int = 0) -> None:
        self.decay = decay
        self.num_updates = num_updates
        self.shadow = {name: np.array(a, dtype=np.float32, copy=True) for name, a in weights.items()}

    def current_decay(self) -> float:
        n = self.num_updates
        return min(self.decay, (1 + n) / (10 + n))

    def update(self, weights: Mapping[str, np.ndarray]) -> None:
        d = self.current_decay()
        for name, value in weights.items():
            shadow = self.shadow[name]
            shadow *= d
            shadow += (1.0 - d) * value.astype(np.float32, copy=False)
        self.num_updates += 1
