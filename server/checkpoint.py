"""Per-round server checkpoints: everything `medi-server --resume` needs to continue a run.

Layout under ``RUN_DIR/checkpoints/round-NNNN/``:

- ``global.safetensors``: fp32 master weights after the round
- ``ema.safetensors``: the server-side EMA of the global weights
- ``strategy.safetensors``: the strategy's arrays (FedAdam moments); may be empty
- ``state.json``: round number, metadata spec, balance plan, site summaries,
  EMA update count, settings and per-site data counts

A round folder is written under a temporary name and renamed when complete,
so a crash mid-write never leaves a checkpoint that looks complete.
"""

from __future__ import annotations

import json
import logging
import re
import shutil
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from safetensors.numpy import load_file, save_file

from medi_core.errors import CheckpointError

logger = logging.getLogger(__name__)

CHECKPOINT_DIR = "checkpoints"
ROUND_DIR = re.compile(r"^round-(\d{4,})$")
STATE_NAME = "state.json"


@dataclass
class ServerCheckpoint:
    """The server's state after ``server_round`` complete rounds."""

    server_round: int
    global_weights: dict[str, np.ndarray]
    ema_weights: dict[str, np.ndarray]
    strategy_arrays: dict[str, np.ndarray] = field(default_factory=dict)
    state: dict[str, Any] = field(default_factory=dict)  # JSON-serialisable run state


def _save_arrays(path: Path, arrays: Mapping[str, np.ndarray]) -> None:
    save_file({k: np.ascontiguousarray(v) for k, v in arrays.items()}, str(path))


def save_checkpoint(run_dir: Path, checkpoint: ServerCheckpoint, *, keep: int = 2) -> Path:
    """Write round ``checkpoint.server_round`` atomically and keep only the newest ``keep`` rounds."""
    root = run_dir / CHECKPOINT_DIR
    root.mkdir(parents=True, exist_ok=True)
    final = root / f"round-{checkpoint.server_round:04d}"
    tmp = root / f".round-{checkpoint.server_round:04d}.tmp"
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir()
    _save_arrays(tmp / "global.safetensors", checkpoint.global_weights)
    _save_arrays(tmp / "ema.safetensors", checkpoint.ema_weights)
    _save_arrays(tmp / "strategy.safetensors", checkpoint.strategy_arrays)
    state = {"server_round": checkpoint.server_round, **checkpoint.state}
    (tmp / STATE_NAME).write_text(json.dumps(state, indent=2, sort_keys=True, default=str) + "\n")
    if final.exists():
        shutil.rmtree(final)
    tmp.rename(final)
    logger.info("saved checkpoint of round %d to %s", checkpoint.server_round, final)
    for old in complete_rounds(run_dir)[:-keep]:
        shutil.rmtree(root / f"round-{old:04d}", ignore_errors=True)
    return final


def complete_rounds(run_dir: Path) -> list[int]:
    """Round numbers with a complete checkpoint folder, ascending."""
    root = run_dir / CHECKPOINT_DIR
    if not root.is_dir():
        return []
    rounds = []
    for child in root.iterdir():
        match = ROUND_DIR.match(child.name)
        if match and (child / STATE_NAME).is_file():
            rounds.append(int(match.group(1)))
    return sorted(rounds)


def load_checkpoint(run_dir: Path, server_round: int | None = None) -> ServerCheckpoint:
    """Load round ``server_round`` (default: the newest complete one) from ``run_dir``."""
    rounds = complete_rounds(run_dir)
    if not rounds:
        raise CheckpointError(
            f"no complete round checkpoint in {run_dir / CHECKPOINT_DIR}; "
            "start a new run instead of resuming, or point --resume at the right run folder"
        )
    chosen = rounds[-1] if server_round is None else server_round
    folder = run_dir / CHECKPOINT_DIR / f"round-{chosen:04d}"
    if chosen not in rounds:
        raise CheckpointError(f"round {chosen} has no complete checkpoint in {run_dir}; complete rounds: {rounds}")
    try:
        state = json.loads((folder / STATE_NAME).read_text())
        return ServerCheckpoint(
            server_round=int(state.pop("server_round")),
            global_weights=load_file(str(folder / "global.safetensors")),
            ema_weights=load_file(str(folder / "ema.safetensors")),
            strategy_arrays=load_file(str(folder / "strategy.safetensors")),
            state=state,
        )
    except (OSError, KeyError, ValueError) as err:
        raise CheckpointError(f"checkpoint {folder} is incomplete or corrupt: {err}") from err
