"""`medi-sim` when the balance plan requests no synthetic patch: no baselines, real and real+stain only."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from medi_server import superlink as sl

REPO = Path(__file__).resolve().parents[1]
BRCA = REPO.parent / "shared" / "data" / "patches" / "brca-m2c"
RUN_TIMEOUT = 600  # seconds; about 1 minute on 2 idle cores

pytestmark = pytest.mark.skipif(not (BRCA / "metadata.csv").is_file(), reason=f"BRCA-M2C patches not found in {BRCA}")


@pytest.fixture(scope="module")
def empty_plan_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, subprocess.CompletedProcess]:
    run_dir = tmp_path_factory.mktemp("medi-sim") / "nothing-requested"
    # A fixed target of 0 patches per cell leaves no cell short, so the plan requests nothing.
    overrides = [
        f"run_dir={run_dir}", "federation.balance_policy=fixed", "federation.balance_target=0",
        "federation.num_server_rounds=1", "federation.local_steps=2", "evaluation.seeds=[0]",
        "evaluation.encoder.epochs=2",
    ]
    result = subprocess.run(
        [sys.executable, "-m", "medi_sim.cli", *overrides], cwd=REPO, env=sl.flower_environment(),
        capture_output=True, text=True, timeout=RUN_TIMEOUT, check=False,
    )
    return run_dir, result


@pytest.mark.slow
def test_empty_plan_run_succeeds(empty_plan_run):
    _, result = empty_plan_run
    assert result.returncode == 0, result.stderr[-3000:]


@pytest.mark.slow
def test_empty_plan_writes_no_synthetic_patches(empty_plan_run):
    run_dir, _ = empty_plan_run
    plan = json.loads((run_dir / "federation" / "balance_plan.json").read_text())
    assert not any(need for per_class in plan["deficits"].values() for need in per_class.values())
    assert not list((run_dir / "sites").rglob("synthetic/**/*.png"))
    assert not (run_dir / "baselines").exists()


@pytest.mark.slow
def test_empty_plan_report_explains_and_compares_real_only(empty_plan_run):
    run_dir, _ = empty_plan_run
    summary = (run_dir / "report" / "summary.md").read_text()
    assert "requested none" in summary
    table = pd.read_csv(run_dir / "report" / "downstream_summary.csv")
    assert set(table["configuration"]) == {"real", "real+stain"}
