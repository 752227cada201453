"""The MeDi run on the server: handshake, training rounds, checkpoints, sampler, synthesis.

`run_federation(grid, context)` is what the ServerApp's ``main`` calls. It
only talks to Flower through the `Grid` and the context's run config, so it
runs unchanged under a SuperLink and under Flower's simulation engine.

Steps:

1. Handshake: k-anonymised counts from every site; frozen vocabularies; balance plan.
2. Rounds: broadcast fp32 master weights (in the transfer precision), collect
   weight deltas, screen them, aggregate with the strategy, update the EMA,
   write a checkpoint, metrics and every ``grid-every`` rounds a sample grid.
3. The global sampler (EMA weights) goes to ``RUN_DIR/sampler``.
4. Synthesis: each site gets the sampler and its quota, generates locally,
   and reports counts and its memorisation check (`medi_server.synthesis`),
   which go into ``RUN_DIR/report.json``, ``RUN_DIR/memorisation.csv`` and
   the sampler's model card.
"""

from __future__ import annotations

import json
import logging
import math
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import torch
from flwr.app import ArrayRecord, ConfigRecord, Context, Message, RecordDict
from flwr.serverapp import Grid
from flwr.serverapp.strategy import Strategy

from medi_core import protocol as P
from medi_core import transfer
from medi_core.balance import BalancePlan, plan_balance
from medi_core.config import DiffusionConfig, ModelConfig, TrainConfig, model_preset
from medi_core.errors import FederationError
from medi_core.metadata import SITE_FIELD, MetadataSpec
from medi_core.model import build_model
from medi_server import checkpoint as ckpt
from medi_server.aggregation import GlobalEMA, aggregate_updates, screen_replies, to_record
from medi_server.handshake import SiteInfo, admit_late_site, build_spec, request_summaries
from medi_server.messaging import send_and_receive
from medi_server.metrics import MetricsLog
from medi_server.run_logging import attach_run_log
from medi_server.sampler_output import update_card, write_sample_grid, write_sampler
from medi_server.settings import FederationSettings, check_resumed_settings
from medi_server.strategy import build_strategy, load_strategy_state, strategy_state
from medi_server.synthesis import memorisation_card, memorisation_rows, request_synthesis, write_memorisation_table

logger = logging.getLogger(__name__)

NODE_WAIT_POLL_SECONDS = 2.0


