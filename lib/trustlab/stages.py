"""The pipeline's stages, in one table: the runner, the front page, the params check and the
dependency test all read it.

A :class:`Stage` names its params section (the class that validates it is looked up lazily,
so validating one section never imports another family's code), its notebook, its library
package, its title on the front page, its kind (``data`` stages are linked and timed,
``family`` stages also contribute claims and a headline figure) and the figures the front
page prefers as its headline. Sections that belong to no stage (``tracking``, ``model``) are
listed in :data:`SHARED_SECTIONS`.
"""

from __future__ import annotations

import importlib
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

from trustlab.core.config import ConfigError, Section
from trustlab.core.registry import did_you_mean


@dataclass(frozen=True)
class Stage:
    name: str
    section: str
    config: str  # "module:Class" of the section's config
    notebook: str | None
    package: str
    title: str
    kind: Literal["data", "family"]
    preferred_figures: tuple[str, ...] = ()


STAGES: tuple[Stage, ...] = (
    Stage("00_data", "data", "trustlab.data.config:DataConfig", "00_data", "trustlab.data", "Generated data", "data"),
    Stage("01_base_model", "base_model", "trustlab.lm.base_model:BaseModelConfig", "01_base_model", "trustlab.lm",
          "Base model", "data"),
    Stage("calibration", "calibration", "trustlab.calibration.config:CalibrationConfig", "calibration",
          "trustlab.calibration", "Calibration losses and post-hoc calibrators", "family",
          ("reliability_ce", "ece_vs_severity")),
    Stage("noisefit", "noisefit", "trustlab.noisefit.config:NoiseFitConfig", "noisefit", "trustlab.noisefit",
          "Hallucination noise fine-tuning (NoiseFiT, NEFTune, R-Drop)", "family",
          ("dose_response", "hallucination_by_split", "snr_layers")),
    Stage("entropy_attention", "entropy_attention", "trustlab.entropy_attention.config:EntropyAttentionConfig",
          "entropy_attention", "trustlab.entropy_attention", "Entropy-guided attention", "family",
          ("entropy_heatmaps_normalised", "perplexity")),
    Stage("error_detection", "error_detection", "trustlab.error_detection.config:ErrorDetectionConfig",
          "error_detection", "trustlab.error_detection", "Error detection", "family",
          ("detector_auroc", "rejection_curves")),
)  # fmt: skip

SHARED_SECTIONS: dict[str, str] = {
    "tracking": "trustlab.tracking.config:TrackingConfig",
    "model": "trustlab.lm.model_config:ModelConfig",
}

# params section -> "module:Class"
SECTIONS: dict[str, str] = {**SHARED_SECTIONS, **{s.section: s.config for s in STAGES}}
# notebook stem -> the params section injected into it
NOTEBOOKS: dict[str, str] = {s.notebook: s.section for s in STAGES if s.notebook}
FAMILIES: tuple[str, ...] = tuple(s.name for s in STAGES if s.kind == "family")
TOP_LEVEL_KEYS = {"profile", *SECTIONS}


def stage(name: str) -> Stage:
    for s in STAGES:
        if s.name == name:
            return s
    names = [s.name for s in STAGES]
    raise ConfigError(f"stage = {name!r} is not allowed{did_you_mean(name, names)}: choose one of {', '.join(names)}")


def section_class(name: str) -> type[Section]:
    if name not in SECTIONS:
        raise ConfigError(f"unknown params section {name!r}{did_you_mean(name, sorted(SECTIONS))}; "
                          f"allowed sections are {', '.join(sorted(SECTIONS))}")  # fmt: skip
    module, _, attr = SECTIONS[name].partition(":")
    return getattr(importlib.import_module(module), attr)


def validate_params(params: Mapping[str, Any], only: list[str] | None = None) -> dict[str, Section]:
    """Validate the named sections (default: every section present) and return them."""
    unknown = sorted(set(params) - TOP_LEVEL_KEYS)
    if unknown:
        hint = did_you_mean(unknown[0], sorted(TOP_LEVEL_KEYS))
        raise ConfigError(
            f"params.yaml: unknown top-level key{'s' if len(unknown) > 1 else ''} {', '.join(map(repr, unknown))}{hint}; "
            f"allowed keys are {', '.join(sorted(TOP_LEVEL_KEYS))}"
        )
    names = only if only is not None else [n for n in SECTIONS if n in params]
    return {n: section_class(n).from_dict(params.get(n) or {}, where=n) for n in names}
