"""The loader fuzz harness: mutated SFMP GGUF files through llama.cpp's loader and our kernels, in a
build with AddressSanitizer and UndefinedBehaviorSanitizer. Every case must end in a clean rejection
or a finite result: no sanitizer report, no crash."""

from __future__ import annotations

import pytest

from sfmp_gguf import fuzz
from sfmp_gguf.format import BY_ID
from sfmp_gguf.llama.build import current_build

CASES = 2000  # the budget for the suite; `python -m sfmp_gguf.fuzz` runs the long one


@pytest.fixture(scope="module")
def harness():
    path = current_build(sanitize=True).bin_dir.parent / "sfmp_fuzz_loader"
    assert path.is_file(), f"{path}: the test command builds it (scripts/test.sh)"
    return path


def test_fuzz_base_is_a_valid_sfmp_file_with_several_types(harness):
    regions = fuzz.sfmp_regions(fuzz.fuzz_base())
    assert len({BY_ID[r.type_id].name for r in regions}) >= 3


def test_two_thousand_mutated_files_are_rejected_or_give_finite_results(harness):
    outcome = fuzz.run(fuzz.fuzz_base(), harness, CASES, seed=1)
    assert outcome.cases == CASES == outcome.accepted + outcome.rejected
    assert outcome.accepted > 0 and outcome.rejected > 0
    assert set(outcome.by_mutation) == set(fuzz.MUTATIONS)
