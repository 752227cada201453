"""End to end on 127.0.0.1: a real SuperLink (TLS, SuperNode authentication) and two SuperNodes.

Two rounds of the ``tiny`` preset on real BRCA-M2C patches split by tissue
source site (A7 and AC), then synthesis of each site's planned cells.
"""

from __future__ import annotations

import csv
import json

import pytest

from fed_data import write_site_manifests
from fed_loopback import new_loopback
from medi_core.artifact import MediSampler

SITES = ("A7", "AC")
OVERRIDES = {
    "num-server-rounds": 2,
    "local-steps": 2,
    "batch-size": 4,
    "sample-steps": 2,
    "grid-steps": 2,
    "grid-every": 2,
    "max-synthetic-per-cell": 2,
    "transfer-precision": "float16",
}


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("loopback")
    manifests = write_site_manifests(root / "data", SITES)
    federation = new_loopback(root, SITES)
    try:
        server = federation.start_server(SITES, OVERRIDES)
        federation.wait_registered(len(SITES))
        for site in SITES:
            federation.start_client(site, manifests[site])
        code = server.wait(timeout=480)
    finally:
        federation.stop()
    return federation, code


@pytest.mark.slow
def test_loopback_server_exits_zero(finished_run):
    federation, code = finished_run
    assert code == 0, (federation.root / "medi-server.log").read_text()[-3000:]


@pytest.mark.slow
def test_loopback_writes_both_rounds(finished_run):
    federation, _ = finished_run
    rows = list(csv.DictReader((federation.run_dir / "metrics" / "sites.csv").open()))
    assert sorted((r["round"], r["site"], r["accepted"]) for r in rows) == [
        ("1", "A7", "True"), ("1", "AC", "True"), ("2", "A7", "True"), ("2", "AC", "True"),
    ]


@pytest.mark.slow
def test_loopback_half_precision_halves_bytes(finished_run):
    federation, _ = finished_run
    rows = list(csv.DictReader((federation.run_dir / "metrics" / "sites.csv").open()))
    sampler = MediSampler.from_pretrained(federation.run_dir / "sampler")
    float_values = sum(v.numel() for v in sampler.model.state_dict().values() if v.is_floating_point())
    # fp16 on the wire: 2 bytes per value plus Flower's small per-array header.
    assert 2 * float_values <= int(rows[0]["bytes_sent"]) < 2 * float_values * 1.05


@pytest.mark.slow
def test_loopback_sampler_reloads_with_card(finished_run):
    federation, _ = finished_run
    sampler = MediSampler.from_pretrained(federation.run_dir / "sampler")
    assert sampler.card["sites"] == list(SITES)
    assert sampler.card["rounds"] == 2


@pytest.mark.slow
def test_loopback_checkpoint_and_grid_written(finished_run):
    federation, _ = finished_run
    assert (federation.run_dir / "checkpoints" / "round-0002" / "state.json").is_file()
    assert (federation.run_dir / "samples" / "round-0002.png").is_file()


@pytest.mark.slow
@pytest.mark.parametrize("site", SITES)
def test_loopback_site_writes_planned_patches(finished_run, site):
    federation, _ = finished_run
    report = json.loads((federation.run_dir / "report.json").read_text())
    planned = report["balance_plan"]["deficits"][site]
    expected = {cls: n for cls, n in planned.items() if n > 0}  # deficits already capped at 2 per cell
    manifest = federation.site_dir(site) / "synthetic" / "medi" / "manifest.csv"
    rows = list(csv.DictReader(manifest.open()))
    written = {}
    for row in rows:
        written[row["class"]] = written.get(row["class"], 0) + 1
    assert written == expected
    assert all((manifest.parent / row["path"]).is_file() for row in rows)
    assert {row["site"] for row in rows} == {site}


@pytest.mark.slow
def test_loopback_report_counts_match_sites(finished_run):
    federation, _ = finished_run
    report = json.loads((federation.run_dir / "report.json").read_text())
    for site in SITES:
        rows = list(csv.DictReader((federation.site_dir(site) / "synthetic" / "medi" / "manifest.csv").open()))
        assert report["synthesis"][site]["written"] == len(rows)
