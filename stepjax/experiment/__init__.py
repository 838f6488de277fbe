"""Experiment grids: runs x seeds from one SFT checkpoint per seed, with
bootstrap statistics, figures and a README section (`stepjax experiment`;
the config format is documented in spec.py)."""
