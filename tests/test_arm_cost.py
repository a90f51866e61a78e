"""python -m sfmp_gguf.bench.arm_cost: every kernel built for aarch64, one block-loop iteration traced under
qemu and priced by llvm-mca."""

from __future__ import annotations

import json
import math
import subprocess
import sys

import pytest

from sfmp_gguf.paths import REPO_ROOT

pytestmark = pytest.mark.qemu


def test_the_smoke_run_prices_a_traced_loop_of_every_kernel(source, tmp_path):
    out = tmp_path / "arm"
    result = subprocess.run([sys.executable, "-m", "sfmp_gguf.bench.arm_cost", "--smoke", "--out", str(out)],
                            cwd=REPO_ROOT, capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stderr[-3000:]
    rows = json.loads((out / "arm_cost.json").read_text())["kernels"]
    assert {r["family"] for r in rows} == {"stock", "repack", "row", "x8"}
    assert {r["type"] for r in rows if r["family"] in ("row", "x8")} == {"sfmp400_s", "sfmp425_k"}
    neighbour = {(r["family"], r["type"]): r["neighbour"] for r in rows}
    assert neighbour[("x8", "sfmp425_k")] == "Q4_K repacked" and neighbour[("row", "sfmp425_k")] == "Q4_K"
    for r in rows:
        assert r["instructions"] > 10, r["kernel"]  # a whole iteration, not a stray jump
        assert all(math.isfinite(c) and c > 0 for c in r["cycles_256"].values()), r["kernel"]
    table = (out / "arm_cost.md").read_text()
    assert all(f"| {r['kernel']} |" in table for r in rows) and (out / "arm_cost.png").stat().st_size > 0
