"""PERP: parameter-efficient retraining after pruning that keeps the sparsity exact."""

from compressors.retraining.config import PerpConfig
from compressors.retraining.perp import run_perp

__all__ = ["PerpConfig", "run_perp"]
