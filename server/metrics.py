"""Run metrics: one JSONL row per (round, site) and per round, a CSV copy, and PNG plots.

Files under ``RUN_DIR/metrics/``: ``sites.jsonl`` and ``sites.csv`` (loss,
examples, wall time, bytes sent and received, accepted or rejected with the
reason), ``rounds.jsonl`` (round wall time and its phases, slowest local
training, bytes, accepted sites), and ``loss.png``, ``bytes.png``, ``time.png``.
"""

from __future__ import annotations

import csv
import json
import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # no display on a coordinator
import matplotlib.pyplot as plt  # noqa: E402

logger = logging.getLogger(__name__)

SITE_COLUMNS = [
    "round", "site", "node_id", "accepted", "reason", "train_loss", "num_examples", "train_seconds",
    "handler_seconds", "bytes_sent", "bytes_received", "update_norm", "epsilon",
]


class MetricsLog:
    """Appends metric rows under ``run_dir/metrics`` and draws the plots."""

    def __init__(self, run_dir: Path) -> None:
        self.folder = run_dir / "metrics"
        self.folder.mkdir(parents=True, exist_ok=True)

    def truncate_after(self, server_round: int) -> None:
        """Drop rows of rounds after ``server_round`` (a resumed run redoes them)."""
        for name in ("sites.jsonl", "rounds.jsonl"):
            path = self.folder / name
            if path.is_file():
                rows = [r for r in self.read(name) if int(r.get("round", 0)) <= server_round]
                path.write_text("".join(json.dumps(r, sort_keys=True) + "\n" for r in rows))
        self._rewrite_csv()

    def read(self, name: str) -> list[dict[str, Any]]:
        path = self.folder / name
        if not path.is_file():
            return []
        return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]

    def log_site(self, row: Mapping[str, Any]) -> None:
        self._append("sites.jsonl", row)
        path = self.folder / "sites.csv"
        new = not path.is_file()
        with path.open("a", newline="") as handle:
            writer = csv.DictWriter(handle, fieldnames=SITE_COLUMNS, extrasaction="ignore")
            if new:
                writer.writeheader()
            writer.writerow(row)

    def log_round(self, row: Mapping[str, Any]) -> None:
        self._append("rounds.jsonl", row)

    def _append(self, name: str, row: Mapping[str, Any]) -> None:
        with (self.folder / name).open("a") as handle:
            handle.write(json.dumps(dict(row), sort_keys=True, default=float) + "\n")

    def _rewrite_csv(self) -> None:
        rows = self.read("sites.jsonl")
        with (self.folder / "sites.csv").open("w", newline="") as handle:
            writer = csv.DictWriter(handle, fieldnames=SITE_COLUMNS, extrasaction="ignore")
            writer.writeheader()
            writer.writerows(rows)

    def plot(self) -> list[Path]:
        """Draw loss per site, bytes per round and round wall time; return the PNG paths."""
        sites = self.read("sites.jsonl")
        rounds = self.read("rounds.jsonl")
        written = []
        if sites:
            fig, ax = plt.subplots(figsize=(6, 4))
            for site in sorted({r["site"] for r in sites}):
                points = [(r["round"], r["train_loss"]) for r in sites if r["site"] == site and r.get("accepted")]
                if points:
                    ax.plot(*zip(*points, strict=True), marker="o", label=site)
            ax.set_xlabel("round")
            ax.set_ylabel("mean local training loss")
            ax.legend(fontsize="small")
            written.append(self._save(fig, "loss.png"))
        if rounds:
            numbers = [r["round"] for r in rounds]
            fig, ax = plt.subplots(figsize=(6, 4))
            ax.bar([n - 0.2 for n in numbers], [r["bytes_sent"] / 2**20 for r in rounds], width=0.4, label="sent")
            ax.bar([n + 0.2 for n in numbers], [r["bytes_received"] / 2**20 for r in rounds], width=0.4, label="received")
            ax.set_xlabel("round")
            ax.set_ylabel("MiB of weights")
            ax.legend()
            written.append(self._save(fig, "bytes.png"))
            fig, ax = plt.subplots(figsize=(6, 4))
            ax.plot(numbers, [r["round_seconds"] for r in rounds], marker="o", label="round wall time")
            ax.plot(numbers, [r["slowest_train_seconds"] for r in rounds], marker="s", label="slowest local training")
            ax.set_xlabel("round")
            ax.set_ylabel("seconds")
            ax.legend()
            written.append(self._save(fig, "time.png"))
        return written

    def _save(self, fig: Any, name: str) -> Path:
        path = self.folder / name
        fig.tight_layout()
        fig.savefig(path, dpi=100)
        plt.close(fig)
        return path
