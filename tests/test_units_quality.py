"""Slow tier: on the demo model, every sensitivity's allocation is no worse than the uniform one at
the same size, by KLD to the F32 teacher through llama-perplexity on a short text."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from sfmp_gguf.paths import REPO_ROOT

pytestmark = pytest.mark.integration

SIZES = ("3.25", "4.25")  # where bench.quality shows every sensitivity clear of uniform (README)
SENSITIVITIES = ("weights", "imatrix", "fisher")


@pytest.fixture(scope="module")
def klds(build) -> dict[str, dict[str, list[float]]]:
    """sensitivity -> target -> [its KLD, the uniform file's KLD with the same quantizer weights]."""
    result = subprocess.run([sys.executable, "-m", "sfmp_gguf.bench.units", "--against-uniform", *SIZES,
                             "--chunks", "4"], cwd=REPO_ROOT, capture_output=True, text=True, timeout=3000)
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads(result.stdout.strip().splitlines()[-1])


@pytest.mark.slow
@pytest.mark.parametrize("sensitivity", SENSITIVITIES)
def test_allocation_is_no_worse_than_uniform_at_equal_size(klds, sensitivity):
    for bpw in SIZES:
        ours, uniform = klds[sensitivity][bpw]
        assert ours <= uniform, (sensitivity, bpw, ours, uniform)
