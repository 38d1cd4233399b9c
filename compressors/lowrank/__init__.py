"""PELA low-rank factorization (Guo et al.): truncated SVD of Linear layers with Σ^½ in both
factors, then training only the factors against the frozen original (feature distillation +
weight-perturbation regularization, optionally the LM loss)."""

from compressors.lowrank.config import LowRankConfig

__all__ = ["LowRankConfig"]  # the torch side (the step, layers) is imported from its own modules
