"""bitsandbytes quantization (int8, nf4, fp4, double quant) with optional LoRC corrections."""

from compressors.quantization.config import QuantizeConfig
from compressors.quantization.quantize import run_quantize

__all__ = ["QuantizeConfig", "run_quantize"]
