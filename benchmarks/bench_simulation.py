"""Wall time and peak memory of one simulated MeDi round with 8, 32 and 128 virtual sites (tiny preset).

Each size runs the real ServerApp and ClientApp on Flower's simulation engine,
exactly as ``medi-sim`` does (`medi_sim.engine.run_simulated_federation`):
one handshake, one training round of one local step (batch 2) per site, no
synthesis. Every site holds 4 patches of the generated toy set, so the
numbers show the engine's cost per site rather than training time.

Measured per size:

- wall time of the whole simulated run, split into engine start-up and
  shut-down, handshake and the training round (the ServerApp's timestamps);
- peak memory: the largest sum of the proportional set size (PSS, shared
  pages split between the processes that map them) over every process of
  the run, sampled every 0.5 s, and the largest single process.

    python benchmarks/bench_simulation.py                      # 8, 32 and 128 sites
    python benchmarks/bench_simulation.py --sites 8 32 --out /tmp/bench-sim
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import re
import tempfile
import threading
import time
from datetime import datetime
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402

from medi_core import protocol as P  # noqa: E402
from medi_server.settings import FederationSettings  # noqa: E402
from medi_sim.config import EngineConfig  # noqa: E402
from medi_sim.engine import run_simulated_federation  # noqa: E402
from medi_sim.toy_data import write_toy_dataset  # noqa: E402

logger = logging.getLogger("bench_simulation")

PATCHES_PER_SITE = 4  # tiny local data: the benchmark measures the engine, not training
SAMPLE_SECONDS = 0.5  # memory sampling interval
LOG_TIME = re.compile(r"^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3}) ")


def write_sites(root: Path, num_sites: int, toy: Path) -> Path:
    """Write one 4-patch manifest per virtual site and the site table; return the table's path."""
    patches = pd.read_csv(toy / "metadata.csv")
    patches = patches[~patches["site"].isin(["H1", "H2"])].reset_index(drop=True)
    table = {}
    for index in range(num_sites):
        site = f"S{index:03d}"
        rows = patches.iloc[[(index * PATCHES_PER_SITE + k) % len(patches) for k in range(PATCHES_PER_SITE)]]
        manifest = pd.DataFrame({"path": [str(toy / f) for f in rows["file"]], "class": rows["class"].to_numpy(), "site": site})
        path = root / "sites" / f"{site}.csv"
        path.parent.mkdir(parents=True, exist_ok=True)
        manifest.to_csv(path, index=False)
        table[str(index)] = {
            P.NODE_DATA_PATH: str(path), P.NODE_DATA_KIND: "manifest", P.NODE_SITE_ID: site,
            P.NODE_OUTPUT_DIR: str(root / "sites" / site), P.NODE_MAX_EPSILON: 0.0,
        }
    table_path = root / "site-table.json"
    table_path.write_text(json.dumps(table))
    return table_path


class MemorySampler(threading.Thread):
    """Samples the PSS of every process whose environment names one FLWR_HOME, and this process."""

    def __init__(self, flwr_home: Path) -> None:
        super().__init__(daemon=True)
        self.marker = f"FLWR_HOME={flwr_home}".encode()
        self.stop_event = threading.Event()
        self.peak_total = 0  # bytes
        self.peak_single = 0  # bytes
        self.peak_processes = 0

    @staticmethod
    def _pss(pid: str) -> int:
        for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
            if line.startswith("Pss:"):
                return int(line.split()[1]) * 1024
        return 0

    def sample(self) -> None:
        sizes = []
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit():
                continue
            try:
                mine = entry.name == str(os.getpid()) or self.marker in (entry / "environ").read_bytes().split(b"\0")
                if mine:
                    sizes.append(self._pss(entry.name))
            except OSError:
                continue  # exited, or not ours to read
        self.peak_total = max(self.peak_total, sum(sizes))
        self.peak_single = max(self.peak_single, max(sizes, default=0))
        self.peak_processes = max(self.peak_processes, len(sizes))

    def run(self) -> None:
        while not self.stop_event.is_set():
            self.sample()
            time.sleep(SAMPLE_SECONDS)


def _log_times(server_log: Path) -> dict[str, float]:
    """Seconds since the ServerApp started at which the handshake ended, the round ended and the run ended."""
    stamps: dict[str, datetime] = {}
    for line in server_log.read_text().splitlines():
        match = LOG_TIME.match(line)
        if not match:
            continue
        moment = datetime.strptime(match.group(1), "%Y-%m-%d %H:%M:%S,%f")
        stamps.setdefault("start", moment)
        if "round 1/1" in line:
            stamps["handshake_done"] = moment
        if "round 1 done" in line:
            stamps["round_done"] = moment
        if "finished after" in line:
            stamps["finished"] = moment
    return {key: (value - stamps["start"]).total_seconds() for key, value in stamps.items() if key != "start"}


