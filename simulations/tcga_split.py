"""Partition TCGA slides or patch records into federated sites by tissue source site (TSS).

A `SitePlan` records which TSS codes are held out and which training site
every other TSS code belongs to. As in MeDi (Drexlin et al., MICCAI 2025), whole TSS
codes are held out, so no slide or patch of a held-out TSS is ever used for
training. Held-out codes are chosen first. The remaining codes are then grouped
into training sites:

- ``per_tss``: one site per TSS code;
- ``top_k``: the K TSS codes with most slides (or patches) become sites and the
  rest are merged into one site named ``other``;
- ``map``: a user-supplied TSS -> institution map, with unmapped codes merged
  into ``other`` or rejected.

The same plan splits a slide metadata CSV (`split_slides`) or the records of
any `PatchDataset` (`split_records`). For BRCA-M2C, ``top_k=3`` gives the
sites A7, A8, AC and ``other``.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pandas as pd

from medi_core.errors import BarcodeError, DatasetError, MetadataError
from medi_core.evaluation.patches import LabeledPatches
from medi_core.metadata import tss_from_barcode

logger = logging.getLogger(__name__)

SiteGrouping = Literal["per_tss", "top_k", "map"]
OnUnmapped = Literal["merge", "reject"]

OTHER_SITE = "other"
TRAIN_SPLIT = "train"
HOLDOUT_SPLIT = "holdout"

# Column names of the GDC slide table (all_slide_metadata.csv of the MeDi repository).
TSS_COLUMN = "tissue_source_site"
SLIDE_COLUMN = "slide_submitter_id"
STRATUM_COLUMN = "project_id"


@dataclass(frozen=True)
class SitePlan:
    """Assignment of TSS codes to training sites, and the set of held-out TSS codes."""

    site_of_tss: Mapping[str, str]  # training TSS code -> site name
    holdout_tss: frozenset[str]
    merged_site: str | None = None  # site for TSS codes the plan has not seen; None rejects them
    grouping: SiteGrouping = "per_tss"
    notes: tuple[str, ...] = field(default=())

    def __post_init__(self) -> None:
        overlap = sorted(set(self.site_of_tss) & set(self.holdout_tss))
        if overlap:
            raise MetadataError(f"TSS codes {overlap} are both training and held out in the site plan")

    @property
    def sites(self) -> tuple[str, ...]:
        """Training site names, sorted."""
        return tuple(sorted(set(self.site_of_tss.values())))

    def site_for(self, tss: str) -> str | None:
        """Return the training site of ``tss``; None when it is held out."""
        if tss in self.holdout_tss:
            return None
        site = self.site_of_tss.get(tss)
        if site is not None:
            return site
        if self.merged_site is not None:
            return self.merged_site
        raise MetadataError(
            f"TSS {tss!r} is not in the site plan (grouping {self.grouping!r}); "
            "build the plan from data that contains it, or use grouping 'top_k' or 'map' "
            "to merge unseen codes into one site"
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "grouping": self.grouping,
            "site_of_tss": dict(sorted(self.site_of_tss.items())),
            "holdout_tss": sorted(self.holdout_tss),
            "merged_site": self.merged_site,
            "notes": list(self.notes),
        }

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2)


# -- reading ------------------------------------------------------------------


def _tss_or_none(barcode: str) -> str | None:
    try:
        return tss_from_barcode(barcode)
    except BarcodeError:
        return None


def read_slide_metadata(path: str | Path) -> pd.DataFrame:
    """Read a GDC slide metadata CSV and add a ``tss`` column.

    Every column is read as text with no missing-value parsing, because real TSS
    codes include ``NA`` (a uterine carcinosarcoma site) and ``06``, which
    pandas would otherwise turn into NaN and 6. An empty TSS cell is filled
    from the slide barcode.
    """
    path = Path(path)
    if not path.is_file():
        raise DatasetError(f"slide metadata CSV {path} not found; check the path")
    table = pd.read_csv(path, dtype=str, keep_default_na=False, encoding="utf-8-sig")
    table.columns = [str(c).strip() for c in table.columns]
    if TSS_COLUMN not in table.columns and SLIDE_COLUMN not in table.columns:
        raise MetadataError(
            f"slide metadata CSV {path} has neither a {TSS_COLUMN!r} nor a {SLIDE_COLUMN!r} column; "
            f"its columns are {list(table.columns)}"
        )
    tss = table[TSS_COLUMN].str.strip() if TSS_COLUMN in table.columns else pd.Series("", index=table.index)
    empty = tss == ""
    if empty.any() and SLIDE_COLUMN in table.columns:
        tss = tss.where(~empty, table[SLIDE_COLUMN].map(_tss_or_none).fillna(""))
    still_empty = np.flatnonzero((tss == "").to_numpy())
    if still_empty.size:
        rows = [int(i) + 2 for i in still_empty[:5]]  # +2: header line and 1-based numbering
        raise MetadataError(
            f"slide metadata CSV {path}: {still_empty.size} row(s) have no tissue source site and no "
            f"TCGA slide barcode (first CSV lines {rows}); fill in {TSS_COLUMN!r}"
        )
    table["tss"] = tss.to_numpy()
    return table


def read_institution_map(path: str | Path) -> dict[str, str]:
    """Read a TSS -> institution map from a CSV with columns ``tss`` and ``institution``."""
    path = Path(path)
    if not path.is_file():
        raise DatasetError(f"institution map {path} not found; check the path")
    table = pd.read_csv(path, dtype=str, keep_default_na=False, encoding="utf-8-sig")
    missing = [c for c in ("tss", "institution") if c not in table.columns]
    if missing:
        raise MetadataError(f"institution map {path} lacks column(s) {missing}; its columns are {list(table.columns)}")
    codes = table["tss"].str.strip()
    duplicated = sorted(set(codes[codes.duplicated()]))
    if duplicated:
        raise MetadataError(f"institution map {path} lists TSS codes {duplicated} more than once")
    return dict(zip(codes, table["institution"].str.strip(), strict=True))


# -- planning -----------------------------------------------------------------


def choose_holdout_tss(
    tss_counts: pd.Series,
    *,
    holdout_tss: Iterable[str] | None = None,
    holdout_fraction: float | None = None,
    strata: Mapping[str, str] | None = None,
    seed: int = 0,
) -> frozenset[str]:
    """Choose whole TSS codes to hold out: an explicit list, or a seeded fraction of the codes.

    With ``strata`` (TSS -> stratum, for TCGA the project), the fraction is
    applied within each stratum, rounded, and capped so every stratum keeps
    at least one training TSS. Strata with a single TSS hold nothing out.
    """
    known = set(tss_counts.index)
    if holdout_tss is not None and holdout_fraction is not None:
        raise MetadataError("give either holdout_tss or holdout_fraction, not both")
    if holdout_tss is not None:
        chosen = frozenset(str(t) for t in holdout_tss)
        unknown = sorted(chosen - known)
        if unknown:
            raise MetadataError(f"holdout TSS codes {unknown} do not occur in the data; check the spelling")
        return chosen
    if holdout_fraction is None or holdout_fraction == 0:
        return frozenset()
    if not 0.0 < holdout_fraction < 1.0:
        raise MetadataError(f"holdout_fraction must be in [0, 1), got {holdout_fraction}")
    rng = np.random.default_rng(seed)
    groups: dict[str, list[str]] = {}
    for tss in sorted(known):
        stratum = strata.get(tss, "") if strata is not None else ""
        groups.setdefault(stratum, []).append(tss)
    chosen_codes: list[str] = []
    for stratum in sorted(groups):
        codes = groups[stratum]
        count = int(round(holdout_fraction * len(codes)))
        if strata is not None:
            count = min(count, len(codes) - 1)
        if count > 0:
            chosen_codes.extend(rng.choice(codes, size=count, replace=False).tolist())
    return frozenset(chosen_codes)


def plan_sites(
    tss_counts: pd.Series,
    *,
    grouping: SiteGrouping = "per_tss",
    top_k: int | None = None,
    institution_map: Mapping[str, str] | None = None,
    on_unmapped: OnUnmapped = "merge",
    holdout_tss: Iterable[str] | None = None,
    holdout_fraction: float | None = None,
    strata: Mapping[str, str] | None = None,
    seed: int = 0,
    other_site: str = OTHER_SITE,
) -> SitePlan:
    """Build a `SitePlan` from the number of slides (or patches) per TSS code.

    ``top_k`` ranks the training TSS codes by count, ties broken by code, after
    the held-out codes are removed.
    """
    tss_counts = tss_counts.astype(int)
    if tss_counts.empty:
        raise MetadataError("cannot plan sites: no TSS codes in the data")
    holdout = choose_holdout_tss(
        tss_counts, holdout_tss=holdout_tss, holdout_fraction=holdout_fraction, strata=strata, seed=seed
    )
    training = tss_counts.drop(index=sorted(holdout))
    if training.empty:
        raise MetadataError(f"every TSS code is held out ({len(holdout)}); hold out fewer")
    notes: list[str] = []

    if grouping == "per_tss":
        if top_k is not None or institution_map is not None:
            raise MetadataError("grouping 'per_tss' takes neither top_k nor institution_map")
        site_of_tss = {tss: tss for tss in training.index}
        merged: str | None = None
    elif grouping == "top_k":
        if top_k is None or top_k < 1:
            raise MetadataError(f"grouping 'top_k' needs top_k >= 1, got {top_k!r}")
        ranked = sorted(training.items(), key=lambda item: (-item[1], item[0]))
        kept = {tss for tss, _ in ranked[:top_k]}
        if other_site in kept:
            raise MetadataError(f"TSS code {other_site!r} clashes with the merged site name; pass another other_site")
        site_of_tss = {tss: (tss if tss in kept else other_site) for tss in training.index}
        merged = other_site
    elif grouping == "map":
        if not institution_map:
            raise MetadataError("grouping 'map' needs a non-empty institution_map (TSS -> institution)")
        unmapped = sorted(set(training.index) - set(institution_map))
        if unmapped and on_unmapped == "reject":
            raise MetadataError(
                f"{len(unmapped)} training TSS code(s) are not in the institution map, for example "
                f"{unmapped[:10]}; add them or set on_unmapped='merge'"
            )
        site_of_tss = {tss: institution_map.get(tss, other_site) for tss in training.index}
        merged = other_site if on_unmapped == "merge" else None
        for tss in sorted(holdout):
            institution = institution_map.get(tss)
            if institution is not None and institution in site_of_tss.values():
                notes.append(f"held-out TSS {tss} belongs to institution {institution}, which also trains")
    else:
        raise MetadataError(f"grouping must be 'per_tss', 'top_k' or 'map', got {grouping!r}")

    for note in notes:
        logger.warning("site plan: %s", note)
    return SitePlan(site_of_tss, holdout, merged_site=merged, grouping=grouping, notes=tuple(notes))


# -- applying a plan ----------------------------------------------------------


def _assign(tss: pd.Series, plan: SitePlan) -> tuple[np.ndarray, np.ndarray]:
    """Return (site, split) arrays; a held-out row keeps its TSS code as site name."""
    sites = np.empty(len(tss), dtype=object)
    splits = np.empty(len(tss), dtype=object)
    for i, code in enumerate(tss.to_numpy()):
        site = plan.site_for(str(code))
        if site is None:
            sites[i], splits[i] = str(code), HOLDOUT_SPLIT
        else:
            sites[i], splits[i] = site, TRAIN_SPLIT
    return sites, splits


def split_slides(metadata: pd.DataFrame, plan: SitePlan) -> pd.DataFrame:
    """Return a copy of the slide table with ``site`` and ``split`` (train or holdout) columns."""
    if "tss" not in metadata.columns:
        raise MetadataError("the slide table has no 'tss' column; read it with read_slide_metadata")
    table = metadata.copy()
    table["site"], table["split"] = _assign(table["tss"], plan)
    return table


def split_slide_metadata(path: str | Path, **plan_kwargs: Any) -> tuple[SitePlan, pd.DataFrame]:
    """Read a slide metadata CSV, plan the sites from its slide counts and split it.

    With ``holdout_fraction`` and no explicit ``strata``, the fraction is
    stratified by TCGA project so every project keeps training sites.
    """
    table = read_slide_metadata(path)
    counts = table["tss"].value_counts()
    if plan_kwargs.get("holdout_fraction") and "strata" not in plan_kwargs and STRATUM_COLUMN in table.columns:
        plan_kwargs["strata"] = dict(zip(table["tss"], table[STRATUM_COLUMN], strict=True))
    plan = plan_sites(counts, **plan_kwargs)
    return plan, split_slides(table, plan)


def site_counts(split_table: pd.DataFrame, *, by: str | None = None) -> pd.DataFrame:
    """Count rows per (split, site), optionally also per ``by`` (for example ``class``)."""
    keys = ["split", "site"] + ([by] if by else [])
    return split_table.groupby(keys, sort=True).size().rename("count").reset_index()


@dataclass(frozen=True)
class RecordSplit:
    """Positional row indices of a records table: one array per training site, and the held-out rows."""

    train: dict[str, np.ndarray]
    holdout: np.ndarray
    holdout_sites: np.ndarray  # (len(holdout),) TSS code of each held-out row


def record_tss(records: pd.DataFrame, *, tss_column: str = "site", slide_column: str = "slide_id") -> pd.Series:
    """Return the TSS code of every record: ``tss_column``, else parsed from ``slide_column``."""
    if tss_column in records.columns:
        tss = records[tss_column].astype(object)
    else:
        tss = pd.Series([None] * len(records), index=records.index, dtype=object)
    missing = tss.isna() | (tss.astype(str).str.strip() == "")
    if missing.any() and slide_column in records.columns:
        parsed = records.loc[missing, slide_column].map(lambda b: _tss_or_none(str(b)) if isinstance(b, str) else None)
        tss = tss.where(~missing, parsed)
    still = np.flatnonzero(tss.isna().to_numpy())
    if still.size:
        slides = []
        if slide_column in records.columns:
            slides = records[slide_column].iloc[still].dropna().astype(str).unique().tolist()
        raise MetadataError(
            f"{still.size} record(s) have no {tss_column!r} and no TCGA barcode in {slide_column!r} "
            f"(first rows {still[:5].tolist()}, slides {slides[:5]}); the site of every patch must be known to split "
            "by site. Give those patches a site column; for a patch store, fill the site column of the metadata CSV "
            "and run medi-client prepare again into a new folder"
        )
    return tss.astype(str)


def plan_sites_for_records(
    records: pd.DataFrame, *, tss_column: str = "site", slide_column: str = "slide_id", **plan_kwargs: Any
) -> SitePlan:
    """Build a `SitePlan` from the number of patches per TSS code in ``records``."""
    return plan_sites(record_tss(records, tss_column=tss_column, slide_column=slide_column).value_counts(), **plan_kwargs)


def split_records(
    records: pd.DataFrame, plan: SitePlan, *, tss_column: str = "site", slide_column: str = "slide_id"
) -> RecordSplit:
    """Split patch records (for example ``PatchDataset.records``) by site with ``plan``.

    Use the indices with ``dataset.subset(indices)`` to get one dataset per site.
    """
    tss = record_tss(records, tss_column=tss_column, slide_column=slide_column)
    sites, splits = _assign(tss, plan)
    train = {site: np.flatnonzero((sites == site) & (splits == TRAIN_SPLIT)) for site in plan.sites}
    empty = sorted(site for site, rows in train.items() if rows.size == 0)
    if empty:
        logger.warning("site plan: %d training site(s) have no records in this table, for example %s", len(empty), empty[:10])
    holdout = np.flatnonzero(splits == HOLDOUT_SPLIT)
    return RecordSplit(
        train={site: rows for site, rows in train.items() if rows.size},
        holdout=holdout,
        holdout_sites=sites[holdout].astype(str),
    )


def evaluation_patches(
    dataset: Any, plan: SitePlan, *, image_size: int | None = None, tss_column: str = "site"
) -> tuple[LabeledPatches, LabeledPatches]:
    """Load a `PatchDataset` split by ``plan`` as (training, held-out test) `LabeledPatches`.

    Training patches carry their plan site (``other`` for merged codes), and
    held-out patches their own TSS code, so test metrics are per held-out site.
    """
    split = split_records(dataset.records, plan, tss_column=tss_column)
    if not split.train or split.holdout.size == 0:
        raise MetadataError(
            f"the site plan leaves {len(split.train)} training site(s) and {split.holdout.size} held-out "
            "patches; the evaluation needs both, so hold out some TSS codes"
        )
    train_rows = np.sort(np.concatenate(list(split.train.values())))
    train = LabeledPatches.from_dataset(dataset.subset(train_rows), image_size=image_size, name="real train")
    train_sites = record_tss(dataset.records.iloc[train_rows], tss_column=tss_column).map(plan.site_for)
    train = replace(train, sites=train_sites.to_numpy().astype(str))
    test = LabeledPatches.from_dataset(dataset.subset(split.holdout), image_size=image_size, name="real held-out")
    return train, test


__all__ = [
    "HOLDOUT_SPLIT",
    "OTHER_SITE",
    "TRAIN_SPLIT",
    "RecordSplit",
    "SitePlan",
    "choose_holdout_tss",
    "evaluation_patches",
    "plan_sites",
    "plan_sites_for_records",
    "read_institution_map",
    "read_slide_metadata",
    "record_tss",
    "site_counts",
    "split_records",
    "split_slide_metadata",
    "split_slides",
]
