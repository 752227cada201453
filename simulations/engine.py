"""Run the MeDi ServerApp and ClientApp on Flower's simulation engine, and leave nothing running.

Flower 1.42 deprecates ``flwr.simulation.run_simulation``; its supported path
is a SuperLink started with ``--simulation`` plus ``flwr run`` with
``--federation-config "num-supernodes=N ..."``. The SuperLink then starts a
``flwr-simulation`` process that runs the ServerApp and one virtual SuperNode
per site on Ray, so the apps are exactly the ones a deployment runs.

Process hygiene: the SuperLink starts its helpers (SuperExec, the simulation
process, Ray's GCS server, raylet and workers) partly in new sessions, so
stopping the SuperLink's process group is not enough. `ProcessTree` records
every descendant while the run is alive and ends the ones still running
when the run finishes, fails or is interrupted.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import signal
import subprocess
import tempfile
import threading
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import tomli_w
from tqdm import tqdm

from medi_core.errors import FederationError
from medi_server import superlink as sl
from medi_server.app_bundle import write_app_folder
from medi_sim.config import EngineConfig

logger = logging.getLogger(__name__)

HOST = "127.0.0.1"  # the simulation never listens on another interface
FILE_POLL_SECONDS = 2.0  # how often the run's log files are checked
STATUS_POLL_SECONDS = 30.0  # how often `flwr ls` is asked (each call starts a Python process)
STOP_GRACE_SECONDS = 10.0  # SIGTERM -> SIGKILL delay for left-over processes
FINISHED_PREFIX = "finished"
COMPLETED = "finished:completed"


# -- process tree -------------------------------------------------------------


def _process_table() -> dict[int, tuple[int, str]]:
    """Map every visible pid to (parent pid, start time in clock ticks); empty where /proc is absent."""
    table: dict[int, tuple[int, str]] = {}
    proc = Path("/proc")
    if not proc.is_dir():
        return table
    for entry in proc.iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue  # the process exited while the table was read
        # The command name (field 2) may contain spaces; the fields after its ")" are fixed.
        fields = stat[stat.rfind(")") + 2:].split()
        table[int(entry.name)] = (int(fields[1]), fields[19])  # ppid, starttime
    return table


class ProcessTree:
    """Every descendant of one root process seen so far, identified by (pid, start time) against pid reuse."""

    def __init__(self, root_pid: int) -> None:
        self.root_pid = root_pid
        self.seen: dict[int, str] = {}

    def poll(self) -> None:
        table = _process_table()
        children: dict[int, list[int]] = {}
        for pid, (parent, _) in table.items():
            children.setdefault(parent, []).append(pid)
        # Processes whose parent already exited are re-parented to init, so descendants of
        # every process recorded earlier are searched too.
        stack = [self.root_pid, *self.seen]
        while stack:
            pid = stack.pop()
            for child in children.get(pid, []):
                if child not in self.seen:
                    self.seen[child] = table[child][1]
                    stack.append(child)

    def alive(self) -> list[int]:
        table = _process_table()
        return [pid for pid, start in self.seen.items() if pid in table and table[pid][1] == start]

    def terminate(self, *, grace: float = STOP_GRACE_SECONDS) -> list[int]:
        """SIGTERM the recorded processes still alive, SIGKILL the ones left after ``grace``; return their pids."""
        self.poll()
        left = self.alive()
        for pid in left:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + grace
        while self.alive() and time.monotonic() < deadline:
            time.sleep(0.2)
        for pid in self.alive():
            logger.warning("process %d of the simulation ignored SIGTERM; killing it", pid)
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        return left


# -- the simulated federation -----------------------------------------------------


@dataclass(frozen=True)
class SimulationResult:
    """Outcome of one federated run on the simulation engine."""

    run_id: int
    status: str
    seconds: float
    server_run_dir: Path


def simulation_environment(flwr_home: Path, ray_tmp: Path) -> dict[str, str]:
    """Flower's environment (no telemetry, update check or installs) plus Ray's: no usage stats, private temp dir."""
    env = sl.flower_environment(flwr_home)
    env["RAY_USAGE_STATS_ENABLED"] = "0"  # Ray would otherwise report usage to an outside server
    env["RAY_TMPDIR"] = str(ray_tmp)  # Ray keeps sockets and session logs here; removed after the run
    env["RAY_ENABLE_UV_RUN_RUNTIME_ENV"] = "0"
    return env


def superlink_simulation_command(*, port: int, database: Path) -> list[str]:
    """Return the ``flower-superlink`` command line of a local simulation SuperLink (no TLS: it binds 127.0.0.1 only)."""
    return [
        sl.flower_executable("flower-superlink"), "--simulation", "--insecure",
        "--host", HOST, "--port", str(port), "--database", str(database),
        "--disable-runtime-dependency-installation",
    ]


def federation_config(num_sites: int, engine: EngineConfig) -> str:
    """Return the ``--federation-config`` value: one virtual SuperNode per site and Ray's CPU budget."""
    if num_sites < 1:
        raise FederationError(f"a simulation needs at least one site, got {num_sites}")
    if engine.client_cpus < 1:
        raise FederationError(f"engine.client_cpus must be >= 1, got {engine.client_cpus}")
    parts = [f"num-supernodes={num_sites}", f"client-resources-num-cpus={engine.client_cpus}"]
    ray_cpus = engine.ray_cpus or os.cpu_count() or 1
    parts.append(f"init-args-num-cpus={max(ray_cpus, engine.client_cpus)}")
    return " ".join(parts)


