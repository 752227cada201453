"""A hospital install needs no server code: no `medi_client` module imports `medi_server`."""

from __future__ import annotations

import os
import pkgutil
import subprocess
import sys
from pathlib import Path

import medi_client
from medi_client.flower_env import flower_environment

CHECK = """
import importlib, pkgutil, sys
import medi_client
for module in pkgutil.iter_modules(medi_client.__path__):
    importlib.import_module("medi_client." + module.name)
print(sorted(name for name in sys.modules if name.split(".")[0] == "medi_server"))
"""


def test_client_modules_listed():
    names = {module.name for module in pkgutil.iter_modules(medi_client.__path__)}
    assert {"cli", "client_app", "start", "flower_env"} <= names


def test_client_imports_no_server_module():
    result = subprocess.run([sys.executable, "-c", CHECK], capture_output=True, text=True, timeout=120, check=False)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.strip().splitlines()[-1] == "[]"


def test_flower_environment_turns_off_outbound_calls(tmp_path):
    env = flower_environment(tmp_path / "flwr-home", base={"PATH": "/usr/bin"})
    assert env["FLWR_TELEMETRY_ENABLED"] == "0"
    assert env["FLWR_DISABLE_UPDATE_CHECK"] == "1"
    assert env["FLWR_HOME"] == str(tmp_path / "flwr-home")
    assert env["PATH"].split(os.pathsep)[0] == str(Path(sys.executable).parent)
