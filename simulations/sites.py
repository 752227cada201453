"""Split a patch source by tissue source site into virtual hospitals and write their local data.

`prepare_sites` opens the configured source (BRCA-M2C folder, TCGA-UT
folders, a manifest, a patch store or the generated toy set), plans the
sites with `medi_sim.tcga_split` and writes, under ``RUN_DIR/sites/``:

- ``<site>/patches.csv``: the site's patches as a manifest (absolute image
  paths, ``class``, ``site`` = the training site, ``tss`` = the original code);
  this file is the site's ``data-path``, so a virtual node reads only its rows;
- ``holdout.csv``: the patches of the held-out TSS codes, never trained on;
- ``site_plan.json`` and ``site_counts.csv``: the plan and its patch counts;
- ``RUN_DIR/site-table.json``: partition id -> node config, read by the
  ClientApp through the run config key ``site-table``.

Patches from a patch store live inside shard files, so they are written out
as PNG files under ``<site>/images/`` first.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from medi_core import protocol as P
from medi_core.data import PatchDataset, open_patch_source
from medi_core.data.dataset import PATH_COLUMN
from medi_core.errors import ConfigError, DatasetError
from medi_core.metadata import CLASS_FIELD, SITE_FIELD
from medi_sim import tcga_split
from medi_sim.config import DataConfig, PrivacySimConfig
from medi_sim.toy_data import write_toy_dataset

logger = logging.getLogger(__name__)

UNLABELLED = "unlabelled"  # placeholder class until class_column fills it from the slide metadata
TSS_COLUMN = "tss"
MIN_TRAINING_SITES = 2  # a federation of one site is central training; FedAvg needs two
# The evaluation tests only on TSS codes that never trained, so a source needs one code more than the federation.
MIN_SOURCE_SITES = MIN_TRAINING_SITES + 1


@dataclass(frozen=True)
class SiteSplit:
    """The virtual hospitals of one simulation and the held-out patches."""

    plan: tcga_split.SitePlan
    manifests: dict[str, Path]  # training site -> its patches.csv, in partition order
    output_dirs: dict[str, Path]  # training site -> the virtual hospital's output-dir
    holdout_manifest: Path
    site_table: Path
    counts: pd.DataFrame  # split, site, class, count

    @property
    def sites(self) -> list[str]:
        return list(self.manifests)


def _has_slide_layout(root: Path) -> bool:
    """True for TCGA-UT ``<slide>/*.jpg`` folders, which carry no class."""
    return root.is_dir() and any(
        child.is_dir() and any(f.suffix.lower() in (".jpg", ".jpeg", ".png", ".tif", ".tiff") for f in child.iterdir())
        for child in root.iterdir()
    )


def open_source(data: DataConfig, run_dir: Path, *, image_size: int) -> PatchDataset:
    """Open the configured patch source; ``kind: toy`` first writes the generated set into ``run_dir``."""
    if data.kind == "toy":
        return open_patch_source(write_toy_dataset(run_dir / "toy-data", patches_per_cell=data.toy_patches_per_cell),
                                 kind="labelled_folder", image_size=image_size)
    if not data.path:
        raise ConfigError(f"data={data.name} needs the patch source: add data.path=FOLDER_OR_CSV to the command line")
    path = Path(data.path).expanduser()
    if not path.exists():
        raise ConfigError(
            f"data.path {path.resolve()} not found (data={data.name}); set data.path=..., run from the folder "
            "the relative path starts at, or try data=toy, the generated set that needs no files"
        )
    class_name = data.class_name
    if data.class_column and class_name is None and data.kind in ("auto", "tcga_ut") and _has_slide_layout(path):
        class_name = UNLABELLED
    return open_patch_source(path, kind=data.kind, image_size=image_size, class_name=class_name)


def _classes_from_slides(dataset: PatchDataset, slides: pd.DataFrame, column: str) -> PatchDataset:
    """Set each patch's class from the slide metadata ``column``; patches of unlisted slides are dropped."""
    if column not in slides.columns:
        raise ConfigError(f"data.class_column={column!r} is not a column of the slide metadata; its columns are {list(slides.columns)}")
    by_slide = dict(zip(slides[tcga_split.SLIDE_COLUMN], slides[column], strict=True))
    records = dataset.records.copy()
    classes = records["slide_id"].map(lambda slide: by_slide.get(str(slide)) if isinstance(slide, str) else None)
    unlisted = classes.isna() | (classes.astype(str).str.strip().isin(["", "'--"]))
    if unlisted.any():
        logger.warning("%d patch(es) of %d slide(s) are not in the slide metadata (or have no %s); leaving them out",
                       int(unlisted.sum()), records.loc[unlisted, "slide_id"].nunique(), column)
    records[CLASS_FIELD] = classes
    return PatchDataset(records[~unlisted.to_numpy()], image_size=dataset.image_size, source=dataset.source)


def plan_for(data: DataConfig, dataset: PatchDataset) -> tuple[tcga_split.SitePlan, PatchDataset]:
    """Build the site plan from the slide metadata CSV (if given) or from the patch counts per TSS."""
    plan_kwargs: dict[str, Any] = {
        "grouping": data.grouping,
        "top_k": data.top_k if data.grouping == "top_k" else None,
        "holdout_tss": list(data.holdout_tss) if data.holdout_tss is not None else None,
        "holdout_fraction": data.holdout_fraction,
        "seed": data.split_seed,
        "other_site": data.other_site,
    }
    if data.grouping == "map":
        if not data.institution_map:
            raise ConfigError("data.grouping=map needs data.institution_map (a CSV with columns tss, institution)")
        plan_kwargs["institution_map"] = tcga_split.read_institution_map(data.institution_map)
        plan_kwargs["on_unmapped"] = data.on_unmapped
    if data.slide_metadata:
        slide_csv = Path(data.slide_metadata).expanduser()
        plan, slides = tcga_split.split_slide_metadata(slide_csv, **plan_kwargs)
        logger.info("site plan from %d slides of %s: %d training sites, %d held-out TSS codes",
                    len(slides), slide_csv, len(plan.sites), len(plan.holdout_tss))
        if data.class_column:
            dataset = _classes_from_slides(dataset, slides, data.class_column)
        return plan, dataset
    if data.class_column:
        raise ConfigError("data.class_column reads classes from data.slide_metadata; set data.slide_metadata too")
    return tcga_split.plan_sites_for_records(dataset.records, **plan_kwargs), dataset


def _materialise(dataset: PatchDataset, folder: Path) -> pd.DataFrame:
    """Records with a file path per patch; patch-store images are written out as PNG files."""
    records = dataset.records.copy()
    if PATH_COLUMN in records.columns and records[PATH_COLUMN].map(lambda p: isinstance(p, str) and bool(p)).all():
        return records
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for index in range(len(dataset)):
        path = folder / f"{index:06d}.png"
        dataset.load_image(index).convert("RGB").save(path, format="PNG")
        paths.append(str(path))
    records[PATH_COLUMN] = paths
    return records


def _manifest(records: pd.DataFrame, site_names: pd.Series) -> pd.DataFrame:
    """Manifest columns: ``path``, ``class``, ``site``, ``tss`` and the other metadata, without storage columns."""
    table = pd.DataFrame({"path": records[PATH_COLUMN].to_numpy()})
    table[CLASS_FIELD] = records[CLASS_FIELD].to_numpy()
    table[SITE_FIELD] = site_names.to_numpy()
    table[TSS_COLUMN] = records[SITE_FIELD].to_numpy()
    for column in records.columns:
        if not str(column).startswith("_") and column not in table.columns:
            table[column] = records[column].to_numpy()
    return table


def site_table(split_sites: list[str], manifests: dict[str, Path], run_dir: Path, privacy: PrivacySimConfig) -> dict[str, dict[str, Any]]:
    """Node config of every virtual site, keyed by Flower's partition id (the position in ``split_sites``)."""
    unknown = sorted(set(privacy.site_max_epsilon) - set(split_sites))
    if unknown:
        raise ConfigError(f"privacy.site_max_epsilon names sites {unknown} that are not training sites {split_sites}")
    table = {}
    for partition, site in enumerate(split_sites):
        table[str(partition)] = {
            P.NODE_DATA_PATH: str(manifests[site]),
            P.NODE_DATA_KIND: "manifest",
            P.NODE_SITE_ID: site,
            P.NODE_OUTPUT_DIR: str(output_dir(run_dir, site)),
            P.NODE_MAX_EPSILON: float(privacy.site_max_epsilon.get(site, privacy.max_epsilon)),
        }
    return table


def _folder(site: str) -> str:
    return "".join(c if c.isalnum() or c in "._-" else "_" for c in site) or "_"


def output_dir(run_dir: Path, site: str) -> Path:
    """Return the ``output-dir`` of a virtual hospital: its sampler copy, synthetic patches and local state."""
    return run_dir / "sites" / _folder(site) / "output"


def check_source_sites(data: DataConfig, dataset: PatchDataset) -> list[str]:
    """Return the TSS codes of the source's patches; raise if there are too few to train and hold out."""
    if len(dataset) == 0:
        raise ConfigError(f"data.path {data.path} (data={data.name}) contains no patches; check the folder and its source kind")
    codes = sorted(set(tcga_split.record_tss(dataset.records)))
    if len(codes) < MIN_SOURCE_SITES:
        raise ConfigError(
            f"data.path {data.path} contains patches of {len(codes)} tissue source site(s) {codes}, but medi-sim needs "
            f"at least {MIN_SOURCE_SITES}: {MIN_TRAINING_SITES} training sites for the federation and 1 held-out site, "
            "because the evaluation tests only on sites that never trained. Add patches of more sites; in a patch "
            "store from medi-client prepare, a slide's site is the site column of its metadata CSV row, else the "
            "TSS code of its TCGA barcode"
        )
    return codes


def _subset_hint(data: DataConfig, codes: list[str]) -> str:
    if not (data.slide_metadata and data.grouping == "top_k"):
        return ""
    return (
        f". With data.slide_metadata, data.top_k={data.top_k} ranks the TSS codes of every slide in that CSV, "
        f"so a folder with part of the data set (here {len(codes)} TSS codes) may hold patches of few or none "
        f"of the {data.top_k} largest. For such a folder set data.grouping=per_tss, or plan from its own patch "
        "counts with data.slide_metadata=null"
    )


def _no_holdout_error(data: DataConfig, plan: tcga_split.SitePlan, codes: list[str]) -> ConfigError:
    if plan.holdout_tss:
        reason = f"none of its held-out TSS codes {sorted(plan.holdout_tss)[:10]} has patches in data.path"
    elif data.holdout_fraction:
        reason = f"data.holdout_fraction={data.holdout_fraction} of its TSS codes rounds down to none"
    else:
        reason = "neither data.holdout_tss nor data.holdout_fraction is set"
    return ConfigError(
        f"the site plan contains no held-out patches, because {reason}. Name held-out codes of the data {codes[:20]} with "
        "data.holdout_tss=[CODE,...] data.holdout_fraction=null"
    )


def prepare_sites(data: DataConfig, privacy: PrivacySimConfig, run_dir: Path, *, image_size: int) -> SiteSplit:
    """Split the source by site and write each virtual hospital's manifest, the holdout and the site table."""
    run_dir = run_dir.resolve()
    if data.holdout_tss is not None and data.holdout_fraction is not None:
        raise ConfigError(
            f"data.holdout_tss={list(data.holdout_tss)} and data.holdout_fraction={data.holdout_fraction} are both set; "
            "to hold out exactly the listed TSS codes add data.holdout_fraction=null"
        )
    dataset = open_source(data, run_dir, image_size=image_size)
    plan, dataset = plan_for(data, dataset)
    codes = check_source_sites(data, dataset)
    split = tcga_split.split_records(dataset.records, plan)
    out = run_dir / "sites"
    out.mkdir(parents=True, exist_ok=True)

    manifests: dict[str, Path] = {}
    rows: list[pd.DataFrame] = []
    for site, indices in split.train.items():
        if len(indices) < data.min_site_patches:
            logger.warning("site %s has %d patch(es), fewer than data.min_site_patches=%d; it stays out of the federation",
                           site, len(indices), data.min_site_patches)
            continue
        part = dataset.subset(indices)
        records = _materialise(part, out / _folder(site) / "images")
        manifest = _manifest(records, pd.Series([site] * len(records)))
        path = out / _folder(site) / "patches.csv"
        path.parent.mkdir(parents=True, exist_ok=True)
        manifest.to_csv(path, index=False)
        manifests[site] = path
        rows.append(manifest.assign(split=tcga_split.TRAIN_SPLIT))
    if len(manifests) < MIN_TRAINING_SITES:
        raise ConfigError(
            f"the site plan leaves {len(manifests)} training site(s) {sorted(manifests)}; a federation needs at "
            f"least {MIN_TRAINING_SITES}. Hold out fewer TSS codes, raise data.top_k or lower data.min_site_patches"
            + _subset_hint(data, codes)
        )
    if split.holdout.size == 0:
        raise _no_holdout_error(data, plan, codes)
    holdout = dataset.subset(split.holdout)
    holdout_records = _materialise(holdout, out / "holdout-images")
    holdout_manifest = _manifest(holdout_records, holdout_records[SITE_FIELD].astype(str))
    holdout_path = out / "holdout.csv"
    holdout_manifest.to_csv(holdout_path, index=False)
    rows.append(holdout_manifest.assign(split=tcga_split.HOLDOUT_SPLIT))

    counts = pd.concat(rows, ignore_index=True).groupby(["split", SITE_FIELD, CLASS_FIELD]).size().rename("count").reset_index()
    counts.to_csv(out / "site_counts.csv", index=False)
    (out / "site_plan.json").write_text(plan.to_json() + "\n")
    sites = list(manifests)
    table_path = run_dir / "site-table.json"
    table_path.write_text(json.dumps(site_table(sites, manifests, run_dir, privacy), indent=2) + "\n")
    for site in sites:
        logger.info("virtual site %s: %d patches %s", site, int(counts[(counts["split"] == "train") & (counts[SITE_FIELD] == site)]["count"].sum()),
                    dict(counts[(counts["split"] == "train") & (counts[SITE_FIELD] == site)][[CLASS_FIELD, "count"]].itertuples(index=False)))
    logger.info("held out %d patches of TSS codes %s", len(holdout_manifest), sorted(set(holdout_manifest[SITE_FIELD])))
    return SiteSplit(plan, manifests, {site: output_dir(run_dir, site) for site in sites}, holdout_path, table_path, counts)


def open_manifest(path: Path, *, image_size: int) -> PatchDataset:
    """Open a manifest written by `prepare_sites` (or a site's synthetic manifest)."""
    if not path.is_file():
        raise DatasetError(f"manifest {path} not found; was the run folder moved or cleaned?")
    return open_patch_source(path, kind="manifest", image_size=image_size)


__all__ = ["SiteSplit", "check_source_sites", "open_manifest", "open_source", "plan_for", "prepare_sites", "site_table"]
