"""Open a patch source (patch store, TCGA-UT folders, labelled folder, manifest CSV) as a `PatchDataset`."""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Literal

import pandas as pd

from medi_core.data.dataset import PATH_COLUMN, SLIDE_FIELD, PatchDataset
from medi_core.data.tables import numbers_if_numeric, read_metadata_csv, site_from_slide_id
from medi_core.errors import DatasetError
from medi_core.metadata import CLASS_FIELD, SITE_FIELD
from medi_core.wsi.store import STORE_MANIFEST, read_store_records

logger = logging.getLogger(__name__)

SourceKind = Literal["auto", "patch_store", "tcga_ut", "labelled_folder", "manifest"]
OnMissingFile = Literal["raise", "skip"]

IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".tif", ".tiff"})
LABELLED_FOLDER_TABLE = "metadata.csv"

# Column names recognised when a CSV does not name its columns explicitly, in
# order of preference. The BRCA-M2C metadata uses file / dominant_cell_class /
# tss_site / slide_barcode; GDC exports use slide_submitter_id / tissue_source_site.
PATH_CANDIDATES = ("path", "file", "image", "filename")
CLASS_CANDIDATES = (CLASS_FIELD, "label", "dominant_cell_class")
SITE_CANDIDATES = (SITE_FIELD, "tss_site", "tissue_source_site", "tss")
SLIDE_CANDIDATES = (SLIDE_FIELD, "slide_barcode", "slide_submitter_id", "slide")


def _is_image(path: Path) -> bool:
    return path.suffix.lower() in IMAGE_SUFFIXES


def _pick_column(table: pd.DataFrame, explicit: str | None, candidates: Sequence[str], csv: Path, role: str) -> str | None:
    if explicit is not None:
        if explicit not in table.columns:
            raise DatasetError(f"{csv} has no {role} column {explicit!r}; its columns are {list(table.columns)}")
        return explicit
    return next((c for c in candidates if c in table.columns), None)


def _records_from_table(
    table: pd.DataFrame,
    csv: Path,
    *,
    class_name: str | None,
    path_column: str | None,
    class_column: str | None,
    site_column: str | None,
    slide_column: str | None,
    on_missing_file: OnMissingFile,
) -> pd.DataFrame:
    """Map a CSV table onto the record columns: resolve paths, name class/site/slide_id."""
    path_col = _pick_column(table, path_column, PATH_CANDIDATES, csv, "image path")
    if path_col is None:
        raise DatasetError(
            f"{csv} has no image path column; name it one of {list(PATH_CANDIDATES)} "
            f"or pass path_column=; its columns are {list(table.columns)}"
        )
    class_col = _pick_column(table, class_column, CLASS_CANDIDATES, csv, "class")
    if class_col is None and class_name is None:
        raise DatasetError(
            f"{csv} has no class column (looked for {list(CLASS_CANDIDATES)}); "
            "add one, pass class_column=, or give the class of all patches with class_name="
        )
    site_col = _pick_column(table, site_column, SITE_CANDIDATES, csv, "site")
    slide_col = _pick_column(table, slide_column, SLIDE_CANDIDATES, csv, "slide id")

    records = table.copy()
    rename = {path_col: PATH_COLUMN}
    for source_col, target in ((class_col, CLASS_FIELD), (site_col, SITE_FIELD), (slide_col, SLIDE_FIELD)):
        if source_col is not None and source_col != target:
            records = records.drop(columns=[target], errors="ignore")
            rename[source_col] = target
    records = records.rename(columns=rename)
    if class_name is not None:
        records[CLASS_FIELD] = class_name
    if SLIDE_FIELD not in records.columns:
        records[SLIDE_FIELD] = None
    derived = records[SLIDE_FIELD].map(site_from_slide_id)
    if SITE_FIELD not in records.columns:
        records[SITE_FIELD] = derived
    else:
        records[SITE_FIELD] = records[SITE_FIELD].astype(object).where(records[SITE_FIELD].notna(), derived)

    for column in records.columns:
        if column not in (PATH_COLUMN, CLASS_FIELD, SITE_FIELD, SLIDE_FIELD):
            records[column] = numbers_if_numeric(records[column])

    if records[PATH_COLUMN].isna().any():
        rows = [int(i) + 2 for i in records.index[records[PATH_COLUMN].isna()][:5]]  # +2: header, 1-based
        raise DatasetError(f"{csv}: empty image path in row(s) {rows}")
    base = csv.parent
    records[PATH_COLUMN] = [str((base / p).resolve()) if not os.path.isabs(p) else p for p in records[PATH_COLUMN]]
    exists = records[PATH_COLUMN].map(os.path.isfile)
    if not exists.all():
        missing = records.loc[~exists, PATH_COLUMN].tolist()
        if on_missing_file == "raise":
            raise DatasetError(
                f"{csv}: {len(missing)} image file(s) not found, for example {missing[:3]}; "
                "fix the paths (relative paths are read from the CSV's folder) or pass on_missing_file='skip'"
            )
        logger.warning("%s: skipping %d row(s) whose image file is missing, for example %s", csv, len(missing), missing[:3])
        records = records[exists.to_numpy()]
    unlabelled = int(records[CLASS_FIELD].isna().sum())
    if unlabelled:
        logger.warning("%s: %d patch(es) have no class; they train the unconditional (null) class", csv, unlabelled)
    return records.reset_index(drop=True)


