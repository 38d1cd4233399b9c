"""The evaluation protocol's settings (DESIGN.md): which text, how many windows, how long.

Plain pydantic without torch, so the API can validate a recipe without loading the tensor side;
`compressors.calibration` turns these settings into token windows.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

from compressors import assets


class CalibrationConfig(BaseModel):
    """Where statistics-driven methods (wanda, sparsegpt, ...) look at activations."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    text: str = Field(assets.CALIBRATION_TEXT, description="corpus name or text file path")
    samples: int = Field(32, ge=1, le=4096, description="number of windows")
    seqlen: int = Field(512, ge=8, le=32768, description="tokens per window")
    seed: int = Field(0, ge=0, description="torch.manual_seed before drawing windows")


class EvaluationConfig(BaseModel):
    """Perplexity measurement; `windows: 0` skips it (the report then says null)."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    text: str = Field(assets.EVALUATION_TEXT, description="corpus name or text file path")
    windows: int = Field(40, ge=0, le=100000, description="first N non-overlapping windows")
    seqlen: int = Field(512, ge=8, le=32768, description="tokens per window")
