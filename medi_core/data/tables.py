"""Strict CSV reading for metadata tables: UTF-8 only, required columns, GDC missing markers."""

from __future__ import annotations

import csv
import logging
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import pandas as pd

from medi_core.errors import MetadataError
from medi_core.metadata import is_missing, parse_tcga_barcode
from medi_core.errors import BarcodeError

logger = logging.getLogger(__name__)


def read_metadata_csv(
    path: Path,
    *,
    required: Sequence[str] = (),
    description: str = "metadata CSV",
    error: Callable[[str], Exception] = MetadataError,
    column_options: Mapping[str, str] | None = None,
) -> pd.DataFrame:
    """Read a CSV as text columns; GDC missing markers (``'--``, ``Unknown``, empty) become NA.

    Raises ``error`` (default `MetadataError`) naming the file when it is missing,
    is not UTF-8, cannot be parsed, or lacks one of the ``required`` columns.
    ``column_options`` maps a required column to the command-line option that
    renames it, so the error can name that option.
    """
    path = Path(path)
    if not path.is_file():
        raise error(f"{description} {path} not found; check the path")
    try:
        # utf-8-sig also accepts the byte-order mark that spreadsheet programs write.
        table = pd.read_csv(path, dtype=str, keep_default_na=False, encoding="utf-8-sig")
    except UnicodeDecodeError as err:
        raise error(
            f"{description} {path} is not UTF-8 (byte {err.start}: {err.reason}); "
            "re-save it as UTF-8, for example: iconv -f latin1 -t utf-8 in.csv > out.csv"
        ) from None
    except (pd.errors.ParserError, pd.errors.EmptyDataError, csv.Error) as err:
        raise error(f"{description} {path} could not be parsed as CSV: {err}") from None
    table.columns = [str(c).strip() for c in table.columns]
    missing = [c for c in required if c not in table.columns]
    if missing:
        raise error(
            f"{description} {path} lacks the required column(s) {missing}; "
            f"its columns are {list(table.columns)}. "
            + _missing_columns_hint(list(table.columns), missing, column_options or {})
        )
    for column in table.columns:
        values = table[column].str.strip().astype(object)  # object dtype keeps None as None, not NaN
        table[column] = values.where(~values.map(is_missing), None)
    return table


def _missing_columns_hint(columns: list[str], missing: list[str], column_options: Mapping[str, str]) -> str:
    if len(columns) == 1:
        for separator, name in ((";", "semicolons"), ("\t", "tabs")):
            if separator in columns[0]:
                return f"Its header is separated by {name}: save the file as comma-separated CSV."
    columns_by_lowercase = {column.lower(): column for column in columns}
    options = []
    for column in missing:
        option = column_options.get(column)
        if option is None:
            continue
        similar = columns_by_lowercase.get(column.lower())
        options.append(f"{option} {similar or 'NAME'}")
    if not options:
        return "Add or rename the columns."
    return f"Add or rename the columns, or pass the names the CSV uses: {' '.join(options)}."


def numbers_if_numeric(values: pd.Series) -> pd.Series:
    """Return the column as numbers when every present value parses as one (age, counts), else unchanged."""
    present = values.dropna()
    if present.empty:
        return values
    numbers = pd.to_numeric(present, errors="coerce")
    if numbers.isna().any():
        return values
    return pd.to_numeric(values)


def site_from_slide_id(slide_id: object) -> str | None:
    """Return the TCGA tissue source site of a slide id, or None if it is not a TCGA barcode."""
    if is_missing(slide_id):
        return None
    try:
        return parse_tcga_barcode(str(slide_id)).tss
    except BarcodeError:
        return None


__all__ = ["numbers_if_numeric", "read_metadata_csv", "site_from_slide_id"]
