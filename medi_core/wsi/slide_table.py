"""Join slide files with the slide metadata CSV: class, site, MPP and other fields per slide."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from medi_core.data.tables import read_metadata_csv, site_from_slide_id
from medi_core.errors import DatasetError
from medi_core.metadata import CLASS_FIELD, SITE_FIELD
from medi_core.wsi.reader import SLIDE_SUFFIXES

logger = logging.getLogger(__name__)

SLIDE_ID_COLUMN = "slide_id"
MPP_COLUMN = "mpp"


@dataclass
class SlideJob:
    """One slide to process: its file, id, metadata and optional user-supplied MPP."""

    slide_id: str
    path: Path
    metadata: dict[str, Any]
    column_mpp: str | None = None  # text of the MPP column, parsed when the slide is processed


@dataclass
class JoinResult:
    """Slides to process, and what the join could not match."""

    jobs: list[SlideJob] = field(default_factory=list)
    unlisted_slides: list[str] = field(default_factory=list)  # slide files without a CSV row
    rows_without_slide: list[str] = field(default_factory=list)  # CSV slide ids without a file
    duplicate_ids: list[str] = field(default_factory=list)  # ids on more than one CSV row
    # Duplicate ids whose rows disagree, with the differing values; their slides are skipped, not guessed.
    conflicting_rows: dict[str, str] = field(default_factory=dict)
    conflicting_slides: dict[str, str] = field(default_factory=dict)  # slide file -> its id, skipped for conflicting rows
    duplicate_files: list[str] = field(default_factory=list)  # slide ids found as more than one file (first kept)
    ignored_files: list[str] = field(default_factory=list)  # files in slide folders that are not slides


def find_slide_files(paths: Sequence[Path]) -> tuple[list[Path], list[str]]:
    """Expand folders into the slide files they contain (by extension); files are kept as given.

    Returns the slide paths and the names of other files found in the folders.
    Raises `DatasetError` for a missing path without a slide extension, which
    is most likely a mistyped folder name.
    """
    slides: list[Path] = []
    ignored: list[str] = []
    for path in paths:
        if not path.exists() and path.suffix.lower() not in SLIDE_SUFFIXES:
            raise DatasetError(f"slide folder {path} not found; check the --slides path")
        if path.is_dir():
            for child in sorted(path.iterdir()):
                if child.is_file() and child.suffix.lower() in SLIDE_SUFFIXES:
                    slides.append(child)
                elif child.is_file() and not child.name.startswith("."):
                    ignored.append(str(child))
        else:
            slides.append(path)  # a missing or non-slide file is reported when it is opened
    return slides, ignored


def slide_id_of(path: Path) -> str:
    """Return the slide id of a file: its name without the extension."""
    return path.name[: -len(path.suffix)] if path.suffix else path.name


def _candidate_ids(slide_id: str) -> list[str]:
    # GDC file names append ".<uuid>" to the barcode: TCGA-...-DX1.<uuid>.svs
    base = slide_id.split(".", 1)[0]
    return [slide_id] if base == slide_id else [slide_id, base]


def _row_differences(first: dict[str, Any], other: dict[str, Any]) -> str:
    """Describe the columns where two CSV rows of one slide differ, e.g. ``class 'skin' vs 'tumour'``; empty if equal."""
    return ", ".join(
        f"{name} {first.get(name)!r} vs {other.get(name)!r}"
        for name in first
        if first.get(name) != other.get(name)
    )


def join_slides(
    slide_paths: Sequence[Path],
    csv: Path,
    *,
    slide_column: str = SLIDE_ID_COLUMN,
    class_column: str = CLASS_FIELD,
    site_column: str = SITE_FIELD,
    mpp_column: str = MPP_COLUMN,
    keep_unlisted: bool = False,
) -> JoinResult:
    """Match slide files to CSV rows by slide id and build the per-slide metadata.

    The site comes from the site column, else from the TCGA barcode of the slide
    id. GDC missing markers become None. Unmatched files and rows and duplicate
    ids are collected in the result, not raised. Raises `MetadataError` when the
    CSV is missing, not UTF-8, or lacks the slide id or class column.
    """
    table = read_metadata_csv(
        csv,
        required=(slide_column, class_column),
        description="slide metadata CSV",
        column_options={slide_column: "--slide-column", class_column: "--class-column"},
    )
    result = JoinResult()
    rows: dict[str, dict[str, Any]] = {}
    for record in table.to_dict("records"):
        slide_id = record[slide_column]
        if slide_id is None:
            continue
        if slide_id in rows:
            result.duplicate_ids.append(slide_id)
            differences = _row_differences(rows[slide_id], record)
            if differences:
                known = result.conflicting_rows.get(slide_id)
                result.conflicting_rows[slide_id] = f"{known}; {differences}" if known else differences
            continue
        rows[slide_id] = record
    if result.duplicate_ids:
        identical = sorted(set(result.duplicate_ids) - set(result.conflicting_rows))
        if identical:
            logger.warning("%s: slide ids on more than one identical row (one row used): %s", csv, identical)
        for slide_id, differences in sorted(result.conflicting_rows.items()):
            logger.warning("%s: rows of slide %s disagree (%s); the slide is skipped", csv, slide_id, differences)

    used_rows: set[str] = set()
    seen_ids: set[str] = set()
    for path in slide_paths:
        file_id = slide_id_of(path)
        match = next((c for c in _candidate_ids(file_id) if c in rows), None)
        slide_id = match or file_id
        if slide_id in seen_ids:
            result.duplicate_files.append(str(path))
            continue
        seen_ids.add(slide_id)
        if match in result.conflicting_rows:
            result.conflicting_slides[str(path)] = match
            used_rows.add(match)
            continue
        if match is None:
            result.unlisted_slides.append(str(path))
            if not keep_unlisted:
                continue
            record: dict[str, Any] = {}
        else:
            used_rows.add(match)
            record = rows[match]
        metadata = {
            name: value
            for name, value in record.items()
            if name not in (slide_column, class_column, site_column, mpp_column)
        }
        metadata[CLASS_FIELD] = record.get(class_column)
        metadata[SITE_FIELD] = record.get(site_column) or site_from_slide_id(slide_id)
        result.jobs.append(SlideJob(slide_id, path, metadata, record.get(mpp_column)))

    result.rows_without_slide = sorted(set(rows) - used_rows)
    if result.unlisted_slides:
        action = "processed without a class" if keep_unlisted else "skipped"
        logger.warning(
            "%d slide file(s) have no row in %s (%s): %s",
            len(result.unlisted_slides), csv, action, _first_names(result.unlisted_slides),
        )
    if result.rows_without_slide:
        logger.warning(
            "%d row(s) of %s match no slide file: %s%s",
            len(result.rows_without_slide), csv, _first_names(result.rows_without_slide),
            _file_name_hint(result.rows_without_slide, slide_column),
        )
    return result


def _first_names(names: Sequence[str], limit: int = 10) -> str:
    listed = ", ".join(names[:limit])
    return listed if len(names) <= limit else f"{listed} and {len(names) - limit} more"


def _file_name_hint(slide_ids: Sequence[str], slide_column: str) -> str:
    """Return a hint for ids written as file names, which never match because ids drop the extension."""
    with_suffix = next((i for i in slide_ids if Path(i).suffix.lower() in SLIDE_SUFFIXES), None)
    if with_suffix is None:
        return ""
    return (
        f"; the {slide_column} column contains file names without the extension, "
        f"so write {with_suffix!r} as {slide_id_of(Path(with_suffix))!r}"
    )


__all__ = ["JoinResult", "SlideJob", "find_slide_files", "join_slides", "slide_id_of"]
