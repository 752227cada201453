"""Run the small evaluation models on one thread, for torch and for the BLAS library behind numpy and scikit-learn."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
from threadpoolctl import threadpool_limits


@contextmanager
def single_thread() -> Iterator[None]:
    """Limit torch intra-op threads and BLAS threads to one, restoring both afterwards.

    The evaluation models are tiny (a 16-channel CNN, logistic regression on a
    few hundred features), so extra threads gain little. On a loaded 2-core
    machine they cost a lot, because idle workers wait on each other. There a
    SmallCNN training step took 0.03 s on one thread and up to 1 s on two
    (torch 2.13 CPU). A probe fit took 0.03 s against 0.45 s (OpenBLAS, 2 threads).
    """
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with threadpool_limits(limits=1):
            yield
    finally:
        torch.set_num_threads(previous)


__all__ = ["single_thread"]
