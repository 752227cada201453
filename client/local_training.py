"""One round of local training at a site: global weights in, weight delta and metrics out.

The site builds the model from the round's configs straight from the
received weights and runs ``local-steps`` optimiser steps of the core
`Trainer` on its training patches, which exclude the held-out patches of
`medi_client.memorisation`. The loss has the FedProx term when the server
sends ``proximal-mu``. The reply is ``w_local - w_received``. AdamW moments, the learning-rate schedule position
and the random generator persist on the site's disk between rounds
(``output-dir/state/<run-name>/trainer.pt``), so local training continues
one schedule across rounds and across a restart of the SuperNode.
"""

from __future__ import annotations

import json
import logging
import time
import zlib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.serialization import config as torch_serialization

from medi_core import protocol as P
from medi_core import transfer
from medi_core.config import DiffusionConfig, ModelConfig, TrainConfig, config_from_dict
from medi_core.data import PatchDataset, iterate_batches
from medi_core.diffusion import GaussianDiffusion
from medi_core.errors import NonFiniteError
from medi_core.metadata import MetadataSpec
from medi_core.model import MediUNet, build_model
from medi_core.privacy import PrivacyConfig, make_private
from medi_core.training import Trainer, TrainResult
from medi_client.memorisation import open_site_split
from medi_client.site import SiteConfig
from medi_client.site_privacy import site_privacy, warn_if_plan_exceeds_max

logger = logging.getLogger(__name__)

TRAINER_STATE = "trainer.pt"


def configs_from_round(config: Mapping[str, Any]) -> tuple[ModelConfig, DiffusionConfig, MetadataSpec]:
    """Model config, diffusion config and frozen metadata spec sent by the server."""
    return (
        config_from_dict(ModelConfig, json.loads(str(config[P.MODEL_CONFIG]))),
        config_from_dict(DiffusionConfig, json.loads(str(config[P.DIFFUSION_CONFIG]))),
        MetadataSpec.from_json(str(config[P.METADATA_SPEC])),
    )


def model_from_weights(
    model_config: ModelConfig, spec: MetadataSpec, weights: Mapping[str, np.ndarray], *, site: str
) -> MediUNet:
    """Build the fp32 model straight from received fp32 or fp16 arrays; the names and shapes must match exactly.

    The arrays are copied, because training changes the model in place and the
    received weights are still needed to form the delta.
    """
    state = transfer.to_fp32_tensors(weights)
    try:
        return build_model(model_config, spec, weights=state)
    except RuntimeError as err:
        raise ValueError(
            f"site {site}: received weights do not match the model ({err}); the server and this site run "
            "different model code"
        ) from err


def _restore_trainer_state(trainer: Trainer, path: Path, *, site: str) -> None:
    if not path.is_file():
        return
    try:
        # Mapped, not read: AdamW's two moments are twice the model (3.1 GiB for medi-paper), and the
        # optimiser copies each page on its first update anyway.
        state = torch.load(path, map_location="cpu", weights_only=False, mmap=True)
        trainer.optimizer.load_state_dict(state["optimizer"])
        trainer.lr_scheduler.load_state_dict(state["lr_scheduler"])
        trainer.generator.set_state(state["generator"])
        trainer.step = int(state["step"])
    except (KeyError, RuntimeError, ValueError, EOFError) as err:
        # A damaged state file only costs the optimiser's moments; the weights come from the server.
        logger.warning("site %s: local trainer state %s is unreadable (%s); starting fresh moments", site, path, err)


