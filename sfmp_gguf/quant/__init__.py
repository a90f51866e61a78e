"""Quantization: the numpy reference of the SFMP format (the C kernels must match it byte for byte)."""
