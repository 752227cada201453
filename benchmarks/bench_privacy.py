"""Benchmark of DP-SGD against plain training: step time and peak step memory, same process.

For one model preset, three trainers are built on the real BRCA-M2C patches
(``../shared/data/patches/brca-m2c``): plain training (the baseline), DP-SGD
with Opacus ``functorch`` per-sample gradients and DP-SGD with ``hooks`` plus
the contiguous-input fix. Their steps alternate (plain, functorch, hooks,
plain, ...) so that machine load affects all three alike. Plain training uses
fixed batches of ``--batch`` patches; DP-SGD draws Poisson batches of that
expected size, so the ratios are given per step and per example.

Peak memory is the largest heap in use (glibc ``mallinfo2``: small blocks
plus mmapped blocks) seen by a 2 ms sampling thread during a step, minus the
heap in use just before it (on CUDA: the peak allocated memory of the step).
It is the extra memory a step needs on top of the model, optimiser and data.
Heap in use, unlike RSS, is not inflated by memory that an earlier step freed.

Run::

    python benchmarks/bench_privacy.py --preset tiny --steps 5
    python benchmarks/bench_privacy.py --preset small --steps 3
"""

from __future__ import annotations

import argparse
import ctypes
import json
import logging
import statistics
import threading
import time
import warnings
from contextlib import contextmanager
from pathlib import Path

import torch

from medi_core.config import TrainConfig, model_preset
from medi_core.data import iterate_batches, open_patch_source
from medi_core.metadata import MetadataSpec
from medi_core.privacy import PrivacyConfig, make_private
from medi_core.training import build_trainer

BRCA = Path(__file__).resolve().parents[2] / "shared" / "data" / "patches" / "brca-m2c"
MODES = ("plain", "functorch", "hooks")
RSS_SAMPLE_SECONDS = 0.002


class _MallInfo2(ctypes.Structure):
    _fields_ = [(name, ctypes.c_size_t) for name in (
        "arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks", "fordblks", "keepcost",
    )]


_LIBC = ctypes.CDLL("libc.so.6")
_LIBC.mallinfo2.restype = _MallInfo2


def _heap_in_use() -> int:
    info = _LIBC.mallinfo2()
    return int(info.uordblks + info.hblkhd)  # allocated small blocks + mmapped large blocks


@contextmanager
def peak_memory(device: torch.device, out: list[int]):
    """Append the peak extra memory (bytes) of the enclosed block to ``out``."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        before = torch.cuda.memory_allocated(device)
        yield
        torch.cuda.synchronize(device)
        out.append(torch.cuda.max_memory_allocated(device) - before)
        return
    before = _heap_in_use()
    peak = [before]
    done = threading.Event()

    def sample() -> None:
        while not done.is_set():
            peak[0] = max(peak[0], _heap_in_use())
            time.sleep(RSS_SAMPLE_SECONDS)

    thread = threading.Thread(target=sample, daemon=True)
    thread.start()
    try:
        yield
    finally:
        done.set()
        thread.join()
        out.append(max(peak[0], _heap_in_use()) - before)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="tiny", help="model preset: tiny, small or medi-paper")
    parser.add_argument("--batch", type=int, default=16, help="batch size (expected Poisson batch size for DP)")
    parser.add_argument("--steps", type=int, default=5, help="timed steps per trainer, after one warm-up step")
    parser.add_argument("--device", default=None, help="cuda or cpu (default: cuda when available)")
    parser.add_argument("--json", type=Path, default=None, help="also write the results to this JSON file")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    warnings.filterwarnings("ignore", category=UserWarning)  # Opacus and torch hook notices
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))

    model_config = model_preset(args.preset)
    dataset = open_patch_source(BRCA, image_size=model_config.sample_size)
    spec = MetadataSpec.from_records(dataset.records.to_dict("records"))
    config = TrainConfig(batch_size=args.batch, total_steps=1000, warmup_fraction=0.0, mixed_precision="no")

    runners = {}
    plain = build_trainer(model_config, spec, config, device=device)
    batches = iterate_batches(dataset, spec, args.batch, generator=torch.Generator().manual_seed(0))
    runners["plain"] = lambda: plain.train_steps(batches, 1).examples
    for mode in MODES[1:]:
        trainer = build_trainer(model_config, spec, config, device=device)
        privacy = PrivacyConfig(enabled=True, noise_multiplier=1.0, grad_sample_mode=mode)
        private = make_private(trainer, privacy=privacy, num_examples=len(dataset), state_path=None, seed=0)
        runners[mode] = lambda private=private: private.train_steps(dataset, 1).train.examples

    seconds = {mode: [] for mode in MODES}
    memory = {mode: [] for mode in MODES}
    examples = {mode: 0 for mode in MODES}
    for step in range(args.steps + 1):
        for mode in MODES:
            measured: list[int] = []
            start = time.perf_counter()
            with peak_memory(device, measured):
                count = runners[mode]()
            elapsed = time.perf_counter() - start
            if step == 0:
                continue  # warm-up
            seconds[mode].append(elapsed)
            memory[mode].append(measured[0])
            examples[mode] += count

    results = {"preset": args.preset, "batch": args.batch, "steps": args.steps, "device": str(device), "modes": {}}
    base_step = statistics.median(seconds["plain"])
    base_example = sum(seconds["plain"]) / max(examples["plain"], 1)
    base_memory = max(memory["plain"])
    print(f"preset {args.preset}, batch {args.batch}, {args.steps} timed steps each, device {device}")
    print(f"{'mode':<10} {'s/step':>8} {'ratio':>6} {'ms/example':>10} {'ratio':>6} {'peak MiB':>9} {'ratio':>6}")
    for mode in MODES:
        step_s = statistics.median(seconds[mode])
        example_s = sum(seconds[mode]) / max(examples[mode], 1)
        peak = max(memory[mode])
        row = {
            "seconds_per_step": step_s,
            "step_ratio": step_s / base_step,
            "seconds_per_example": example_s,
            "example_ratio": example_s / base_example,
            "peak_step_mib": peak / 2**20,
            "memory_ratio": peak / base_memory if base_memory > 0 else float("nan"),
            "mean_batch": examples[mode] / args.steps,
        }
        results["modes"][mode] = row
        print(
            f"{mode:<10} {step_s:8.3f} {row['step_ratio']:6.2f} {1000 * example_s:10.1f} "
            f"{row['example_ratio']:6.2f} {row['peak_step_mib']:9.1f} {row['memory_ratio']:6.2f}"
        )
    if args.json is not None:
        args.json.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
