"""Environment and executables of Flower processes, shared by `medi-client start` and `medi-server`.

It lives in the client package, so a hospital install needs no server code.
No Flower import: it only prepares what Flower's own commands need.
"""

from __future__ import annotations

import os
import shutil
import sys
from collections.abc import Mapping
from pathlib import Path

from medi_core.errors import FederationError


def flower_environment(flwr_home: Path | None = None, base: Mapping[str, str] | None = None) -> dict[str, str]:
    """Environment for Flower processes: no telemetry, no update check, no package installs."""
    env = dict(os.environ if base is None else base)
    env["FLWR_TELEMETRY_ENABLED"] = "0"
    env["FLWR_DISABLE_UPDATE_CHECK"] = "1"
    env["FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION"] = "1"
    # SuperExec checks for a new task every second by default. A task is one ServerApp run or one
    # ClientApp message, so a 0.2 s poll starts each a little sooner for one cheap local request.
    env.setdefault("FLWR_SUPEREXEC_TASK_POLL_INTERVAL", "0.2")
    if flwr_home is not None:
        env["FLWR_HOME"] = str(flwr_home)
    # Flower starts flwr-serverapp / flwr-clientapp by name: find them next to this Python first.
    env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])
    return env


def flower_executable(name: str) -> str:
    """Path of a Flower console script, preferring the one next to this Python."""
    local = Path(sys.executable).parent / name
    if local.is_file():
        return str(local)
    found = shutil.which(name)
    if found is None:
        raise FederationError(f"the Flower command {name!r} was not found; install flwr in this environment")
    return found
