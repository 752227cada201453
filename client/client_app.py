"""The Flower ClientApp of MeDi-Fed: summary, train and synthesize handlers.

Each handler unpacks the message, calls a plain module (`medi_client.site`,
`medi_client.local_training`, `medi_client.synthesis`) and packs the reply.
Replies carry counts, metrics, weight deltas and the summary statistics of
the memorisation check only; `medi_client.audit` can log every one of them
at the site.
"""

from __future__ import annotations

import json
import logging
import sys

import numpy as np
from flwr.app import ArrayRecord, ConfigRecord, Context, Error, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp

from medi_core import protocol as P
from medi_core import transfer, wire
from medi_core.data import metadata_counts
from medi_core.errors import PrivacyBudgetExceeded
from medi_core.site_summary import summarize_counts
from medi_client.audit import audit_mod
from medi_client.local_training import train_round
from medi_client.site import SiteConfig, open_site_data
from medi_client.synthesis import synthesize_quota

logger = logging.getLogger(__name__)

SUMMARY_IMAGE_SIZE = 32  # counting never decodes images; any valid size works

app = ClientApp(mods=[audit_mod])


def _setup_logging() -> None:
    """Log MeDi lines to stderr (the SuperNode's log) once per ClientApp process."""
    for name in ("medi_client", "medi_core"):
        target = logging.getLogger(name)
        if not target.handlers:
            handler = logging.StreamHandler(sys.stderr)
            handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
            target.addHandler(handler)
            target.setLevel(logging.INFO)


def _arrays(message: Message) -> dict[str, np.ndarray]:
    """Read-only views of the received weights, in the transfer precision they came in."""
    return wire.from_record(message.content.array_records[P.ARRAYS])


def _record(arrays: dict[str, np.ndarray]) -> ArrayRecord:
    return wire.to_record(arrays)


@app.query(P.SUMMARY_ACTION)
def summary(message: Message, context: Context) -> Message:
    """Handshake: k-anonymised counts per metadata cell of this site."""
    _setup_logging()
    site = SiteConfig.from_context(context)
    config = message.content.config_records[P.CONFIG]
    k = int(config[P.K_ANONYMITY])
    if k < site.min_k:
        reason = (f"site {site.site_id} rejects the summary request: k-anonymity {k} is below this site's "
                  f"min-k {site.min_k}; set the run config key k-anonymity to at least {site.min_k}")
        logger.warning("%s", reason)
        return Message(Error(code=P.DECLINED_ERROR_CODE, reason=reason), reply_to=message)
    fields = [f.strip() for f in str(config[P.SUMMARY_FIELDS]).split(",") if f.strip()]
    dataset = open_site_data(site, image_size=SUMMARY_IMAGE_SIZE)
    site_summary = summarize_counts(metadata_counts(dataset, fields), fields, k=k)
    logger.info("site %s: sending counts of %d patches (k=%d)", site.site_id, site_summary.num_patches, k)
    record = ConfigRecord({P.SUMMARY_JSON: site_summary.to_json(), P.SITE_ID: site.site_id})
    return Message(RecordDict({P.SUMMARY: record}), reply_to=message)


@app.train()
def train(message: Message, context: Context) -> Message:
    """Run one round of local training and reply with the weight delta in the transfer precision."""
    _setup_logging()
    site = SiteConfig.from_context(context)
    config = dict(message.content.config_records[P.CONFIG])
    try:
        delta, metrics = train_round(site, _arrays(message), config)
    except PrivacyBudgetExceeded as err:
        # Rejecting a round is deliberate, so the site replies with the reason instead of raising a traceback.
        logger.warning("site %s declines to train: %s", site.site_id, err)
        return Message(Error(code=P.DECLINED_ERROR_CODE, reason=str(err)), reply_to=message)
    precision = str(config.get(P.TRANSFER_PRECISION, "float32"))
    content = RecordDict({P.ARRAYS: _record(transfer.encode(delta, precision)), P.METRICS: MetricRecord(metrics)})
    return Message(content, reply_to=message)


@app.query(P.SYNTHESIZE_ACTION)
def synthesize(message: Message, context: Context) -> Message:
    """Save the global sampler, generate this site's quota locally, reply with counts and the memorisation summary."""
    _setup_logging()
    site = SiteConfig.from_context(context)
    config = dict(message.content.config_records[P.CONFIG])
    result = synthesize_quota(site, _arrays(message), config)
    summary_record = ConfigRecord({
        P.SUMMARY_JSON: json.dumps(result.counts, sort_keys=True),
        P.SITE_ID: site.site_id,
        P.MEMORISATION_JSON: json.dumps(result.memorisation, sort_keys=True),
    })
    content = RecordDict({P.METRICS: MetricRecord({P.SYNTHETIC_WRITTEN: result.written}), P.SUMMARY: summary_record})
    return Message(content, reply_to=message)