class Federation:
    """State of one run on the server, between rounds."""

    def __init__(self, grid: Grid, settings: FederationSettings) -> None:
        self.grid = grid
        self.settings = settings
        self.run_dir = settings.run_path
        self.model_config: ModelConfig = model_preset(settings.model_preset)
        self.diffusion_config = DiffusionConfig(
            prediction_type=settings.prediction_type, beta_schedule=settings.beta_schedule
        )
        self.strategy: Strategy = build_strategy(settings)
        self.metrics = MetricsLog(self.run_dir)
        self.sites: dict[int, SiteInfo] = {}  # node id -> site, for nodes allowed to train
        self.rejected_nodes: set[int] = set()
        self.spec: MetadataSpec | None = None
        self.plan: BalancePlan | None = None
        self.global_weights: dict[str, np.ndarray] = {}
        self.ema: GlobalEMA | None = None
        self.epsilon: dict[str, float] = {}  # site -> epsilon spent so far, as last reported
        self.delta: dict[str, float] = {}  # site -> delta of that epsilon
        self.completed_round = 0

    # -- setup ------------------------------------------------------------------

    def wait_for_nodes(self) -> list[int]:
        """Block until ``min-clients`` SuperNodes are connected (at most ``handshake-timeout``)."""
        deadline = time.monotonic() + self.settings.handshake_timeout
        while True:
            nodes = sorted(self.grid.get_node_ids())
            if len(nodes) >= self.settings.min_clients:
                return nodes
            if time.monotonic() > deadline:
                raise FederationError(
                    f"only {len(nodes)} SuperNode(s) connected after {self.settings.handshake_timeout:.0f} s, "
                    f"min-clients is {self.settings.min_clients}; start more sites with `medi-client start`"
                )
            time.sleep(NODE_WAIT_POLL_SECONDS)

    def start_new(self) -> None:
        """Handshake, vocabularies, balance plan and initial weights of a fresh run."""
        self.sites = request_summaries(self.grid, self.wait_for_nodes(), self.settings)
        self._require_enough_sites("handshake")
        self.spec = build_spec(self.sites, self.settings)
        for field in self.spec.categorical:
            logger.info("vocabulary %s: %s", field.name, list(field.known_values))
        self.plan = self._plan()
        torch.manual_seed(self.settings.seed)
        model = build_model(self.model_config, self.spec)
        self.global_weights = transfer.state_to_numpy(model.state_dict())
        self.ema = GlobalEMA(self.global_weights, self.settings.server_ema_decay)
        logger.info("model %s: %d parameters, %.1f MiB per fp32 copy", self.model_config.preset,
                    model.num_parameters(), transfer.num_bytes(self.global_weights) / 2**20)
        (self.run_dir / "metadata_spec.json").write_text(self.spec.to_json() + "\n")
        (self.run_dir / "balance_plan.json").write_text(json.dumps(self.plan.to_dict(), indent=2) + "\n")

    def resume(self) -> None:
        """Restore the newest complete checkpoint; map the connected nodes to their sites again."""
        state = ckpt.load_checkpoint(self.run_dir)
        check_resumed_settings(self.settings, state.state.get("settings", {}),
                               checkpoint=f"{self.run_dir} (round {state.server_round})")
        self.completed_round = state.server_round
        self.spec = MetadataSpec.from_dict(state.state["metadata_spec"])
        self.plan = BalancePlan(**state.state["balance_plan"])
        self.global_weights = state.global_weights
        self.ema = GlobalEMA(state.ema_weights, self.settings.server_ema_decay, int(state.state["ema_updates"]))
        self.epsilon = {k: float(v) for k, v in state.state.get("epsilon", {}).items()}
        self.delta = {k: float(v) for k, v in state.state.get("delta", {}).items()}
        load_strategy_state(self.strategy, state.strategy_arrays)
        self.metrics.truncate_after(self.completed_round)
        known = {s["site_id"] for s in state.state["sites"]}
        answered = request_summaries(self.grid, self.wait_for_nodes(), self.settings, group_id="resume")
        for node, info in answered.items():
            if info.site_id in known or admit_late_site(info, self.spec, self.settings, self.completed_round + 1):
                self.sites[node] = info
            else:
                self.rejected_nodes.add(node)
        self._require_enough_sites("resume")
        logger.info("resumed %s after round %d with sites %s", self.run_dir, self.completed_round,
                    sorted(i.site_id for i in self.sites.values()))

    def _plan(self) -> BalancePlan:
        fields = self.settings.fields_list
        counts: dict[str, dict] = {}
        for info in self.sites.values():
            if SITE_FIELD in fields:
                for site, per_class in info.summary.counts_by(SITE_FIELD, self.spec.class_field).items():
                    counts.setdefault(site, {}).update(per_class)
            else:
                index = fields.index(self.spec.class_field)
                per_class: dict = {}
                for key, count in info.summary.cells.items():
                    cls = key[index]
                    if cls is not None:
                        per_class[cls] = per_class[cls] + count if cls in per_class else count
                counts[info.site_id] = per_class
        plan = plan_balance(
            counts,
            classes=self.spec.classes,
            policy=self.settings.balance_policy,
            fixed_target=self.settings.balance_target,
            cap_per_cell=self.settings.max_synthetic_per_cell or None,
        )
        for site, cls, need in plan.rows():
            logger.info("balance plan: site %s needs %d synthetic %s patches (target %d)", site, need, cls, plan.targets[cls])
        return plan

    def _require_enough_sites(self, stage: str) -> None:
        if len(self.sites) < self.settings.min_clients:
            raise FederationError(
                f"{stage}: only {len(self.sites)} site(s) replied with a valid summary, "
                f"min-clients is {self.settings.min_clients}"
            )

    # -- rounds -----------------------------------------------------------------

    def round_config(self) -> ConfigRecord:
        s = self.settings
        train_config = TrainConfig(
            lr=s.lr,
            batch_size=s.batch_size,
            total_steps=s.num_server_rounds * s.local_steps,
            mixed_precision=s.mixed_precision,
            seed=s.seed,
            use_ema=False,  # local steps need no EMA: the server keeps one of the global weights
        )
        return ConfigRecord({
            P.MODEL_CONFIG: json.dumps(asdict(self.model_config)),
            P.DIFFUSION_CONFIG: json.dumps(asdict(self.diffusion_config)),
            P.TRAIN_CONFIG: json.dumps(asdict(train_config)),
            P.METADATA_SPEC: self.spec.to_json(),
            P.LOCAL_STEPS: s.local_steps,
            P.TRANSFER_PRECISION: s.transfer_precision,
            P.RUN_NAME: s.run_name,
            P.HOLDOUT_FRACTION: s.holdout_fraction,
            P.HOLDOUT_SEED: s.seed,
            P.DP_TARGET_EPSILON: s.dp_target_epsilon,
            P.DP_NOISE_MULTIPLIER: s.dp_noise_multiplier,
            P.DP_MAX_GRAD_NORM: s.dp_max_grad_norm,
            P.DP_NOISE_MULTIPLICITY: s.dp_noise_multiplicity,
            P.DP_DELTA: s.dp_delta,
        })

    def admit_new_nodes(self, server_round: int) -> None:
        """Handshake with nodes that connected after the start, then admit or reject them."""
        new = [n for n in self.grid.get_node_ids() if n not in self.sites and n not in self.rejected_nodes]
        if not new:
            return
        for node, info in request_summaries(self.grid, new, self.settings, group_id=f"late-{server_round}").items():
            if admit_late_site(info, self.spec, self.settings, server_round):
                self.sites[node] = info
            else:
                self.rejected_nodes.add(node)

    def run_round(self, server_round: int) -> None:
        """Broadcast, collect, screen, aggregate, then checkpoint and log one round."""
        started = time.perf_counter()
        self.admit_new_nodes(server_round)
        messages, bytes_sent = self._train_messages(server_round)
        sent = time.perf_counter()
        replies = send_and_receive(self.grid, messages, timeout=self.settings.round_timeout)
        received = time.perf_counter()
        accepted, outcomes = self._screen(server_round, messages, replies)
        try:
            self.global_weights = aggregate_updates(self.strategy, server_round, accepted, self.global_weights)
        except ValueError as err:
            raise FederationError(str(err)) from err
        self.ema.update(self.global_weights)
        aggregated = time.perf_counter()
        self.completed_round = server_round
        for o in outcomes:
            if P.EPSILON in o.metrics:
                self.epsilon[o.site] = o.metrics[P.EPSILON]
                self.delta[o.site] = o.metrics.get(P.EPSILON_DELTA, float("nan"))

        self._save(server_round)
        phases = {"prepare_seconds": sent - started, "exchange_seconds": received - sent,
                  "aggregate_seconds": aggregated - received, "checkpoint_seconds": time.perf_counter() - aggregated}
        self._log_round(server_round, outcomes, bytes_sent, time.perf_counter() - started, phases)
        if self.settings.grid_every and server_round % self.settings.grid_every == 0:
            self.sample_grid(self.run_dir / "samples" / f"round-{server_round:04d}.png")

    def _train_messages(self, server_round: int) -> tuple[list[Message], int]:
        """The strategy's train messages for admitted sites, with weights cast to the transfer precision."""
        # Only FedAdam reads the arrays passed to configure_train (as its fp32 reference); the
        # others get an empty record, which saves one serialised copy of the model.
        global_record = to_record(self.global_weights) if self.settings.strategy == "fedadam" else ArrayRecord()
        messages = [
            m for m in self.strategy.configure_train(server_round, global_record, self.round_config(), self.grid)
            if m.metadata.dst_node_id in self.sites
        ]
        # Flower's strategies keep fp32 references (FedAdam), so only the copy on the wire is cast.
        wire = to_record(transfer.encode(self.global_weights, self.settings.transfer_precision))
        bytes_sent = int(wire.count_bytes())
        for message in messages:
            config = message.content.config_records[P.CONFIG]
            message.content = RecordDict({P.ARRAYS: wire, P.CONFIG: config})
            message.metadata.group_id = str(server_round)
        logger.info("round %d: sending %.1f MiB (%s) to sites %s", server_round, bytes_sent / 2**20,
                    self.settings.transfer_precision, sorted(self.sites[m.metadata.dst_node_id].site_id for m in messages))
        return messages, bytes_sent

    def _screen(self, server_round: int, messages: list[Message], replies: list[Message]) -> tuple[list[Message], list]:
        """Screen the replies; raise `FederationError` when fewer than ``min-clients`` updates pass."""
        site_ids = {node: info.site_id for node, info in self.sites.items()}
        accepted, outcomes = screen_replies(
            replies, global_weights=self.global_weights, server_round=server_round,
            sites=site_ids, max_update_norm=self.settings.max_update_norm,
        )
        answered = {m.metadata.src_node_id for m in replies}
        for message in messages:
            if message.metadata.dst_node_id not in answered:
                logger.warning("round %d: site %s sent no reply within %.0f s", server_round,
                               site_ids[message.metadata.dst_node_id], self.settings.round_timeout)
        if len(accepted) < self.settings.min_clients:
            reasons = "; ".join(f"{o.site}: {o.reason}" for o in outcomes if not o.accepted) or "no replies"
            raise FederationError(
                f"round {server_round}: {len(accepted)} update(s) accepted, min-clients is "
                f"{self.settings.min_clients} ({reasons})"
            )
        return accepted, outcomes

    def _save(self, server_round: int) -> None:
        state: dict[str, Any] = {
            "metadata_spec": self.spec.to_dict(),
            "balance_plan": self.plan.to_dict(),
            "ema_updates": self.ema.num_updates,
            "epsilon": self.epsilon,
            "delta": self.delta,
            "sites": [{"site_id": i.site_id, "node_id": i.node_id, "summary": i.summary.to_json()} for i in self.sites.values()],
            "settings": self.settings.to_run_config(),
        }
        ckpt.save_checkpoint(
            self.run_dir,
            ckpt.ServerCheckpoint(server_round, self.global_weights, self.ema.shadow, strategy_state(self.strategy), state),
            keep=self.settings.keep_checkpoints,
        )

    def _log_round(
        self, server_round: int, outcomes: list, bytes_sent: int, round_seconds: float, phases: dict[str, float]
    ) -> None:
        accepted = [o for o in outcomes if o.accepted]
        for o in outcomes:
            self.metrics.log_site({
                "round": server_round, "site": o.site, "node_id": o.node_id, "accepted": o.accepted,
                "reason": o.reason, "train_loss": o.metrics.get(P.TRAIN_LOSS, float("nan")),
                "num_examples": o.metrics.get(P.NUM_EXAMPLES, 0), "train_seconds": o.metrics.get(P.TRAIN_SECONDS, float("nan")),
                "handler_seconds": o.metrics.get(P.HANDLER_SECONDS, float("nan")), "bytes_sent": bytes_sent,
                "bytes_received": o.bytes_received, "update_norm": o.norm, "epsilon": o.metrics.get(P.EPSILON, float("nan")),
            })
        slowest = max((o.metrics.get(P.TRAIN_SECONDS, 0.0) for o in accepted), default=0.0)
        self.metrics.log_round({
            "round": server_round, "round_seconds": round_seconds, "slowest_train_seconds": slowest, **phases,
            "bytes_sent": bytes_sent * len(outcomes), "bytes_received": sum(o.bytes_received for o in outcomes),
            "accepted": len(accepted), "rejected": len(outcomes) - len(accepted),
            "mean_loss": float(np.mean([o.metrics.get(P.TRAIN_LOSS, np.nan) for o in accepted])),
        })
        self.metrics.plot()
        logger.info("round %d done in %.1f s: %d accepted, %d rejected, slowest local training %.1f s",
                    server_round, round_seconds, len(accepted), len(outcomes) - len(accepted), slowest)

    # -- outputs ----------------------------------------------------------------

    def sample_grid(self, path: Path) -> None:
        write_sample_grid(
            path, self.ema.shadow, model_config=self.model_config, diffusion_config=self.diffusion_config,
            spec=self.spec, scheduler=self.settings.sample_scheduler, num_steps=self.settings.grid_steps,
            guidance_scale=self.settings.guidance_scale, seed=self.settings.seed,
        )

    def card(self) -> dict[str, Any]:
        return {
            "run_name": self.settings.run_name,
            "sites": sorted(i.site_id for i in self.sites.values()),
            "rounds": self.completed_round,
            "strategy": self.settings.strategy,
            "local_steps_per_round": self.settings.local_steps,
            "data_counts": {i.site_id: {str(k): str(c) for k, c in i.summary.cells.items()} for i in self.sites.values()},
            "k_anonymity": self.settings.k_anonymity,
            "epsilon_per_site": self.epsilon or "no differential privacy",
            "delta_per_site": self.delta or "no differential privacy",
            "epsilon_per_round": self._epsilon_per_round() or "no differential privacy",
            "server_ema_decay": self.settings.server_ema_decay,
            "transfer_precision": self.settings.transfer_precision,
        }

    def _epsilon_per_round(self) -> dict[str, dict[str, float]]:
        """``{site: {round: epsilon spent after it}}`` from the metrics log, for the rounds a site trained with DP."""
        table: dict[str, dict[str, float]] = {}
        for row in self.metrics.read("sites.jsonl"):
            epsilon = row.get("epsilon")
            if isinstance(epsilon, (int, float)) and math.isfinite(epsilon):
                table.setdefault(row["site"], {})[str(row["round"])] = float(epsilon)
        return table

    def finish(self) -> dict[str, Any]:
        """Write the sampler and, if configured, run synthesis at the sites; return the report."""
        sampler_dir = write_sampler(
            self.run_dir / "sampler", self.ema.shadow, model_config=self.model_config,
            diffusion_config=self.diffusion_config, spec=self.spec, card=self.card(),
            scheduler=self.settings.sample_scheduler, num_steps=self.settings.sample_steps,
        )
        report: dict[str, Any] = {"sampler": str(sampler_dir), "rounds": self.completed_round, "card": self.card(),
                                  "balance_plan": self.plan.to_dict()}
        if self.settings.synthesize:
            report["synthesis"] = request_synthesis(self, group_id="synthesis")
            rows = memorisation_rows(report["synthesis"])
            if rows:
                write_memorisation_table(self.run_dir / "memorisation.csv", rows)
                report["memorisation"] = {row["site"]: row for row in rows}
                report["card"]["memorisation_per_site"] = memorisation_card(rows)
                update_card(sampler_dir, report["card"])
        (self.run_dir / "report.json").write_text(json.dumps(report, indent=2, default=str) + "\n")
        return report


