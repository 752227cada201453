"""Tests of the run folder's log file: written from the start, once per line, also without Hydra's logging."""

from __future__ import annotations

import logging
import subprocess
import sys
from pathlib import Path

from medi_server import superlink as sl
from medi_sim.run_log import LOG_FILE, run_log

logger = logging.getLogger("medi_sim.test_run_log")


def test_run_log_writes_file(tmp_path: Path) -> None:
    with run_log(tmp_path / "run") as path:
        logger.info("stage 1/5: split by site")
    assert path == tmp_path / "run" / LOG_FILE
    assert "stage 1/5: split by site" in path.read_text()


def test_run_log_nested_writes_once(tmp_path: Path) -> None:
    with run_log(tmp_path), run_log(tmp_path):
        logger.info("one line")
    assert (tmp_path / LOG_FILE).read_text().count("one line") == 1


def test_run_log_removes_handler(tmp_path: Path) -> None:
    before = list(logging.getLogger().handlers)
    with run_log(tmp_path):
        pass
    assert logging.getLogger().handlers == before


def _failing_run(run_dir: Path, *extra: str) -> subprocess.CompletedProcess:
    command = [sys.executable, "-m", "medi_sim.cli", f"run_dir={run_dir}", "data.path=/nonexistent/patches", *extra]
    return subprocess.run(command, env=sl.flower_environment(), capture_output=True, text=True, timeout=120, check=False)


def test_failed_run_logs_into_run_dir(tmp_path: Path) -> None:
    result = _failing_run(tmp_path / "run", "hydra/job_logging=stdout")  # Hydra logs to the console only
    text = (tmp_path / "run" / LOG_FILE).read_text()
    assert result.returncode == 2
    assert "data.path /nonexistent/patches not found" in text
    assert "medi-sim failed; the log medi-sim.log and partial results are in" in text


def test_failed_run_without_logging_config(tmp_path: Path) -> None:
    result = _failing_run(tmp_path / "run", "hydra/job_logging=none")  # Hydra configures no logging at all
    assert "medi-sim failed" in result.stdout + result.stderr
    assert "medi-sim failed" in (tmp_path / "run" / LOG_FILE).read_text()


def test_failed_run_default_logging_once(tmp_path: Path) -> None:
    _failing_run(tmp_path / "run")
    assert (tmp_path / "run" / LOG_FILE).read_text().count("medi-sim failed") == 1
