"""Frozen feature encoders for downstream probes and fidelity: timm weights, a small CNN, random convolutions.

Every encoder has the same interface: ``embed(images)`` takes ``(N, 3, S, S)``
in [-1, 1] and returns ``(N, D)`` float64 features. Three kinds exist:

- ``timm``: any timm model (UNI, a ViT, a ResNet) loaded from a local weights
  file. timm is imported only here, when such an encoder is built.
- ``cnn``: a small CNN trained from scratch on the real training patches
  (class labels, class-balanced cross-entropy). Its pooled penultimate
  activations are the features. This is the default when no weights exist.
- ``random``: a fixed-seed, untrained convolutional network. It needs no
  training at all, so it is the cheapest option, and its pooled responses
  plus the per-channel colour mean and standard deviation still separate
  stains and coarse tissue texture.
"""

from __future__ import annotations

import logging
from abc import ABC, abstractmethod
import contextlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from medi_core.errors import EvaluationError, MissingDependencyError
from medi_core.evaluation.patches import LabeledPatches
from medi_core.evaluation.threads import single_thread

logger = logging.getLogger(__name__)

EncoderKind = Literal["timm", "cnn", "random"]

IMAGENET_MEAN = (0.485, 0.456, 0.406)  # the normalisation most timm weights (UNI included) expect
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass
class EncoderConfig:
    """Choice and settings of the frozen encoder that turns patches into features."""

    kind: EncoderKind = "cnn"
    timm_model: str | None = None  # timm architecture name, e.g. "vit_large_patch16_224" for UNI
    weights_path: str | None = None  # local state-dict file (.safetensors, .bin, .pth) for kind "timm"
    input_size: int = 224  # px fed to the timm model; UNI and most ViTs were trained at 224
    timm_kwargs: dict[str, Any] = field(default_factory=dict)  # e.g. {"init_values": 1e-5} for UNI
    width: int = 16  # channels of the first conv layer of the "cnn" and "random" encoders
    epochs: int = 30  # passes over the training patches for "cnn"
    learning_rate: float = 2e-3  # Adam step size for "cnn"
    seed: int = 0


class FeatureEncoder(ABC):
    """A frozen image encoder: ``embed`` maps (N, 3, S, S) in [-1, 1] to (N, D) features."""

    name: str = "encoder"
    batch_size: int = 64
    single_threaded: bool = True  # see `single_thread`; large timm models turn this off

    @abstractmethod
    def _features(self, batch: torch.Tensor) -> torch.Tensor:
        """Return (B, D) features of a (B, 3, S, S) batch in [-1, 1]."""

    @property
    @abstractmethod
    def module(self) -> nn.Module: ...

    def embed(self, images: torch.Tensor) -> np.ndarray:
        """Return (N, D) float64 features of (N, 3, S, S) images in [-1, 1], in batches."""
        if images.ndim != 4 or images.shape[1] != 3:
            raise EvaluationError(f"{self.name}: images must have shape (N, 3, S, S), got {tuple(images.shape)}")
        if images.shape[0] == 0:
            raise EvaluationError(f"{self.name}: no images to embed")
        self.module.eval()
        parts = []
        threads = single_thread() if self.single_threaded else contextlib.nullcontext()
        with threads, torch.no_grad():
            for start in range(0, images.shape[0], self.batch_size):
                batch = images[start : start + self.batch_size].float()
                parts.append(self._features(batch).double().cpu().numpy())
        features = np.concatenate(parts)
        if not np.isfinite(features).all():
            raise EvaluationError(f"{self.name}: features contain NaN or infinity; check the input images")
        return features


def _colour_statistics(batch: torch.Tensor) -> torch.Tensor:
    """Per-channel mean and standard deviation of (B, 3, H, W); returns (B, 6)."""
    return torch.cat([batch.mean(dim=(2, 3)), batch.std(dim=(2, 3))], dim=1)


def _conv_stack(width: int) -> nn.Sequential:
    """Three 3x3 conv blocks (width, 2 width, 4 width channels), each halving H and W."""
    layers: list[nn.Module] = []
    channels = 3
    for out in (width, 2 * width, 4 * width):
        layers += [nn.Conv2d(channels, out, kernel_size=3, padding=1), nn.ReLU(), nn.MaxPool2d(2)]
        channels = out
    return nn.Sequential(*layers)


