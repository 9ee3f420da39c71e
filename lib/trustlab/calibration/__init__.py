"""Calibration losses, post-hoc calibrators and calibration metrics (method background:
docs/methods/calibration.md).

Method modules: :mod:`.losses` (training losses, registry ``LOSSES``), :mod:`.calibrators`
(temperature scaling, correctness-aware CA; registry ``CALIBRATORS``), :mod:`.detectors`
(single-pass error detectors MSP, entropy, SPC; registry ``DETECTORS``), :mod:`.metrics` (ECE,
adaptive / classwise ECE, MCE, Brier, AURC, NLL), :mod:`.lm` (answer-level calibration of a
language model), :mod:`.data` (digits / breast cancer / generated waveform digits, shifts,
label noise, crowd annotators, CA views), :mod:`.models`, :mod:`.module` (the training loop).

The stage: :mod:`.config` (``CalibrationConfig``), :mod:`.run` (the experiments -> ``Results``),
:mod:`.claims` (the claims as data), :mod:`.tables`, :mod:`.figures` and :mod:`.report`
(headline, findings, output files, W&B).

Submodules are imported lazily so that loading one does not import the others.
"""
