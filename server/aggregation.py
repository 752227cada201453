"""What happens to client replies before and after Flower's strategy averages them.

1. `screen_replies` reads each reply's weight delta, rejects it with a
   logged reason (site, round) when it has no delta, a non-finite value or
   an L2 norm above the configured bound.
2. `aggregate_updates` forms the new global weights. For FedAvg and FedProx
   it adds the example-weighted mean of the deltas to the global weights,
   which is what Flower's FedAvg computes from full weights
   (``sum_i p_i (w + d_i) = w + sum_i p_i d_i`` with ``sum_i p_i = 1``) without
   rebuilding and re-serialising a full copy of the model per site. FedAdam
   keeps server moments, so it gets full weights (``w + d_i``) and runs
   Flower's own code. A test checks both paths against Flower's FedAvg.
3. `GlobalEMA` keeps the exponential moving average of the global weights
   over rounds; the sampler and the sample grids use it.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

import numpy as np
import torch
from flwr.app import ArrayRecord, Message, MetricRecord, RecordDict
from flwr.serverapp.strategy import FedAvg, FedProx, Strategy

from medi_core import protocol as P
from medi_core import transfer, wire

logger = logging.getLogger(__name__)


def to_numpy(record: ArrayRecord) -> dict[str, np.ndarray]:
    """Return read-only views of a record's arrays (`medi_core.wire.from_record`)."""
    return wire.from_record(record)


def to_record(arrays: Mapping[str, np.ndarray]) -> ArrayRecord:
    return wire.to_record(arrays)


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
    """Check every reply of a round; return the accepted ones (content unchanged: deltas) and all outcomes."""
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
        outcome.accepted = True
        accepted.append(msg)
    return accepted, outcomes


def _rejection_reason(
    record: ArrayRecord, global_weights: Mapping[str, np.ndarray], max_update_norm: float, outcome: ReplyOutcome
) -> str:
    try:
        delta = to_numpy(record)
        transfer.check_same_layout(delta, global_weights, what="weight delta")
    except (ValueError, TypeError) as err:
        return str(err)
    # The float64 norm of fp16 or fp32 values cannot overflow, so it is finite exactly when every value is.
    # Only a non-finite norm pays for the slower search for the offending array.
    outcome.norm = transfer.global_norm(delta)
    if not math.isfinite(outcome.norm):
        return f"non-finite values (NaN or inf) in array {transfer.first_non_finite(delta)!r}"
    if max_update_norm > 0 and outcome.norm > max_update_norm:
        return f"update norm {outcome.norm:.4g} exceeds max-update-norm {max_update_norm:.4g}"
    return ""


def aggregate_updates(
    strategy: Strategy, server_round: int, accepted: list[Message], global_weights: Mapping[str, np.ndarray]
) -> dict[str, np.ndarray]:
    """Return the new fp32 global weights formed from the accepted replies of `screen_replies`."""
    if not accepted:
        raise ValueError(f"round {server_round}: no accepted update to aggregate")
    deltas = [to_numpy(m.content.array_records[P.ARRAYS]) for m in accepted]
    if type(strategy) in (FedAvg, FedProx):
        examples = [float(m.content.metric_records[P.METRICS][P.NUM_EXAMPLES]) for m in accepted]
        total = sum(examples)
        new = transfer.weighted_sum(deltas, [n / total for n in examples])
        with torch.no_grad():
            for name, value in new.items():
                torch.from_numpy(value).add_(transfer.as_tensor(global_weights[name]))
        return new
    for message, delta in zip(accepted, deltas, strict=True):
        # The deltas stay readable: their views keep the replaced record's bytes alive.
        weights = transfer.apply_delta(global_weights, delta)
        metrics = MetricRecord(dict(message.content.metric_records[P.METRICS]))
        message.content = RecordDict({P.ARRAYS: to_record(weights), P.METRICS: metrics})
    aggregated, _ = strategy.aggregate_train(server_round, accepted)
    if aggregated is None:
        raise ValueError(f"round {server_round}: strategy {type(strategy).__name__} returned no weights")
    return transfer.decode(to_numpy(aggregated))


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
        with torch.no_grad():
            for name, value in weights.items():
                torch.from_numpy(self.shadow[name]).mul_(d).add_(transfer.as_tensor(value), alpha=1.0 - d)
        self.num_updates += 1
