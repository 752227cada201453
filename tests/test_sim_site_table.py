"""Tests of how a simulated site finds its settings: the site table named in the run config."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from flwr.app import Context, RecordDict

from medi_client.site import SiteConfig
from medi_core.errors import ConfigError


def _context(node_config: dict, run_config: dict) -> Context:
    return Context(run_id=1, node_id=7, node_config=node_config, state=RecordDict(), run_config=run_config)


def _table(tmp_path: Path) -> Path:
    table = {
        str(i): {"data-path": str(tmp_path / f"{site}.csv"), "site-id": site, "output-dir": str(tmp_path / site),
                 "data-kind": "manifest", "max-epsilon": epsilon}
        for i, (site, epsilon) in enumerate([("A7", 0.0), ("AC", 4.0)])
    }
    path = tmp_path / "site-table.json"
    path.write_text(json.dumps(table))
    return path


def test_from_context_partition_reads_table(tmp_path: Path) -> None:
    context = _context({"partition-id": 1, "num-partitions": 2}, {"site-table": str(_table(tmp_path))})
    site = SiteConfig.from_context(context)
    assert site.site_id == "AC"
    assert site.max_epsilon == 4.0
    assert site.data_kind == "manifest"
    assert site.output_dir == tmp_path / "AC"


def test_from_context_deployment_unchanged(tmp_path: Path) -> None:
    node_config = {"data-path": str(tmp_path / "x.csv"), "site-id": "A8", "output-dir": str(tmp_path / "out")}
    site = SiteConfig.from_context(_context(node_config, {"site-table": str(_table(tmp_path))}))
    assert site.site_id == "A8"


def test_from_context_without_table(tmp_path: Path) -> None:
    context = _context({"partition-id": 0, "num-partitions": 2}, {"site-table": ""})
    with pytest.raises(ConfigError, match="run config sets no site-table"):
        SiteConfig.from_context(context)


def test_from_context_partition_count_mismatch(tmp_path: Path) -> None:
    context = _context({"partition-id": 0, "num-partitions": 3}, {"site-table": str(_table(tmp_path))})
    with pytest.raises(ConfigError, match="set num-supernodes to the number of sites"):
        SiteConfig.from_context(context)


def test_from_context_unreadable_table(tmp_path: Path) -> None:
    context = _context({"partition-id": 0, "num-partitions": 2}, {"site-table": str(tmp_path / "absent.json")})
    with pytest.raises(ConfigError, match="is unreadable"):
        SiteConfig.from_context(context)
