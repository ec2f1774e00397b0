"""Fixture optimizer plugins (tests/test_optimizers.py)."""
