"""stepjax.eval."""
