"""One ``medi-sim`` run, step by step: split by site, federate, train baselines, evaluate, report.

Layout of ``RUN_DIR``:

| path | written by |
|---|---|
| ``config.yaml`` | the resolved configuration (Hydra also keeps ``.hydra/``) |
| ``medi-sim.log`` | the run's log, from the first stage on (`medi_sim.run_log`) |
| ``sites/<site>/patches.csv``, ``sites/holdout.csv`` | `medi_sim.sites` |
| ``sites/<site>/output/`` | each virtual hospital: sampler copy, synthetic patches, local state |
| ``federation/`` | the ServerApp: checkpoints, metrics, sampler, ``report.json`` |
| ``flwr-home/``, ``superlink.db``, ``logs/`` | Flower's simulation engine |
| ``baselines/<name>/`` | the central baselines' samplers and synthetic patches |
| ``report/`` | CSV tables, PNG plots and ``summary.md`` |
"""

from __future__ import annotations

import logging
from dataclasses import asdict, fields, is_dataclass, replace
from difflib import get_close_matches
from pathlib import Path

from omegaconf import OmegaConf
from tqdm import tqdm

from medi_core.config import DiffusionConfig, model_preset
from medi_core.errors import ConfigError
from medi_core.metadata import MetadataSpec
from medi_server.settings import SAMPLE_SCHEDULERS, FederationSettings
from medi_sim.baselines import (
    CLASS_ONLY,
    MEDI_CENTRAL,
    MEDI_FEDERATED,
    federated_diffusion_config,
    run_baselines,
    synthesis_counts,
)
from medi_sim.config import SimConfig
from medi_sim.engine import run_simulated_federation
from medi_sim.experiment import (
    REAL_TRAIN,
    SYNTHETIC_ORDER,
    cell_counts,
    federated_synthetic_manifests,
    load_patches,
    planned_requests,
    requests_from_counts,
    run_experiment,
    synthesis_rows,
    write_run_report,
)
from medi_sim.run_log import run_log
from medi_sim.sites import SiteSplit, open_manifest, prepare_sites

logger = logging.getLogger(__name__)

STAGES = ("split by site", "federated training", "central baselines", "evaluation", "report")
NOTHING_REQUESTED = (
    "The sites wrote no synthetic patches because the balance plan (federation/balance_plan.json) requested none: "
    "no (site, class) cell is short of its target. The central baselines were not trained, and the report "
    "compares configurations (a) real and (b) real+stain only."
)


def _unknown_options(node: object, prefix: str = "") -> list[tuple[str, list[str]]]:
    """Return each dotted key set on ``node`` that is no field of its dataclass, paired with that dataclass's fields.

    Hydra's ``+key=value`` adds such keys to a structured config, and `OmegaConf.to_object` keeps them as plain
    attributes that no stage reads.
    """
    names = [f.name for f in fields(node)]
    found = [(f"{prefix}{key}", names) for key in vars(node) if key not in names]
    for name in names:
        value = getattr(node, name)
        if is_dataclass(value):
            found += _unknown_options(value, f"{prefix}{name}.")
    return found


def check_config(config: SimConfig) -> None:
    """Reject combinations the run could only honour by silently ignoring an option."""
    for key, known in _unknown_options(config):
        parent, _, name = key.rpartition(".")
        close = [f"{parent}.{match}" if parent else match for match in get_close_matches(name, known, n=1)]
        hint = f"Did you mean {close[0]}? " if close else ""
        raise ConfigError(
            f"unknown option {key}, which no stage of medi-sim reads. {hint}Set an existing option without '+', "
            "and see `medi-sim --cfg job` for every option"
        )
    preset = model_preset(config.model.preset)
    if asdict(config.model) != asdict(preset):
        raise ConfigError(
            f"model fields differ from preset {config.model.preset!r}; the federation builds its model from the "
            "preset name only, so pick another preset (model=tiny|small|medi-paper) instead of overriding fields"
        )
    if config.federation.model_preset != config.model.preset:
        raise ConfigError(
            f"federation.model_preset={config.federation.model_preset!r} differs from model={config.model.preset!r}; "
            "choose the model with model=... only"
        )
    if config.baselines.scheduler not in (None, *SAMPLE_SCHEDULERS):
        raise ConfigError(
            f"baselines.scheduler={config.baselines.scheduler!r} is invalid; use one of {list(SAMPLE_SCHEDULERS)}, "
            "or null to sample with federation.sample_scheduler"
        )
    if not config.federation.synthesize:
        raise ConfigError("federation.synthesize=false leaves configuration (d) without patches; medi-sim needs synthesis")
    _check_later_stages(config)


