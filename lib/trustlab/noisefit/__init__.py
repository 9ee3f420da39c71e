"""Hallucination noise fine-tuning (NoiseFiT) with NEFTune and R-Drop baselines.

Method card: ``/work/shared/methods/noisefit.md``. One file per concept:

* ``config``     ``NoiseFitConfig`` (the ``noisefit:`` params section), ``DecodingConfig``
* ``variants``   the fine-tuning variants by name and their loss terms
* ``noise``      the adaptive noise function and the sigma0 / sigma0**2 convention
* ``snr``        per-layer SNR and top-k Largest / Lowest layer selection
* ``hooks``      ``NoiseInjector``: noise on selected blocks, only inside a noisy pass
* ``losses``     hybrid loss, R-Drop, NEFTune
* ``training``   ``NoiseFitModule`` (a ``CausalLMModule``) for every variant (imports Lightning)
* ``experiment`` the functions the ``noisefit`` notebook calls

Names are imported on demand (``from trustlab.noisefit import NoiseFitModule`` pulls in
Lightning; validating the params section imports neither torch nor Lightning).
"""

import importlib

_WHERE = {
    "DecodingConfig": "config",
    "NoiseFitConfig": "config",
    "NoiseInjector": "hooks",
    "NEFTune": "losses",
    "hybrid_loss": "losses",
    "rdrop_loss": "losses",
    "symmetric_kl": "losses",
    "adaptive_noise": "noise",
    "add_noise": "noise",
    "noise_scale": "noise",
    "scale_multiplier": "noise",
    "layer_snr": "snr",
    "select_layers": "snr",
    "snr_from_hidden": "snr",
    "VARIANTS": "variants",
    "Variant": "variants",
    "get_variant": "variants",
    "loss_weights": "variants",
    "NoiseFitModule": "training",
}

__all__ = list(_WHERE)


def __getattr__(name: str):
    # lazy: validating params (``trustlab.noisefit.config``) must not import torch
    if name in _WHERE:
        return getattr(importlib.import_module(f"trustlab.noisefit.{_WHERE[name]}"), name)
    raise AttributeError(f"module 'trustlab.noisefit' has no attribute {name!r}")
