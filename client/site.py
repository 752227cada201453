"""A site's local settings (Flower node config) and its local patch data.

A hospital sets these once per SuperNode (``medi-client start`` writes them
into ``--node-config``); they never leave the site:

| key | meaning |
|---|---|
| ``data-path`` | patch source: patch store, TCGA-UT folder, labelled folder or manifest CSV |
| ``site-id`` | this site's name in the federation (also fills a missing ``site`` column) |
| ``output-dir`` | where synthetic patches, the received sampler and local training state go |
| ``max-epsilon`` | differential-privacy budget; 0 trains without DP |
| ``privacy-state-dir`` | where the privacy accountant is stored (default: ``output-dir/privacy``) |
| ``data-kind`` | source kind, default ``auto`` |
| ``device`` | ``auto``, ``cpu`` or ``cuda`` |
| ``audit-log`` | optional JSONL file listing every reply this site sends |
| ``min-k`` | lowest k-anonymity the site accepts in a summary request (absent: any k; ``medi-client start``: 5) |

Under Flower's simulation engine a virtual node's config holds only
``partition-id`` and ``num-partitions``. `SiteConfig.from_context` then reads
the node config of that partition from the JSON site table named by the run
config key ``site-table`` (written by ``medi-sim``).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from medi_core import protocol as P
from medi_core.data import PatchDataset, open_patch_source
from medi_core.errors import ConfigError
from medi_core.metadata import SITE_FIELD

logger = logging.getLogger(__name__)

SOURCE_KINDS = ("auto", "patch_store", "tcga_ut", "labelled_folder", "manifest")
RUN_SITE_TABLE = "site-table"  # run config key: JSON site table of a simulated federation
PARTITION_ID = "partition-id"  # node config key Flower's simulation engine sets on virtual nodes
NUM_PARTITIONS = "num-partitions"


@dataclass(frozen=True)
class SiteConfig:
    """Parsed node config of one site."""

    data_path: Path
    site_id: str
    output_dir: Path
    max_epsilon: float = 0.0
    privacy_state_dir: Path | None = None
    data_kind: str = "auto"
    device: str = "auto"
    audit_log: Path | None = None
    min_k: int = 1  # summary requests with a smaller k-anonymity are rejected

    @classmethod
    def from_node_config(cls, node_config: Mapping[str, Any]) -> SiteConfig:
        missing = [k for k in (P.NODE_DATA_PATH, P.NODE_SITE_ID, P.NODE_OUTPUT_DIR) if not str(node_config.get(k, "")).strip()]
        if missing:
            raise ConfigError(
                f"node config lacks {missing}; start the SuperNode with "
                "`medi-client start --data PATH --site-id NAME --output-dir DIR ...`"
            )
        kind = str(node_config.get(P.NODE_DATA_KIND, "auto"))
        if kind not in SOURCE_KINDS:
            raise ConfigError(f"node config {P.NODE_DATA_KIND}={kind!r} is invalid; use one of {list(SOURCE_KINDS)}")
        device = str(node_config.get(P.NODE_DEVICE, "auto"))
        if device not in ("auto", "cpu", "cuda"):
            raise ConfigError(f"node config {P.NODE_DEVICE}={device!r} is invalid; use auto, cpu or cuda")
        try:
            max_epsilon = float(node_config.get(P.NODE_MAX_EPSILON, 0.0))
        except (TypeError, ValueError):
            raise ConfigError(f"node config {P.NODE_MAX_EPSILON}={node_config.get(P.NODE_MAX_EPSILON)!r} is not a number") from None
        if max_epsilon < 0:
            raise ConfigError(f"node config {P.NODE_MAX_EPSILON}={max_epsilon} must be >= 0 (0: no differential privacy)")
        min_k = node_config.get(P.NODE_MIN_K, 1)
        if isinstance(min_k, bool) or not isinstance(min_k, int) or min_k < 1:
            raise ConfigError(f"node config {P.NODE_MIN_K}={min_k!r} is invalid; use an integer >= 1")
        privacy_dir = str(node_config.get(P.NODE_PRIVACY_STATE_DIR, "")).strip()
        audit = str(node_config.get(P.NODE_AUDIT_LOG, "")).strip()
        return cls(
            data_path=Path(str(node_config[P.NODE_DATA_PATH])).expanduser(),
            site_id=str(node_config[P.NODE_SITE_ID]),
            output_dir=Path(str(node_config[P.NODE_OUTPUT_DIR])).expanduser(),
            max_epsilon=max_epsilon,
            privacy_state_dir=Path(privacy_dir).expanduser() if privacy_dir else None,
            data_kind=kind,
            device=device,
            audit_log=Path(audit).expanduser() if audit else None,
            min_k=min_k,
        )

    @classmethod
    def from_context(cls, context: Any) -> SiteConfig:
        """Read the site from ``context.node_config``, or from the run's site table for a simulated node."""
        node_config = context.node_config
        if str(node_config.get(P.NODE_DATA_PATH, "")).strip() or PARTITION_ID not in node_config:
            return cls.from_node_config(node_config)
        return cls.from_node_config(site_table_entry(context.run_config, node_config))

    @property
    def privacy_dir(self) -> Path:
        return self.privacy_state_dir or self.output_dir / "privacy"

    def state_dir(self, run_name: str) -> Path:
        """Local training state of one federated run (optimiser moments, step counter)."""
        return self.output_dir / "state" / run_name

    def torch_device(self) -> torch.device:
        if self.device == "auto":
            return torch.device("cuda" if torch.cuda.is_available() else "cpu")
        if self.device == "cuda" and not torch.cuda.is_available():
            raise ConfigError(f"site {self.site_id}: node config device=cuda, but no CUDA device is available")
        return torch.device(self.device)


