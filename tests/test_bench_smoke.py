"""The round-trip and speed benchmarks: their smoke modes run end to end."""

from __future__ import annotations

import json
import math
import re
import subprocess
import sys

import pytest

from sfmp_gguf.bench.roundtrip import SMOKE_TYPES
from sfmp_gguf.paths import REPO_ROOT


def _table_rows(text: str) -> list[list[str]]:
    return [[c.strip() for c in line.strip().strip("|").split("|")]
            for line in text.splitlines() if line.startswith("|") and not line.startswith("|---")]


@pytest.mark.integration
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
    assert actual["sfmp425_k"] == ["sfmp450_s", "sfmp425_k"]
    errors = [float(v) for v in re.findall(r"\d\.\d+e[-+]\d+", table.read_text())]
    assert errors and all(0 < e < 0.1 for e in errors)


@pytest.mark.integration
def test_speed_smoke_mode_pairs_by_size_and_reports_ratios(build, tmp_path):
    out = tmp_path / "speed"
    result = subprocess.run([sys.executable, "-m", "sfmp_gguf.bench.speed", "--smoke", "--out", str(out)],
                            cwd=REPO_ROOT, capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stderr[-3000:]
    for plot in ("speed.png", "speed-8bit.png"):
        assert (out / plot).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # The pairs, then the pair whose SFMP type takes two-level activations again under SFMP_ACTIVATIONS=8bit.
    tables = (out / "speed.md").read_text().split("\n## ")
    expected = ([("Q4_K", "sfmp425_k"), ("Q6_K", "sfmp625_k"), ("Q4_K", "sfmp400n_k")], [("Q6_K", "sfmp625_k")])
    assert len(tables) == len(expected)
    assert "SFMP_ACTIVATIONS=8bit" in tables[1]
    for table, pairs in zip(tables, expected):
        header, *body = _table_rows(table)
        assert [(row[0], row[4]) for row in body] == pairs
        for name in ("pp16 t/s", "tg4 t/s", "pp ratio", "tg ratio"):  # the smoke run's prompt and generation
            values = [float(row[i]) for row in body for i, h in enumerate(header) if h == name]
            assert values and all(math.isfinite(v) and v > 0 for v in values), name


@pytest.mark.unit
def test_the_frontier_drops_dominated_files_and_interpolates_log_kld_in_size():
    from sfmp_gguf.bench.quality import Score, frontier, interpolate

    def at(size: int, kld: float, label: str = "x") -> Score:
        return Score(label, "llama.cpp", size, 0.0, kld, 1.0, 1.0)

    points = [at(100, 0.4, "a"), at(110, 0.5, "dominated"), at(120, 0.1, "b"), at(140, 0.025, "c")]
    assert [s.label for s in frontier(points)] == ["a", "b", "c"]
    assert interpolate(points, 110) == pytest.approx(0.2)  # halfway in size: the geometric mean
    assert interpolate(points, 140) == pytest.approx(0.025)
    assert interpolate(points, 99) is None and interpolate(points, 141) is None


@pytest.mark.unit
def test_the_frontier_gives_the_size_at_a_kld_and_both_ratios():
    from sfmp_gguf.bench.quality import Score, frontier, size_at, versus

    def at(size: int, kld: float, label: str, family: str = "llama.cpp + imatrix") -> Score:
        return Score(label, family, size, 0.0, kld, 1.0, 1.0)

    stock = [at(100, 0.4, "a"), at(120, 0.1, "b", "llama.cpp"), at(130, 0.2, "dominated"), at(140, 0.025, "c")]
    assert size_at(stock, 0.2) == pytest.approx(110)  # halfway in log KLD between a and b
    assert size_at(stock, 0.05) == pytest.approx(130)
    assert size_at(stock, 0.5) is None and size_at(stock, 0.01) is None
    sfmp = at(110, 0.05, "4.5", "SFMP fisher")
    [row] = versus([*stock, sfmp])
    assert row.frontier == pytest.approx(0.2)  # over both families: b has no imatrix
    assert row.ratio(row.frontier) == pytest.approx(0.25)
    assert row.frontier_size == pytest.approx(130) and row.size_ratio == pytest.approx(110 / 130)
    assert row.nearest.label == "b"  # the smallest stock file at least this size
    # a type's two files, a few bytes of metadata apart: the better one stands for both
    twins = [at(1_000_000, 0.3, "Q4_K", "llama.cpp"), at(1_000_002, 0.2, "Q4_K"), at(2_000_000, 0.1, "Q6_K")]
    assert [(s.label, s.kld) for s in frontier(twins)] == [("Q4_K", 0.2), ("Q6_K", 0.1)]
    [outside] = versus([*stock, at(150, 0.01, "8", "SFMP fisher")])
    assert outside.frontier is None and outside.frontier_size is None and outside.nearest is None


@pytest.mark.unit
def test_speed_pairs_each_stock_type_with_the_nearest_sfmp_file():
    from sfmp_gguf.bench.speed import pairs

    sizes = {"Q4_K": 100, "Q6_K": 150, "sfmp375_k": 90, "sfmp425_k": 104, "sfmp625_k": 140}
    assert pairs(sizes, ("Q4_K", "Q6_K"), ("sfmp375_k", "sfmp425_k", "sfmp625_k")) == [
        ("Q4_K", "sfmp425_k"), ("Q6_K", "sfmp625_k")]


@pytest.mark.unit
def test_speed_pairs_each_rung_with_the_nearest_stock_file():
    from sfmp_gguf.bench.speed import RUNGS, neighbours

    sizes = {"Q4_K": 100, "Q6_K": 150, "sfmp375_k": 90, "sfmp425_k": 104, "sfmp625_k": 140, "sfmp800_k": 190}
    assert neighbours(sizes, ("Q4_K", "Q6_K"), ("sfmp375_k", "sfmp425_k", "sfmp625_k", "sfmp800_k")) == [
        ("Q4_K", "sfmp375_k"), ("Q4_K", "sfmp425_k"), ("Q6_K", "sfmp625_k"), ("Q6_K", "sfmp800_k")]
    assert RUNGS[0] == "sfmp225_k" and RUNGS[-1] == "sfmp800_k" and len(RUNGS) == 13  # 2.56 to 8.31 bpw


@pytest.mark.unit
def test_speed_takes_the_stock_speed_at_each_sfmp_size_between_its_neighbours():
    from sfmp_gguf.bench.speed import Result, at_size, markdown

    q5, q6, q8 = Result("Q5_K", 300, 500.0, 80.0), Result("Q6_K", 400, 400.0, 90.0), Result("Q8_0", 500, 300.0, 60.0)
    assert at_size([q8, q5, q6], 450) == pytest.approx((350.0, 75.0))  # halfway between Q6_K and Q8_0
    assert at_size([q5, q6, q8], 400) == pytest.approx((400.0, 90.0))
    assert at_size([q5, q6], 250) is None and at_size([q5, q6], 401) is None
    results = {r.name: r for r in (q6, q8, Result("sfmp675_k", 450, 420.0, 75.0), Result("sfmp725_k", 550, 1.0, 1.0))}
    header, *body = _table_rows(markdown(results, [("Q6_K", "sfmp675_k"), ("Q8_0", "sfmp725_k")], "t", "s"))
    assert header[-2:] == ["pp ratio, stock at this size", "tg ratio, stock at this size"]
    assert body[0][-4:] == ["1.05", "0.83", "1.20", "1.00"]  # against Q6_K itself, then at 450 bytes
    assert body[1][-2:] == ["-", "-"]  # larger than every stock file measured


@pytest.mark.integration
def test_the_one_benchmark_command_runs_every_part_in_smoke_mode(build, tmp_path):
    out = tmp_path / "all"
    result = subprocess.run([sys.executable, "-m", "sfmp_gguf.bench.all", "--smoke", "--out", str(out)],
                            cwd=REPO_ROOT, capture_output=True, text=True, timeout=2400)
    assert result.returncode == 0, result.stderr[-3000:]
    for name in ("quality.md", "quality.png", "quality-permutation.png", "speed.md", "kernels.md", "x8_kernel.md",
                 "x8_kernel.png", "conversion.md", "conversion.png", "moe.md",
                 "moe-quality.png", "moe-speed.png", "derive.md", "derive.png", "rpc.md", "rpc.png"):
        assert (out / name).is_file(), name
    moe_rows = _table_rows((out / "moe.md").read_text().split("## Each SFMP file")[0])
    assert {row[0] for row in moe_rows[1:]} == {"llama.cpp + imatrix", "SFMP fisher"}
    moe_speed_header, *moe_speed = _table_rows((out / "moe.md").read_text().split("speed at equal size")[1])
    assert [(row[0], row[4]) for row in moe_speed] == [("Q4_K_M", "sfmp 4.5 bpw")]
    header, *body = _table_rows((out / "quality.md").read_text().split("## Each SFMP file")[0])
    kld = header.index("mean KLD")
    families = {row[0] for row in body}
    assert families == {"llama.cpp", "llama.cpp + imatrix", "SFMP weights", "SFMP weights uniform grid",
                        "SFMP uniform, no imatrix", "SFMP imatrix", "SFMP imatrix uniform grid", "SFMP uniform",
                        *(f"SFMP imatrix (permutation: {kinds})" for kinds in ("ffn", "ffn + heads", "ffn + heads + residual"))}
    assert all(math.isfinite(float(row[kld])) and float(row[kld]) >= 0 for row in body)
    versus_header, *versus_rows = _table_rows(
        (out / "quality.md").read_text().split("## Each SFMP file")[1].split("## The nonlinear grid")[0])
    assert [row[0] for row in versus_rows] == ["SFMP imatrix 4.5", "SFMP imatrix uniform grid 4.5", "SFMP weights 4.5",
                                               "SFMP weights uniform grid 4.5"]
    grid_header, *grid_rows = _table_rows(
        (out / "quality.md").read_text().split("## The nonlinear grid")[1].split("## Channel permutation")[0])
    assert [row[0] for row in grid_rows] == ["imatrix", "weights"]
    assert all(math.isfinite(float(row[grid_header.index("ratio")])) for row in grid_rows)
    perm_header, *perm_rows = _table_rows((out / "quality.md").read_text().split("## Channel permutation")[1])
    assert [row[:2] for row in perm_rows] == [["imatrix", "4.5"]]
    assert perm_rows[0][perm_header.index("default")] == "none"  # below 7 bpw
    assert math.isfinite(float(perm_rows[0][perm_header.index("default / none")]))
    cost_header, *cost_rows = _table_rows((out / "conversion.md").read_text().split("Converter phases")[0])
    assert [row[0] for row in cost_rows] == ["teacher 135M"]
    ratios = [float(v) for h, v in zip(cost_header, cost_rows[0]) if h == "ratio"]
    temporary = float(cost_rows[0][cost_header.index("temporary disk")].split()[0])
    assert len(ratios) == 2 and all(math.isfinite(r) and r > 0 for r in ratios)
    assert temporary > 0  # the benchmark counts the model copy llama-imatrix reads


def _smoke(name: str, tmp_path) -> tuple:
    """``python -m sfmp_gguf.bench.NAME --smoke`` into a fresh folder: the folder and its NAME.json."""
    out = tmp_path / name
    result = subprocess.run([sys.executable, "-m", f"sfmp_gguf.bench.{name}", "--smoke", "--out", str(out)],
                            cwd=REPO_ROOT, capture_output=True, text=True, timeout=1800)
    assert result.returncode == 0, result.stderr[-3000:]
    return out, json.loads((out / f"{name}.json").read_text())


@pytest.mark.integration
def test_activations_probe_scores_each_file_as_run_with_8_bit_activations_and_with_f32_matmuls(build, tmp_path):
    """The smoke size (8 bpw) is all two-level activations, which leave little to the F32 run; under
    SFMP_ACTIVATIONS=8bit the same file errs more."""
    out, raw = _smoke("activations", tmp_path)
    real, eight_bit, exact = (raw["kld"][path]["8"] for path in
                              ("as llama.cpp runs it", "with SFMP_ACTIVATIONS=8bit", "same weights, F32 matmuls"))
    assert 0 < exact and 0 < real < 2 * exact
    assert eight_bit > 1.5 * real
    assert raw["fine_share"]["8"] > 0.9
    assert (out / "activations.png").stat().st_size > 0 and "| 8 |" in (out / "activations.md").read_text()


@pytest.mark.integration
def test_derive_benchmark_times_and_scores_derived_and_direct_files(build, tmp_path):
    out, raw = _smoke("derive", tmp_path)
    scores = {kind: raw["scores"][kind]["4.5"] for kind in ("requantize", "cut", "direct")}
    assert all(s["kld"] > 0 and abs(s["size"] - scores["direct"]["size"]) < 0.02 * scores["direct"]["size"]
               for s in scores.values())
    assert scores["requantize"]["kld"] < 1.5 * scores["direct"]["kld"]  # the decoded 8 bpw values stand in well
    assert all(raw["seconds"][kind]["4.5"] > 0 for kind in scores)
    assert (out / "derive.png").stat().st_size > 0 and "| 4.5 |" in (out / "derive.md").read_text()


@pytest.mark.integration
def test_rpc_benchmark_measures_each_file_local_and_through_the_server(build, tmp_path):
    out, raw = _smoke("rpc", tmp_path)
    assert set(raw["speeds"]) == {"local", "local, no repacking", "through RPC"}
    for speeds in raw["speeds"].values():
        assert set(speeds) == {"Q4_K", "sfmp425_k"} and all(pp > 0 and tg > 0 for pp, tg in speeds.values())
    assert (out / "rpc.png").stat().st_size > 0 and "| sfmp425_k |" in (out / "rpc.md").read_text()


@pytest.mark.native
def test_x8_kernel_benchmark_times_each_library_on_each_rung(build, tmp_path):
    from sfmp_gguf.bench import x8_kernel

    times = x8_kernel.run(tmp_path, smoke=True)
    assert list(times) == ["avx2"]
    assert list(times["avx2"]) == ["sfmp375_k", "sfmp425_k"]
    assert all(math.isfinite(us) and us > 0 for by_cols in times["avx2"].values() for us in by_cols.values())
    rows = _table_rows((tmp_path / "x8_kernel.md").read_text())
    assert [row[0] for row in rows[1:]] == ["sfmp375_k", "sfmp425_k"] and (tmp_path / "x8_kernel.png").stat().st_size > 0
