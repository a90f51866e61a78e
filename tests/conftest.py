"""Shared fixtures: the cached build and the pinned source (both made by scripts/setup.sh)."""

from __future__ import annotations

import pytest

from sfmp_gguf.llama.build import Build, current_build
from sfmp_gguf.llama.source import LlamaSource, llama_source


@pytest.fixture(scope="session")
def source() -> LlamaSource:
    return llama_source()


@pytest.fixture(scope="session")
def build() -> Build:
    found = current_build()
    assert (found.bin_dir / "llama-cli").is_file(), (
        f"{found.folder}: no build; the test command runs scripts/setup.sh first")
    return found
