"""PERP: parameter-efficient retraining after pruning that keeps the sparsity exact."""

from compressors.retraining.config import PerpConfig

__all__ = ["PerpConfig"]  # the torch side (the step, layers) is imported from its own modules
