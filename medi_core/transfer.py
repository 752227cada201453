"""Weights on the wire: precision, deltas against the round's global weights, update checks.

The server keeps fp32 master weights. It sends them in the transfer precision
(fp32, or fp16 for half the bytes); a client trains from what it received and
returns ``delta = w_local - w_received`` in the same precision. The server
adds each delta to its fp32 master, so rounding the broadcast only moves the
point where a client starts, and the fp32 master is never rounded. fp16 has a
relative rounding error of at most 2**-11 (about 4.9e-4) per value, so it
rounds a delta far less, in absolute terms, than it would round full weights.

Every pass over the weights runs through torch on numpy views, in place where
it can. A `medi-paper` copy is 1.58 GiB: a numpy cast or subtraction into a
fresh array took 1.3-4.9 s on the 2-core test machine, mostly first-touch
page faults, while torch's cast took 0.46 s and an in-place subtraction 0.13 s.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Mapping, Sequence
from typing import Literal

import numpy as np
import torch

TransferPrecision = Literal["float32", "float16"]

_TORCH_DTYPES = {"float32": torch.float32, "float16": torch.float16}


def as_tensor(array: np.ndarray) -> torch.Tensor:
    """Return a torch view sharing memory with ``array``. Read-only arrays are viewed too, so callers must not write to those."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="The given NumPy array is not writable")
        return torch.from_numpy(array if array.flags.c_contiguous else np.ascontiguousarray(array))


def state_to_numpy(state: Mapping[str, torch.Tensor]) -> dict[str, np.ndarray]:
    """fp32 numpy copies of the floating-point entries of a torch state dict."""
    return {name: t.detach().to("cpu", torch.float32).contiguous().numpy().copy() for name, t in state.items() if t.is_floating_point()}


def encode(arrays: Mapping[str, np.ndarray], precision: TransferPrecision) -> dict[str, np.ndarray]:
    """Cast arrays to the transfer precision (values beyond the fp16 range become inf and are caught later)."""
    if precision not in ("float32", "float16"):
        raise ValueError(f"transfer precision must be 'float32' or 'float16', got {precision!r}")
    dtype = _TORCH_DTYPES[precision]
    return {name: _cast(a, dtype) for name, a in arrays.items()}


def decode(arrays: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Return fp32 arrays from whatever precision came over the wire (fp32 arrays are returned as they are)."""
    return {name: _cast(a, torch.float32) for name, a in arrays.items()}


def _cast(array: np.ndarray, dtype: torch.dtype) -> np.ndarray:
    tensor = as_tensor(array)
    if tensor.dtype == dtype:
        # The array itself, not tensor.numpy(): that view would be writable even over a read-only wire buffer.
        return np.ascontiguousarray(array)
    return tensor.to(dtype).numpy()


def to_fp32_tensors(arrays: Mapping[str, np.ndarray]) -> dict[str, torch.Tensor]:
    """Return writable fp32 torch copies of wire arrays of either precision, in one pass each."""
    return {name: as_tensor(a).to(torch.float32, copy=True) for name, a in arrays.items()}


def weight_delta(local: Mapping[str, np.ndarray], reference: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Return ``local - reference`` per array in fp32. Both must have the same names and shapes."""
    check_same_layout(local, reference, what="local weights")
    return {name: torch.sub(as_tensor(local[name]).float(), as_tensor(reference[name])).numpy() for name in reference}


def subtract_in_place(state: Mapping[str, torch.Tensor], reference: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Turn the trained fp32 tensors of ``state`` into ``state - reference`` in place; return numpy views.

    This forms a site's update without another copy of the model: the
    tensors are the trained model's own, so the model is spent afterwards.
    """
    floating = {name: t for name, t in state.items() if t.is_floating_point()}
    check_same_layout({n: t.detach().numpy() for n, t in floating.items()}, reference, what="local weights")
    delta = {}
    with torch.no_grad():
        for name, ref in reference.items():
            tensor = floating[name].detach()
            tensor.sub_(as_tensor(ref))
            delta[name] = tensor.numpy()
    return delta


def apply_delta(reference: Mapping[str, np.ndarray], delta: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """``reference + delta`` per array in fp32."""
    check_same_layout(delta, reference, what="update")
    return {name: torch.add(as_tensor(reference[name]).float(), as_tensor(delta[name])).numpy() for name in reference}


def weighted_sum(updates: Sequence[Mapping[str, np.ndarray]], weights: Sequence[float]) -> dict[str, np.ndarray]:
    """Return ``sum_i weights[i] * updates[i]`` per array in fp32. The updates may be fp16 or fp32."""
    if not updates or len(updates) != len(weights):
        raise ValueError(f"weighted_sum needs one weight per update, got {len(updates)} updates and {len(weights)} weights")
    total: dict[str, np.ndarray] = {}
    for name in updates[0]:
        acc = as_tensor(updates[0][name]).to(torch.float32, copy=True).mul_(float(weights[0]))
        for update, weight in zip(updates[1:], weights[1:], strict=True):
            acc.add_(as_tensor(update[name]), alpha=float(weight))
        total[name] = acc.numpy()
    return total


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
        if not bool(torch.isfinite(as_tensor(a)).all()):
            return name
    return None


def global_norm(arrays: Mapping[str, np.ndarray]) -> float:
    """Return the L2 norm over all arrays together, with each array's norm computed in float64."""
    total = 0.0
    for a in arrays.values():
        total += float(torch.linalg.vector_norm(as_tensor(a), dtype=torch.float64)) ** 2
    return math.sqrt(total)


def num_bytes(arrays: Mapping[str, np.ndarray]) -> int:
    return int(sum(a.nbytes for a in arrays.values()))


__all__ = [
    "TransferPrecision",
    "apply_delta",
    "as_tensor",
    "check_same_layout",
    "decode",
    "encode",
    "first_non_finite",
    "global_norm",
    "num_bytes",
    "state_to_numpy",
    "subtract_in_place",
    "to_fp32_tensors",
    "weight_delta",
    "weighted_sum",
]
