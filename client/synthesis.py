"""Synthesis at a site: save the received global sampler, generate the site's quota, write a manifest.

Output, under ``output-dir``:

- ``sampler/<run-name>/``: the global sampler (`MediSampler.save_pretrained`)
- ``synthetic/<run-name>/<site>/<class>/<index>.png``: the generated patches
- ``synthetic/<run-name>/manifest.csv``: ``path, class, site, seed, synthetic``,
  readable by `medi_core.data.open_patch_source` as a manifest source

Only the counts per (site, class) and the summary of the memorisation check
(`medi_client.memorisation`) go back to the server.
"""

from __future__ import annotations

import csv
import json
import logging
import re
import zlib
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from medi_core import protocol as P
from medi_core.artifact import MediSampler
from medi_core.balance import local_deficit
from medi_core.metadata import SITE_FIELD
from medi_core.sampling import to_uint8_images
from medi_core.site_summary import exact_class_counts
from medi_client.local_training import configs_from_round, model_from_weights
from medi_client.memorisation import open_site_split, site_memorisation_summary
from medi_client.site import SiteConfig

logger = logging.getLogger(__name__)

SAFE_NAME = re.compile(r"[^A-Za-z0-9._-]+")
MANIFEST_COLUMNS = ["path", "class", "site", "seed", "synthetic"]


def _folder_name(value: str) -> str:
    return SAFE_NAME.sub("_", value) or "_"


@dataclass
class SiteSynthesis:
    """Result of synthesis at a site: counts and the memorisation summary, all that the site reports."""

    written: int  # synthetic patches written in total
    counts: dict[str, dict[str, int]]  # {site value: {class: patches written}}
    memorisation: dict[str, Any]  # `medi_client.memorisation.site_memorisation_summary`


def synthesize_quota(
    site: SiteConfig,
    ema_weights: Mapping[str, np.ndarray],
    config: Mapping[str, Any],
) -> SiteSynthesis:
    """Generate this site's planned patches, write them with a manifest, and check them for memorisation."""
    model_config, diffusion_config, spec = configs_from_round(config)
    run_name = str(config[P.RUN_NAME])
    quota: dict[str, dict[str, int]] = json.loads(str(config[P.QUOTA]))
    cap = int(config.get(P.MAX_SYNTHETIC_PER_CELL, 0)) or None
    card = json.loads(str(config.get(P.SAMPLER_CARD, "{}")))
    scheduler = str(config.get(P.SAMPLE_SCHEDULER, "ddim"))  # servers that predate the key sampled with DDIM

    model = model_from_weights(model_config, spec, ema_weights, site=site.site_id)
    model.to(site.torch_device())
    sampler = MediSampler(model, diffusion_config, card, default_scheduler=scheduler,
                          default_steps=int(config[P.SAMPLE_STEPS]))
    sampler.save_pretrained(site.output_dir / "sampler" / run_name)

    train, holdout = open_site_split(site, config, image_size=model_config.sample_size)
    # Quotas count every real patch of the site, held-out ones included.
    records = pd.concat([train.records, holdout.records]) if holdout is not None else train.records
    conditions, seeds, cells = [], [], []
    base_seed = int(config.get(P.SAMPLE_SEED, 0))
    written: dict[str, dict[str, int]] = {}
    for site_value, targets in sorted(quota.items()):
        have = exact_class_counts(records, site_value)
        for cls, target in sorted(targets.items()):
            need = local_deficit(target, have.get(cls, 0), cap_per_cell=cap)
            written.setdefault(site_value, {})[cls] = need
            cell_seed = base_seed * 1_000_003 + zlib.crc32(f"{site_value}/{cls}".encode())
            for i in range(need):
                conditions.append({spec.class_field: cls, SITE_FIELD: site_value})
                seeds.append((cell_seed + i) % 2**31)
                cells.append((site_value, cls, i))
    out = site.output_dir / "synthetic" / run_name
    if not conditions:
        logger.info("site %s: nothing to synthesise for quota %s", site.site_id, quota)
        return SiteSynthesis(0, written, site_memorisation_summary(train, holdout, None, site=site.site_id))
    images = sampler.generate(
        conditions, seeds, scheduler=scheduler, guidance_scale=float(config.get(P.GUIDANCE_SCALE, 0.0)),
        batch_size=int(config.get(P.SAMPLE_BATCH_SIZE, 16)), progress=False,
    )  # (N, 3, H, W) in [-1, 1]
    rows = []
    for (site_value, cls, i), seed, picture in zip(cells, seeds, to_uint8_images(images), strict=True):
        path = out / _folder_name(site_value) / _folder_name(cls) / f"{i:05d}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        picture.save(path, format="PNG")
        rows.append({"path": str(path.relative_to(out)), "class": cls, "site": site_value, "seed": seed, "synthetic": True})
    with (out / "manifest.csv").open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=MANIFEST_COLUMNS)
        writer.writeheader()
        writer.writerows(rows)
    logger.info("site %s: wrote %d synthetic patches to %s", site.site_id, len(rows), out)
    return SiteSynthesis(len(rows), written, site_memorisation_summary(train, holdout, images, site=site.site_id))
