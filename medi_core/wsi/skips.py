"""Skip records: which slides a `prepare` run skipped and why, so a re-run does not retry them unchanged.

A skip record ``skipped/<key>.json`` in the store folder keeps the reason and a
fingerprint of everything that decided the outcome: the slide file's size and
modification time, the MPP column value and the run settings. A re-run skips
the slide again only while the fingerprint matches, so replacing the file,
adding ``--mpp`` or changing a tissue setting retries it without being asked.
``--mpp`` counts only for slides whose outcome it can change: those without
resolution metadata of their own.
``--retry-skipped`` retries every recorded slide.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import time
from pathlib import Path
from typing import Any

from medi_core.wsi.config import PrepareConfig
from medi_core.wsi.slide_table import SlideJob
from medi_core.wsi.store import slide_key

logger = logging.getLogger(__name__)

SKIPPED_DIR = "skipped"
# Settings that change only how fast a run goes, never which patches it writes.
SPEED_SETTINGS = ("workers", "tile_threads")


def skip_fingerprint(job: SlideJob, config: PrepareConfig, *, default_mpp_matters: bool = True) -> str:
    """Return a hash of the slide file's size and mtime, its MPP column value and the run settings.

    With ``default_mpp_matters`` False the hash leaves out ``--mpp`` (``default_mpp``):
    for a slide whose resolution came from its own metadata or the MPP column, or
    that could not be opened, another ``--mpp`` cannot change the outcome.
    """
    try:
        stat = job.path.stat()  # follows symbolic links, so a replaced target changes it
        file_state: list[int] | None = [stat.st_size, stat.st_mtime_ns]
    except OSError:
        file_state = None  # missing or unreadable; appearing later changes the fingerprint
    ignored = SPEED_SETTINGS if default_mpp_matters else (*SPEED_SETTINGS, "default_mpp")
    settings = {name: value for name, value in config.to_dict().items() if name not in ignored}
    payload = json.dumps(
        {"file": file_state, "column_mpp": job.column_mpp, "settings": settings}, sort_keys=True, default=str
    )
    return hashlib.sha256(payload.encode("utf-8")).hexdigest()[:16]


def _record_path(out: Path, slide_id: str) -> Path:
    return out / SKIPPED_DIR / f"{slide_key(slide_id)}.json"


def write_skip_record(
    out: Path, job: SlideJob, config: PrepareConfig, reason: str, *, default_mpp_matters: bool = True
) -> None:
    """Record that ``job`` was skipped for ``reason`` under the current file and settings (see `skip_fingerprint`)."""
    path = _record_path(out, job.slide_id)
    path.parent.mkdir(parents=True, exist_ok=True)
    record = {
        "slide_id": job.slide_id,
        "path": str(job.path),
        "reason": reason,
        "fingerprint": skip_fingerprint(job, config, default_mpp_matters=default_mpp_matters),
        "default_mpp_matters": default_mpp_matters,
        "recorded_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(record, indent=2), encoding="utf-8")
    os.replace(tmp, path)


def matching_skip_record(out: Path, job: SlideJob, config: PrepareConfig) -> dict[str, Any] | None:
    """Return the skip record of ``job`` if it still applies (same file and settings), else None."""
    path = _record_path(out, job.slide_id)
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        logger.warning("slide %s: skip record %s is damaged (%s); trying the slide again", job.slide_id, path, err)
        return None
    # records written before the flag existed hashed --mpp for every slide
    fingerprint = skip_fingerprint(job, config, default_mpp_matters=bool(record.get("default_mpp_matters", True)))
    if record.get("slide_id") != job.slide_id or record.get("fingerprint") != fingerprint:
        logger.info("slide %s: skipped by an earlier run, but its file or the settings changed; trying again", job.slide_id)
        return None
    return record


def clear_skip_record(out: Path, slide_id: str) -> None:
    """Delete the skip record of a slide, if there is one."""
    _record_path(out, slide_id).unlink(missing_ok=True)


__all__ = ["SKIPPED_DIR", "clear_skip_record", "matching_skip_record", "skip_fingerprint", "write_skip_record"]
