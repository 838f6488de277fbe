"""stepjax.rl."""
