"""Update screening, Flower strategy aggregation of deltas, fp16 transfer and the server EMA."""

from __future__ import annotations

import logging

import numpy as np
import pytest
from flwr.app import ArrayRecord, ConfigRecord, Error, Message, MetricRecord, RecordDict
from flwr.supercore.task_identity import TaskIdentity

from medi_core import protocol as P
from medi_core import transfer
from medi_server.aggregation import GlobalEMA, aggregate_updates, screen_replies, to_numpy, to_record
from medi_server.settings import FederationSettings
from medi_server.strategy import build_strategy, load_strategy_state, strategy_state

GLOBAL = {"w": np.zeros(2, dtype=np.float32)}
SITES = {1: "A7", 2: "AC", 3: "A8"}


@pytest.fixture(autouse=True)
def task_identity():
    TaskIdentity.run_id, TaskIdentity.node_id, TaskIdentity.task_id = 1, 0, 0


def reply(node: int, delta: list[float], examples: float = 1.0, dtype=np.float32) -> Message:
    instruction = Message(RecordDict({P.CONFIG: ConfigRecord({})}), dst_node_id=node, message_type=P.MSG_TRAIN)
    content = RecordDict({
        P.ARRAYS: to_record({"w": np.array(delta, dtype=dtype)}),
        P.METRICS: MetricRecord({P.NUM_EXAMPLES: examples, P.TRAIN_LOSS: 0.5}),
    })
    return Message(content, reply_to=instruction)


def screen(replies, max_norm=0.0, server_round=3):
    return screen_replies(replies, global_weights=GLOBAL, server_round=server_round, sites=SITES, max_update_norm=max_norm)


def test_fedavg_weights_by_examples():
    accepted, _ = screen([reply(1, [4, 0], examples=1), reply(2, [0, 8], examples=3)])
    strategy = build_strategy(FederationSettings(strategy="fedavg"))
    # (1 * [4, 0] + 3 * [0, 8]) / 4 = [1, 6]
    np.testing.assert_allclose(aggregate_updates(strategy, 1, accepted, GLOBAL)["w"], [1.0, 6.0])


@pytest.mark.parametrize("name", ["fedavg", "fedprox"])
def test_delta_mean_equals_flower_fedavg_on_full_weights(name):
    """The fast path (mean delta added to w) against Flower's own FedAvg over w + delta_i."""
    rng = np.random.default_rng(1)
    global_weights = {"a": rng.normal(size=(8, 3)).astype(np.float32), "b": rng.normal(size=5).astype(np.float32)}
    deltas = [{k: rng.normal(0, 1e-2, v.shape).astype(np.float32) for k, v in global_weights.items()} for _ in range(3)]
    examples = [5.0, 1.0, 12.0]
    replies = []
    for node, (delta, n) in enumerate(zip(deltas, examples, strict=True), start=1):
        instruction = Message(RecordDict({P.CONFIG: ConfigRecord({})}), dst_node_id=node, message_type=P.MSG_TRAIN)
        content = RecordDict({P.ARRAYS: to_record(delta), P.METRICS: MetricRecord({P.NUM_EXAMPLES: n})})
        replies.append(Message(content, reply_to=instruction))
    accepted, _ = screen_replies(replies, global_weights=global_weights, server_round=1, sites=SITES, max_update_norm=0)
    ours = aggregate_updates(build_strategy(FederationSettings(strategy=name)), 1, accepted, global_weights)

    full = []
    for message, delta in zip(replies, deltas, strict=True):
        weights = {k: global_weights[k] + delta[k] for k in global_weights}
        full.append(Message(RecordDict({P.ARRAYS: to_record(weights), P.METRICS: message.content.metric_records[P.METRICS]}),
                            reply_to=Message(RecordDict({}), dst_node_id=message.metadata.src_node_id, message_type=P.MSG_TRAIN)))
    flower, _ = build_strategy(FederationSettings(strategy=name)).aggregate_train(1, full)
    for key, value in to_numpy(flower).items():
        np.testing.assert_allclose(ours[key], value, rtol=0, atol=1e-6)
    assert not np.array_equal(ours["a"], global_weights["a"])


def test_aggregate_keeps_global_weights_unchanged():
    global_weights = {"w": np.array([1.0, 2.0], dtype=np.float32)}
    accepted, _ = screen_replies([reply(1, [1, 1])], global_weights=global_weights, server_round=1, sites=SITES,
                                 max_update_norm=0)
    new = aggregate_updates(build_strategy(FederationSettings()), 1, accepted, global_weights)
    np.testing.assert_array_equal(new["w"], [2.0, 3.0])
    np.testing.assert_array_equal(global_weights["w"], [1.0, 2.0])