def load_table_source(
    csv: Path,
    *,
    image_size: int,
    class_name: str | None = None,
    path_column: str | None = None,
    class_column: str | None = None,
    site_column: str | None = None,
    slide_column: str | None = None,
    on_missing_file: OnMissingFile = "raise",
) -> PatchDataset:
    """Open a manifest CSV (or a labelled folder's ``metadata.csv``) of patch image paths."""
    table = read_metadata_csv(csv, description="patch manifest", error=DatasetError)
    records = _records_from_table(
        table,
        csv,
        class_name=class_name,
        path_column=path_column,
        class_column=class_column,
        site_column=site_column,
        slide_column=slide_column,
        on_missing_file=on_missing_file,
    )
    return PatchDataset(records, image_size=image_size, source=str(csv))


def _image_files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_file() and _is_image(p))


def _subfolders(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))


def load_tcga_ut(root: Path, *, image_size: int, class_name: str | None = None) -> PatchDataset:
    """Open TCGA-UT tiles: ``<class>/<slide barcode>/*.jpg``, or ``<slide barcode>/*.jpg`` with ``class_name``.

    The site is the tissue source site parsed from the slide barcode (None for a
    folder name that is not a TCGA barcode).
    """
    children = _subfolders(root)
    slide_layout = [c for c in children if _image_files(c)]
    class_layout = [c for c in children if c not in slide_layout and any(_image_files(s) for s in _subfolders(c))]
    if slide_layout and class_layout:
        raise DatasetError(
            f"{root} mixes slide folders with images ({slide_layout[0].name}) and class folders "
            f"({class_layout[0].name}); use either <class>/<slide>/*.jpg or <slide>/*.jpg"
        )
    if not slide_layout and not class_layout:
        raise DatasetError(f"{root} has no <slide>/*.jpg or <class>/<slide>/*.jpg image folders")
    loose = _image_files(root)
    if loose:
        logger.warning("%s: ignoring %d image(s) outside slide folders, for example %s", root, len(loose), loose[0].name)

    rows = []
    if slide_layout:
        if class_name is None:
            raise DatasetError(
                f"{root} has the <slide barcode>/*.jpg layout without class folders; "
                "give the class of all its patches (class_name=, or --class-name on the command line)"
            )
        groups = [(class_name, slide) for slide in slide_layout]
    else:
        if class_name is not None:
            raise DatasetError(
                f"{root} has <class>/<slide>/*.jpg folders, so the class comes from the folder names; "
                f"do not pass class_name={class_name!r}"
            )
        groups = [(c.name, slide) for c in class_layout for slide in _subfolders(c)]
    for label, slide in groups:
        site = site_from_slide_id(slide.name)
        for image in _image_files(slide):
            rows.append({PATH_COLUMN: str(image), CLASS_FIELD: label, SITE_FIELD: site, SLIDE_FIELD: slide.name})
    no_site = {r[SLIDE_FIELD] for r in rows if r[SITE_FIELD] is None}
    if no_site:
        logger.warning("%s: %d slide folder(s) are not TCGA barcodes, so their site is unknown: %s", root, len(no_site), sorted(no_site)[:3])
    return PatchDataset(pd.DataFrame(rows), image_size=image_size, source=str(root))


