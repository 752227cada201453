"""Handshake: collect each site's k-anonymised counts and freeze the run's vocabularies.

Every site's embedding tables must be identical, so the server builds one
`MetadataSpec` from the union of the values the sites report and sends it
with every round. A site that joins after the vocabularies are frozen and
reports a value outside them is handled by ``unseen-values``: ``unknown``
trains that value as the reserved "unknown" entry, ``reject`` leaves the site
out of training; either way the server logs the site and the values.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from flwr.app import ConfigRecord, Message, RecordDict
from flwr.serverapp import Grid

from medi_core import protocol as P
from medi_core.errors import FederationError, MetadataError
from medi_core.metadata import MetadataSpec
from medi_core.site_summary import SiteSummary
from medi_server.messaging import send_and_receive
from medi_server.settings import FederationSettings

logger = logging.getLogger(__name__)


@dataclass
class SiteInfo:
    """A node as the handshake saw it: its site id and its k-anonymised counts."""

    node_id: int
    site_id: str
    summary: SiteSummary


def request_summaries(
    grid: Grid, node_ids: Iterable[int], settings: FederationSettings, *, group_id: str = "handshake"
) -> dict[int, SiteInfo]:
    """Send ``query.summary`` to ``node_ids``; return the sites that answered (failures are logged)."""
    config = ConfigRecord({P.K_ANONYMITY: settings.k_anonymity, P.SUMMARY_FIELDS: settings.summary_fields})
    messages = [
        Message(RecordDict({P.CONFIG: config}), dst_node_id=node, message_type=P.MSG_SUMMARY, group_id=group_id)
        for node in node_ids
    ]
    if not messages:
        return {}
    sites: dict[int, SiteInfo] = {}
    replies = send_and_receive(grid, messages, timeout=settings.handshake_timeout)
    for reply in replies:
        node = reply.metadata.src_node_id
        if reply.has_error() and reply.error.code == P.DECLINED_ERROR_CODE:
            logger.error("handshake: node %d declined the summary request and is left out: %s", node, reply.error.reason)
            continue
        if reply.has_error():
            logger.error("handshake: node %d failed to send its summary: %s", node, reply.error.reason)
            continue
        try:
            record = reply.content.config_records[P.SUMMARY]
            site_id = str(record[P.SITE_ID])
            summary = SiteSummary.from_json(str(record[P.SUMMARY_JSON]), source=f"site {site_id}")
        except (KeyError, MetadataError) as err:
            logger.error("handshake: node %d sent an invalid summary and is left out: %s", node, err)
            continue
        if list(summary.fields) != settings.fields_list:
            logger.error(
                "handshake: site %s counted fields %s, the run asked for %s; leaving it out",
                site_id, list(summary.fields), settings.fields_list,
            )
            continue
        # NOTE: the site id is taken as the node reports it. Nothing checks it against the SuperNode
        # key the node authenticated with, so a hospital holding another site's key can claim that site.
        sites[node] = SiteInfo(node_id=node, site_id=site_id, summary=summary)
        logger.info("handshake: site %s (node %d) holds %d patches in %d metadata cells",
                    site_id, node, summary.num_patches, len(summary.cells))
    missing = len(messages) - len(replies)
    if missing:
        logger.error("handshake: %d node(s) did not answer within %.0f s", missing, settings.handshake_timeout)
    duplicates = _duplicate_site_ids(sites.values())
    if duplicates:
        raise FederationError(
            f"handshake: site ids {duplicates} are used by more than one SuperNode; "
            "give every site a unique site-id in its node config"
        )
    return sites


def _duplicate_site_ids(sites: Iterable[SiteInfo]) -> list[str]:
    seen: dict[str, int] = {}
    for info in sites:
        seen[info.site_id] = seen.get(info.site_id, 0) + 1
    return sorted(s for s, n in seen.items() if n > 1)


def build_spec(sites: Mapping[int, SiteInfo], settings: FederationSettings) -> MetadataSpec:
    """The frozen metadata spec: one categorical field per counted field, vocabularies from the union."""
    rows = [
        dict(zip(info.summary.fields, key, strict=True))
        for info in sites.values()
        for key in info.summary.cells
    ]
    if not rows:
        raise FederationError("handshake: no site reported any patches; check each site's data-path")
    return MetadataSpec.from_records(
        rows,
        categorical=tuple(settings.fields_list),
        dropout=settings.condition_dropout,
        on_unknown="map" if settings.unseen_values == "unknown" else "reject",
    )


def unseen_values(summary: SiteSummary, spec: MetadataSpec) -> list[str]:
    """``field=value`` strings of the summary that the frozen vocabularies lack."""
    unseen = []
    for name in summary.fields:
        known = set(spec.categorical_field(name).values)
        unseen += [f"{name}={value}" for value in sorted(summary.values(name) - known)]
    return unseen


def admit_late_site(info: SiteInfo, spec: MetadataSpec, settings: FederationSettings, server_round: int) -> bool:
    """Decide whether a site that missed the handshake may train; log the decision."""
    unseen = unseen_values(info.summary, spec)
    if not unseen:
        logger.info("round %d: site %s (node %d) joined late; its values are all in the vocabularies",
                    server_round, info.site_id, info.node_id)
        return True
    if settings.unseen_values == "reject":
        logger.warning("round %d: site %s (node %d) joined late with values outside the frozen vocabularies %s; "
                       "rejected (unseen-values=reject)", server_round, info.site_id, info.node_id, unseen)
        return False
    logger.warning("round %d: site %s (node %d) joined late with values outside the frozen vocabularies %s; "
                   "they train as %r (unseen-values=unknown)", server_round, info.site_id, info.node_id, unseen, "unknown")
    return True
