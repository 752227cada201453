"""Weights on the wire: precision, deltas against the round's global weights, update checks.

The server keeps fp32 master weights. It sends them in the transfer precision
(fp32, or fp16 for half the bytes); a client trains from what it received and
returns ``delta = w_local - w_received`` in the same precision. The server
adds each delta to its fp32 master, so rounding the broadcast only moves the
point where a client starts, and the fp32 master is never rounded. fp16 has a
relative rounding error of at most 2**-11 (about 4.9e-4) per value, so it
rounds a delta far less, in absolute terms, than it would round full weights.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Literal

import numpy as np
import torch

TransferPrecision = Literal["float32", "float16"]


def state_to_numpy(state: Mapping[str, torch.Tensor]) -> dict[str, np.ndarray]:
    """fp32 numpy copies of the floating-point entries of a torch state dict."""
    return {name: t.detach().to("cpu", torch.float32).contiguous().numpy().copy() for name, t in state.items() if t.is_floating_point()}


def encode(arrays: Mapping[str, np.ndarray], precision: TransferPrecision) -> dict[str, np.ndarray]:
    """Cast arrays to the transfer precision (values beyond the fp16 range become inf and are caught later)."""
    if precision not in ("float32", "float16"):
        raise ValueError(f"transfer precision must be 'float32' or 'float16', got {precision!r}")
    dtype = np.float16 if precision == "float16" else np.float32
    with np.errstate(over="ignore"):
        return {name: np.ascontiguousarray(a, dtype=dtype) for name, a in arrays.items()}


def decode(arrays: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """fp32 arrays from whatever precision came over the wire."""
    return {name: np.asarray(a, dtype=np.float32) for name, a in arrays.items()}


def weight_delta(local: Mapping[str, np.ndarray], reference: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """``local - reference`` per array; both must have the same names and shapes."""
    check_same_layout(local, reference, what="local weights")
    return {name: (local[name] - reference[name]).astype(np.float32) for name in reference}


def apply_delta(reference: Mapping[str, np.ndarray], delta: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """``reference + delta`` per array in fp32."""
    check_same_layout(delta, reference, what="update")
    return {name: (reference[name] + delta[name].astype(np.float32)).astype(np.float32) for name in reference}


def check_same_layout(arrays: Mapping[str, np.ndarray], reference: Mapping[str, np.ndarray], *, what: str) -> None:
    """Raise ValueError naming the first missing, extra or mis-shaped array."""
    missing = sorted(set(reference) - set(arrays))
    extra = sorted(set(arrays) - set(reference))
    if missing or extra:
        raise ValueError(f"{what} does not match the model: missing arrays {missing[:5]}, unexpected arrays {extra[:5]}")
    for name, ref in reference.items():
        if tuple(arrays[name].shape) != tuple(ref.shape):
            raise ValueError(f"{what}: array {name!r} has shape {tuple(arrays[name].shape)}, the model has {tuple(ref.shape)}")


def first_non_finite(arrays: Mapping[str, np.ndarray]) -> str | None:
    """Name of the first array holding NaN or infinity, or None."""
    for name, a in arrays.items():
        if not np.isfinite(a).all():
            return name
    return None


def global_norm(arrays: Mapping[str, np.ndarray]) -> float:
    """L2 norm over all arrays together, accumulated in float64."""
    total = 0.0
    for a in arrays.values():
        flat = a.astype(np.float64, copy=False).ravel()
        total += float(np.dot(flat, flat))
    return math.sqrt(total)


def num_bytes(arrays: Mapping[str, np.ndarray]) -> int:
    return int(sum(a.nbytes for a in arrays.values()))


__all__ = [
    "TransferPrecision",
    "apply_delta",
    "check_same_layout",
    "decode",
    "encode",
    "first_non_finite",
    "global_norm",
    "num_bytes",
    "state_to_numpy",
    "weight_delta",
]
