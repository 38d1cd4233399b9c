"""The code that walks a model: layer discovery and kinds, the block-by-block engine, the
training loop, token windows and the step context. The tensor math lives in `ops/` and in the
methods' own modules."""
