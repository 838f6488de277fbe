"""stepjax.models."""