def _json_payload(text: str) -> dict[str, Any]:
    """Parse the JSON object that ``flwr ... --format json`` prints after any banner lines; empty if there is none."""
    start = text.find("{")
    if start < 0:
        return {}
    try:
        return json.loads(text[start:])
    except json.JSONDecodeError:
        return {}


def submit(app_dir: Path, *, env: Mapping[str, str], run_config: Mapping[str, Any], config_file: Path, federation: str) -> int:
    """``flwr run`` the app with the run config (as a TOML file) and the federation config; return the run id."""
    config_file.write_text(tomli_w.dumps(dict(run_config)), encoding="utf-8")
    result = subprocess.run(
        [sl.flower_executable("flwr"), "run", str(app_dir), sl.CONNECTION_NAME, "--format", "json",
         "--run-config", str(config_file), "--federation-config", federation],
        env=dict(env), capture_output=True, text=True, timeout=300, check=False,
    )
    payload = _json_payload(result.stdout)
    if result.returncode != 0 or not payload.get("success"):
        raise FederationError(f"`flwr run` failed: {(result.stdout + result.stderr).strip()[-1500:]}")
    return int(payload["run-id"])


def _completed_rounds(server_run_dir: Path) -> int:
    path = server_run_dir / "metrics" / "rounds.jsonl"
    if not path.is_file():
        return 0
    return sum(1 for line in path.read_text().splitlines() if line.strip())


def _server_log_ended(server_run_dir: Path) -> bool:
    """True once the ServerApp wrote its report or logged a failure."""
    if (server_run_dir / "report.json").is_file():
        return True
    log = server_run_dir / "server.log"
    return log.is_file() and " failed: " in log.read_text(errors="replace")


def wait_for_run(
    run_id: int,
    *,
    env: Mapping[str, str],
    server_run_dir: Path,
    rounds: int,
    timeout: float,
    tree: ProcessTree,
    superlink: subprocess.Popen,
    progress: bool,
) -> str:
    """Wait until the run finishes, with a progress bar of completed rounds; return Flower's final status."""
    deadline = time.monotonic() + timeout
    next_status = time.monotonic() + STATUS_POLL_SECONDS
    with tqdm(total=rounds, desc="federated rounds", unit="round", disable=not progress) as bar:
        while True:
            tree.poll()
            done = _completed_rounds(server_run_dir)
            bar.update(max(0, min(done, rounds) - bar.n))
            if superlink.poll() is not None:
                raise FederationError(f"the simulation SuperLink exited with code {superlink.returncode}")
            if _server_log_ended(server_run_dir) or time.monotonic() >= next_status:
                status = sl.run_status(run_id, env=env)
                if status.startswith(FINISHED_PREFIX):
                    return status
                next_status = time.monotonic() + (FILE_POLL_SECONDS if _server_log_ended(server_run_dir) else STATUS_POLL_SECONDS)
            if time.monotonic() > deadline:
                raise FederationError(f"simulated run {run_id} did not finish within {timeout:.0f} s (engine.timeout_s)")
            time.sleep(FILE_POLL_SECONDS)