def _check_later_stages(config: SimConfig) -> None:
    """Reject options of the baselines and the evaluation now, so a typo does not cost a whole federation."""
    baselines = config.baselines
    if baselines.steps is not None and baselines.steps < 1:
        raise ConfigError(f"baselines.steps must be >= 1, or null for the federation's total, got {baselines.steps}")
    if baselines.workers < 1:
        raise ConfigError(f"baselines.workers must be >= 1, got {baselines.workers}")
    if baselines.torch_threads < 1:
        raise ConfigError(f"baselines.torch_threads must be >= 1, got {baselines.torch_threads}")

    evaluation = config.evaluation
    if not evaluation.seeds:
        raise ConfigError(
            "evaluation.seeds is empty, so no probe would be trained; give at least one seed, for example "
            "'evaluation.seeds=[0]'"
        )
    if evaluation.synthetic_ratio is not None and evaluation.synthetic_ratio < 0:
        raise ConfigError(
            f"evaluation.synthetic_ratio must be >= 0, or null to add every synthetic patch, got {evaluation.synthetic_ratio}"
        )
    for key in ("real_per_class", "num_train_sites", "max_real_per_cell"):
        value = getattr(evaluation, key)
        if value is not None and value < 1:
            raise ConfigError(f"evaluation.{key} must be >= 1, or null for no limit, got {value}")
    encoder = evaluation.encoder
    encoder.to_encoder_config()
    if encoder.kind == "timm":
        if not encoder.timm_model:
            raise ConfigError("evaluation.encoder.kind=timm needs evaluation.encoder.timm_model, a timm architecture name")
        if not encoder.weights_path or not Path(encoder.weights_path).expanduser().is_file():
            raise ConfigError(
                f"evaluation.encoder.weights_path={encoder.weights_path!r} is not a file; the timm encoder loads its "
                "weights from a local file and downloads nothing"
            )


def federation_settings(config: SimConfig, split: SiteSplit, run_dir: Path) -> FederationSettings:
    """Build the federation's run config: the chosen preset plus this run's folder, site table and site count."""
    settings = replace(
        config.federation,
        run_dir=str(run_dir / "federation"),
        site_table=str(split.site_table),
        model_preset=config.model.preset,
        seed=config.seed,
    )
    if settings.min_clients > len(split.sites):
        logger.warning("federation.min_clients=%d but there are %d sites; lowering it to %d",
                       settings.min_clients, len(split.sites), len(split.sites))
        settings = replace(settings, min_clients=len(split.sites))
    return settings


def baseline_scheduler(config: SimConfig) -> str:
    """Sampler of the central baselines: ``baselines.scheduler``, or the federation's when it is null."""
    return config.baselines.scheduler or config.federation.sample_scheduler


def baseline_steps(config: SimConfig, num_sites: int) -> int:
    """Optimiser steps of each central baseline: the configured value or the federation's total."""
    if config.baselines.steps is not None:
        if config.baselines.steps < 1:
            raise ConfigError(f"baselines.steps must be >= 1 (or null), got {config.baselines.steps}")
        return config.baselines.steps
    return config.federation.num_server_rounds * config.federation.local_steps * num_sites


def _count_classes(count: int) -> str:
    return "1 class" if count == 1 else f"{count} classes"


def describe(
    config: SimConfig,
    split: SiteSplit,
    settings: FederationSettings,
    encoder: str,
    steps: int,
    diffusion: DiffusionConfig,
) -> list[str]:
    """Return the report's opening lines: data, sites, model, federation, privacy, encoder."""
    train = split.counts[split.counts["split"] == "train"]
    per_site = ", ".join(f"{site} ({int(part['count'].sum())})" for site, part in train.groupby("site", sort=False))
    holdout = split.counts[split.counts["split"] == "holdout"]
    # A held-out site with a few patches of one class decides the worst-site accuracy, so show its size.
    held_out = ", ".join(
        f"{site} ({int(part['count'].sum())} patches, {_count_classes(part['class'].nunique())})"
        for site, part in holdout.groupby("site")
    )
    epsilon = f"max ε {config.privacy.max_epsilon} per site" if config.privacy.max_epsilon > 0 else "no differential privacy"
    if config.privacy.site_max_epsilon:
        epsilon += f", per-site budgets {dict(config.privacy.site_max_epsilon)}"
    return [
        f"Data: {config.data.name} ({config.data.path or 'generated in the run folder'}), split by tissue source site "
        f"with grouping {config.data.grouping!r}.",
        f"Training sites (patches): {per_site}. Held-out TSS codes: {held_out} "
        f"({int(holdout['count'].sum())} patches in all, never used for training).",
        f"Model: {config.model.preset} preset, {config.model.sample_size} px. Federation: {settings.num_server_rounds} rounds "
        f"x {settings.local_steps} local steps, batch {settings.batch_size}, lr {settings.lr:g}, {settings.strategy}, {epsilon}. "
        f"Diffusion: {diffusion.num_train_timesteps} steps, {diffusion.beta_schedule} betas, "
        f"{diffusion.prediction_type} prediction.",
        f"Synthesis: balance policy {settings.balance_policy!r}, at most {settings.max_synthetic_per_cell or 'any number of'} "
        f"patches per (site, class), {settings.sample_scheduler} with {settings.sample_steps} steps. Central baselines: "
        f"{steps} optimiser steps each on the pooled training patches, sampled with {baseline_scheduler(config)}.",
        f"Seed: {config.seed} for the federation, the central baselines and their samplers. A random choice of "
        f"held-out sites (data.holdout_fraction) uses data.split_seed ({config.data.split_seed}) instead.",
        f"Downstream encoder: {encoder}; probes: class-balanced logistic regression, seeds {list(config.evaluation.seeds)}.",
        f"Scale: {settings.num_server_rounds * settings.local_steps} optimiser steps per site and {steps} per baseline. "
        "Runs of this length check the pipeline; their differences between configurations are not evidence for or "
        "against MeDi, which needs many more rounds (see the sample grids for what the models learned).",
    ]