def test_screen_rejects_nan_update(caplog):
    with caplog.at_level(logging.WARNING, logger="medi_server.aggregation"):
        accepted, outcomes = screen([reply(1, [1, 1]), reply(2, [np.nan, 0])])
    assert [o.accepted for o in outcomes] == [True, False]
    assert len(accepted) == 1
    assert "round 3: rejected the update of site AC: non-finite" in caplog.text


def test_screen_rejects_update_over_norm(caplog):
    with caplog.at_level(logging.WARNING, logger="medi_server.aggregation"):
        _, outcomes = screen([reply(1, [3, 4]), reply(2, [6, 8])], max_norm=5.0)
    assert [o.accepted for o in outcomes] == [True, False]
    assert outcomes[1].norm == pytest.approx(10.0)
    assert "update norm 10 exceeds max-update-norm 5" in caplog.text


def test_screen_records_client_error():
    instruction = Message(RecordDict({}), dst_node_id=3, message_type=P.MSG_TRAIN)
    failed = Message(Error(code=0, reason="out of memory"), reply_to=instruction)
    _, outcomes = screen([failed])
    assert outcomes[0].reason == "client error: out of memory"


def test_screen_rejects_wrong_shape():
    _, outcomes = screen([reply(1, [1, 2, 3])])
    assert "has shape (3,), the model has (2,)" in outcomes[0].reason


def test_screen_rejects_zero_examples():
    _, outcomes = screen([reply(1, [1, 1], examples=0)])
    assert outcomes[0].reason.startswith("num-examples must be > 0")


def test_fp16_transfer_aggregate_error_bound():
    rng = np.random.default_rng(0)
    deltas = [rng.normal(0, 1e-3, 1000).astype(np.float32) for _ in range(3)]
    exact = np.mean(deltas, axis=0)
    replies = [reply(n, transfer.encode({"w": d}, "float16")["w"].tolist(), dtype=np.float16) for n, d in zip((1, 2, 3), deltas, strict=True)]
    global_weights = {"w": np.zeros(1000, dtype=np.float32)}
    accepted, _ = screen_replies(replies, global_weights=global_weights, server_round=1, sites=SITES, max_update_norm=0)
    aggregated = aggregate_updates(build_strategy(FederationSettings()), 1, accepted, global_weights)
    error = np.abs(aggregated["w"] - exact).max()
    assert error <= 2**-11 * np.abs(deltas).max()  # fp16 keeps 11 significant bits


def test_global_ema_warm_up_hand_computed():
    ema = GlobalEMA({"w": np.zeros(1, dtype=np.float32)}, decay=0.9)
    ema.update({"w": np.array([10.0], dtype=np.float32)})  # decay min(0.9, 1/10) = 0.1 -> 9
    assert ema.shadow["w"][0] == pytest.approx(9.0)
    ema.update({"w": np.array([10.0], dtype=np.float32)})  # decay 2/11 -> 9 * 2/11 + 10 * 9/11
    assert ema.shadow["w"][0] == pytest.approx(9 * 2 / 11 + 10 * 9 / 11)


def test_fedadam_state_round_trip():
    strategy = build_strategy(FederationSettings(strategy="fedadam"))
    strategy.current_arrays = {"w": np.zeros(2, dtype=np.float32)}
    accepted, _ = screen([reply(1, [1, 1]), reply(2, [1, 1])])
    new = aggregate_updates(strategy, 1, accepted, GLOBAL)
    assert np.all(new["w"] > 0)  # FedAdam moves along the mean delta
    saved = strategy_state(strategy)
    fresh = build_strategy(FederationSettings(strategy="fedadam"))
    load_strategy_state(fresh, saved)
    np.testing.assert_array_equal(fresh.v_t["w"], strategy.v_t["w"])
    assert sorted(saved) == ["m/w", "v/w"]


def test_fedprox_sends_proximal_mu():
    strategy = build_strategy(FederationSettings(strategy="fedprox", proximal_mu=0.25))
    assert strategy.proximal_mu == 0.25


def test_wire_record_has_fp16_arrays():
    record = to_record(transfer.encode({"w": np.ones((4, 4), dtype=np.float32)}, "float16"))
    assert isinstance(record, ArrayRecord)
    assert record["w"].dtype == "float16"