def _save_trainer_state(trainer: Trainer, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    state = {
        "optimizer": trainer.optimizer.state_dict(),
        "lr_scheduler": trainer.lr_scheduler.state_dict(),
        "generator": trainer.generator.get_state(),
        "step": trainer.step,
    }
    # The zip checksum more than doubled the save time of medi-paper's moments (8.3 s against 3.1 s
    # for 3.1 GiB). The file never leaves the site and is replaced atomically, so it goes unchecked.
    save_config = torch_serialization.save
    checksum = save_config.compute_crc32
    save_config.compute_crc32 = False
    try:
        torch.save(state, tmp)
    finally:
        save_config.compute_crc32 = checksum
    tmp.replace(path)


def _train_private(
    trainer: Trainer,
    dataset: PatchDataset,
    site: SiteConfig,
    privacy: PrivacyConfig,
    *,
    run_name: str,
    server_round: int,
    local_steps: int,
    proximal_mu: float,
    anchor: dict[str, torch.Tensor] | None,
) -> tuple[TrainResult, dict[str, float]]:
    """DP-SGD local steps with the site's settings (`medi_client.site_privacy`), never past ``max-epsilon``.

    The accountant lives in ``privacy-state-dir`` under the run's name, so a
    restarted SuperNode continues the same budget. `PrivateTrainer.train_steps`
    raises `PrivacyBudgetExceeded` before a round that would pass ``max-epsilon``.
    """
    planned_steps = trainer.config.total_steps  # rounds x local steps of the whole run
    private = make_private(
        trainer,
        privacy=privacy,
        num_examples=len(dataset),
        state_path=site.privacy_dir / f"{run_name}-accountant.json",
        planned_steps=planned_steps,
        max_epsilon=site.max_epsilon,
        site=site.site_id,
    )
    try:
        warn_if_plan_exceeds_max(private, site, planned_steps=planned_steps)
        result = private.train_steps(dataset, local_steps, proximal_mu=proximal_mu, anchor_params=anchor, round_id=server_round)
    finally:
        private.close()
    spent = result.privacy_metrics()
    return result.train, {P.EPSILON: float(spent["epsilon"]), P.EPSILON_DELTA: float(spent["delta"])}


def train_round(
    site: SiteConfig,
    global_weights: Mapping[str, np.ndarray],
    config: Mapping[str, Any],
) -> tuple[dict[str, np.ndarray], dict[str, float]]:
    """Run the site's local steps; return (weight delta in fp32, metrics for the server)."""
    started = time.perf_counter()
    server_round = int(config.get(P.SERVER_ROUND, 0))
    model_config, diffusion_config, spec = configs_from_round(config)
    train_config = config_from_dict(TrainConfig, json.loads(str(config[P.TRAIN_CONFIG])))
    train_config.use_ema = False  # the server keeps the EMA of the global weights; a local one would go unused
    # Each site draws its own noise, timesteps and dropout: mix the site id into the seed.
    train_config.seed = train_config.seed * 1_000_003 + zlib.crc32(site.site_id.encode())
    local_steps = int(config[P.LOCAL_STEPS])
    proximal_mu = float(config.get(P.PROXIMAL_MU, 0.0))
    run_name = str(config[P.RUN_NAME])
    privacy = site_privacy(site, config, server_round=server_round)

    dataset, _ = open_site_split(site, config, image_size=model_config.sample_size)  # held-out patches never train
    model = model_from_weights(model_config, spec, global_weights, site=site.site_id)
    trainer = Trainer(model, GaussianDiffusion(diffusion_config), train_config, device=site.torch_device())
    state_path = site.state_dir(run_name) / TRAINER_STATE
    _restore_trainer_state(trainer, state_path, site=site.site_id)

    anchor = {k: v.detach().clone() for k, v in trainer.model.named_parameters()} if proximal_mu > 0 else None
    privacy_metrics: dict[str, float] = {}
    try:
        if privacy is not None:
            result, privacy_metrics = _train_private(
                trainer, dataset, site, privacy, run_name=run_name, server_round=server_round, local_steps=local_steps,
                proximal_mu=proximal_mu, anchor=anchor,
            )
        else:
            # A fresh shuffle per round, reproducible from the seed, the site and the round.
            batch_generator = torch.Generator().manual_seed(train_config.seed + server_round)
            batches = iterate_batches(dataset, spec, train_config.batch_size, generator=batch_generator)
            result = trainer.train_steps(batches, local_steps, proximal_mu=proximal_mu, anchor_params=anchor)
    except NonFiniteError as err:
        raise NonFiniteError(f"site {site.site_id}, round {server_round}: {err}") from err
    _save_trainer_state(trainer, state_path)

    delta = transfer.subtract_in_place(trainer.model.state_dict(), global_weights)  # the model is spent now
    metrics = {
        P.NUM_EXAMPLES: float(len(dataset)),  # FedAvg weights sites by their number of patches
        # Under DP the loss is computed on private data without noise, outside the guarantee: not sent.
        P.TRAIN_LOSS: float("nan") if privacy_metrics else float(result.mean_loss),
        P.TRAIN_SECONDS: float(result.seconds),
        P.STEPS_DONE: float(result.steps),
        P.HANDLER_SECONDS: float(time.perf_counter() - started),
        **privacy_metrics,
    }
    logger.info("site %s, round %d: %d steps on %d patches, mean loss %.4f, %.1f s",
                site.site_id, server_round, result.steps, len(dataset), result.mean_loss, result.seconds)
    return delta, metrics