def failure_reason(server_run_dir: Path) -> str:
    """Return the last error line of the ServerApp's log, or where to look."""
    log = server_run_dir / "server.log"
    if log.is_file():
        errors = [line for line in log.read_text(errors="replace").splitlines() if " ERROR " in line]
        if errors:
            return errors[-1].split(": ", 1)[-1]
    return f"no error line in {log}; see the Flower logs next to it"


@contextlib.contextmanager
def simulation_superlink(run_dir: Path, engine: EngineConfig) -> Iterator[tuple[dict[str, str], subprocess.Popen, ProcessTree]]:
    """Start a simulation SuperLink on 127.0.0.1 for the block; stop it and every process it started afterwards."""
    logs = run_dir / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    # Ray's Unix socket paths must stay under 108 bytes, so its temp dir is short and outside run_dir.
    ray_tmp = Path(tempfile.mkdtemp(prefix="medi-ray-"))
    env = simulation_environment(run_dir / "flwr-home", ray_tmp)
    port = sl.free_port(HOST)
    link = sl.start_process(superlink_simulation_command(port=port, database=run_dir / "superlink.db"),
                            env=env, log_path=logs / "superlink.log")
    tree = ProcessTree(link.pid)
    previous_sigterm = signal.getsignal(signal.SIGTERM)

    def on_sigterm(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt(f"signal {signum}")

    # So that a `kill` of medi-sim still runs the clean-up below; Python only allows this in the main thread.
    in_main_thread = threading.current_thread() is threading.main_thread()
    if in_main_thread:
        signal.signal(signal.SIGTERM, on_sigterm)
    try:
        sl.wait_for_port(HOST, port, timeout=engine.startup_timeout_s, process=link)
        tree.poll()
        sl.write_connection(run_dir / "flwr-home", address=f"{HOST}:{port}", root_certificate=None)
        yield env, link, tree
    finally:
        tree.poll()
        sl.stop_process(link, name="simulation SuperLink", grace=STOP_GRACE_SECONDS)
        left = tree.terminate()
        if left:
            logger.info("stopped %d process(es) the simulation had started", len(left))
        shutil.rmtree(ray_tmp, ignore_errors=True)
        if in_main_thread:
            signal.signal(signal.SIGTERM, previous_sigterm)


def run_simulated_federation(
    run_dir: Path,
    run_config: Mapping[str, Any],
    *,
    num_sites: int,
    engine: EngineConfig,
    progress: bool = True,
) -> SimulationResult:
    """Run the MeDi apps with ``num_sites`` virtual SuperNodes; raise `FederationError` if the run fails.

    ``run_config`` contains the Flower run config keys (``run-dir``,
    ``site-table``, ...). Flower's own files go under ``run_dir``:
    ``flwr-home/``, ``superlink.db`` and ``logs/``.
    """
    started = time.perf_counter()
    server_run_dir = Path(str(run_config["run-dir"]))
    rounds = int(run_config.get("num-server-rounds", 1))
    with simulation_superlink(run_dir, engine) as (env, link, tree):
        app_dir = write_app_folder(run_dir / "flower-app")
        run_id = submit(app_dir, env=env, run_config=run_config, config_file=run_dir / "run-config.toml",
                        federation=federation_config(num_sites, engine))
        logger.info("simulated run %d submitted with %d virtual sites; ServerApp log: %s",
                    run_id, num_sites, server_run_dir / "server.log")
        with (run_dir / "logs" / "flower-run.log").open("w") as sink:
            streamer = sl.stream_logs(run_id, env=env, sink=sink)
            try:
                status = wait_for_run(run_id, env=env, server_run_dir=server_run_dir, rounds=rounds,
                                      timeout=engine.timeout_s, tree=tree, superlink=link, progress=progress)
            finally:
                sl.stop_process(streamer, name="flwr log", grace=5)
    seconds = time.perf_counter() - started
    (run_dir / "logs" / "simulation.json").write_text(
        json.dumps({"run_id": run_id, "status": status, "seconds": seconds, "num_sites": num_sites}, indent=2) + "\n"
    )
    if status != COMPLETED:
        raise FederationError(f"simulated run {run_id} ended with status {status}: {failure_reason(server_run_dir)}")
    logger.info("simulated run %d finished in %.0f s", run_id, seconds)
    return SimulationResult(run_id, status, seconds, server_run_dir)


__all__ = [
    "ProcessTree",
    "SimulationResult",
    "federation_config",
    "run_simulated_federation",
    "simulation_environment",
    "simulation_superlink",
    "superlink_simulation_command",
]
