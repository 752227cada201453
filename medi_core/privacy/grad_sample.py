"""Per-sample gradients for DP-SGD with Opacus, and their check against per-sample autograd.

Opacus 1.6 in ``hooks`` (and ``ghost``) mode computes a convolution's
per-sample weight gradient by unfolding the activations it captured. When a
diffusers UNet feeds a convolution a channels-last strided tensor (the output
of an attention block reshaped back to ``(B, C, H, W)``), those gradients come
out zero for some layers, so clipping no longer bounds each example's
contribution. Two cures are exact (relative error ~1e-12 in float64 against
per-sample autograd on a UNet2DModel with attention):

- ``functorch``: Opacus recomputes every layer's per-sample gradient with
  ``torch.func.vmap``, which does not depend on memory layout;
- ``hooks`` plus `force_contiguous_conv_inputs`: a forward pre-hook copies
  every convolution's input to contiguous memory before Opacus captures it.

`GradSampler` applies the pre-hook whenever ``mode="hooks"``, so the unfixed
variant is never used. ``tests/test_privacy_grad_sample.py`` proves both
modes exact on the model presets. ``hooks`` is the default because it was
the faster of the two per step in ``benchmarks/bench_privacy.py`` on the
``tiny`` and ``small`` presets (2-core CPU).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable

import torch
from opacus import GradSampleModule
from opacus.validators import ModuleValidator
from torch import nn
from torch.utils.hooks import RemovableHandle

from medi_core.errors import PrivacyError
from medi_core.privacy.config import GradSampleMode

logger = logging.getLogger(__name__)


def _contiguous_inputs(module: nn.Module, args: tuple) -> tuple:
    return tuple(a.contiguous() if isinstance(a, torch.Tensor) else a for a in args)


def force_contiguous_conv_inputs(model: nn.Module) -> list[RemovableHandle]:
    """Register a forward pre-hook on every convolution that makes its input contiguous."""
    return [
        module.register_forward_pre_hook(_contiguous_inputs)
        for module in model.modules()
        if isinstance(module, nn.modules.conv._ConvNd)
    ]


class GradSampler:
    """Opacus per-sample gradient hooks on a model, removable with `close`.

    The hooks sit on the model's own submodules, so the caller keeps calling
    the unwrapped model (its state-dict keys stay unprefixed). After a
    backward pass each trainable parameter ``p`` has ``p.grad_sample`` of shape
    ``(B, *p.shape)``: the gradient of row ``b``'s loss term, because the
    hooks run with ``loss_reduction="sum"``.
    """

    def __init__(self, model: nn.Module, *, mode: GradSampleMode) -> None:
        if mode not in ("functorch", "hooks"):
            raise PrivacyError(f"grad_sample_mode must be 'functorch' or 'hooks', got {mode!r}")
        errors = ModuleValidator.validate(model, strict=False)
        if errors:
            listed = "; ".join(str(e) for e in errors)
            raise PrivacyError(f"the model cannot be trained with DP-SGD: {listed}")
        self.model = model
        self.mode = mode
        self._handles = force_contiguous_conv_inputs(model) if mode == "hooks" else []
        self.module = GradSampleModule(
            model, batch_first=True, loss_reduction="sum", strict=True, force_functorch=(mode == "functorch")
        )
        logger.debug("per-sample gradients via Opacus %s mode, %d conv pre-hooks", mode, len(self._handles))

    def parameters(self) -> list[nn.Parameter]:
        return [p for p in self.model.parameters() if p.requires_grad]

    def named_grad_samples(self) -> dict[str, torch.Tensor]:
        """Per-sample gradients of the last backward pass by parameter name, each ``(B, *shape)``."""
        out: dict[str, torch.Tensor] = {}
        for name, p in self.model.named_parameters():
            if not p.requires_grad:
                continue
            sample = getattr(p, "grad_sample", None)
            if sample is None:
                raise PrivacyError(
                    f"parameter {name} has no per-sample gradient after backward; it may be unused in "
                    "forward, which Opacus does not support: freeze it (requires_grad=False)"
                )
            out[name] = sample if isinstance(sample, torch.Tensor) else torch.cat(sample, dim=0)
        return out

    def close(self) -> None:
        """Remove every hook this object added; the model then trains without per-sample gradients."""
        self.module._close()
        for handle in self._handles:
            handle.remove()
        self._handles = []


def per_sample_gradients_autograd(
    model: nn.Module,
    loss_of_example: Callable[[int], torch.Tensor],
    batch_size: int,
    parameters: Iterable[tuple[str, nn.Parameter]] | None = None,
) -> dict[str, torch.Tensor]:
    """Reference per-sample gradients: one ``torch.autograd.grad`` call per example.

    ``loss_of_example(b)`` returns example ``b``'s scalar loss computed on a
    batch of one, so nothing is shared between examples. Returns, per
    parameter name, a tensor ``(B, *shape)``.
    """
    named = [(n, p) for n, p in (parameters or model.named_parameters()) if p.requires_grad]
    rows: list[tuple[torch.Tensor, ...]] = []
    for b in range(batch_size):
        grads = torch.autograd.grad(loss_of_example(b), [p for _, p in named], allow_unused=True)
        rows.append(tuple(torch.zeros_like(p) if g is None else g for g, (_, p) in zip(grads, named, strict=True)))
    return {name: torch.stack([row[i] for row in rows]) for i, (name, _) in enumerate(named)}


def relative_errors(
    computed: dict[str, torch.Tensor],
    reference: dict[str, torch.Tensor],
    *,
    floor: float = 1e-6,
) -> dict[str, float]:
    """Worst per-example relative error of each parameter's per-sample gradient.

    The error of example ``b`` on parameter ``p`` is
    ``|g_bp - r_bp| / max(|r_bp|, floor * |r_b|)`` with ``|r_b|`` the norm of
    example ``b``'s whole reference gradient. The floor matters for
    parameters whose true gradient is exactly zero, such as the key bias of
    attention (softmax ignores a constant added to every score); without it
    their relative error would compare rounding noise with rounding noise.
    """
    missing = set(reference) - set(computed)
    if missing:
        raise PrivacyError(f"per-sample gradients missing for parameters {sorted(missing)}")
    total = torch.sqrt(sum(r.flatten(1).pow(2).sum(1) for r in reference.values()))  # (B,)
    errors: dict[str, float] = {}
    for name, ref in reference.items():
        diff = (computed[name] - ref).flatten(1).norm(dim=1)  # (B,)
        scale = torch.maximum(ref.flatten(1).norm(dim=1), floor * total)  # (B,)
        errors[name] = float((diff / scale).max())
    return errors


__all__ = [
    "GradSampler",
    "force_contiguous_conv_inputs",
    "per_sample_gradients_autograd",
    "relative_errors",
]
