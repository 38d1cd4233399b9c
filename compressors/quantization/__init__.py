"""bitsandbytes quantization (int8, nf4, fp4, double quant) with optional LoRC corrections."""

from compressors.quantization.config import QuantizeConfig

__all__ = ["QuantizeConfig"]  # the torch side (the step, layers) is imported from its own modules
