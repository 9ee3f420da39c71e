"""Hallucination noise fine-tuning (NoiseFiT) with NEFTune and R-Drop baselines.

Method background: docs/methods/noisefit.md. One file per concept:

* ``config``      ``NoiseFitConfig`` (the ``noisefit:`` params section), ``DecodingConfig``
* ``variants``    the fine-tuning variants by name: objective, its keyword arguments, label
* ``objectives``  the registered training objectives (SFT, NEFTune, R-Drop, NoiseFiT, noisy CE)
* ``noise``       the adaptive noise function and the sigma0 / sigma0**2 convention
* ``snr``         per-layer SNR and top-k Largest / Lowest layer selection
* ``hooks``       ``NoiseInjector``: noise on selected blocks, only inside a noisy pass
* ``losses``      hybrid loss, R-Drop, NEFTune
* ``module``      ``NoiseFitModule`` (a ``CausalLMModule``) for every variant (imports Lightning)
* ``world``       the fine-tuning sets and evaluation items of the synthetic world
* ``evaluation``  every metric of one model
* ``run``         plan, fine-tune, evaluate -> ``Results`` (no plotting, no W&B)
* ``tracker``     W&B logging of each fine-tuning run
* ``claims``      the family's claims as data, evaluated by ``trustlab.core.claims``
* ``tables``, ``figures``, ``report``  what the notebook shows and the stage writes

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
    "OBJECTIVES": "objectives",
    "build_objective": "objectives",
    "loss_weights": "objectives",
    "NoiseFitModule": "module",
    "Results": "run",
    "run_experiment": "run",
    "CLAIMS": "claims",
}

__all__ = list(_WHERE)


def __getattr__(name: str):
    # lazy: validating params (``trustlab.noisefit.config``) must not import torch
    if name in _WHERE:
        return getattr(importlib.import_module(f"trustlab.noisefit.{_WHERE[name]}"), name)
    raise AttributeError(f"module 'trustlab.noisefit' has no attribute {name!r}")