def run_federation(grid: Grid, context: Context) -> dict[str, Any]:
    """Run the whole federated MeDi job; returns the report also written to ``RUN_DIR/report.json``."""
    settings = FederationSettings.from_run_config(context.run_config)
    settings.run_path.mkdir(parents=True, exist_ok=True)
    with attach_run_log(settings.run_path / "server.log"):
        logger.info("MeDi federated run %r starting in %s", settings.run_name, settings.run_path)
        for line in settings.summary_lines():
            logger.info("%s", line)
        try:
            return _run(grid, settings)
        except Exception as err:
            logger.exception("run %r failed: %s", settings.run_name, err)
            raise


def _run(grid: Grid, settings: FederationSettings) -> dict[str, Any]:
    federation = Federation(grid, settings)
    if settings.resume and ckpt.complete_rounds(settings.run_path):
        federation.resume()
    else:
        if settings.resume:
            logger.warning("resume requested but %s has no complete round; starting a new run", settings.run_path)
        federation.start_new()
    for server_round in range(federation.completed_round + 1, settings.num_server_rounds + 1):
        logger.info("round %d/%d", server_round, settings.num_server_rounds)
        federation.run_round(server_round)
    report = federation.finish()
    logger.info("MeDi federated run %r finished after %d rounds", settings.run_name, federation.completed_round)
    return report
