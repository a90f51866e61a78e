"""The round-trip benchmark: its smoke mode runs end to end, and its SFMP decoder is the reference's."""

from __future__ import annotations

import math
import re
import subprocess
import sys

import numpy as np
import pytest

from sfmp_gguf.bench.roundtrip import SMOKE_TYPES, dequantize_sfmp
from sfmp_gguf.format import BY_NAME
from sfmp_gguf.paths import REPO_ROOT
from sfmp_gguf.quant.reference import dequantize_blocks, quantize_blocks


@pytest.mark.parametrize("name", ["sfmp30_k", "sfmp45_s", "sfmp80_k"])
def test_vectorized_decoder_matches_the_reference(name):
    t = BY_NAME[name]
    rng = np.random.default_rng(1)
    x = rng.standard_normal((3, 2 * t.block_size)).astype(np.float32) * rng.random(2 * t.block_size) ** 3
    data = quantize_blocks(x, t, qw=rng.random(2 * t.block_size).astype(np.float32) + 0.1)
    np.testing.assert_array_equal(dequantize_sfmp(data, t), dequantize_blocks(data, t))
    # arbitrary bytes, malformed sub-blocks included, decode the same way too
    junk = rng.integers(0, 256, size=(4, 3 * t.type_size), dtype=np.uint8)
    junk[:, 0:2] = np.frombuffer(np.float16(0.01).tobytes(), dtype=np.uint8)
    np.testing.assert_array_equal(dequantize_sfmp(junk, t), dequantize_blocks(junk, t))


def _table_rows(text: str) -> list[list[str]]:
    return [[c.strip() for c in line.strip().strip("|").split("|")]
            for line in text.splitlines() if line.startswith("|") and not line.startswith("|---")]


def test_smoke_mode_writes_a_finite_table_and_a_plot(build, tmp_path):
    out = tmp_path / "results"
    result = subprocess.run([sys.executable, "-m", "sfmp_gguf.bench.roundtrip", "--smoke", "--out", str(out)],
                            cwd=REPO_ROOT, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    table, png = out / "roundtrip.md", out / "roundtrip.png"
    assert png.is_file() and png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert not [p for p in out.iterdir() if p.name.startswith(".")], "temporary files left behind"

    rows = _table_rows(table.read_text())
    header, body = rows[0], rows[1:1 + len(SMOKE_TYPES)]
    assert [r[0] for r in body] == list(SMOKE_TYPES)
    numeric = [i for i, h in enumerate(header) if h.startswith(("bpw", "weighted error"))]
    assert len(numeric) == 4  # two classes: rows of 576 and rows of 1536
    for row in body:
        for i in numeric:
            value = float(row[i])
            assert math.isfinite(value) and value > 0, (row[0], header[i], row[i])
    actual = {row[0]: [row[i] for i, h in enumerate(header) if h.startswith("actual")] for row in body}
    # 576-long rows fall back to a 32-weight type, 1536-long rows keep the K-quant / _k type
    assert actual["Q4_K"] == ["Q5_0", "Q4_K"]
    assert actual["sfmp45_k"] == ["sfmp45_s", "sfmp45_k"]
    errors = [float(v) for v in re.findall(r"\d\.\d+e[-+]\d+", table.read_text())]
    assert errors and all(0 < e < 0.1 for e in errors)


def test_speed_smoke_mode_pairs_by_size_and_reports_ratios(build, tmp_path):
    out = tmp_path / "speed"
    result = subprocess.run([sys.executable, "-m", "sfmp_gguf.bench.speed", "--smoke", "--out", str(out)],
                            cwd=REPO_ROOT, capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stderr[-3000:]
    assert (out / "speed.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    header, *body = _table_rows((out / "speed.md").read_text())
    assert len(body) == 1 and body[0][0] == "Q4_K" and body[0][4] == "sfmp45_k"
    for name in ("pp512 t/s", "tg128 t/s", "pp ratio", "tg ratio"):
        values = [float(row[i]) for row in body for i, h in enumerate(header) if h == name]
        assert values and all(math.isfinite(v) and v > 0 for v in values), name


def test_speed_pairs_each_stock_type_with_the_nearest_sfmp_file():
    from sfmp_gguf.bench.speed import pairs

    sizes = {"Q4_K": 100, "Q6_K": 150, "sfmp40_k": 90, "sfmp45_k": 104, "sfmp60_k": 140}
    assert pairs(sizes, ("Q4_K", "Q6_K"), ("sfmp40_k", "sfmp45_k", "sfmp60_k")) == [
        ("Q4_K", "sfmp45_k"), ("Q6_K", "sfmp60_k")]
