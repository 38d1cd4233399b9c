"""The `lowrank` section a `lowrank` (PELA) step writes (torch-free).

Errors are relative to the layer's output energy: ‖(W − W')X‖² / ‖WX‖² on the calibration
inputs (in the `F`-weighted metric with `weighting: fisher`), so layers of any size compare.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from compressors.engine.sections import TrainSummary
from compressors.report.schema import ReportSection


class LowRankLayer(ReportSection):
    """What happened to one targeted layer (`blockwise.LayerRecord`, as the report shows it)."""

    rank: int | None = Field(None, description="the factors' rank; absent: left dense")
    predicted: float = Field(
        description="Σ discarded σᵢ² / Σ σᵢ² of W·S (of W for the svd init): the error the "
        "truncation predicts")
    measured: float | None = Field(
        None, description="the exact relative output error on the same (factorized-path) "
        "inputs; absent where not measured")
    vs_original: float | None = Field(
        None, description="the same against the original model's layer output, before refit")
    refit: float | None = Field(
        None, description="that error after the least-squares refit of `up`; absent: no "
        "refit ran")
    refit_kept: bool = Field(description="the refit lowered the error, so it was kept")
    whitening: str = Field(description="how the Gram matrix was factored: cholesky, eigen, "
                           "or identity (svd init)")


class EmbeddingCosine(ReportSection):
    """Cosine similarity of held-out sentence embeddings to the original model's (encoders)."""

    mean: float = Field(description="over the held-out sentences")
    min: float = Field(description="the least similar sentence's")


class LowRankSection(ReportSection):
    init: Literal["whitened", "svd"] = Field(description="how the factors were initialised")
    allocation: Literal["loss", "uniform", "energy"] | None = Field(
        description="how ranks were spread to meet target_params; null without it")
    refit: bool = Field(description="the least-squares refit of `up` ran (whitened init)")
    weighting: Literal["fisher", "activations"] | None = Field(
        description="the whitened init's output weighting; null for the svd init")
    training_text: str | None = Field(
        description="the text reference PELA trained on; null when it did not train")
    layers_targeted: int = Field(description="layers the step selected")
    layers_factorized: int = Field(description="of those, replaced by factors")
    layers_skipped: dict[str, str] = Field(
        description="selected layers left dense, each with why (factors would not be "
        "smaller, or the rank rule kept it whole)")
    ranks: dict[str, int] = Field(description="each factorized layer's rank")
    layers: dict[str, LowRankLayer] = Field(description="every targeted layer, by name")
    predicted_error_mean: float | None = Field(
        description="mean `predicted` over the factorized layers; null when none was")
    measured_error_mean: float | None = Field(
        description="mean `measured` over the factorized layers that have one")
    error_vs_original_mean: float | None = Field(
        description="mean `vs_original` over the factorized layers that have one")
    error_after_refit_mean: float | None = Field(
        description="mean error after refit, counting a layer's `vs_original` where its "
        "refit was not kept")
    refit_kept: int = Field(description="layers whose refit was kept")
    params_targeted_before: int = Field(description="parameters of the targeted layers before")
    params_targeted_after: int = Field(
        description="their parameters after: the factors, and the skipped layers' weights")
    kept_fraction_targeted: float = Field(
        description="params_targeted_after / params_targeted_before")
    targeted_share_of_model: float = Field(
        description="params_targeted_before / params_model_before")
    params_model_before: int = Field(description="parameters of the whole model before")
    params_model_after: int = Field(description="parameters of the whole model after")
    parameter_bytes_after: int = Field(description="bytes of every parameter after")
    seconds_svd: float = Field(description="wall time of the factorization (before training)")
    train: TrainSummary | None = Field(description="PELA's training run; null: no training")
    export_dense: bool = Field(description="the factors were merged back into dense weights")
    perplexity_svd: float | None = Field(
        None, description="evaluation perplexity after the factorization alone (causal LMs)")
    embedding_cosine_svd: EmbeddingCosine | None = Field(
        None, description="after the factorization alone (encoders)")
    perplexity_trained: float | None = Field(
        None, description="evaluation perplexity after training (causal LMs that trained)")
    embedding_cosine_trained: EmbeddingCosine | None = Field(
        None, description="after training (encoders that trained)")
