"""Calibration losses, post-hoc calibrators and calibration metrics (method card:
``/work/shared/methods/calibration.md``).

Modules: :mod:`.losses` (training losses + ``build_loss`` registry), :mod:`.calibrators`
(temperature scaling, correctness-aware CA), :mod:`.metrics` (ECE, adaptive / classwise ECE,
MCE, Brier, AURC, NLL, reliability diagrams), :mod:`.data` (digits / breast cancer, shifts,
label noise, crowd annotators, CA views), :mod:`.models`, :mod:`.train` (Lightning),
:mod:`.config` (``CalibrationConfig``), :mod:`.experiment` (what the notebook calls),
:mod:`.lm` (answer-level calibration of a language model) and :mod:`.report` (the notebook's
tables, figures, output files and W&B logging).

Submodules are imported lazily so that loading the config does not import Lightning.
"""
