"""A site's floor for the handshake's k-anonymity: `medi-client start --min-k`, node config, rejection."""

from __future__ import annotations

import logging

import pytest
from flwr.app import Message

from fed_data import write_site_manifests
from fed_inprocess import InProcessGrid
from medi_client.cli import build_parser
from medi_client.client_app import app as client_app
from medi_client.site import SiteConfig
from medi_client.start import node_config
from medi_core import protocol as P
from medi_core.errors import ConfigError
from medi_server.handshake import request_summaries
from medi_server.settings import FederationSettings

SITES = {11: "A7", 22: "AC"}


def _start_args(tmp_path, *extra: str):
    return build_parser().parse_args([
        "start", "--superlink", "127.0.0.1:9092", "--insecure", "--data", str(tmp_path),
        "--site-id", "A7", "--output-dir", str(tmp_path / "out"), *extra,
    ])


def test_start_min_k_default(tmp_path):
    assert node_config(_start_args(tmp_path))[P.NODE_MIN_K] == 5


def test_start_min_k_option(tmp_path):
    assert node_config(_start_args(tmp_path, "--min-k", "11"))[P.NODE_MIN_K] == 11


def test_start_rejects_zero_min_k(tmp_path):
    with pytest.raises(ConfigError, match="--min-k must be an integer >= 1, got 0"):
        node_config(_start_args(tmp_path, "--min-k", "0"))


def test_site_config_min_k_absent_means_one(tmp_path):
    site = SiteConfig.from_node_config({P.NODE_DATA_PATH: "x.csv", P.NODE_SITE_ID: "A7", P.NODE_OUTPUT_DIR: "out"})
    assert site.min_k == 1


def test_site_config_rejects_text_min_k():
    with pytest.raises(ConfigError, match="node config min-k='5' is invalid"):
        SiteConfig.from_node_config({P.NODE_DATA_PATH: "x.csv", P.NODE_SITE_ID: "A7", P.NODE_OUTPUT_DIR: "out",
                                     P.NODE_MIN_K: "5"})


@pytest.fixture(scope="module")
def manifests(tmp_path_factory):
    root = tmp_path_factory.mktemp("min-k")
    return root, write_site_manifests(root / "data", list(SITES.values()))


def _handshake(manifests, min_k: dict[str, int], k: int) -> tuple[dict, list[Message]]:
    root, paths = manifests
    nodes = {
        node: {P.NODE_DATA_PATH: str(paths[site]), P.NODE_SITE_ID: site, P.NODE_OUTPUT_DIR: str(root / site),
               **({P.NODE_MIN_K: min_k[site]} if site in min_k else {})}
        for node, site in SITES.items()
    }
    settings = FederationSettings(k_anonymity=k, min_clients=1)
    replies: list[Message] = []

    def record(node: int, reply: Message) -> Message:
        replies.append(reply)
        return reply

    grid = InProcessGrid(client_app, nodes, settings.to_run_config(), reply_hook=record)
    return request_summaries(grid, list(nodes), settings), replies


def test_handshake_leaves_out_site_below_floor(manifests):
    sites, _ = _handshake(manifests, {"A7": 10}, k=5)
    assert sorted(info.site_id for info in sites.values()) == ["AC"]


def test_handshake_accepts_k_at_floor(manifests):
    sites, _ = _handshake(manifests, {"A7": 5}, k=5)
    assert sorted(info.site_id for info in sites.values()) == ["A7", "AC"]


def test_handshake_rejection_reason_sent(manifests):
    _, replies = _handshake(manifests, {"A7": 10}, k=5)
    errors = [r.error for r in replies if r.has_error()]
    assert [e.code for e in errors] == [P.DECLINED_ERROR_CODE]
    assert errors[0].reason == (
        "site A7 rejects the summary request: k-anonymity 5 is below this site's min-k 10; "
        "set the run config key k-anonymity to at least 10"
    )


def test_handshake_rejection_logged(manifests, caplog):
    with caplog.at_level(logging.ERROR, logger="medi_server.handshake"):
        _handshake(manifests, {"A7": 10}, k=5)
    assert "handshake: node 11 declined the summary request and is left out: site A7 rejects" in caplog.text
