"""Federation overhead and bytes per round on a real loopback SuperLink, and the fp16 effect on the aggregate.

Overhead of a round = (round wall time - slowest site's local training time)
/ round wall time, measured by the ServerApp on a SuperLink with TLS and
SuperNode authentication on 127.0.0.1 (sites are SuperNodes started with
``medi-client start``, on BRCA-M2C split by tissue source site). The time
left after local training is the federation's cost: serialising weights,
moving them through the SuperLink, starting the ClientApp process, loading
the site's data and rebuilding the model.

The fp16 effect is measured in one process (the real ServerApp logic and
ClientApp handlers, no network): the same seeded run with ``float32`` and
``float16`` transfer, compared by the relative difference of the global
weight update, ``||w16 - w32|| / ||w32 - w0||``.

    python benchmarks/bench_federation.py --preset tiny --rounds 3
    python benchmarks/bench_federation.py --preset medi-paper --sites A7 --rounds 1 --local-steps 1 \\
        --batch-size 1 --precision float16 --skip-aggregate
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))  # the loopback and data helpers live with the tests

from fed_data import write_site_manifests  # noqa: E402
from fed_inprocess import InProcessGrid  # noqa: E402
from fed_loopback import new_loopback  # noqa: E402
from flwr.app import Context, RecordDict  # noqa: E402

from medi_client.client_app import app as client_app  # noqa: E402
from medi_core.config import model_preset  # noqa: E402
from medi_core.metadata import MetadataSpec  # noqa: E402
from medi_core.model import build_model  # noqa: E402
from medi_server.checkpoint import load_checkpoint  # noqa: E402
from medi_server.federation import run_federation  # noqa: E402
from medi_server.settings import FederationSettings  # noqa: E402

logger = logging.getLogger("bench_federation")


def loopback_rounds(root: Path, args: argparse.Namespace, precision: str) -> list[dict]:
    """Run the federation on loopback; return the per-round rows the ServerApp logged."""
    manifests = write_site_manifests(root / "data", args.sites)
    federation = new_loopback(root, args.sites)
    overrides = {
        "model-preset": args.preset, "num-server-rounds": args.rounds, "local-steps": args.local_steps,
        "batch-size": args.batch_size, "min-clients": len(args.sites), "transfer-precision": precision,
        "grid-every": 0, "synthesize": False, "keep-checkpoints": 1, "round-timeout": 7200.0,
    }
    started = time.perf_counter()
    try:
        server = federation.start_server(args.sites, overrides, extra=["--superlink-state", args.superlink_state])
        federation.wait_registered(len(args.sites))
        for site in args.sites:
            federation.start_client(site, manifests[site])
        code = server.wait(timeout=args.timeout)
    finally:
        federation.stop()
    if code != 0:
        raise RuntimeError(f"loopback run failed with code {code}; logs in {root}")
    metrics = federation.run_dir / "metrics"
    rows = [json.loads(line) for line in (metrics / "rounds.jsonl").read_text().splitlines()]
    site_rows = [json.loads(line) for line in (metrics / "sites.jsonl").read_text().splitlines()]
    for row in rows:
        # The handler's own time at the slowest site: data, model build, training, trainer state and delta.
        handlers = [s["handler_seconds"] for s in site_rows if s["round"] == row["round"] and s["accepted"]]
        row["slowest_handler_seconds"] = max(handlers, default=float("nan"))
    logger.info("%s %s: %d rounds in %.0f s (whole run, start-up included)", args.preset, precision, len(rows),
                time.perf_counter() - started)
    return rows


def aggregate_effect(root: Path, args: argparse.Namespace) -> dict:
    """Relative difference of the global update between fp16 and fp32 transfer, same seeds."""
    manifests = write_site_manifests(root / "data", args.sites)
    nodes = {i + 1: {"data-path": str(manifests[s]), "site-id": s, "output-dir": str(root / s)}
             for i, s in enumerate(args.sites)}
    weights = {}
    for precision in ("float32", "float16"):
        settings = FederationSettings(
            run_dir=str(root / precision), model_preset=args.preset, num_server_rounds=args.rounds,
            local_steps=args.local_steps, batch_size=args.batch_size, min_clients=len(args.sites),
            transfer_precision=precision, grid_every=0, synthesize=False, run_name=f"agg-{precision}",
        )
        grid = InProcessGrid(client_app, nodes, settings.to_run_config())
        run_federation(grid, Context(run_id=1, node_id=0, node_config={}, state=RecordDict(),
                                     run_config=settings.to_run_config()))
        weights[precision] = load_checkpoint(settings.run_path).global_weights
    # Round 0 weights come from the same seed in both runs; rebuild them to measure the update size.
    spec = MetadataSpec.from_json((root / "float32" / "metadata_spec.json").read_text())
    torch.manual_seed(0)
    initial = {k: v.numpy() for k, v in build_model(model_preset(args.preset), spec).state_dict().items() if v.is_floating_point()}
    w32, w16 = weights["float32"], weights["float16"]
    update = np.sqrt(sum(float(np.sum((w32[k] - initial[k]) ** 2)) for k in w32))
    deviation = np.sqrt(sum(float(np.sum((w16[k] - w32[k]) ** 2)) for k in w32))
    return {"update_norm": update, "fp16_deviation_norm": deviation, "relative_deviation": deviation / update}


def summarise(rows: list[dict], local_steps: int) -> dict:
    """Overhead per round and where it goes, plus the local steps a round needs for overhead <= 10 %.

    With a fixed federation cost F per round and t seconds per local step,
    overhead = F / (F + n t) <= 0.1 holds for n >= 9 F / t. The fixed cost
    splits into the server's phases (prepare the broadcast, aggregate,
    checkpoint), the site handler's work outside training, and the rest of
    the exchange: moving the weights through the SuperLink both ways and
    starting the ClientApp process.
    """
    overheads = [(r["round_seconds"] - r["slowest_train_seconds"]) / r["round_seconds"] for r in rows]
    fixed = [r["round_seconds"] - r["slowest_train_seconds"] for r in rows]
    step_seconds = float(np.mean([r["slowest_train_seconds"] / local_steps for r in rows]))
    return {
        "rounds": len(rows),
        "round_seconds": [round(r["round_seconds"], 2) for r in rows],
        "slowest_train_seconds": [round(r["slowest_train_seconds"], 2) for r in rows],
        "overhead": [round(o, 4) for o in overheads],
        "mean_overhead": round(float(np.mean(overheads)), 4),
        "mean_fixed_seconds": round(float(np.mean(fixed)), 2),
        "seconds_per_local_step": round(step_seconds, 2),
        "local_steps_for_10_percent": int(np.ceil(9 * np.mean(fixed) / step_seconds)),
        "mib_sent_per_round_all_sites": round(rows[0]["bytes_sent"] / 2**20, 2),
        "fixed_cost_parts_seconds": _fixed_cost_parts(rows),
        "mib_received_per_round_all_sites": round(rows[0]["bytes_received"] / 2**20, 2),
    }


def _fixed_cost_parts(rows: list[dict]) -> dict[str, float]:
    """Mean seconds per round of each part of the fixed cost (rounds logged without phases give NaN)."""
    def mean(values):
        return round(float(np.mean(values)), 2)

    nan = float("nan")
    return {
        "server_prepare": mean([r.get("prepare_seconds", nan) for r in rows]),
        "server_aggregate": mean([r.get("aggregate_seconds", nan) for r in rows]),
        "server_checkpoint": mean([r.get("checkpoint_seconds", nan) for r in rows]),
        "site_handler_outside_training": mean([r["slowest_handler_seconds"] - r["slowest_train_seconds"] for r in rows]),
        "transport_and_clientapp_start": mean(
            [r.get("exchange_seconds", nan) - r["slowest_handler_seconds"] for r in rows]),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="tiny", choices=["tiny", "small", "medi-paper"])
    parser.add_argument("--sites", nargs="+", default=["A7", "AC"], help="BRCA-M2C tissue source sites, one SuperNode each")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--local-steps", type=int, default=5)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--precision", nargs="+", default=["float32", "float16"], choices=["float32", "float16"])
    parser.add_argument("--superlink-state", default="database", choices=["database", "memory"],
                        help="medi-server --superlink-state; 'memory' for medi-paper (see the benchmark notes)")
    parser.add_argument("--skip-aggregate", action="store_true", help="skip the in-process fp16-vs-fp32 comparison")
    parser.add_argument("--aggregate-only", action="store_true",
                        help="run only the in-process fp16-vs-fp32 comparison, without the loopback SuperLink runs")
    parser.add_argument("--timeout", type=float, default=3600.0, help="seconds per loopback run")
    parser.add_argument("--out", type=Path, help="write the results as JSON here")
    parser.add_argument("--work-dir", type=Path, help="keep run folders and logs here (default: a temporary folder)")
    args = parser.parse_args()
    if args.aggregate_only and args.skip_aggregate:
        parser.error("--aggregate-only and --skip-aggregate exclude each other; pass one of them")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    for name in ("medi_server", "medi_core", "medi_client"):
        logging.getLogger(name).setLevel(logging.WARNING)
    results: dict = {"preset": args.preset, "sites": args.sites, "local_steps": args.local_steps,
                     "batch_size": args.batch_size}
    with tempfile.TemporaryDirectory(prefix="bench-fed-") as scratch:
        tmp = args.work_dir or Path(scratch)
        for precision in [] if args.aggregate_only else args.precision:
            rows = loopback_rounds(Path(tmp) / f"loopback-{precision}", args, precision)
            results[precision] = summarise(rows, args.local_steps)
            print(f"{args.preset} {precision}: {json.dumps(results[precision])}", flush=True)
        if "float32" in results and "float16" in results:
            ratio = results["float16"]["mib_sent_per_round_all_sites"] / results["float32"]["mib_sent_per_round_all_sites"]
            results["fp16_bytes_ratio"] = round(ratio, 4)
            print(f"fp16 / fp32 bytes sent per round: {ratio:.3f}", flush=True)
        if not args.skip_aggregate:
            results["aggregate"] = aggregate_effect(Path(tmp) / "aggregate", args)
            print(f"fp16 effect on the aggregate: {json.dumps(results['aggregate'])}", flush=True)
    if args.out is not None:
        args.out.write_text(json.dumps(results, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
