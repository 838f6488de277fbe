"""stepjax.sampling."""
