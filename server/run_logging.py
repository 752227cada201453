"""Send the run's log lines (medi_server, medi_core) to ``RUN_DIR/server.log`` and to stderr."""

from __future__ import annotations

import contextlib
import logging
import sys
from collections.abc import Iterator
from pathlib import Path

LOGGERS = ("medi_server", "medi_core")
FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


@contextlib.contextmanager
def attach_run_log(path: Path, level: int = logging.INFO) -> Iterator[None]:
    """Attach a file handler and a stderr handler for the duration of the run, then detach them.

    Under a SuperLink the ServerApp runs in its own process, where stderr ends
    up in ``flwr log``; the file keeps the same lines next to the checkpoints.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    handlers: list[logging.Handler] = [logging.FileHandler(path, encoding="utf-8"), logging.StreamHandler(sys.stderr)]
    for handler in handlers:
        handler.setFormatter(logging.Formatter(FORMAT))
        handler.setLevel(level)
    previous = {}
    for name in LOGGERS:
        target = logging.getLogger(name)
        previous[name] = target.level
        target.setLevel(level)
        for handler in handlers:
            target.addHandler(handler)
    try:
        yield
    finally:
        for name in LOGGERS:
            target = logging.getLogger(name)
            for handler in handlers:
                target.removeHandler(handler)
            target.setLevel(previous[name])
        for handler in handlers:
            handler.close()
