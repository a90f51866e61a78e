"""Benchmarks of the SFMP types against llama.cpp's stock types."""