def bench_size(root: Path, num_sites: int, toy: Path, engine: EngineConfig) -> dict[str, float]:
    """Run one handshake and one round with ``num_sites`` virtual sites; return the measurements."""
    root.mkdir(parents=True, exist_ok=True)
    settings = FederationSettings(
        num_server_rounds=1, local_steps=1, batch_size=2, min_clients=num_sites, synthesize=False, grid_every=0,
        keep_checkpoints=1, k_anonymity=1, run_dir=str(root / "federation"), site_table=str(write_sites(root, num_sites, toy)),
    )
    sampler = MemorySampler(root / "flwr-home")
    sampler.start()
    started = time.perf_counter()
    try:
        run_simulated_federation(root, settings.to_run_config(), num_sites=num_sites, engine=engine, progress=False)
    finally:
        sampler.stop_event.set()
        sampler.join()
    wall = time.perf_counter() - started
    times = _log_times(root / "federation" / "server.log")
    rounds = [json.loads(line) for line in (root / "federation" / "metrics" / "rounds.jsonl").read_text().splitlines()]
    sites = pd.read_csv(root / "federation" / "metrics" / "sites.csv")
    return {
        "sites": num_sites,
        "wall_s": wall,
        "engine_overhead_s": wall - times["finished"],  # SuperLink, Ray and ServerApp start-up plus shut-down
        "handshake_s": times["handshake_done"],
        "round_s": float(rounds[0]["round_seconds"]),
        "mean_handler_s": float(sites["handler_seconds"].mean()),
        "peak_pss_mib": sampler.peak_total / 2**20,
        "peak_process_mib": sampler.peak_single / 2**20,
        "peak_processes": sampler.peak_processes,
    }


def plot(rows: list[dict[str, float]], path: Path) -> None:
    table = pd.DataFrame(rows)
    figure, (time_axes, memory_axes) = plt.subplots(1, 2, figsize=(10, 3.8))
    for column, label in (("wall_s", "whole run"), ("round_s", "training round"), ("handshake_s", "handshake")):
        time_axes.plot(table["sites"], table[column], marker="o", label=label)
    time_axes.set_xscale("log", base=2)
    time_axes.set_xlabel("virtual sites")
    time_axes.set_ylabel("seconds")
    time_axes.set_title("Wall time of one simulated round")
    time_axes.legend(fontsize="small")
    memory_axes.plot(table["sites"], table["peak_pss_mib"], marker="o", label="all processes (PSS)")
    memory_axes.plot(table["sites"], table["peak_process_mib"], marker="o", label="largest process")
    memory_axes.set_xscale("log", base=2)
    memory_axes.set_xlabel("virtual sites")
    memory_axes.set_ylabel("MiB")
    memory_axes.set_title("Peak memory")
    memory_axes.legend(fontsize="small")
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sites", type=int, nargs="+", default=[8, 32, 128], help="virtual site counts to run")
    parser.add_argument("--client-cpus", type=int, default=1, help="Ray CPUs per ClientApp (default: %(default)s)")
    parser.add_argument("--out", type=Path, default=None, help="folder for results.json and scaling.png (default: a temp dir)")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    out = args.out or Path(tempfile.mkdtemp(prefix="bench-sim-"))
    out.mkdir(parents=True, exist_ok=True)
    toy = write_toy_dataset(out / "toy", patches_per_cell=4)
    engine = EngineConfig(client_cpus=args.client_cpus)
    rows = []
    for num_sites in args.sites:
        row = bench_size(out / f"sites-{num_sites}", num_sites, toy, engine)
        rows.append(row)
        print(json.dumps(row), flush=True)
    (out / "results.json").write_text(json.dumps(rows, indent=2) + "\n")
    plot(rows, out / "scaling.png")
    base = rows[0]
    print(f"\n{'sites':>6} {'wall s':>8} {'x':>6} {'handshake s':>12} {'round s':>8} {'x':>6} {'s/site':>7} "
          f"{'peak PSS MiB':>13} {'x':>6} {'largest MiB':>12} {'procs':>6}")
    for row in rows:
        print(f"{row['sites']:>6} {row['wall_s']:>8.1f} {row['wall_s'] / base['wall_s']:>6.2f} {row['handshake_s']:>12.1f} "
              f"{row['round_s']:>8.1f} {row['round_s'] / base['round_s']:>6.2f} {row['round_s'] / row['sites']:>7.2f} "
              f"{row['peak_pss_mib']:>13.0f} {row['peak_pss_mib'] / base['peak_pss_mib']:>6.2f} "
              f"{row['peak_process_mib']:>12.0f} {row['peak_processes']:>6}")
    print(f"\nresults: {out / 'results.json'}, plot: {out / 'scaling.png'}")


if __name__ == "__main__":
    main()
