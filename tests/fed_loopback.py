"""A real federation on 127.0.0.1 for tests and benchmarks: certificates, `medi-server`, `medi-client start`.

Everything is launched through the product's command lines, in subprocesses,
with a private ``FLWR_HOME`` per process and Flower's telemetry, update check
and dependency installation switched off.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from medi_server import superlink as sl

REPO = Path(__file__).resolve().parents[1]
CERT_SCRIPT = REPO / "deploy" / "certs" / "generate_certs.py"


def make_certs(out: Path, sites: Sequence[str]) -> Path:
    """Run the certificate script as an operator would; return the certificate folder."""
    subprocess.run([sys.executable, str(CERT_SCRIPT), "--out", str(out), "--sites", *sites],
                   check=True, capture_output=True, timeout=120)
    return out


def run_config_args(overrides: Mapping[str, Any]) -> str:
    """``key=value`` pairs for ``--run-config``; strings quoted as TOML basic strings."""
    return " ".join(f"{k}={json.dumps(v) if isinstance(v, (str, bool)) else v}" for k, v in overrides.items())


@dataclass
class Loopback:
    """Processes of one loopback federation; `stop` ends all of them."""

    root: Path
    certs: Path
    port: int
    run_dir: Path
    server: subprocess.Popen | None = None
    clients: dict[str, subprocess.Popen] = field(default_factory=dict)

    def start_server(
        self, sites: Sequence[str], overrides: Mapping[str, Any], *, resume: bool = False, extra: Sequence[str] = ()
    ) -> subprocess.Popen:
        cmd = [sys.executable, "-m", "medi_server.cli"]
        if resume:
            cmd += ["--resume", str(self.run_dir)]
        else:
            cmd += ["--run-dir", str(self.run_dir), "--host", "127.0.0.1", "--port", str(self.port),
                    "--certs", str(self.certs), "--run-config", run_config_args(overrides)]
            for site in sites:
                cmd += ["--supernode-key", str(self.certs / "supernodes" / f"{site}.pub")]
            cmd += list(extra)
        log = open(self.root / f"medi-server{'-resume' if resume else ''}.log", "ab")  # noqa: SIM115
        self.server = subprocess.Popen(cmd, env=sl.flower_environment(), stdout=log, stderr=subprocess.STDOUT,
                                       start_new_session=True, cwd=self.root)
        return self.server

    def wait_registered(self, count: int, timeout: float = 120.0) -> None:
        """Wait until ``medi-server`` has registered ``count`` keys and submitted its run."""
        state_file = self.run_dir / "federation.json"
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.server is not None and self.server.poll() is not None:
                raise RuntimeError(f"medi-server exited early with code {self.server.returncode}; see {self.root}")
            if state_file.is_file():
                try:
                    state = json.loads(state_file.read_text())
                except json.JSONDecodeError:
                    state = {}
                if len(state.get("registered", [])) >= count and state.get("runs"):
                    return
            time.sleep(0.5)
        raise TimeoutError(f"medi-server did not register {count} keys within {timeout:.0f} s")

    def start_client(self, site: str, data: Path, *, extra: Sequence[str] = ()) -> subprocess.Popen:
        out = self.root / "sites" / site
        out.mkdir(parents=True, exist_ok=True)
        cmd = [sys.executable, "-m", "medi_client.cli", "start", "--superlink", f"127.0.0.1:{self.port}",
               "--root-cert", str(self.certs / "ca.crt"), "--auth-key", str(self.certs / "supernodes" / site),
               "--data", str(data), "--site-id", site, "--output-dir", str(out),
               "--audit-log", str(out / "audit.jsonl"), "--runtime-port", str(sl.free_port()), *extra]
        log = open(self.root / f"site-{site}.log", "ab")  # noqa: SIM115
        process = subprocess.Popen(cmd, env=sl.flower_environment(), stdout=log, stderr=subprocess.STDOUT,
                                   start_new_session=True, cwd=self.root)
        self.clients[site] = process
        return process

    def crash_server(self) -> None:
        """SIGKILL medi-server and its SuperLink, as a power cut would (the ServerApp exits with its parent)."""
        state = json.loads((self.run_dir / "federation.json").read_text())
        for pid in (state.get("superlink_pid"), self.server.pid if self.server else None):
            if pid is None:
                continue
            try:
                os.killpg(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        if self.server is not None:
            self.server.wait(timeout=30)

    def kill_client(self, site: str) -> None:
        """SIGKILL a site's SuperNode and the ClientApp it runs."""
        os.killpg(self.clients[site].pid, signal.SIGKILL)
        self.clients[site].wait(timeout=30)

    def site_dir(self, site: str) -> Path:
        return self.root / "sites" / site

    def stop(self) -> None:
        for site, process in self.clients.items():
            sl.stop_process(process, name=f"site {site}", grace=10)
        if self.server is not None:
            sl.stop_process(self.server, name="medi-server", grace=20)


def new_loopback(root: Path, sites: Sequence[str]) -> Loopback:
    certs = make_certs(root / "certs", sites)
    return Loopback(root=root, certs=certs, port=sl.free_port(), run_dir=root / "run")
