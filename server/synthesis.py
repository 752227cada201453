"""Synthesis at the sites: send each site the global sampler and its quota, collect the counts.

A quota maps each of the site's own site values to ``{class: target count}``
from the balance plan. The client subtracts its exact local counts (the
server only receives them k-anonymised), generates the difference
conditioned on its own site, and replies with counts only.
"""

from __future__ import annotations

import json
import logging
from dataclasses import asdict
from typing import TYPE_CHECKING, Any

from flwr.app import ConfigRecord, Message, RecordDict

from medi_core import protocol as P
from medi_core import transfer
from medi_core.metadata import SITE_FIELD
from medi_server.aggregation import to_record

if TYPE_CHECKING:
    from medi_server.federation import Federation

logger = logging.getLogger(__name__)


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
            P.GUIDANCE_SCALE: settings.guidance_scale,
            P.SAMPLE_BATCH_SIZE: settings.sample_batch_size,
            P.SAMPLE_SEED: settings.seed,
            P.SAMPLER_CARD: card,
            P.MAX_SYNTHETIC_PER_CELL: settings.max_synthetic_per_cell,
        })
        logger.info("synthesis: site %s gets quota %s", info.site_id, quota)
        messages.append(Message(RecordDict({P.ARRAYS: wire, P.CONFIG: config}), dst_node_id=node,
                                message_type=P.MSG_SYNTHESIZE, group_id=group_id))
    results: dict[str, Any] = {}
    for reply in federation.grid.send_and_receive(messages, timeout=settings.round_timeout):
        node = reply.metadata.src_node_id
        site = federation.sites[node].site_id if node in federation.sites else f"node {node}"
        if reply.has_error():
            logger.error("synthesis: site %s failed: %s", site, reply.error.reason)
            results[site] = {"error": reply.error.reason}
            continue
        written = int(reply.content.metric_records[P.METRICS][P.SYNTHETIC_WRITTEN])
        counts = json.loads(str(reply.content.config_records[P.SUMMARY][P.SUMMARY_JSON]))
        results[site] = {"written": written, "counts": counts}
        logger.info("synthesis: site %s wrote %d synthetic patches %s", site, written, counts)
    for info in federation.sites.values():
        if info.site_id not in results:
            logger.error("synthesis: site %s sent no reply within %.0f s", info.site_id, settings.round_timeout)
            results[info.site_id] = {"error": "no reply"}
    return results
