"""Upstream models, one file per family; each registers itself with speechssl.registry."""
