"""`medi-sim`: the whole MeDi-Fed federation on one machine, then the downstream evaluation and a report.

Runs the same ServerApp and ClientApp as a deployment on Flower's simulation
engine, one virtual hospital per training site, and writes everything into
one run folder (``run_dir``, printed at the end)::

    medi-sim                                   # BRCA-M2C split by TSS, tiny model, a few minutes on a CPU
    medi-sim data=toy                          # the generated set, for machines without the shared data
    medi-sim federation.num_server_rounds=10 federation.local_steps=20 run_dir=runs/brca-10
    medi-sim data=tcga-ut data.path=/data/TCGA-UT evaluation=full model=small
    medi-sim --cfg job                         # print the resolved configuration and exit

Options are Hydra overrides (``group=preset`` or ``group.field=value``); the
groups and presets are listed in `medi_sim.config`. The resolved
configuration is saved as ``RUN_DIR/config.yaml``.
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf

from medi_core.errors import MediError
from medi_sim.config import SimConfig, register_configs
from medi_sim.pipeline import run_pipeline
from medi_sim.run_log import run_log

logger = logging.getLogger("medi_sim.cli")

register_configs()


def to_sim_config(config: DictConfig) -> SimConfig:
    """Turn the composed Hydra config into the `SimConfig` dataclass (with every interpolation resolved)."""
    return OmegaConf.to_object(config)


@hydra.main(version_base=None, config_path="conf", config_name="medi_sim")
def _hydra_main(config: DictConfig) -> int:
    run_dir = Path(HydraConfig.get().runtime.output_dir)
    with run_log(run_dir) as log_path:
        try:
            summary = run_pipeline(to_sim_config(config), run_dir)
        except MediError as err:
            logger.error("%s", err)
            logger.error("medi-sim failed; the log %s and partial results are in %s", log_path.name, run_dir)
            sys.exit(2)
        except KeyboardInterrupt:
            logger.error("interrupted; every process the simulation started has been stopped; "
                         "the log %s and partial results are in %s", log_path.name, run_dir)
            sys.exit(130)
        logger.info("done: open %s", summary)
    return 0


def main() -> None:
    """Console entry point of ``medi-sim``."""
    _hydra_main()


if __name__ == "__main__":
    main()
