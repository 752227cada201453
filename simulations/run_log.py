"""The log file of one ``medi-sim`` run, written into its run folder from the first message on.

Hydra's default job logging already writes ``RUN_DIR/medi-sim.log``, but a
run with ``hydra/job_logging=stdout`` or ``none``, or one started from Python
(`medi_sim.pipeline.run_pipeline`), would leave the folder without a log.
``hydra/job_logging=disabled`` disables every logger that exists before the
job starts, medi-sim's included, so that setting still writes no log lines.
`run_log` attaches a file handler to the root logger unless one already
writes that file, so the CLI's "logs are in RUN_DIR" message always holds.
"""

from __future__ import annotations

import contextlib
import logging
import sys
from collections.abc import Iterator
from pathlib import Path

LOG_FILE = "medi-sim.log"  # the name Hydra's job logging gives the file (hydra.job.name + ".log")
LOG_FORMAT = "[%(asctime)s][%(name)s][%(levelname)s] - %(message)s"  # the format of Hydra's job log


def _writes_to(handler: logging.Handler, path: Path) -> bool:
    return isinstance(handler, logging.FileHandler) and Path(handler.baseFilename).resolve() == path.resolve()


@contextlib.contextmanager
def run_log(run_dir: Path, *, level: int = logging.INFO) -> Iterator[Path]:
    """Log every record of ``level`` and above to ``run_dir/medi-sim.log`` while the block runs; yield its path.

    Nested use and Hydra's own handler for the same file add nothing, so no
    line is written twice. Without any handler on the root logger, Python would
    print warnings and errors through its last-resort handler. Adding the file
    handler disables that, so a console handler for warnings is added as well.
    """
    run_dir.mkdir(parents=True, exist_ok=True)
    path = run_dir / LOG_FILE
    root = logging.getLogger()
    if any(_writes_to(handler, path) for handler in root.handlers):
        yield path
        return

    added: list[logging.Handler] = []
    if not root.handlers:
        console = logging.StreamHandler(sys.stderr)
        console.setLevel(logging.WARNING)
        console.setFormatter(logging.Formatter(LOG_FORMAT))
        added.append(console)
    file_handler = logging.FileHandler(path, mode="a", encoding="utf-8")
    file_handler.setLevel(level)
    file_handler.setFormatter(logging.Formatter(LOG_FORMAT))
    added.append(file_handler)

    previous_level = root.level
    if root.getEffectiveLevel() > level:
        root.setLevel(level)  # the file gets INFO lines even where the console shows only warnings
    for handler in added:
        root.addHandler(handler)
    try:
        yield path
    finally:
        for handler in added:
            root.removeHandler(handler)
            handler.close()
        root.setLevel(previous_level)


__all__ = ["LOG_FILE", "run_log"]
