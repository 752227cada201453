"""DP-SGD for a site's local training: `PrivateTrainer` (built by `make_private` in `engine`).

One private step (Abadi et al. 2016, with Poisson sampling):

1. draw a Poisson batch: every local example joins independently with
   probability ``q = batch_size / N``;
2. per-example loss, with ``K`` noise/timestep draws averaged inside each
   example's loss before its gradient is taken (noise multiplicity,
   Dockhorn et al. 2022, "Differentially Private Diffusion Models");
3. per-example gradients from Opacus (exact, see `grad_sample`), clipped to
   L2 norm ``C = max_grad_norm`` and summed;
4. Gaussian noise with std ``sigma * C`` added, the sum divided by the
   expected batch size ``q * N``;
5. AdamW step, learning-rate schedule, EMA of the (already private) weights.

An empty Poisson batch skips the model (diffusers attention fails on zero
rows) but still releases a noise-only update and counts as a step, because
the sampled-Gaussian analysis assumes every step is released. The FedProx
gradient ``mu * (w - w_global)`` does not touch the data, so it is added after
the noise at no privacy cost.
"""

from __future__ import annotations

import functools
import logging
import math
import secrets
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from opacus.optimizers import DPOptimizer
from torch.utils.data import Dataset
from tqdm.auto import tqdm

from medi_core.data import collate_patches
from medi_core.errors import ConfigError, NonFiniteError, PrivacyError
from medi_core.privacy.accountant import SiteAccountant
from medi_core.privacy.config import PrivacyConfig
from medi_core.privacy.grad_sample import GradSampler
from medi_core.training import Batch, Trainer, TrainResult

logger = logging.getLogger(__name__)

Collate = Callable[[Sequence[Any]], Batch]


def poisson_batch_indices(num_examples: int, sample_rate: float, generator: torch.Generator) -> list[int]:
    """Indices of one Poisson batch: each example is included with probability ``sample_rate``."""
    mask = torch.rand(num_examples, generator=generator) < sample_rate  # (N,) bool
    return mask.nonzero().flatten().tolist()


def _fresh_generator(seed: int | None, device: torch.device | str = "cpu") -> torch.Generator:
    # NOTE: torch generators are not cryptographically secure. Opacus's secure_mode would need
    # torchcsprng, which is not installed; an unpredictable seed from the OS is the fallback.
    generator = torch.Generator(device=device)
    generator.manual_seed(secrets.randbits(63) if seed is None else seed)
    return generator


@dataclass
class PrivateTrainResult:
    """One call of `PrivateTrainer.train_steps`: the training result plus the privacy spent."""

    train: TrainResult
    epsilon: float  # total epsilon this site has spent, after these steps, at `delta`
    epsilon_before: float
    delta: float
    noise_multiplier: float
    sample_rate: float
    empty_batches: int

    def privacy_metrics(self) -> dict[str, float]:
        """The numbers a site may report: they describe the mechanism, not the data."""
        return {
            "epsilon": self.epsilon,
            "epsilon-round": self.epsilon - self.epsilon_before,
            "delta": self.delta,
            "noise-multiplier": self.noise_multiplier,
            "sample-rate": self.sample_rate,
        }


