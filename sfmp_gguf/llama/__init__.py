"""The pinned llama.cpp: its source, our patch on top of it, and its build."""
