"""Shared fixtures (the cached build and the pinned source, both made by scripts/setup.sh) and the
test tiers.

Every test carries exactly one tier marker (pyproject.toml describes them): a module of one tier
sets ``pytestmark = pytest.mark.<tier>``, a module of several marks each test. Collection stops
with the list of tests that have none or more than one, so a new module cannot leave it out. A unit
test may not ask for the build or the source, and fails if it loads the kernel library or looks up a
llama.cpp tool, so ``-m unit`` runs on a machine with nothing built.
"""

from __future__ import annotations

import os

import pytest

from sfmp_gguf import gguf_package

gguf_package.select()  # before any test module imports gguf: the tests use the CLI's copy
# The tests hold the default two-level activations; those of SFMP_ACTIVATIONS=8bit set it in a child process.
os.environ.pop("SFMP_ACTIVATIONS", None)

from sfmp_gguf import kernels, paths  # noqa: E402
from sfmp_gguf.llama.build import Build, current_build  # noqa: E402
from sfmp_gguf.llama.source import LlamaSource, llama_source  # noqa: E402

TIERS = ("unit", "native", "integration", "qemu", "gpu")
SET_UP_FIXTURES = ("build", "source")


def _tiers(item: pytest.Item) -> list[str]:
    return sorted({mark.name for mark in item.iter_markers() if mark.name in TIERS})


@pytest.hookimpl(tryfirst=True)  # before -m deselects: every collected test is checked
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    problems = []
    for item in items:
        tiers = _tiers(item)
        set_up = [name for name in SET_UP_FIXTURES if name in getattr(item, "fixturenames", ())]
        if len(tiers) != 1:
            problems.append(f"{item.nodeid}: {'no tier' if not tiers else 'tiers ' + ', '.join(tiers)}")
        elif tiers == ["unit"] and set_up:
            problems.append(f"{item.nodeid}: a unit test uses the {' and '.join(set_up)} fixture")
    if problems:
        raise pytest.UsageError(
            "each test needs exactly one tier marker (" + ", ".join(TIERS) + "): `pytestmark = pytest.mark.<tier>` "
            "in a module of one tier, `@pytest.mark.<tier>` on each test otherwise; a unit test needs nothing "
            "the set-up makes\n  " + "\n  ".join(problems))


def _not_in_unit_tier(*args, **kwargs):
    raise RuntimeError("a unit test reached compiled code (the kernel library or a llama.cpp tool): "
                       "mark it native or integration")


@pytest.fixture(autouse=True)
def _unit_tests_stay_pure(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> None:
    if request.node.get_closest_marker("unit") is not None:
        monkeypatch.setattr(kernels, "load", _not_in_unit_tier)
        monkeypatch.setattr(Build, "tool", _not_in_unit_tier)
        monkeypatch.setattr(paths, "built_tool", _not_in_unit_tier)


@pytest.fixture(scope="session")
def source() -> LlamaSource:
    return llama_source()


@pytest.fixture(scope="session")
def build() -> Build:
    found = current_build()
    assert (found.bin_dir / "llama-cli").is_file(), (
        f"{found.folder}: no build; the test command runs scripts/setup.sh first")
    return found
