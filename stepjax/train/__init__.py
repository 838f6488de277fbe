"""stepjax.train."""
