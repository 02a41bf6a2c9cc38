"""Downstream heads and tasks."""
