"""A `prepare` run: join slides with metadata, tile them in parallel into a patch store, report.

Resumable: slides whose record is already in the store are listed as
"already done" and not read again. Slides that an earlier run skipped are
listed as "already skipped" with the recorded reason, unless their file or
the settings changed or ``retry_skipped`` is set. Slides run in worker processes. A worker
that dies (for example a crash inside a codec) costs only its slide, because
that slide is retried alone and reported as skipped if it fails again.
"""

from __future__ import annotations

import json
import logging
import multiprocessing
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from pathlib import Path

from medi_core.wsi.config import PrepareConfig
from medi_core.wsi.process import SlideResult, process_slide
from medi_core.wsi.report import RunReport
from medi_core.wsi.skips import matching_skip_record, write_skip_record
from medi_core.wsi.slide_table import JoinResult, SlideJob, find_slide_files, join_slides, slide_id_of
from medi_core.wsi.store import (
    SLIDES_DIR,
    StoreSettings,
    finished_slide_ids,
    open_store_for_writing,
    slide_key,
    update_slide_metadata,
)

logger = logging.getLogger(__name__)

RESOLVED_CONFIG = "prepare_config.json"
ProgressCallback = Callable[[SlideResult], None]


def _finished_result(out: Path, job: SlideJob, *, listed: bool) -> SlideResult | None:
    """Return the result of a slide an earlier run finished, or None.

    When the slide has a CSV row whose metadata differs from the record (a
    corrected class, say), the record takes the CSV's metadata, because the
    patches do not depend on it.
    """
    record_path = out / SLIDES_DIR / f"{slide_key(job.slide_id)}.json"
    if not record_path.exists():
        return None
    record = json.loads(record_path.read_text(encoding="utf-8"))
    current = json.loads(json.dumps(job.metadata))  # compare in the form the record stores
    stored = record.get("metadata", {})
    if listed and current != stored:
        changes = ", ".join(
            f"{name}: {stored.get(name)!r} -> {current.get(name)!r}"
            for name in sorted(set(stored) | set(current))
            if stored.get(name) != current.get(name)
        )
        logger.warning("slide %s: metadata changed since it was tiled (%s); updating its record", job.slide_id, changes)
        update_slide_metadata(record_path, record, current)
        record["metadata"] = current
    return SlideResult(
        job.slide_id,
        str(job.path),
        "already done",
        num_patches=int(record["num_patches"]),
        metadata=record.get("metadata", job.metadata),
        mpp=record.get("slide_mpp"),
        mpp_source=record.get("mpp_source", ""),
        grid_tiles=int(record.get("grid_tiles", 0)),
        tissue_tiles=int(record.get("tissue_tiles", 0)),
        rejected_background=int(record.get("rejected_background", 0)),
        rejected_blur=int(record.get("rejected_blur", 0)),
    )


def _earlier_skip(out: Path, job: SlideJob, config: PrepareConfig) -> SlideResult | None:
    record = matching_skip_record(out, job, config)
    if record is None:
        return None
    return SlideResult(job.slide_id, str(job.path), "already skipped", reason=record["reason"], metadata=dict(job.metadata))


def _run_pool(
    jobs: Sequence[SlideJob], out: Path, config: PrepareConfig, workers: int, on_result: ProgressCallback
) -> tuple[list[SlideResult], list[SlideJob]]:
    """Run jobs in a process pool; return the results and the jobs lost to a dead worker."""
    results: list[SlideResult] = []
    lost: list[SlideJob] = []
    # fork: workers start in milliseconds and share the parent's imports; OpenSlide
    # handles are opened only inside the workers, never inherited.
    context = multiprocessing.get_context("fork")
    with ProcessPoolExecutor(max_workers=workers, mp_context=context) as pool:
        futures: list[tuple[SlideJob, Future[SlideResult]]] = [
            (job, pool.submit(process_slide, job, out, config)) for job in jobs
        ]
        for job, future in futures:
            try:
                result = future.result()
            except BrokenProcessPool:
                lost.append(job)
                continue
            results.append(result)
            on_result(result)
    return results, lost


def process_jobs(
    jobs: Sequence[SlideJob], out: Path, config: PrepareConfig, on_result: ProgressCallback
) -> list[SlideResult]:
    """Process slides with ``config.workers`` processes, retrying slides lost to a worker crash alone."""
    if config.workers == 1 and jobs:
        results = []
        for job in jobs:
            result = process_slide(job, out, config)
            results.append(result)
            on_result(result)
        return results
    results, lost = _run_pool(jobs, out, config, config.workers, on_result)
    for job in lost:
        logger.warning("slide %s: worker process died; retrying it alone", job.slide_id)
        retried, still_lost = _run_pool([job], out, config, 1, on_result)
        results += retried
        if still_lost:
            result = SlideResult(
                job.slide_id, str(job.path), "skipped", metadata=dict(job.metadata),
                reason=f"slide {job.slide_id}: the worker process crashed while reading it (corrupt file?)",
            )
            write_skip_record(out, job, config, result.reason)
            results.append(result)
            on_result(result)
    return results