class PrivateTrainer:
    """A `Trainer` whose steps are DP-SGD steps, with a persistent per-site accountant.

    Build it with `make_private`. The wrapped trainer keeps its model,
    optimiser, schedule and EMA; its own ``train_steps`` must not be called
    while this object is open, because the per-sample hooks stay attached
    until `close`.
    """

    def __init__(
        self,
        trainer: Trainer,
        *,
        privacy: PrivacyConfig,
        num_examples: int,
        accountant: SiteAccountant,
        noise_multiplier: float,
        max_epsilon: float | None = None,
        site: str | None = None,
        seed: int | None = None,
    ) -> None:
        if trainer.scaler is not None:
            raise PrivacyError(
                "DP-SGD does not support fp16 loss scaling; set train.mixed_precision to 'no' or 'bf16'"
            )
        self.trainer = trainer
        self.privacy = privacy
        self.num_examples = int(num_examples)
        self.accountant = accountant
        self.noise_multiplier = float(noise_multiplier)
        self.max_epsilon = max_epsilon
        self.site = site
        self.sample_rate = min(1.0, trainer.config.batch_size / self.num_examples)
        self.expected_batch_size = self.sample_rate * self.num_examples
        self.sampling_generator = _fresh_generator(seed)
        self.grad_sampler = GradSampler(trainer.model, mode=privacy.grad_sample_mode)
        self.dp_optimizer = DPOptimizer(
            trainer.optimizer,
            noise_multiplier=self.noise_multiplier,
            max_grad_norm=privacy.max_grad_norm,
            expected_batch_size=self.expected_batch_size,
            loss_reduction="mean",
            generator=_fresh_generator(None if seed is None else seed + 1, trainer.device),
        )
        self.dp_optimizer.attach_step_hook(self._account_step)
        logger.info(
            "site %s: DP-SGD with sigma=%.4g, C=%g, q=%.4g (N=%d), K=%d, %s per-sample gradients, "
            "delta=%.3g, epsilon spent so far %.4g",
            site, self.noise_multiplier, privacy.max_grad_norm, self.sample_rate, self.num_examples,
            privacy.noise_multiplicity, privacy.grad_sample_mode, accountant.delta, accountant.epsilon(),
        )

    # -- accounting -------------------------------------------------------------

    def _account_step(self, optimizer: DPOptimizer) -> None:
        self.accountant.record_step(noise_multiplier=optimizer.noise_multiplier, sample_rate=self.sample_rate)

    @property
    def epsilon(self) -> float:
        """Total epsilon spent by this site so far."""
        return self.accountant.epsilon()

    def check_budget(self, num_steps: int, *, round_id: int | str | None = None) -> float:
        """Return the epsilon after ``num_steps`` more steps; raise `PrivacyBudgetExceeded` above the site max."""
        return self.accountant.check_budget(
            noise_multiplier=self.noise_multiplier,
            sample_rate=self.sample_rate,
            num_steps=num_steps,
            max_epsilon=self.max_epsilon,
            round_id=round_id,
        )

    # -- per-example gradients ----------------------------------------------------

    def _backward_per_example(
        self,
        x0: torch.Tensor,
        cond: dict[str, torch.Tensor],
        *,
        noise: torch.Tensor | None = None,
        timesteps: torch.Tensor | None = None,
        drop_conditions_for_cfg: bool = True,
    ) -> torch.Tensor:
        """Backward pass leaving each parameter's per-example gradient in ``p.grad_sample``.

        Returns the per-example losses ``(B,)``, each the mean over the K draws.
        ``noise`` ``(B*K, 3, H, W)`` and ``timesteps`` ``(B*K,)`` fix the draws
        (row ``b*K + k`` is draw k of example b); by default they are drawn.
        """
        trainer = self.trainer
        k = self.privacy.noise_multiplicity
        batch = x0.shape[0]
        if k > 1:
            x0 = x0.repeat_interleave(k, dim=0)  # (B*K, 3, H, W)
            cond = {name: value.repeat_interleave(k, dim=0) for name, value in cond.items()}
        trainer.model.train()
        # NOTE: no autocast here: Opacus recomputes per-sample gradients in backward hooks,
        # outside any autocast region, and mixing dtypes there is untested; DP steps run in fp32.
        rows = trainer.diffusion.per_sample_loss(
            trainer.model,
            x0,
            cond,
            noise=noise,
            timesteps=timesteps,
            generator=trainer.generator,
            spec=trainer.spec,
            drop_conditions_for_cfg=drop_conditions_for_cfg,
        )  # (B*K,)
        # Opacus hooks use loss_reduction="sum": grad_sample row r is the gradient of rows[r] / K.
        (rows.sum() / k).backward()
        if k > 1:
            for p in self.grad_sampler.parameters():
                sample = p.grad_sample  # (B*K, *shape)
                p.grad_sample = sample.view(batch, k, *sample.shape[1:]).sum(dim=1)  # (B, *shape)
        return rows.detach().view(batch, k).mean(dim=1)  # (B,)

    def _fresh_backward(self, x0: torch.Tensor, cond: dict[str, torch.Tensor], **kwargs: Any) -> None:
        """Clear all gradients, then run the per-example backward pass for one batch."""
        self.dp_optimizer.zero_grad(set_to_none=True)
        self._backward_per_example(x0, cond, **kwargs)

    def per_sample_gradients(
        self,
        x0: torch.Tensor,
        cond: dict[str, torch.Tensor],
        *,
        noise: torch.Tensor | None = None,
        timesteps: torch.Tensor | None = None,
        drop_conditions_for_cfg: bool = False,
    ) -> dict[str, torch.Tensor]:
        """Unclipped per-example gradients ``(B, *shape)`` by parameter name; no step, no privacy spent."""
        self._fresh_backward(x0, cond, noise=noise, timesteps=timesteps, drop_conditions_for_cfg=drop_conditions_for_cfg)
        grads = {name: g.detach().clone() for name, g in self.grad_sampler.named_grad_samples().items()}
        self.dp_optimizer.zero_grad(set_to_none=True)
        return grads

    def clipped_gradient_sum(
        self,
        x0: torch.Tensor,
        cond: dict[str, torch.Tensor],
        *,
        noise: torch.Tensor | None = None,
        timesteps: torch.Tensor | None = None,
        drop_conditions_for_cfg: bool = False,
    ) -> dict[str, torch.Tensor]:
        """Sum of the clipped per-example gradients exactly as Opacus forms it, before noise; no step."""
        self._fresh_backward(x0, cond, noise=noise, timesteps=timesteps, drop_conditions_for_cfg=drop_conditions_for_cfg)
        self.dp_optimizer.clip_and_accumulate()
        sums = {
            name: p.summed_grad.detach().clone()
            for name, p in self.trainer.model.named_parameters()
            if p.requires_grad
        }
        self.dp_optimizer.zero_grad(set_to_none=True)
        return sums

    # -- training -----------------------------------------------------------------

    def _private_step(self, dataset: Dataset, collate: Collate) -> tuple[int, float | None]:
        """One DP-SGD step; returns (batch size, mean loss or None for an empty batch)."""
        trainer = self.trainer
        indices = poisson_batch_indices(self.num_examples, self.sample_rate, self.sampling_generator)
        self.dp_optimizer.zero_grad(set_to_none=True)
        loss: float | None = None
        if indices:
            x0, cond = trainer.to_device(collate([dataset[i] for i in indices]))
            losses = self._backward_per_example(x0, cond)  # (B,)
            loss = float(losses.mean())
            if not math.isfinite(loss):
                raise NonFiniteError(
                    f"site {self.site}: non-finite training loss {loss} at step {trainer.step}; "
                    "lower the learning rate or check the patches for corrupt images"
                )
        else:
            for p in self.grad_sampler.parameters():
                p.grad_sample = p.new_zeros((0, *p.shape))  # Opacus turns this into a noise-only update
        self.dp_optimizer.pre_step()  # clip, sum, add noise, divide by q*N, record the step
        return len(indices), loss

    def train_steps(
        self,
        dataset: Dataset,
        num_steps: int,
        *,
        collate: Collate | None = None,
        proximal_mu: float = 0.0,
        anchor_params: dict[str, torch.Tensor] | None = None,
        round_id: int | str | None = None,
        progress: bool = False,
    ) -> PrivateTrainResult:
        """Run ``num_steps`` DP-SGD steps on Poisson batches drawn from ``dataset``.

        ``dataset`` items are ``(image (3, S, S) in [-1, 1], metadata dict)``,
        turned into batches by ``collate`` (default: `collate_patches` with the
        model's metadata spec). Raises `PrivacyBudgetExceeded` before the first
        step when the steps would take the site above ``max_epsilon``.
        """
        if num_steps < 1:
            raise ConfigError(f"site {self.site}, round {round_id}: num_steps must be >= 1, got {num_steps}")
        if len(dataset) != self.num_examples:
            raise PrivacyError(
                f"site {self.site}: the dataset has {len(dataset)} examples but the sample rate and delta "
                f"were set for {self.num_examples}; call make_private again with num_examples={len(dataset)}"
            )
        if proximal_mu > 0 and anchor_params is None:
            raise ConfigError("proximal_mu > 0 needs anchor_params (the round's global weights)")
        if collate is None:
            collate = functools.partial(collate_patches, spec=self.trainer.spec)
        epsilon_before = self.accountant.epsilon()
        projected = self.check_budget(num_steps, round_id=round_id)
        logger.info(
            "site %s, round %s: %d private steps, epsilon %.4g -> %.4g",
            self.site, round_id, num_steps, epsilon_before, projected,
        )

        trainer = self.trainer
        losses: list[float] = []
        examples = 0
        empty = 0
        start = time.perf_counter()
        bar = tqdm(range(num_steps), desc=f"DP train {self.site or ''}".strip(), disable=not progress, leave=False)
        for _ in bar:
            size, loss = self._private_step(dataset, collate)
            if proximal_mu > 0:
                for name, p in trainer.model.named_parameters():
                    if p.grad is not None:
                        p.grad.add_(p.detach() - anchor_params[name].to(p.device), alpha=proximal_mu)
            trainer.optimizer.step()
            trainer.lr_scheduler.step()
            if trainer.ema is not None:
                trainer.ema.update(trainer.model)
            trainer.step += 1
            examples += size
            if loss is None:
                empty += 1
            else:
                losses.append(loss)
                bar.set_postfix(loss=f"{loss:.4f}")
        self.dp_optimizer.zero_grad(set_to_none=True)
        seconds = time.perf_counter() - start

        epsilon = self.accountant.epsilon()
        self.accountant.record_round(round_id, steps=num_steps, epsilon=epsilon)
        if empty:
            logger.info("site %s, round %s: %d of %d Poisson batches were empty", self.site, round_id, empty, num_steps)
        mean_loss = float(sum(losses) / len(losses)) if losses else float("nan")
        # NOTE: losses are computed on private data without noise; they are for local logs,
        # and sending them to the server is outside the (epsilon, delta) guarantee.
        train = TrainResult(steps=num_steps, examples=examples, mean_loss=mean_loss, losses=losses, seconds=seconds)
        return PrivateTrainResult(
            train=train,
            epsilon=epsilon,
            epsilon_before=epsilon_before,
            delta=self.accountant.delta,
            noise_multiplier=self.noise_multiplier,
            sample_rate=self.sample_rate,
            empty_batches=empty,
        )

    def close(self) -> None:
        """Detach the per-sample hooks; the trainer then trains without DP again."""
        self.dp_optimizer.zero_grad(set_to_none=True)
        self.grad_sampler.close()


__all__ = ["PrivateTrainResult", "PrivateTrainer", "poisson_batch_indices"]
