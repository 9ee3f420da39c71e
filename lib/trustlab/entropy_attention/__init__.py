"""Entropy-guided attention: per-head attention entropy, the entropy regularizer, learnable
temperatures, nonlinearity-reduced architectures and the ``entropy_attention`` stage.

Method background: ``docs/methods/entropy_attention.md``. One file per concept:

* ``entropy``     per-head entropy (per layer / head / query, layer x head means, normalised by
                  the uniform-causal maximum), head bins, overloaded / collapsed fractions
* ``regularizer`` ``EntropyRegularizer`` (learnable theta, tolerance gamma; a mean penalty)
* ``kernels``     attention kernels ``softmax_t`` (per-head, per-position temperature),
                  ``softmax_pa`` (Selective Attention's position-aware temperature), ``softplus``
* ``ffn``         ``scfu`` (ScFuFFN), ``mlp_wn`` / ``mlp_sn`` (weight / spectral normalised MLP)
* ``variants``    the architecture table, by name (torch-free)
* ``model``       ``build_model(variant, ...)`` (registers the kernels and FFNs)
* ``module``      ``EntropyAttentionModule`` (a ``CausalLMModule``), ``EntropyMonitor``
* ``config``      ``EntropyAttentionConfig`` (the ``entropy_attention:`` params section)
* ``results``     ``RunResult`` / ``Results``: what the stage produces (plain data)
* ``run``         the corpus (tuning and test windows), one training run, the lambda sweep and
                  the stage on ``workers`` processes, the entropy-measurement overhead
                  (no matplotlib, no W&B: tracking goes through an ``on_run`` hook)
* ``claims``      the claims as data (``CLAIMS``) and their rows from the claims engine
* ``tables``      the DataFrames of the notebook and ``metrics.json``
* ``figures``     the ``plot_*`` functions
* ``report``      headline, findings, ``StageOutputs``, the W&B run hook and summary run

Names are imported on demand, so validating the params section imports neither torch nor
Lightning.
"""

import importlib

_WHERE = {
    "EntropyStats": "entropy",
    "attention_entropy": "entropy",
    "row_entropy": "entropy",
    "uniform_causal_entropy": "entropy",
    "head_bins": "entropy",
    "overloaded_fraction": "entropy",
    "collapsed_fraction": "entropy",
    "EntropyRegularizer": "regularizer",
    "attach_regularizer": "regularizer",
    "get_regularizer": "regularizer",
    "lam_from_summed": "regularizer",
    "TemperatureSoftmaxAttention": "kernels",
    "PositionAwareSoftmaxAttention": "kernels",
    "SoftplusAttention": "kernels",
    "ScFuFFN": "ffn",
    "WeightNormMLP": "ffn",
    "SpectralNormMLP": "ffn",
    "VARIANTS": "variants",
    "DEFAULT_VARIANTS": "variants",
    "Variant": "variants",
    "get_variant": "variants",
    "variant_names": "variants",
    "build_model": "model",
    "gpt_config": "model",
    "learned_parameters": "model",
    "EntropyAttentionModule": "module",
    "EntropyMonitor": "module",
    "RunResult": "results",
    "Results": "results",
    "CLAIMS": "claims",
    "EntropyAttentionConfig": "config",
}

__all__ = sorted(_WHERE)


def __getattr__(name):
    if name in _WHERE:
        return getattr(importlib.import_module(f"trustlab.entropy_attention.{_WHERE[name]}"), name)
    raise AttributeError(f"module 'trustlab.entropy_attention' has no attribute {name!r}")
