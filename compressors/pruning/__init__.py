"""Pruning methods: one module each, with the mask math in `masks.py`."""
