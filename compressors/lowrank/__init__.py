"""PELA low-rank factorization (Guo et al.): truncated SVD of Linear layers with Σ^½ in both
factors, then training only the factors against the frozen original (feature distillation +
weight-perturbation regularization, optionally the LM loss)."""

from compressors.lowrank.config import LowRankConfig
from compressors.lowrank.layers import LowRankLinear
from compressors.lowrank.step import run_lowrank

__all__ = ["LowRankConfig", "LowRankLinear", "run_lowrank"]
