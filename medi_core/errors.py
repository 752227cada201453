"""Exception types, one per area, so callers can catch what they can handle."""

from __future__ import annotations


class MediError(Exception):
    """Base class of every error raised on purpose by MeDi-Fed."""


class ConfigError(MediError, ValueError):
    """An option has an invalid value; the message names the option and the fix."""


class MetadataError(MediError, ValueError):
    """A metadata value, field, vocabulary or CSV is invalid."""


class BarcodeError(MetadataError):
    """A string is not a valid TCGA barcode."""


class SlideReadError(MediError):
    """A whole-slide image is missing, unsupported or unreadable."""


class DatasetError(MediError):
    """A patch source (folder, manifest, patch store) is missing or malformed."""


class SamplerLoadError(MediError):
    """A sampler folder is missing a file or its files do not match."""


class CheckpointError(MediError):
    """A training or server checkpoint is missing, incomplete or incompatible."""


class NonFiniteError(MediError, FloatingPointError):
    """A loss, gradient or model update contains NaN or infinity."""


class PrivacyError(MediError):
    """A differential-privacy setting is invalid or cannot be honoured."""


class PrivacyBudgetExceeded(PrivacyError):
    """Training further would spend more epsilon than the site allows."""


class FederationError(MediError):
    """A federated run failed: a round, a site or the coordinator."""


class EvaluationError(MediError, ValueError):
    """A downstream evaluation or fidelity input is invalid (empty set, missing class, bad option)."""


class MissingDependencyError(MediError, ImportError):
    """An optional package (timm, torch-fidelity) is not installed or fails to import."""
