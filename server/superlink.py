"""Start a Flower SuperLink, register SuperNode keys and submit runs through the `flwr` CLI.

Everything goes through Flower's own executables (``flower-superlink``,
``flwr supernode register``, ``flwr run``, ``flwr ls``), so what runs here is
exactly what an operator would type. Connection settings live in
``$FLWR_HOME/config.toml`` (Flower 1.42), written by `write_connection`.
"""

from __future__ import annotations

import json
import logging
import os
import shlex
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import tomli_w
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import load_ssh_public_key

from medi_core.errors import ConfigError, FederationError
from medi_client.flower_env import flower_environment, flower_executable  # noqa: F401 - callers use sl.flower_environment

logger = logging.getLogger(__name__)

CONNECTION_NAME = "medi"  # name of the SuperLink connection in $FLWR_HOME/config.toml
PORT_WAIT_SECONDS = 60.0  # a SuperLink binds its port in 2-10 s on a loaded 2-core machine
REGISTER_RETRIES = 5  # `flwr supernode register` can race the SuperLink's start-up


def wait_for_port(host: str, port: int, *, timeout: float = PORT_WAIT_SECONDS, process: subprocess.Popen | None = None) -> None:
    """Block until ``host:port`` accepts TCP connections; raise `FederationError` on timeout or exit."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process is not None and process.poll() is not None:
            raise FederationError(f"the process serving {host}:{port} exited with code {process.returncode}")
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
            probe.settimeout(1.0)
            if probe.connect_ex((host, port)) == 0:
                return
        time.sleep(0.3)
    raise FederationError(f"nothing listens on {host}:{port} after {timeout:.0f} s")


def free_port(host: str = "127.0.0.1") -> int:
    """Return a TCP port that is free right now on ``host`` (for tests and benchmarks)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind((host, 0))
        return int(probe.getsockname()[1])


@dataclass(frozen=True)
class TlsFiles:
    """The SuperLink's TLS files: CA certificate, server certificate and its private key."""

    ca_cert: Path
    server_cert: Path
    server_key: Path

    @classmethod
    def from_folder(cls, folder: Path) -> TlsFiles:
        """Files named as `deploy/certs/generate_certs.py` writes them."""
        files = cls(folder / "ca.crt", folder / "server.crt", folder / "server.key")
        files.check()
        return files

    def check(self) -> None:
        for path in (self.ca_cert, self.server_cert, self.server_key):
            if not path.is_file():
                raise FederationError(
                    f"TLS file {path} not found; create the certificates with "
                    "`python deploy/certs/generate_certs.py --out CERTS_DIR` or pass --insecure"
                )


def superlink_command(
    *,
    host: str,
    port: int,
    tls: TlsFiles | None,
    supernode_auth: bool,
    database: Path | None,
    log_file: Path | None = None,
) -> list[str]:
    """Build the ``flower-superlink`` command line for these settings."""
    cmd = [flower_executable("flower-superlink"), "--host", host, "--port", str(port)]
    if tls is None:
        cmd.append("--insecure")
    else:
        cmd += [
            "--ssl-ca-certfile", str(tls.ca_cert),
            "--ssl-certfile", str(tls.server_cert),
            "--ssl-keyfile", str(tls.server_key),
        ]
    if supernode_auth:
        if tls is None:
            raise FederationError("SuperNode authentication needs TLS; drop --insecure or --supernode-auth")
        cmd.append("--enable-supernode-auth")
    if database is not None:
        cmd += ["--database", str(database)]
    if log_file is not None:
        cmd += ["--log-file", str(log_file)]
    cmd.append("--disable-runtime-dependency-installation")
    return cmd


def start_process(cmd: Sequence[str], *, env: Mapping[str, str], log_path: Path, cwd: Path | None = None) -> subprocess.Popen:
    """Start ``cmd`` in its own process group with stdout and stderr going to ``log_path``."""
    log_path.parent.mkdir(parents=True, exist_ok=True)
    handle: IO[bytes] = open(log_path, "ab")  # noqa: SIM115 - kept open for the child's lifetime
    logger.info("starting %s (log: %s)", shlex.join(cmd), log_path)  # paths only, no key material
    return subprocess.Popen(
        list(cmd), env=dict(env), stdout=handle, stderr=subprocess.STDOUT, cwd=cwd, start_new_session=True
    )


