"""Exponential moving average of model weights, keyed by parameter name."""

from __future__ import annotations

import torch
from torch import nn


class EMA:
    """Shadow copy of a module's floating-point state, updated as ``s = d * s + (1 - d) * w``.

    The effective decay warms up as ``min(decay, (1 + n) / (10 + n))`` after n
    updates, so early averages are not dominated by the random initialisation.
    Keys are the module's `state_dict` names, so the shadow loads straight into
    a fresh model and the server can average it like any other weights.
    """

    def __init__(self, module: nn.Module, decay: float) -> None:
        self.decay = decay
        self.num_updates = 0
        self.shadow = {k: v.detach().clone().float() for k, v in module.state_dict().items() if v.is_floating_point()}

    def current_decay(self) -> float:
        n = self.num_updates
        return min(self.decay, (1 + n) / (10 + n))

    @torch.no_grad()
    def update(self, module: nn.Module) -> None:
        d = self.current_decay()
        state = module.state_dict()
        names = list(self.shadow)
        shadow = [self.shadow[n] for n in names]
        current = [state[n].detach().float() for n in names]
        torch._foreach_mul_(shadow, d)
        torch._foreach_add_(shadow, current, alpha=1.0 - d)
        self.num_updates += 1

    @torch.no_grad()
    def copy_to(self, module: nn.Module) -> None:
        """Load the averaged weights into ``module`` (non-float buffers are left as they are)."""
        state = module.state_dict()
        for name, value in self.shadow.items():
            state[name].copy_(value.to(state[name].dtype))

    @torch.no_grad()
    def reset_to(self, module: nn.Module) -> None:
        """Restart the average from the weights of ``module``, keeping the update count."""
        for name, value in module.state_dict().items():
            if name in self.shadow:
                self.shadow[name].copy_(value.detach().float())

    def state_dict(self) -> dict:
        return {"decay": self.decay, "num_updates": self.num_updates, "shadow": self.shadow}

    def load_state_dict(self, state: dict) -> None:
        self.decay = float(state["decay"])
        self.num_updates = int(state["num_updates"])
        self.shadow = {k: v.clone().float() for k, v in state["shadow"].items()}
