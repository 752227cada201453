"""Tests of the simulation engine launcher: command lines, environment and the process clean-up."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from medi_core.errors import FederationError
from medi_sim.config import EngineConfig
from medi_sim.engine import ProcessTree, federation_config, simulation_environment, superlink_simulation_command

# A parent that starts a child in its own session (as Ray starts its daemons), records its pid and waits.
SPAWNER = """
import subprocess, sys, time
child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(300)"], start_new_session=True)
open(sys.argv[1], "w").write(str(child.pid))
time.sleep(300)
"""


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # kill(pid, 0) also succeeds for a zombie (exited, not yet reaped), so the state is read too.
    return Path(f"/proc/{pid}/stat").read_text().split(") ")[1][0] != "Z"


def test_federation_config_one_node_per_site() -> None:
    text = federation_config(4, EngineConfig(client_cpus=1, ray_cpus=2))
    assert text == "num-supernodes=4 client-resources-num-cpus=1 init-args-num-cpus=2"


def test_federation_config_rejects_no_sites() -> None:
    with pytest.raises(FederationError, match="at least one site"):
        federation_config(0, EngineConfig())


def test_superlink_command_simulation_localhost(tmp_path: Path) -> None:
    command = superlink_simulation_command(port=9999, database=tmp_path / "link.db")
    assert "--simulation" in command
    assert command[command.index("--host") + 1] == "127.0.0.1"
    assert "--disable-runtime-dependency-installation" in command


def test_environment_blocks_outbound(tmp_path: Path) -> None:
    env = simulation_environment(tmp_path / "home", tmp_path / "ray")
    assert env["FLWR_TELEMETRY_ENABLED"] == "0"
    assert env["FLWR_DISABLE_UPDATE_CHECK"] == "1"
    assert env["RAY_USAGE_STATS_ENABLED"] == "0"
    assert env["FLWR_HOME"] == str(tmp_path / "home")


@pytest.mark.skipif(not Path("/proc").is_dir(), reason="the process tree is read from /proc (Linux)")
def test_process_tree_stops_detached_child(tmp_path: Path) -> None:
    pid_file = tmp_path / "child.pid"
    parent = subprocess.Popen([sys.executable, "-c", SPAWNER, str(pid_file)])
    try:
        deadline = time.monotonic() + 60
        while not pid_file.is_file() or not pid_file.read_text():
            assert time.monotonic() < deadline, "the test parent did not start its child"
            time.sleep(0.1)
        child = int(pid_file.read_text())
        tree = ProcessTree(parent.pid)
        tree.poll()
        parent.send_signal(signal.SIGTERM)  # the child, in its own session, survives its parent
        parent.wait(timeout=30)
        assert _alive(child)
        stopped = tree.terminate(grace=5)
        assert child in stopped
        time.sleep(0.5)
        assert not _alive(child)
    finally:
        if parent.poll() is None:
            parent.kill()
