"""Blocks shared by several upstreams."""