class RandomConvEncoder(FeatureEncoder):
    """Untrained convolutions with fixed-seed weights; features from all three depths plus colour statistics."""

    def __init__(self, *, width: int = 16, seed: int = 0) -> None:
        self.name = f"random-conv(w={width}, seed={seed})"
        generator = torch.Generator().manual_seed(seed)
        self._stack = _conv_stack(width)
        for layer in self._stack:
            if isinstance(layer, nn.Conv2d):
                fan_in = layer.in_channels * 9
                # He initialisation keeps the activation scale stable through the ReLUs.
                layer.weight.data = torch.randn(layer.weight.shape, generator=generator) * (2.0 / fan_in) ** 0.5
                layer.bias.data.zero_()
        self._stack.requires_grad_(False)

    @property
    def module(self) -> nn.Module:
        return self._stack

    def _features(self, batch: torch.Tensor) -> torch.Tensor:
        pooled = [_colour_statistics(batch)]
        hidden = batch
        for layer in self._stack:
            hidden = layer(hidden)
            if isinstance(layer, nn.MaxPool2d):
                pooled.append(hidden.mean(dim=(2, 3)))  # (B, C) at this depth
        return torch.cat(pooled, dim=1)  # (B, 6 + 7 * width)


class SmallCNN(nn.Module):
    """Three conv blocks, global average pooling and a linear class head."""

    def __init__(self, num_classes: int, width: int = 16) -> None:
        super().__init__()
        self.stack = _conv_stack(width)
        self.head = nn.Linear(4 * width, num_classes)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self.stack(x).mean(dim=(2, 3))  # (B, 4 * width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))  # (B, num_classes) logits


class CnnEncoder(FeatureEncoder):
    """A `SmallCNN` trained on labelled patches, used frozen: pooled features plus colour statistics."""

    def __init__(self, network: SmallCNN, image_size: int, classes: Sequence[str], name: str) -> None:
        self.network = network.eval().requires_grad_(False)
        self.image_size = image_size
        self.classes = tuple(classes)
        self.name = name

    @property
    def module(self) -> nn.Module:
        return self.network

    def _features(self, batch: torch.Tensor) -> torch.Tensor:
        if batch.shape[-1] != self.image_size:
            batch = F.interpolate(batch, size=(self.image_size, self.image_size), mode="bilinear", antialias=True)
        return torch.cat([_colour_statistics(batch), self.network.features(batch)], dim=1)


def train_cnn_encoder(
    patches: LabeledPatches,
    *,
    width: int = 16,
    epochs: int = 30,
    learning_rate: float = 2e-3,
    batch_size: int = 32,
    seed: int = 0,
) -> CnnEncoder:
    """Train a `SmallCNN` from scratch on ``patches`` (class labels) and return it as a frozen encoder.

    Random flips and 90-degree rotations augment the batches, and class-weighted
    cross-entropy keeps rare classes from being ignored. The weights depend only
    on ``seed`` and the data.
    """
    classes = patches.classes
    if len(classes) < 2:
        raise EvaluationError(f"training a CNN encoder needs at least two classes, {patches.name!r} has {classes}")
    targets = torch.tensor([classes.index(c) for c in patches.labels.tolist()])
    counts = torch.bincount(targets, minlength=len(classes)).float()
    class_weights = counts.sum() / (len(classes) * counts)  # sklearn's "balanced" weighting
    with torch.random.fork_rng(devices=[]), single_thread():
        torch.manual_seed(seed)
        network = SmallCNN(len(classes), width)
        optimizer = torch.optim.Adam(network.parameters(), lr=learning_rate)
        generator = torch.Generator().manual_seed(seed)
        network.train()
        for _ in range(epochs):
            order = torch.randperm(len(patches), generator=generator)
            for start in range(0, len(patches), batch_size):
                rows = order[start : start + batch_size]
                batch = _flip_rotate(patches.images[rows], generator)
                loss = F.cross_entropy(network(batch), targets[rows], weight=class_weights)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
    logger.info("trained the CNN encoder on %d patches for %d epochs, last batch loss %.3f", len(patches), epochs, loss.item())
    name = f"cnn(w={width}, epochs={epochs}, seed={seed})"
    return CnnEncoder(network, patches.image_size, classes, name)


