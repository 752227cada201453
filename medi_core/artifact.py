"""The global sampler: one folder that reloads a trained MeDi model with one call.

Folder layout, in the manner of diffusers' ``save_pretrained``:

- ``model.safetensors``: the (EMA) weights of the `MediUNet`
- ``config.json``: model config, metadata spec with vocabularies, diffusion
  (scheduler) config, pixel normalisation and default sampling settings
- ``card.json`` and ``README.md``: the model card (sites, rounds, data counts,
  epsilon per site, ...) as data and as text
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping, Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from medi_core import __version__
from medi_core.config import DiffusionConfig, ModelConfig, config_from_dict
from medi_core.errors import ConfigError, MetadataError, SamplerLoadError
from medi_core.metadata import MetadataSpec
from medi_core.model import MediUNet, build_model
from medi_core.sampling import generate

logger = logging.getLogger(__name__)

WEIGHTS_NAME = "model.safetensors"
CONFIG_NAME = "config.json"
CARD_NAME = "card.json"
README_NAME = "README.md"
FORMAT_VERSION = 1
# Images enter the model as (pixel / 255 - 0.5) / 0.5, i.e. [0, 255] -> [-1, 1].
PIXEL_NORMALISATION = {"mean": [0.5, 0.5, 0.5], "std": [0.5, 0.5, 0.5], "model_range": [-1.0, 1.0]}


class MediSampler:
    """A trained denoiser plus everything needed to sample from it."""

    def __init__(
        self,
        model: MediUNet,
        diffusion_config: DiffusionConfig,
        card: Mapping[str, Any] | None = None,
        *,
        default_scheduler: str = "ddim",
        default_steps: int = 100,
    ) -> None:
        self.model = model
        self.diffusion_config = diffusion_config
        self.card = dict(card or {})
        self.default_scheduler = default_scheduler
        self.default_steps = default_steps

    @property
    def spec(self) -> MetadataSpec:
        return self.model.spec

    def generate(self, conditions: Sequence[Mapping[str, Any]], seeds: Sequence[int], **kwargs: Any) -> torch.Tensor:
        """Images ``(N, 3, H, W)`` in [-1, 1]; keyword arguments as in `medi_core.sampling.generate`."""
        kwargs.setdefault("scheduler", self.default_scheduler)
        kwargs.setdefault("num_steps", self.default_steps)
        return generate(self.model, conditions, seeds, diffusion_config=self.diffusion_config, **kwargs)

    # -- saving -------------------------------------------------------------

    def config_dict(self) -> dict[str, Any]:
        return {
            "format_version": FORMAT_VERSION,
            "medi_fed_version": __version__,
            "model": asdict(self.model.config),
            "metadata": self.spec.to_dict(),
            "diffusion": asdict(self.diffusion_config),
            "sampling": {"scheduler": self.default_scheduler, "num_steps": self.default_steps},
            "pixel_normalisation": PIXEL_NORMALISATION,
        }

    def save_pretrained(self, folder: str | Path) -> Path:
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        state = {k: v.detach().cpu().contiguous() for k, v in self.model.state_dict().items()}
        save_file(state, str(folder / WEIGHTS_NAME), metadata={"format": "pt"})
        (folder / CONFIG_NAME).write_text(json.dumps(self.config_dict(), indent=2) + "\n")
        (folder / CARD_NAME).write_text(json.dumps(self.card, indent=2, default=str) + "\n")
        (folder / README_NAME).write_text(render_model_card(self.card, self.config_dict()))
        logger.info("saved sampler to %s (%d parameters)", folder, self.model.num_parameters())
        return folder

    # -- loading ------------------------------------------------------------

    @classmethod
    def from_pretrained(cls, folder: str | Path, *, device: torch.device | str | None = None) -> MediSampler:
        """Load a sampler folder; a missing or mismatching file raises `SamplerLoadError` naming it."""
        folder = Path(folder)
        if not folder.is_dir():
            raise SamplerLoadError(f"sampler folder {folder} not found")
        config = _read_json(folder / CONFIG_NAME)
        card = _read_json(folder / CARD_NAME) if (folder / CARD_NAME).is_file() else {}
        if config.get("format_version") != FORMAT_VERSION:
            raise SamplerLoadError(
                f"{folder / CONFIG_NAME}: format_version {config.get('format_version')!r} is not "
                f"supported (expected {FORMAT_VERSION}); re-export the sampler with this version"
            )
        try:
            spec = MetadataSpec.from_dict(config["metadata"])
            model_config = config_from_dict(ModelConfig, config["model"])
            diffusion_config = config_from_dict(DiffusionConfig, config["diffusion"])
        except (KeyError, ConfigError, MetadataError, TypeError) as err:
            raise SamplerLoadError(f"{folder / CONFIG_NAME}: invalid or incomplete config ({err})") from err
        model = build_model(model_config, spec)
        weights_path = folder / WEIGHTS_NAME
        if not weights_path.is_file():
            raise SamplerLoadError(f"weights file {weights_path} is missing")
        try:
            state = load_file(str(weights_path))
        except (SafetensorError, OSError) as err:
            raise SamplerLoadError(f"weights file {weights_path} cannot be read: {err}") from err
        _check_state(weights_path, model, state)
        model.load_state_dict(state)
        if device is not None:
            model.to(device)
        model.eval()
        sampling = config.get("sampling", {})
        return cls(
            model,
            diffusion_config,
            card,
            default_scheduler=sampling.get("scheduler", "ddim"),
            default_steps=int(sampling.get("num_steps", 100)),
        )


def _read_json(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise SamplerLoadError(f"sampler file {path} is missing")
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise SamplerLoadError(f"sampler file {path} is not valid JSON: {err}") from err


def _check_state(path: Path, model: torch.nn.Module, state: dict[str, torch.Tensor]) -> None:
    expected = model.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    if missing or unexpected:
        raise SamplerLoadError(
            f"weights file {path} does not match config.json: {len(missing)} missing tensors "
            f"(first: {missing[:3]}), {len(unexpected)} unexpected (first: {unexpected[:3]})"
        )
    for name, tensor in state.items():
        if tuple(tensor.shape) != tuple(expected[name].shape):
            raise SamplerLoadError(
                f"weights file {path} does not match config.json: tensor {name} has shape "
                f"{tuple(tensor.shape)}, the config builds {tuple(expected[name].shape)}"
            )


def render_model_card(card: Mapping[str, Any], config: Mapping[str, Any]) -> str:
    """The sampler's README.md: what it is, what it was trained on, how to use it."""
    metadata = config["metadata"]
    lines = [
        "# MeDi-Fed sampler",
        "",
        "Metadata-guided diffusion model (MeDi, Drexlin et al., MICCAI 2025) for H&E patches,",
        "conditioned on the tumour class and site metadata.",
        "",
        "## Conditioning",
        "",
    ]
    for field in metadata["categorical"]:
        values = [v for v in field["values"] if v != "unknown"]
        lines.append(f"- `{field['name']}` (categorical, {len(values)} values): {', '.join(values)}")
    for field in metadata.get("continuous", []):
        lines.append(f"- `{field['name']}` (continuous, range {field['low']}–{field['high']})")
    model = config["model"]
    lines += [
        "",
        "## Model",
        "",
        f"- preset `{model['preset']}`, {model['sample_size']} px, block channels {model['block_out_channels']}",
        f"- conditioning: {model['conditioning']}; prediction: {config['diffusion']['prediction_type']}",
        f"- noise schedule: {config['diffusion']['beta_schedule']}, {config['diffusion']['num_train_timesteps']} training timesteps",
        f"- default sampler: {config['sampling']['scheduler']}, {config['sampling']['num_steps']} steps",
        "",
        "## Training",
        "",
    ]
    if not card:
        lines.append("No training record was attached to this sampler.")
    for key, value in card.items():
        if isinstance(value, Mapping):
            lines.append(f"- {key}:")
            lines += [f"  - {k}: {v}" for k, v in value.items()]
        else:
            lines.append(f"- {key}: {value}")
    lines += [
        "",
        "## Use",
        "",
        "```",
        "medi-sample --sampler THIS_FOLDER --class CLASS --site SITE --n 16 --out samples/",
        "```",
        "",
        "Synthetic patches are for training and evaluating classifiers; they are not",
        "diagnostic images. Check the memorisation report of the run before sharing samples.",
        "",
    ]
    return "\n".join(lines)
