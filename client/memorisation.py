"""A site's held-out patches and its memorisation check after synthesis.

Before the first round each site sets aside ``holdout-fraction`` of its real
patches. They never enter a training batch, a DP-SGD Poisson batch or the
patch count the server weights the site by. After synthesis the site runs
`medi_core.privacy.memorisation_check` on its training patches, its synthetic
patches and these held-out patches, and only the summary (counts, distance
quantiles, ratios) leaves the site.

Which patches are held out depends on the run's seed, the site id and each
patch's storage location (file path, or shard and offset), never on the order
in which the source lists the patches. Every round of a run, and a restarted
SuperNode, therefore train on the same patches.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Iterator, Mapping
from typing import Any

import numpy as np
import torch

from medi_core import protocol as P
from medi_core.data import PatchDataset
from medi_core.privacy import memorisation_check
from medi_client.site import SiteConfig, open_site_data

logger = logging.getLogger(__name__)

FEATURE_BATCH_SIZE = 64  # patches decoded and encoded at a time, so a large site never loads all of them at once
HASH_BYTES = 8  # 64-bit rank per patch: ties between two patches are practically impossible


def _patch_ranks(dataset: PatchDataset, *, seed: int, site: str) -> np.ndarray:
    """Return a pseudo-random 64-bit rank per patch, a hash of the seed, the site and the patch location."""
    locators = [c for c in dataset.records.columns if str(c).startswith("_")]
    ranks = np.empty(len(dataset), dtype=np.uint64)
    for i, row in enumerate(dataset.records[locators].itertuples(index=False)):
        key = "|".join([str(seed), site, *(str(value) for value in row)]).encode()
        ranks[i] = int.from_bytes(hashlib.blake2b(key, digest_size=HASH_BYTES).digest(), "big")
    return ranks


def holdout_size(num_patches: int, fraction: float) -> int:
    """Return how many of ``num_patches`` are held out: ``round(fraction * n)``, at least 1, leaving 1 to train."""
    if fraction <= 0 or num_patches < 2:
        return 0
    return min(max(1, round(fraction * num_patches)), num_patches - 1)


def split_holdout(
    dataset: PatchDataset, *, fraction: float, seed: int, site: str
) -> tuple[PatchDataset, PatchDataset | None]:
    """Split a site's patches into (training patches, held-out patches or None when nothing is held out)."""
    size = holdout_size(len(dataset), fraction)
    if size == 0:
        return dataset, None
    # NOTE: the split assumes a site's patches stay the same during a run. A patch added
    # mid-run can move one earlier training patch into the held-out set.
    order = np.argsort(_patch_ranks(dataset, seed=seed, site=site), kind="stable")
    held_out = np.zeros(len(dataset), dtype=bool)
    held_out[order[:size]] = True
    return dataset.subset(~held_out), dataset.subset(held_out)


def open_site_split(
    site: SiteConfig, config: Mapping[str, Any], *, image_size: int
) -> tuple[PatchDataset, PatchDataset | None]:
    """Open the site's patches and split off the held-out ones, as the round's ``holdout-*`` keys set them."""
    dataset = open_site_data(site, image_size=image_size)
    fraction = float(config.get(P.HOLDOUT_FRACTION, 0.0))  # an older server sends none: hold out nothing
    train, holdout = split_holdout(dataset, fraction=fraction, seed=int(config.get(P.HOLDOUT_SEED, 0)), site=site.site_id)
    if holdout is not None:
        logger.info("site %s: %d of %d patches held out of training for the memorisation check",
                    site.site_id, len(holdout), len(dataset))
    return train, holdout


def _image_batches(dataset: PatchDataset) -> Iterator[torch.Tensor]:
    for start in range(0, len(dataset), FEATURE_BATCH_SIZE):
        stop = min(start + FEATURE_BATCH_SIZE, len(dataset))
        yield torch.stack([dataset[i][0] for i in range(start, stop)])  # (b, 3, S, S) in [-1, 1]


def site_memorisation_summary(
    train: PatchDataset,
    holdout: PatchDataset | None,
    synthetic: torch.Tensor | None,
    *,
    site: str,
) -> dict[str, Any]:
    """Run the memorisation check; return its summary, or ``{"skipped": reason}`` when it cannot run.

    ``synthetic`` is ``(N, 3, H, W)`` in [-1, 1]. The summary contains counts,
    distance quantiles and ratios only, never a patch, feature or index.
    """
    if holdout is None:
        reason = "no held-out patches (holdout-fraction is 0 or the site has fewer than 2 patches)"
    elif synthetic is None or synthetic.shape[0] == 0:
        reason = "no synthetic patches were generated at this site"
    else:
        report = memorisation_check(_image_batches(train), synthetic, _image_batches(holdout), batch_size=FEATURE_BATCH_SIZE)
        logger.info(
            "site %s: memorisation check on %d synthetic, %d held-out and %d training patches: median ratio %.3f, "
            "close fraction %.3f", site, report.synthetic.count, report.holdout.count, report.num_train,
            report.median_ratio, report.close_fraction,
        )
        return report.to_dict()
    logger.info("site %s: memorisation check skipped: %s", site, reason)
    return {"skipped": reason}
