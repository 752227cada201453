"""Hydra primary config of medi-sim (``medi_sim.yaml``); the presets live in `medi_sim.config`."""
