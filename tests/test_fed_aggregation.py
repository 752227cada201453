"""Update screening, Flower strategy aggregation of deltas, fp16 transfer and the server EMA."""

from __future__ import annotations

import logging

import numpy as np
import pytest
from flwr.app import ArrayRecord, ConfigRecord, Error, Message, MetricRecord, RecordDict
from flwr.supercore.task_identity import TaskIdentity

from medi_core import protocol as P
from medi_core import transfer
from medi_server.aggregation import GlobalEMA, screen_replies, to_numpy, to_record
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
    arrays, _ = strategy.aggregate_train(1, accepted)
    # (1 * [4, 0] + 3 * [0, 8]) / 4 = [1, 6]
    np.testing.assert_allclose(to_numpy(arrays)["w"], [1.0, 6.0])


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
    arrays, _ = build_strategy(FederationSettings()).aggregate_train(1, accepted)
    error = np.abs(to_numpy(arrays)["w"] - exact).max()
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
    strategy.aggregate_train(1, accepted)
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