def stop_process(process: subprocess.Popen, *, name: str, grace: float = 15.0) -> None:
    """SIGTERM the process group of ``process``, then SIGKILL it after ``grace`` seconds."""
    if process.poll() is not None:
        return
    try:
        os.killpg(process.pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    try:
        process.wait(timeout=grace)
    except subprocess.TimeoutExpired:
        logger.warning("%s (pid %d) ignored SIGTERM for %.0f s; killing it", name, process.pid, grace)
        try:
            os.killpg(process.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        process.wait(timeout=grace)
    logger.info("stopped %s (pid %d)", name, process.pid)


def write_connection(flwr_home: Path, *, address: str, root_certificate: Path | None, name: str = CONNECTION_NAME) -> Path:
    """Write ``$FLWR_HOME/config.toml`` with one SuperLink connection named ``name``, as the default."""
    connection: dict[str, Any] = {"address": address}
    if root_certificate is None:
        connection["insecure"] = True
    else:
        connection["root-certificates"] = str(root_certificate)
    config = {"superlink": {"default": name, name: connection}}
    flwr_home.mkdir(parents=True, exist_ok=True)
    path = flwr_home / "config.toml"
    path.write_text(tomli_w.dumps(config), encoding="utf-8")
    return path


def _flwr(args: Sequence[str], *, env: Mapping[str, str], timeout: float, cwd: Path | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [flower_executable("flwr"), *args],
        env=dict(env), capture_output=True, text=True, timeout=timeout, cwd=cwd, check=False,
    )


def check_supernode_public_key(public_key: Path) -> None:
    """Raise `ConfigError` unless ``public_key`` is an OpenSSH elliptic-curve public key, as Flower 1.42 requires.

    A wrong file would otherwise fail only at registration, after the SuperLink has started.
    """
    if not public_key.is_file():
        raise ConfigError(f"SuperNode public key {public_key} not found; pass the site's .pub file")
    data = public_key.read_bytes()
    if data.lstrip().startswith(b"-----BEGIN"):
        raise ConfigError(
            f"--supernode-key {public_key} is a private key or PEM file, not an OpenSSH public key; "
            f"pass the site's public key ({public_key.name}.pub from generate_certs.py) and keep the private key at the site"
        )
    try:
        key = load_ssh_public_key(data)
    except (ValueError, UnsupportedAlgorithm):
        key = None
    if not isinstance(key, ec.EllipticCurvePublicKey):
        raise ConfigError(
            f"--supernode-key {public_key} is not an OpenSSH elliptic-curve public key (a line like "
            "'ecdsa-sha2-nistp384 AAAA...'); pass the site's .pub file from deploy/certs/generate_certs.py"
        )


def register_supernode(public_key: Path, *, env: Mapping[str, str], name: str | None = None) -> int:
    """Register a SuperNode's public key with the SuperLink; return the node id Flower assigns."""
    args = ["supernode", "register", str(public_key), CONNECTION_NAME, "--format", "json"]
    if name:
        args += ["--name", name]
    last = ""
    for attempt in range(1, REGISTER_RETRIES + 1):
        result = _flwr(args, env=env, timeout=60)
        payload = _last_json(result.stdout)
        if result.returncode == 0 and payload.get("success"):
            node_id = int(payload["node-id"])
            logger.info("registered SuperNode key %s as node %d", public_key.name, node_id)
            return node_id
        last = (result.stdout + result.stderr).strip()[-400:]
        if "already" in last.lower():
            raise FederationError(f"SuperNode key {public_key} is already registered with this SuperLink: {last}")
        logger.warning("registering %s failed (attempt %d/%d): %s", public_key, attempt, REGISTER_RETRIES, last)
        time.sleep(2.0 * attempt)
    raise FederationError(f"could not register SuperNode key {public_key}: {last}")


def _last_json(text: str) -> dict[str, Any]:
    """Parse the last JSON object in ``text`` (Flower prints banners before it)."""
    for line in reversed(text.strip().splitlines()):
        line = line.strip()
        if line.startswith("{"):
            try:
                return json.loads(line)
            except json.JSONDecodeError:
                continue
    start = text.find("{")
    if start >= 0:
        try:
            return json.loads(text[start:])
        except json.JSONDecodeError:
            pass
    return {}


def submit_run(app_dir: Path, *, env: Mapping[str, str], run_config: Mapping[str, Any], config_file: Path) -> int:
    """Submit the app in ``app_dir`` with ``flwr run``, its overrides in ``config_file``; return the run id.

    Overrides travel as a TOML file (``--run-config FILE.toml``), so paths with
    spaces or quotes need no escaping.
    """
    args = ["run", str(app_dir), CONNECTION_NAME, "--format", "json"]
    if run_config:
        config_file.parent.mkdir(parents=True, exist_ok=True)
        config_file.write_text(tomli_w.dumps(dict(run_config)), encoding="utf-8")
        args += ["--run-config", str(config_file)]
    result = _flwr(args, env=env, timeout=300)
    payload = _last_json(result.stdout)
    if result.returncode != 0 or not payload.get("success"):
        raise FederationError(f"`flwr run` failed: {(result.stdout + result.stderr).strip()[-1500:]}")
    run_id = int(payload["run-id"])
    logger.info("submitted run %d from %s", run_id, app_dir)
    return run_id


def run_status(run_id: int, *, env: Mapping[str, str]) -> str:
    """Status text of a run, for example ``running`` or ``finished:completed``."""
    result = _flwr(["ls", CONNECTION_NAME, "--run-id", str(run_id), "--format", "json"], env=env, timeout=60)
    payload = _last_json(result.stdout)
    runs = payload.get("runs") or []
    if result.returncode != 0 or not runs:
        raise FederationError(f"`flwr ls` could not read run {run_id}: {(result.stdout + result.stderr).strip()[-600:]}")
    return str(runs[0]["status"])


def stream_logs(run_id: int, *, env: Mapping[str, str], sink: IO[str] | None = None) -> subprocess.Popen:
    """Start ``flwr log RUN_ID --stream``, copying the run's log lines to ``sink`` (default: stderr)."""
    return subprocess.Popen(
        [flower_executable("flwr"), "log", str(run_id), CONNECTION_NAME, "--stream"],
        env=dict(env), stdout=sink or sys.stderr, stderr=subprocess.STDOUT, text=True, start_new_session=True,
    )


def wait_for_run(run_id: int, *, env: Mapping[str, str], timeout: float, poll: float = 3.0) -> str:
    """Poll until the run finishes; return its final status; raise `FederationError` on timeout."""
    deadline = time.monotonic() + timeout
    status = "unknown"
    while time.monotonic() < deadline:
        status = run_status(run_id, env=env)
        if status.startswith("finished"):
            return status
        time.sleep(poll)
    raise FederationError(f"run {run_id} still {status!r} after {timeout:.0f} s")
