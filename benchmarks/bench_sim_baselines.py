"""Wall time of medi-sim's two central baselines trained in turn (1 process) against side by side (2 processes).

Both modes run `medi_sim.baselines.run_baselines` on the real BRCA-M2C
patches of sites A7, A8 and AC at 32 px with the tiny preset, the quick
federation preset's batch size, learning rate and DDIM steps, and the same
step count for each baseline. Each mode trains ``cls-only`` and
``medi-central`` and samples 16 patches with each. The modes alternate
``--repeats`` times in this one process, so both see the same machine load,
and the ratio is printed against the one-process time.

    python benchmarks/bench_sim_baselines.py                   # 150 steps per baseline, 1 repeat
    python benchmarks/bench_sim_baselines.py --steps 400 --repeats 2
"""

from __future__ import annotations

import argparse
import logging
import os
import tempfile
import time
from pathlib import Path

import numpy as np

from medi_core.config import model_preset
from medi_core.data import open_patch_source
from medi_core.metadata import MetadataSpec
from medi_sim.baselines import CLASS_ONLY, MEDI_CENTRAL, run_baselines
from medi_sim.config import federation_presets

BRCA = Path(__file__).resolve().parents[2] / "shared" / "data" / "patches" / "brca-m2c"
SITES = ("A7", "A8", "AC")
COUNTS = {"AC": {"lymphocyte": 8, "tumor_epithelial": 8}}  # the quick preset's requests for site AC


def time_baselines(workers: int, steps: int, out: Path) -> float:
    """Return the wall time in seconds of training and sampling both baselines with ``workers`` processes."""
    dataset = open_patch_source(BRCA, image_size=32)
    spec = MetadataSpec.from_records(dataset.records.to_dict("records"))
    site_of_patch = dataset.records["site"].to_numpy()
    sites = {site: dataset.subset(np.flatnonzero(site_of_patch == site)) for site in SITES}
    started = time.perf_counter()
    run_baselines(
        [CLASS_ONLY, MEDI_CENTRAL], sites, COUNTS, out, federated_spec=spec, model_config=model_preset("tiny"),
        settings=federation_presets()["quick"], steps=steps, seed=0, scheduler="ddim", threads=1, workers=workers,
    )
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=150, help="optimiser steps per baseline")
    parser.add_argument("--repeats", type=int, default=1, help="alternations of the two modes")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    if not (BRCA / "metadata.csv").is_file():
        raise SystemExit(f"BRCA-M2C patches not found at {BRCA}")
    load_before = os.getloadavg()[0]
    times: dict[int, list[float]] = {1: [], 2: []}
    with tempfile.TemporaryDirectory() as folder:
        for repeat in range(args.repeats):
            for workers in (1, 2):
                seconds = time_baselines(workers, args.steps, Path(folder) / f"{repeat}-{workers}")
                times[workers].append(seconds)
                print(f"repeat {repeat}: {workers} process(es): {seconds:.1f} s", flush=True)
    in_turn, side_by_side = float(np.median(times[1])), float(np.median(times[2]))
    print(f"1-minute load average: {load_before:.2f} before, {os.getloadavg()[0]:.2f} after")
    print(f"median over {args.repeats} repeat(s), {args.steps} steps per baseline: in turn {in_turn:.1f} s, "
          f"side by side {side_by_side:.1f} s, ratio {side_by_side / in_turn:.2f}")


if __name__ == "__main__":
    main()