def load_patch_store(root: Path, *, image_size: int) -> PatchDataset:
    """Open a patch store written by ``medi-client prepare``."""
    records = read_store_records(root)
    for column in (CLASS_FIELD, SITE_FIELD):
        if column not in records.columns:
            records[column] = None
    if records.empty:
        logger.warning("patch store %s has no finished slides with patches", root)
    return PatchDataset(records, image_size=image_size, source=str(root))


def detect_kind(path: Path) -> SourceKind:
    """Guess the source kind of ``path`` from its files."""
    if path.is_file():
        if path.suffix.lower() == ".csv":
            return "manifest"
        raise DatasetError(f"{path} is a file but not a .csv manifest; pass a folder or a manifest CSV")
    if (path / STORE_MANIFEST).is_file():
        return "patch_store"
    if (path / LABELLED_FOLDER_TABLE).is_file():
        return "labelled_folder"
    return "tcga_ut"


def open_patch_source(
    path: str | os.PathLike[str],
    *,
    kind: SourceKind = "auto",
    image_size: int,
    class_name: str | None = None,
    path_column: str | None = None,
    class_column: str | None = None,
    site_column: str | None = None,
    slide_column: str | None = None,
    on_missing_file: OnMissingFile = "raise",
) -> PatchDataset:
    """Open any supported patch source as a `PatchDataset` of ``image_size`` px patches.

    Kinds: ``patch_store`` (a folder written by ``medi-client prepare``),
    ``tcga_ut`` (``<class>/<slide barcode>/*.jpg``, or ``<slide barcode>/*.jpg``
    with ``class_name``), ``labelled_folder`` (images plus a ``metadata.csv``
    listing them, as in BRCA-M2C) and ``manifest`` (a CSV of image paths with
    class and metadata columns). ``auto`` picks one from the files present.
    The column arguments override the recognised column names of CSV sources.
    """
    root = Path(path).expanduser()
    if not root.exists():
        raise DatasetError(f"patch source {root} not found; check the path")
    chosen = detect_kind(root) if kind == "auto" else kind
    logger.info("opening %s as a %s source", root, chosen)
    table_options = dict(
        class_name=class_name,
        path_column=path_column,
        class_column=class_column,
        site_column=site_column,
        slide_column=slide_column,
        on_missing_file=on_missing_file,
    )
    if chosen == "patch_store":
        if class_name is not None:
            raise DatasetError(f"patch store {root} stores each slide's class; do not pass class_name")
        return load_patch_store(root, image_size=image_size)
    if chosen == "tcga_ut":
        if not root.is_dir():
            raise DatasetError(f"TCGA-UT source {root} must be a folder")
        return load_tcga_ut(root, image_size=image_size, class_name=class_name)
    if chosen == "labelled_folder":
        return load_table_source(root / LABELLED_FOLDER_TABLE, image_size=image_size, **table_options)
    if chosen == "manifest":
        if not root.is_file():
            raise DatasetError(f"manifest source {root} must be a CSV file, not a folder")
        return load_table_source(root, image_size=image_size, **table_options)
    raise DatasetError(
        f"unknown patch source kind {kind!r}; use one of auto, patch_store, tcga_ut, labelled_folder, manifest"
    )


__all__ = ["IMAGE_SUFFIXES", "SourceKind", "detect_kind", "load_patch_store", "load_table_source", "load_tcga_ut", "open_patch_source"]
