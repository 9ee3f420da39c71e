"""The params.yaml sections, by name, and the notebooks that read them.

Imports are lazy so that validating one section never imports another family's code.
"""

from __future__ import annotations

import importlib
from collections.abc import Mapping
from typing import Any

from trustlab.config import ConfigError, Section

SECTIONS: dict[str, str] = {
    "tracking": "trustlab.tracking_config:TrackingConfig",
    "model": "trustlab.model_config:ModelConfig",
    "data": "trustlab.data.config:DataConfig",
    "base_model": "trustlab.lm.base_model:BaseModelConfig",
    "calibration": "trustlab.calibration.config:CalibrationConfig",
    "noisefit": "trustlab.noisefit.config:NoiseFitConfig",
    "entropy_attention": "trustlab.attention.config:EntropyAttentionConfig",
    "error_detection": "trustlab.detection.config:ErrorDetectionConfig",
}

# notebook stem -> the params section injected into it
NOTEBOOKS: dict[str, str] = {
    "00_data": "data",
    "01_base_model": "base_model",
    "calibration": "calibration",
    "noisefit": "noisefit",
    "entropy_attention": "entropy_attention",
    "error_detection": "error_detection",
}

TOP_LEVEL_KEYS = {"profile", *SECTIONS}


def section_class(name: str) -> type[Section]:
    if name not in SECTIONS:
        raise ConfigError(f"unknown params section {name!r}; allowed sections are {', '.join(sorted(SECTIONS))}")
    module, _, attr = SECTIONS[name].partition(":")
    return getattr(importlib.import_module(module), attr)


def validate_params(params: Mapping[str, Any], only: list[str] | None = None) -> dict[str, Section]:
    """Validate the named sections (default: every section present) and return them."""
    unknown = sorted(set(params) - TOP_LEVEL_KEYS)
    if unknown:
        raise ConfigError(
            f"params.yaml: unknown top-level key{'s' if len(unknown) > 1 else ''} {', '.join(map(repr, unknown))}; "
            f"allowed keys are {', '.join(sorted(TOP_LEVEL_KEYS))}"
        )
    names = only if only is not None else [n for n in SECTIONS if n in params]
    return {n: section_class(n).from_dict(params.get(n) or {}, where=n) for n in names}
