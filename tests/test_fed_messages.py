"""Every message a site sends during a whole run, inspected: no pixels, no patches, no ids.

The real ServerApp logic and the real ClientApp handlers run in one process
through an in-process grid that records each reply before the server receives
it. Three BRCA-M2C sites take part; in round 2 site AC's update is replaced
by NaN, which the server must reject, log, and survive with the other two.
"""

from __future__ import annotations

import json
import logging
import re

import numpy as np
import pandas as pd
import pytest
from flwr.app import Array, Context, Message, RecordDict

from fed_data import require_brca, write_site_manifests
from fed_inprocess import InProcessGrid
from medi_client.client_app import app as client_app
from medi_core.artifact import MediSampler
from medi_core import protocol as P
from medi_server.federation import run_federation
from medi_server.settings import FederationSettings

SITES = {11: "A7", 22: "AC", 33: "A8"}
NAN_SITE, NAN_ROUND = 22, "2"
MIN_IMAGE_SIDE = 16  # conv kernels are 1x1 or 3x3; a (..., C, H, W) array with H = W >= 16 is a picture
BARCODE = re.compile(r"TCGA-[A-Z0-9]{2}-[A-Z0-9]{4}")


def _poison(node: int, reply: Message) -> Message:
    """Replace the update of one site in one round by NaN, as a diverged client would send."""
    if node != NAN_SITE or reply.metadata.group_id != NAN_ROUND or reply.has_error():
        return reply
    record = reply.content.array_records[P.ARRAYS]
    for name in list(record):
        record[name] = Array(np.full(record[name].shape, np.nan, dtype=np.float32))
    return reply


@pytest.fixture(scope="module")
def recorded_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("messages")
    manifests = write_site_manifests(root / "data", list(SITES.values()))
    nodes = {
        node: {"data-path": str(manifests[site]), "site-id": site, "output-dir": str(root / site),
               "audit-log": str(root / site / "audit.jsonl")}
        for node, site in SITES.items()
    }
    settings = FederationSettings(
        run_dir=str(root / "run"), num_server_rounds=2, local_steps=1, batch_size=2, min_clients=2,
        grid_every=0, sample_steps=1, max_synthetic_per_cell=1,
    )
    sent: list[tuple[int, Message]] = []

    def record(node: int, reply: Message) -> Message:
        reply = _poison(node, reply)
        sent.append((node, reply))
        return reply

    grid = InProcessGrid(client_app, nodes, settings.to_run_config(), reply_hook=record)
    context = Context(run_id=1, node_id=0, node_config={}, state=RecordDict(), run_config=settings.to_run_config())
    handler = _ListHandler()
    logging.getLogger("medi_server").addHandler(handler)
    try:
        report = run_federation(grid, context)
    finally:
        logging.getLogger("medi_server").removeHandler(handler)
    return {"root": root, "sent": sent, "report": report, "log": handler.lines}