def _start(bar: tqdm, index: int) -> None:
    bar.set_postfix_str(STAGES[index])
    logger.info("stage %d/%d: %s", index + 1, len(STAGES), STAGES[index])


def run_pipeline(config: SimConfig, run_dir: Path, *, progress: bool = True) -> Path:
    """Run every stage into ``run_dir``; return the path of the report's ``summary.md``."""
    run_dir = run_dir.resolve()
    with run_log(run_dir):
        return _run_stages(config, run_dir, progress=progress)


def _run_stages(config: SimConfig, run_dir: Path, *, progress: bool) -> Path:
    check_config(config)
    (run_dir / "config.yaml").write_text(OmegaConf.to_yaml(OmegaConf.structured(config)))
    size = config.model.sample_size
    stages = tqdm(total=len(STAGES), desc="medi-sim", unit="stage", disable=not progress)

    _start(stages, 0)
    split = prepare_sites(config.data, config.privacy, run_dir, image_size=size)
    settings = federation_settings(config, split, run_dir)
    stages.update()

    _start(stages, 1)
    run_simulated_federation(run_dir, settings.to_run_config(), num_sites=len(split.sites), engine=config.engine, progress=progress)
    stages.update()

    _start(stages, 2)
    counts = synthesis_counts(run_dir / "federation" / "report.json")
    spec = MetadataSpec.from_json((run_dir / "federation" / "metadata_spec.json").read_text())
    diffusion = federated_diffusion_config(run_dir / "federation" / "sampler")
    names = [n for n, on in ((CLASS_ONLY, config.baselines.class_only), (MEDI_CENTRAL, config.baselines.central)) if on]
    if not counts:
        logger.warning("%s", NOTHING_REQUESTED)
        names = []
    steps = baseline_steps(config, len(split.sites))
    site_datasets = {site: open_manifest(path, image_size=size) for site, path in split.manifests.items()}
    baselines = run_baselines(names, site_datasets, counts, run_dir / "baselines", federated_spec=spec,
                              model_config=config.model, settings=settings, steps=steps, seed=config.seed,
                              scheduler=baseline_scheduler(config), threads=config.baselines.torch_threads,
                              workers=config.baselines.workers, diffusion_config=diffusion)
    stages.update()

    _start(stages, 3)
    cap = config.evaluation.max_real_per_cell
    train = load_patches(list(split.manifests.values()), image_size=size, name="real train", max_per_cell=cap, seed=config.seed)
    test = load_patches([split.holdout_manifest], image_size=size, name="real held-out", max_per_cell=cap, seed=config.seed)
    federated = federated_synthetic_manifests(list(split.output_dirs.values()), settings.run_name)
    manifests: dict[str, list[Path]] = {MEDI_FEDERATED: federated}
    manifests.update({name: [result.manifest] for name, result in baselines.items()})
    synthetic = {name: load_patches(manifests[name], image_size=size, name=name)
                 for name in SYNTHETIC_ORDER if manifests.get(name)}
    tables = run_experiment(config.evaluation, train, test, synthetic)
    stages.update()

    _start(stages, 4)
    samples = {REAL_TRAIN: train, **synthetic}
    description = describe(config, split, settings, tables.encoder, steps, diffusion)
    if not counts:
        description.append(NOTHING_REQUESTED)
    # The sites were asked for the balance plan's cells; each baseline for exactly what the sites wrote.
    requested = {name: requests_from_counts(counts) for name in baselines}
    plan = planned_requests(run_dir / "federation" / "balance_plan.json")
    if plan is not None:
        requested[MEDI_FEDERATED] = plan
    summary = write_run_report(
        run_dir / "report",
        tables,
        config=OmegaConf.to_container(OmegaConf.structured(config)),
        metrics=run_dir / "federation" / "metrics" / "sites.jsonl",
        samples=samples,
        description=description,
        synthesis_table=synthesis_rows({name: cell_counts(p) for name, p in synthetic.items()}),
        requested_cells=requested,
        grid_per_cell=config.evaluation.grid_per_cell,
    )
    stages.update()
    stages.close()
    logger.info("report written to %s", summary)
    return summary


__all__ = ["STAGES", "baseline_scheduler", "baseline_steps", "check_config", "describe", "federation_settings", "run_pipeline"]
