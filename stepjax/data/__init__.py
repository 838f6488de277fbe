"""stepjax.data."""
