"""stepjax: step-aware RL for medical vision-language reasoning in JAX."""

__version__ = "0.1.0"