def site_table_entry(run_config: Mapping[str, Any], node_config: Mapping[str, Any]) -> dict[str, Any]:
    """Return the node config of a simulated node's partition from the JSON site table ``{partition id: node config}``."""
    partition = node_config[PARTITION_ID]
    table_path = str(run_config.get(RUN_SITE_TABLE, "")).strip()
    if not table_path:
        raise ConfigError(
            f"simulated node with partition-id {partition} has no site settings: its node config has no "
            f"{P.NODE_DATA_PATH} and the run config sets no {RUN_SITE_TABLE}; run simulations with `medi-sim`"
        )
    try:
        table = json.loads(Path(table_path).expanduser().read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as err:
        raise ConfigError(f"site table {table_path} (run config {RUN_SITE_TABLE}) is unreadable: {err}") from None
    expected = node_config.get(NUM_PARTITIONS)
    if expected is not None and int(expected) != len(table):
        raise ConfigError(
            f"site table {table_path} lists {len(table)} sites but the simulation runs {expected} virtual "
            "nodes; set num-supernodes to the number of sites"
        )
    entry = table.get(str(partition))
    if not isinstance(entry, dict):
        raise ConfigError(f"site table {table_path} has no entry for partition-id {partition}; its keys are {sorted(table)}")
    return entry


def open_site_data(site: SiteConfig, *, image_size: int) -> PatchDataset:
    """Open the site's patches at ``image_size`` px; patches without a site value get ``site-id``."""
    dataset = open_patch_source(site.data_path, kind=site.data_kind, image_size=image_size)
    if len(dataset) == 0:
        raise ConfigError(f"site {site.site_id}: no patches in {site.data_path}; check data-path")
    records = dataset.records.copy()
    if SITE_FIELD not in records.columns:
        records[SITE_FIELD] = None
    unset = records[SITE_FIELD].isna()
    if unset.any():
        logger.info("site %s: %d patch(es) have no site value; using the site id", site.site_id, int(unset.sum()))
        records[SITE_FIELD] = records[SITE_FIELD].astype(object).where(~unset, site.site_id)
    return PatchDataset(records, image_size=image_size, source=dataset.source)
