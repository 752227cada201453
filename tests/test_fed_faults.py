"""Faults on a real loopback federation: a site killed mid-round, the coordinator killed and resumed.

Three sites (A7, AC, A8 of BRCA-M2C), ``min-clients = 2``, three rounds:

1. After round 1 is checkpointed, site A8's SuperNode is killed while round 2
   runs; the SuperLink reports it unavailable and round 2 completes with A7 and AC.
2. After round 2 is checkpointed, ``medi-server`` and its SuperLink are
   killed with SIGKILL in the middle of round 3; ``medi-server --resume``
   restarts them, the two remaining SuperNodes reconnect by themselves, and
   the run redoes only round 3.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from fed_data import write_site_manifests
from fed_loopback import new_loopback

SITES = ("A7", "AC", "A8")
OVERRIDES = {
    "num-server-rounds": 3,
    "local-steps": 1,
    "batch-size": 2,
    "min-clients": 2,
    "grid-every": 0,
    "synthesize": False,
    "sample-steps": 1,
}


def wait_for(path: Path, timeout: float, process=None) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists():
        if process is not None and process.poll() is not None:
            raise RuntimeError(f"process exited with code {process.returncode} before {path} appeared")
        if time.monotonic() > deadline:
            raise TimeoutError(f"{path} did not appear within {timeout:.0f} s")
        time.sleep(1.0)


@pytest.fixture(scope="module")
def faulty_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("faults")
    manifests = write_site_manifests(root / "data", SITES)
    federation = new_loopback(root, SITES)
    checkpoints = federation.run_dir / "checkpoints"
    try:
        server = federation.start_server(SITES, OVERRIDES)
        federation.wait_registered(len(SITES))
        for site in SITES:
            federation.start_client(site, manifests[site])
        wait_for(checkpoints / "round-0001" / "state.json", 420, server)
        federation.kill_client("A8")  # round 2 has just been sent out
        wait_for(checkpoints / "round-0002" / "state.json", 420, server)
        federation.crash_server()  # round 3 is in flight
        resumed = federation.start_server(SITES, OVERRIDES, resume=True)
        code = resumed.wait(timeout=420)
    finally:
        federation.stop()
    return federation, code


@pytest.mark.slow
def test_faults_resumed_run_exits_zero(faulty_run):
    federation, code = faulty_run
    assert code == 0, (federation.root / "medi-server-resume.log").read_text()[-3000:]


@pytest.mark.slow
def test_faults_each_round_completes_once(faulty_run):
    federation, _ = faulty_run
    rounds = [json.loads(line) for line in (federation.run_dir / "metrics" / "rounds.jsonl").read_text().splitlines()]
    assert [r["round"] for r in rounds] == [1, 2, 3]


@pytest.mark.slow
def test_faults_killed_site_left_out_of_round(faulty_run):
    federation, _ = faulty_run
    rounds = [json.loads(line) for line in (federation.run_dir / "metrics" / "rounds.jsonl").read_text().splitlines()]
    assert [r["accepted"] for r in rounds] == [3, 2, 2]


@pytest.mark.slow
def test_faults_resume_logs_last_round(faulty_run):
    federation, _ = faulty_run
    log = (federation.run_dir / "server.log").read_text()
    assert "after round 2 with sites ['A7', 'AC']" in log


@pytest.mark.slow
def test_faults_sampler_written_after_resume(faulty_run):
    federation, _ = faulty_run
    card = json.loads((federation.run_dir / "sampler" / "card.json").read_text())
    assert card["rounds"] == 3
