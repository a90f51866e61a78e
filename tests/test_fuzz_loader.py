"""The loader fuzz harness: mutated SFMP GGUF files through llama.cpp's loader and our kernels, in a
build with AddressSanitizer and UndefinedBehaviorSanitizer. Every case must end in a clean rejection
or a finite result: no sanitizer report, no crash."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from sfmp_gguf import fuzz
from sfmp_gguf.format import BY_ID

pytestmark = pytest.mark.integration

CASES = 2000  # the suite's budget; `python -m sfmp_gguf.fuzz` runs the long one


@pytest.fixture(scope="module")
def harness():
    path = fuzz.harness_path()
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


def _fake_harness(tmp_path, body: str):
    path = tmp_path / "harness.sh"
    path.write_text("#!/bin/sh\n" + body)
    path.chmod(0o755)
    return path


def test_a_harness_that_logs_a_lot_does_not_stall_the_run(tmp_path):
    """llama.cpp logs every rejected block to stderr; a pipe nobody reads would fill after a few
    hundred cases and block the harness."""
    chatty = _fake_harness(tmp_path, 'while read -r f; do head -c 2000 /dev/zero | tr "\\0" x >&2; '
                                     'echo rejected; done\n')
    code = (f"from pathlib import Path; from sfmp_gguf import fuzz; "
            f"o = fuzz.run(fuzz.fuzz_base(), Path({str(chatty)!r}), 200, seed=3); print(o.rejected)")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["200"]  # 200 cases x 2 kB of stderr: 6x a pipe's buffer


def test_a_sanitizer_report_fails_the_run_and_keeps_its_input(tmp_path):
    crashing = _fake_harness(tmp_path, 'read -r f; echo "fuzz_loader.c:1:1: runtime error: planted" >&2; exit 1\n')
    with pytest.raises(RuntimeError, match="runtime error: planted") as err:
        fuzz.run(fuzz.fuzz_base(), crashing, 4, seed=5, workers=1)
    kept = str(err.value).split("input kept at ")[1].split()[0]
    assert Path(kept).is_file()
    Path(kept).unlink()