class _ListHandler(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(record.getMessage())


def _private_strings() -> set[str]:
    """Slide barcodes, patient ids and image file names of the sites' data."""
    table = pd.read_csv(require_brca() / "metadata.csv")
    values = set(table["slide_barcode"]) | set(table["patient"])
    values |= {name.rsplit("/", 1)[-1] for name in table["file"]}
    return {str(v) for v in values}


def _strings(message: Message) -> list[str]:
    texts = []
    for record in [*message.content.config_records.values(), *message.content.metric_records.values()]:
        for key, value in record.items():
            texts.append(str(key))
            texts.append(json.dumps(value, default=str))
    return texts


@pytest.mark.slow
def test_messages_every_site_replied_each_step(recorded_run):
    # handshake, two rounds and synthesis: four replies per site
    counts = {site: sum(1 for node, _ in recorded_run["sent"] if node == n) for n, site in SITES.items()}
    assert counts == {"A7": 4, "AC": 4, "A8": 4}


@pytest.mark.slow
def test_messages_carry_no_image_arrays(recorded_run):
    for _, message in recorded_run["sent"]:
        if message.has_error():
            continue
        for record in message.content.array_records.values():
            for name, array in record.items():
                shape = tuple(array.shape)
                looks_like_image = len(shape) >= 3 and shape[-1] == shape[-2] and shape[-1] >= MIN_IMAGE_SIDE
                assert not looks_like_image, f"{name} has image-like shape {shape}"
                assert array.dtype in ("float32", "float16"), f"{name} has dtype {array.dtype}"


@pytest.mark.slow
def test_messages_arrays_are_model_weights_only(recorded_run):
    model = MediSampler.from_pretrained(recorded_run["root"] / "A7" / "sampler" / "medi").model
    weight_names = {name for name, value in model.state_dict().items() if value.is_floating_point()}
    for _, message in recorded_run["sent"]:
        if message.has_error() or P.ARRAYS not in message.content.array_records:
            continue
        assert set(message.content.array_records[P.ARRAYS]) == weight_names


@pytest.mark.slow
def test_messages_carry_no_ids_or_file_names(recorded_run):
    private = _private_strings()
    for _, message in recorded_run["sent"]:
        if message.has_error():
            continue
        for text in _strings(message):
            assert not BARCODE.search(text), f"TCGA id in a reply: {text[:200]}"
            leaked = [p for p in private if p in text]
            assert not leaked, f"private value {leaked[:1]} in a reply"
            assert str(require_brca()) not in text, "a data path left the site"


@pytest.mark.slow
def test_messages_only_known_record_names(recorded_run):
    allowed = {P.ARRAYS, P.METRICS, P.SUMMARY}
    for _, message in recorded_run["sent"]:
        if not message.has_error():
            assert set(message.content.keys()) <= allowed


@pytest.mark.slow
def test_messages_nan_update_rejected_and_logged(recorded_run):
    assert any("round 2: rejected the update of site AC: non-finite" in line for line in recorded_run["log"])
    rows = [json.loads(line) for line in (recorded_run["root"] / "run" / "metrics" / "rounds.jsonl").read_text().splitlines()]
    assert [(r["round"], r["accepted"], r["rejected"]) for r in rows] == [(1, 3, 0), (2, 2, 1)]


@pytest.mark.slow
def test_messages_audit_log_lists_each_reply(recorded_run):
    lines = (recorded_run["root"] / "A7" / "audit.jsonl").read_text().splitlines()
    kinds = [json.loads(line)["message_type"] for line in lines]
    assert kinds == [P.MSG_SUMMARY, P.MSG_TRAIN, P.MSG_TRAIN, P.MSG_SYNTHESIZE]


MEMORISATION_KEYS = {"feature_space", "num_train", "synthetic", "holdout", "median_ratio", "close_fraction"}
DISTANCE_KEYS = {"count", "minimum", "p05", "median", "mean"}


def _memorisation_summaries(recorded_run) -> list[dict]:
    return [
        json.loads(message.content.config_records[P.SUMMARY][P.MEMORISATION_JSON])
        for _, message in recorded_run["sent"]
        if not message.has_error() and message.metadata.message_type == P.MSG_SYNTHESIZE
    ]


@pytest.mark.slow
def test_messages_memorisation_sent_by_each_site(recorded_run):
    assert len(_memorisation_summaries(recorded_run)) == len(SITES)


@pytest.mark.slow
def test_messages_memorisation_summary_keys_only(recorded_run):
    for summary in _memorisation_summaries(recorded_run):
        assert set(summary) == MEMORISATION_KEYS
        assert set(summary["synthetic"]) == DISTANCE_KEYS
        assert set(summary["holdout"]) == DISTANCE_KEYS


@pytest.mark.slow
def test_messages_memorisation_values_are_scalars(recorded_run):
    for summary in _memorisation_summaries(recorded_run):
        numbers = [summary["num_train"], summary["median_ratio"], summary["close_fraction"],
                   *summary["synthetic"].values(), *summary["holdout"].values()]
        assert all(isinstance(n, (int, float)) and not isinstance(n, bool) for n in numbers)