def _stale_slides_notes(out: Path, results: Sequence[SlideResult]) -> list[str]:
    """Warn about finished slides in the store that this run did not list, because training still reads them."""
    in_run = {result.slide_id for result in results if result.status in ("done", "already done")}
    stale = sorted(finished_slide_ids(out) - in_run)
    if not stale:
        return []
    names = ", ".join(stale[:10]) + (f" and {len(stale) - 10} more" if len(stale) > 10 else "")
    note = (
        f"{len(stale)} slide(s) in the store were not part of this run (no CSV row, CSV rows that disagree, "
        f"or no slide file under --slides): {names}. Training still reads their patches, and this report does not count them. "
        f"To remove a slide from the store, delete its files slides/<key>.* in {out}."
    )
    logger.warning("%s", note)
    return [note]


def prepare_slides(
    slides: Sequence[Path],
    metadata_csv: Path,
    out: Path,
    config: PrepareConfig,
    *,
    on_result: ProgressCallback | None = None,
    on_plan: Callable[[int], None] | None = None,
    slide_column: str = "slide_id",
    class_column: str = "class",
    site_column: str = "site",
    mpp_column: str = "mpp",
    retry_skipped: bool = False,
) -> RunReport:
    """Tile ``slides`` (files or folders) into the patch store ``out`` and write its report.

    ``on_plan`` receives the number of slides to process, ``on_result`` each
    slide's result as it finishes (the CLI drives its progress bar with them).
    ``retry_skipped`` processes slides that an earlier run skipped even when
    neither their file nor the settings changed.
    Raises `MetadataError` for an unreadable metadata CSV, `ConfigError` for
    invalid settings and `DatasetError` for a missing slide folder. Per-slide
    problems are reported, never raised.
    """
    config.check()
    start = time.perf_counter()
    slide_paths, ignored = find_slide_files(slides)
    join: JoinResult = join_slides(
        slide_paths, metadata_csv,
        slide_column=slide_column, class_column=class_column, site_column=site_column, mpp_column=mpp_column,
        keep_unlisted=config.keep_unlisted,
    )
    join.ignored_files = ignored
    out.mkdir(parents=True, exist_ok=True)
    open_store_for_writing(out, StoreSettings(config.tiling.tile_size, config.tiling.mpp, config.jpeg_quality))
    (out / RESOLVED_CONFIG).write_text(json.dumps(config.to_dict(), indent=2), encoding="utf-8")

    results: list[SlideResult] = []
    pending: list[SlideJob] = []
    unlisted = set(join.unlisted_slides)
    for job in join.jobs:
        earlier = _finished_result(out, job, listed=str(job.path) not in unlisted)
        if earlier is None and not retry_skipped:
            earlier = _earlier_skip(out, job, config)
        if earlier is None:
            pending.append(job)
        else:
            results.append(earlier)
    skipped_before = sum(r.status == "already skipped" for r in results)
    logger.info(
        "prepare: %d slide(s) to process, %d already done, %d skipped by an earlier run, into %s",
        len(pending), len(results) - skipped_before, skipped_before, out,
    )
    if on_plan is not None:
        on_plan(len(pending))
    results += process_jobs(pending, out, config, on_result or (lambda result: None))

    skipped_unlisted = [] if config.keep_unlisted else join.unlisted_slides
    for path in skipped_unlisted:
        slide_id = slide_id_of(Path(path))
        reason = f"no row with slide id {slide_id!r} in {metadata_csv}; add one to tile this slide"
        results.append(SlideResult(slide_id, path, "skipped", reason=reason))
    for path, slide_id in join.conflicting_slides.items():
        reason = (
            f"slide {slide_id}: its rows in {metadata_csv} disagree ({join.conflicting_rows[slide_id]}); "
            "keep one row per slide and re-run"
        )
        results.append(SlideResult(slide_id, path, "skipped", reason=reason))
    notes = _stale_slides_notes(out, results)
    report = RunReport(results, join, config.to_dict(), time.perf_counter() - start, extra_notes=notes)
    report.write(out)
    logger.info(
        "prepare finished: %d done, %d skipped, %d patches in %.1f s",
        len(report.done), len(report.skipped), report.num_patches, report.seconds,
    )
    return report


__all__ = ["RESOLVED_CONFIG", "prepare_slides", "process_jobs"]
