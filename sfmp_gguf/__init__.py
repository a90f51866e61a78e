"""sfmp-gguf: fine-grained, search-free mixed-precision quantization for llama.cpp."""

__version__ = "0.1.0"
