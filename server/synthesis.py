"""Synthesis at the sites: send each site the global sampler and its quota, collect the counts.

A quota maps each of the site's own site values to ``{class: target count}``
from the balance plan. The client subtracts its exact local counts (the
server only receives them k-anonymised) and generates the difference
conditioned on its own site. It then checks the synthetic patches for
memorisation against patches it held out of training, and replies with
counts and the check's summary statistics only.
"""

from __future__ import annotations

import csv
import json
import logging
from collections.abc import Mapping
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING, Any

from flwr.app import ConfigRecord, Message, RecordDict

from medi_core import protocol as P
from medi_core import transfer
from medi_core.metadata import SITE_FIELD
from medi_server.aggregation import to_record
from medi_server.messaging import send_and_receive

if TYPE_CHECKING:
    from medi_server.federation import Federation

logger = logging.getLogger(__name__)

# Columns of RUN_DIR/memorisation.csv: `medi_core.privacy.MemorisationReport` flattened, or the reason it was skipped.
MEMORISATION_COLUMNS = [
    "site", "feature_space", "num_train",
    "synthetic_count", "synthetic_minimum", "synthetic_p05", "synthetic_median", "synthetic_mean",
    "holdout_count", "holdout_minimum", "holdout_p05", "holdout_median", "holdout_mean",
    "median_ratio", "close_fraction", "skipped",
]
CARD_KEYS = ["median_ratio", "close_fraction", "synthetic_count", "holdout_count", "num_train"]


def site_quota(federation: Federation, node_id: int) -> dict[str, dict[str, int]]:
    """``{site value: {class: target}}`` for the site values this node reported."""
    info = federation.sites[node_id]
    values = info.summary.values(SITE_FIELD) if SITE_FIELD in info.summary.fields else {info.site_id}
    return {value: federation.plan.quota(value) for value in sorted(values) if federation.plan.quota(value)}


def request_synthesis(federation: Federation, *, group_id: str) -> dict[str, Any]:
    """Send the sampler and quotas; return ``{site id: {"written": n, "counts": {...}}}`` or the error."""
    settings = federation.settings
    wire = to_record(transfer.encode(federation.ema.shadow, settings.transfer_precision))
    card = json.dumps(federation.card(), default=str)
    messages = []
    for node, info in sorted(federation.sites.items()):
        quota = site_quota(federation, node)
        config = ConfigRecord({
            P.MODEL_CONFIG: json.dumps(asdict(federation.model_config)),
            P.DIFFUSION_CONFIG: json.dumps(asdict(federation.diffusion_config)),
            P.METADATA_SPEC: federation.spec.to_json(),
            P.QUOTA: json.dumps(quota),
            P.RUN_NAME: settings.run_name,
            P.SAMPLE_STEPS: settings.sample_steps,
            P.SAMPLE_SCHEDULER: settings.sample_scheduler,
            P.GUIDANCE_SCALE: settings.guidance_scale,
            P.SAMPLE_BATCH_SIZE: settings.sample_batch_size,
            P.SAMPLE_SEED: settings.seed,
            P.SAMPLER_CARD: card,
            P.MAX_SYNTHETIC_PER_CELL: settings.max_synthetic_per_cell,
            P.HOLDOUT_FRACTION: settings.holdout_fraction,
            P.HOLDOUT_SEED: settings.seed,
        })
        logger.info("synthesis: site %s gets quota %s", info.site_id, quota)
        messages.append(Message(RecordDict({P.ARRAYS: wire, P.CONFIG: config}), dst_node_id=node,
                                message_type=P.MSG_SYNTHESIZE, group_id=group_id))
    results: dict[str, Any] = {}
    for reply in send_and_receive(federation.grid, messages, timeout=settings.round_timeout):
        node = reply.metadata.src_node_id
        site = federation.sites[node].site_id if node in federation.sites else f"node {node}"
        if reply.has_error():
            logger.error("synthesis: site %s failed: %s", site, reply.error.reason)
            results[site] = {"error": reply.error.reason}
            continue
        written = int(reply.content.metric_records[P.METRICS][P.SYNTHETIC_WRITTEN])
        summary = reply.content.config_records[P.SUMMARY]
        counts = json.loads(str(summary[P.SUMMARY_JSON]))
        results[site] = {"written": written, "counts": counts}
        logger.info("synthesis: site %s wrote %d synthetic patches %s", site, written, counts)
        if P.MEMORISATION_JSON in summary:
            results[site]["memorisation"] = _log_memorisation(site, json.loads(str(summary[P.MEMORISATION_JSON])))
    for info in federation.sites.values():
        if info.site_id not in results:
            logger.error("synthesis: site %s sent no reply within %.0f s", info.site_id, settings.round_timeout)
            results[info.site_id] = {"error": "no reply"}
    return results


def _log_memorisation(site: str, summary: dict[str, Any]) -> dict[str, Any]:
    if "skipped" in summary:
        logger.info("synthesis: site %s skipped the memorisation check: %s", site, summary["skipped"])
    else:
        logger.info("synthesis: site %s memorisation check: synthetic/held-out median distance ratio %.3f, "
                    "%.1f %% of synthetic patches closer than the held-out 5th percentile",
                    site, summary["median_ratio"], 100 * summary["close_fraction"])
    return summary


def memorisation_rows(results: Mapping[str, Any]) -> list[dict[str, Any]]:
    """Flatten the memorisation summaries in `request_synthesis`'s results to one row per site."""
    rows = []
    for site, result in sorted(results.items()):
        summary = result.get("memorisation") if isinstance(result, Mapping) else None
        if summary is None:
            continue
        row: dict[str, Any] = {"site": site}
        for key, value in summary.items():
            if isinstance(value, Mapping):
                row.update({f"{key}_{name}": v for name, v in value.items()})
            else:
                row[key] = value
        rows.append(row)
    return rows


def write_memorisation_table(path: Path, rows: list[dict[str, Any]]) -> Path:
    """Write the memorisation rows as CSV, with the columns of `MEMORISATION_COLUMNS`."""
    with path.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=MEMORISATION_COLUMNS, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)
    logger.info("wrote the memorisation check of %d site(s) to %s", len(rows), path)
    return path


def memorisation_card(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Short per-site memorisation entries for the sampler's model card."""
    card: dict[str, Any] = {}
    for row in rows:
        if "skipped" in row:
            card[row["site"]] = f"skipped: {row['skipped']}"
        else:
            card[row["site"]] = {key: row[key] for key in CARD_KEYS}
    return card