def _flip_rotate(batch: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Apply one random dihedral transform (flip, rotation by k * 90 degrees) to the whole batch."""
    turns = int(torch.randint(4, (1,), generator=generator))
    batch = torch.rot90(batch, turns, dims=(2, 3))
    if torch.rand(1, generator=generator).item() < 0.5:
        batch = batch.flip(3)
    return batch


class TimmEncoder(FeatureEncoder):
    """A timm model loaded from a local weights file; features from its pooled output (``num_classes=0``)."""

    def __init__(
        self,
        model: nn.Module,
        *,
        name: str,
        input_size: int = 224,
        mean: Sequence[float] = IMAGENET_MEAN,
        std: Sequence[float] = IMAGENET_STD,
    ) -> None:
        self.model = model.eval().requires_grad_(False)
        self.name = name
        self.input_size = input_size
        self._mean = torch.tensor(mean).view(1, 3, 1, 1)
        self._std = torch.tensor(std).view(1, 3, 1, 1)
        self.batch_size = 16
        self.single_threaded = False

    @property
    def module(self) -> nn.Module:
        return self.model

    def _features(self, batch: torch.Tensor) -> torch.Tensor:
        batch = F.interpolate(batch, size=(self.input_size, self.input_size), mode="bilinear", antialias=True)
        batch = ((batch + 1.0) / 2.0 - self._mean) / self._std  # [-1, 1] -> [0, 1] -> normalised
        features = self.model(batch)
        return features.flatten(1)


def _import_timm() -> Any:
    try:
        import timm  # noqa: PLC0415 (optional dependency)
    except ImportError as err:
        raise MissingDependencyError(
            f"the timm encoder needs the timm package, which failed to import ({err}). Install timm "
            f"together with the torchvision build that matches torch {torch.__version__} "
            "(for example from the same PyTorch wheel index as torch), or use the 'cnn' or 'random' "
            "encoder, which need no extra packages"
        ) from err
    return timm


def _read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file  # noqa: PLC0415

        state: Any = load_file(str(path))
    else:
        state = torch.load(path, map_location="cpu", weights_only=True)
    for key in ("state_dict", "model"):  # training checkpoints often nest the weights
        if isinstance(state, Mapping) and key in state and isinstance(state[key], Mapping):
            state = state[key]
    if not isinstance(state, Mapping):
        raise EvaluationError(f"weights file {path} does not contain a state dict")
    return dict(state)


def load_timm_encoder(
    model_name: str,
    weights_path: str | Path,
    *,
    input_size: int = 224,
    mean: Sequence[float] = IMAGENET_MEAN,
    std: Sequence[float] = IMAGENET_STD,
    **model_kwargs: Any,
) -> TimmEncoder:
    """Build a timm model without downloading anything and load its weights from ``weights_path``.

    Classifier-head weights in the file are ignored. Any other missing or
    unexpected key raises, because a half-loaded encoder gives meaningless features.
    """
    path = Path(weights_path).expanduser()
    if not path.is_file():
        raise EvaluationError(f"encoder weights {path} not found; pass a local weights file for {model_name!r}")
    timm = _import_timm()
    try:
        model = timm.create_model(model_name, pretrained=False, num_classes=0, **model_kwargs)
    except RuntimeError as err:  # timm raises RuntimeError for unknown architecture names
        raise EvaluationError(f"timm cannot build model {model_name!r}: {err}") from err
    result = model.load_state_dict(_read_state_dict(path), strict=False)
    head_prefixes = ("head.", "fc.", "classifier.", "head_dist.")
    unexpected = [k for k in result.unexpected_keys if not k.startswith(head_prefixes)]
    if result.missing_keys or unexpected:
        raise EvaluationError(
            f"weights {path} do not match timm model {model_name!r}: {len(result.missing_keys)} missing keys "
            f"(e.g. {result.missing_keys[:3]}), {len(unexpected)} unexpected keys (e.g. {unexpected[:3]}); "
            "check the architecture name and its keyword arguments"
        )
    logger.info("loaded timm encoder %s from %s", model_name, path)
    return TimmEncoder(model, name=f"timm:{model_name}", input_size=input_size, mean=mean, std=std)


def build_encoder(config: EncoderConfig, train: LabeledPatches | None = None) -> FeatureEncoder:
    """Build the encoder ``config`` describes; kind ``cnn`` trains on ``train``."""
    if config.kind == "timm":
        if not config.timm_model or not config.weights_path:
            raise EvaluationError("encoder kind 'timm' needs timm_model and weights_path (a local file)")
        return load_timm_encoder(
            config.timm_model, config.weights_path, input_size=config.input_size, **config.timm_kwargs
        )
    if config.kind == "cnn":
        if train is None:
            raise EvaluationError("encoder kind 'cnn' is trained on the real training patches; pass train=")
        return train_cnn_encoder(
            train, width=config.width, epochs=config.epochs, learning_rate=config.learning_rate, seed=config.seed
        )
    if config.kind == "random":
        return RandomConvEncoder(width=config.width, seed=config.seed)
    raise EvaluationError(f"encoder kind must be 'timm', 'cnn' or 'random', got {config.kind!r}")


__all__ = [
    "CnnEncoder",
    "EncoderConfig",
    "EncoderKind",
    "FeatureEncoder",
    "RandomConvEncoder",
    "SmallCNN",
    "TimmEncoder",
    "build_encoder",
    "load_timm_encoder",
    "train_cnn_encoder",
]
