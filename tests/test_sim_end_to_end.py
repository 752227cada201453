"""End-to-end runs of ``medi-sim`` on the real BRCA-M2C patches split by TSS, and its clean-up on Ctrl-C."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
import yaml

from medi_server import superlink as sl

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
BRCA = DATA / "patches" / "brca-m2c"
CONFIGURATIONS = {"real", "real+stain", "real+cls-only", "real+medi-fed", "real+medi-central"}
RUN_TIMEOUT = 900  # seconds; the shortened run below took 127 s on 2 cores shared with other jobs
# The default quick preset trains 10 rounds x 10 local steps (228 s on 2 cores). The test checks
# the pipeline, not sample quality, so it trains 3 rounds x 4 local steps; everything else is the default.
SHORT_TRAINING = ("federation.num_server_rounds=3", "federation.local_steps=4")

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not (BRCA / "metadata.csv").is_file(), reason=f"real BRCA-M2C patches not found at {BRCA}"),
]


def _medi_sim(*overrides: str) -> list[str]:
    return [sys.executable, "-m", "medi_sim.cli", *overrides]


def processes_using(flwr_home: Path) -> list[int]:
    """Pids of live processes whose environment names ``flwr_home`` (Flower and Ray processes of one run)."""
    marker = f"FLWR_HOME={flwr_home}".encode()
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            environ = (entry / "environ").read_bytes()
            state = (entry / "stat").read_text().rsplit(") ", 1)[1][0]
        except OSError:
            continue
        if marker in environ.split(b"\0") and state != "Z":
            found.append(int(entry.name))
    return found


@pytest.fixture(scope="module")
def brca_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, subprocess.CompletedProcess]:
    run_dir = tmp_path_factory.mktemp("medi-sim") / "brca"
    result = subprocess.run(
        _medi_sim(f"run_dir={run_dir}", f"data.path={BRCA}", *SHORT_TRAINING),
        env=sl.flower_environment(), capture_output=True, text=True, timeout=RUN_TIMEOUT, check=False,
    )
    return run_dir, result


def test_run_succeeds(brca_run: tuple[Path, subprocess.CompletedProcess]) -> None:
    run_dir, result = brca_run
    assert result.returncode == 0, result.stderr[-3000:]


def test_report_has_all_configurations(brca_run: tuple[Path, subprocess.CompletedProcess]) -> None:
    run_dir, _ = brca_run
    summary = pd.read_csv(run_dir / "report" / "downstream_summary.csv")
    assert set(summary["configuration"]) == CONFIGURATIONS
    assert set(summary[summary["site"] != "(all)"]["site"]) == {"OL", "PE", "S3", "WT", "XX"}


def test_synthesis_fills_ac_gaps(brca_run: tuple[Path, subprocess.CompletedProcess]) -> None:
    run_dir, _ = brca_run
    table = pd.read_csv(run_dir / "report" / "synthesis_counts.csv")
    ac = table[(table["synthetic"] == "medi-fed") & (table["site"] == "AC")].set_index("class")["count"]
    # AC has no lymphocyte and 1 tumour patch; the quick preset caps each cell at 8 patches.
    assert ac["lymphocyte"] == 8
    assert ac["tumor_epithelial"] == 8


def test_baselines_fill_same_cells(brca_run: tuple[Path, subprocess.CompletedProcess]) -> None:
    run_dir, _ = brca_run
    table = pd.read_csv(run_dir / "report" / "synthesis_counts.csv")
    cells = {name: set(zip(part["site"], part["class"], part["count"])) for name, part in table.groupby("synthetic")}
    assert cells["cls-only"] == cells["medi-fed"]
    assert cells["medi-central"] == cells["medi-fed"]


def test_baselines_share_noise_seeds(brca_run: tuple[Path, subprocess.CompletedProcess]) -> None:
    run_dir, _ = brca_run
    federated = pd.read_csv(run_dir / "sites" / "AC" / "output" / "synthetic" / "medi" / "manifest.csv")
    central = pd.read_csv(run_dir / "baselines" / "medi-central" / "synthetic" / "manifest.csv")
    central = central[central["site"] == "AC"]
    assert sorted(federated["seed"]) == sorted(central["seed"])


def test_report_files_written(brca_run: tuple[Path, subprocess.CompletedProcess]) -> None:
    run_dir, _ = brca_run
    report = run_dir / "report"
    for name in ("per_site_accuracy.png", "training_rounds.png", "samples_medi-fed.png", "samples_real.png"):
        assert (report / name).stat().st_size > 1000, name
    text = (report / "summary.md").read_text()
    assert "Held-out test sites: OL, PE, S3, WT, XX." in text
    assert "| real+medi-fed |" in text


def test_resolved_config_saved(brca_run: tuple[Path, subprocess.CompletedProcess]) -> None:
    run_dir, _ = brca_run
    config = yaml.safe_load((run_dir / "config.yaml").read_text())
    assert config["data"]["name"] == "brca-m2c"
    assert config["federation"]["model_preset"] == "tiny"
    assert (run_dir / ".hydra" / "overrides.yaml").is_file()


def test_nothing_left_running(brca_run: tuple[Path, subprocess.CompletedProcess]) -> None:
    run_dir, _ = brca_run
    assert processes_using(run_dir / "flwr-home") == []


def test_interrupt_stops_everything(tmp_path: Path) -> None:
    run_dir = tmp_path / "interrupted"
    process = subprocess.Popen(
        _medi_sim(f"run_dir={run_dir}", "data=toy", "federation.num_server_rounds=50", "engine.timeout_s=600"),
        env=sl.flower_environment(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
    )
    try:
        deadline = time.monotonic() + 300
        rounds = run_dir / "federation" / "metrics" / "rounds.jsonl"
        while not rounds.is_file():
            assert process.poll() is None, process.stderr.read()[-3000:]
            assert time.monotonic() < deadline, "no federated round finished within 300 s"
            time.sleep(1)
        assert processes_using(run_dir / "flwr-home") != []
        process.send_signal(signal.SIGINT)
        _, stderr = process.communicate(timeout=120)
    finally:
        if process.poll() is None:
            process.kill()
    assert process.returncode == 130, stderr[-3000:]
    assert processes_using(run_dir / "flwr-home") == []
