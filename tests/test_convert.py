"""convert/sfmp_to_gguf.py end to end: the demo teacher at several rates, and every bad input."""

from __future__ import annotations

import math
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from sfmp_gguf.assets.austen import austen_texts
from sfmp_gguf.assets.imatrix import teacher_imatrix
from sfmp_gguf.assets.teacher import teacher
from sfmp_gguf.evaluate import perplexity
from sfmp_gguf.format import BY_ID
from tests.convert_helpers import (assert_nothing_written, assert_one_line_error, legacy_imatrix,
                                    make_tiny_model, quantized_bpw, run_convert)

pytestmark = pytest.mark.integration


RATES = (3.5, 4.5, 6.0)


class Converted(dict):
    """bpw -> output path, with each run's stderr."""

    stderr: dict[float, str]


@pytest.fixture(scope="module")
def teacher_files(build, tmp_path_factory) -> Converted:
    out = tmp_path_factory.mktemp("teacher")
    files = Converted()
    files.stderr = {}
    for bpw in RATES:
        path = out / f"teacher-{bpw}.gguf"
        result = run_convert(teacher().hf_dir, "-o", path, "--bpw", bpw, "--imatrix", teacher_imatrix(),
                             *(["--report", out / "report", "--permute", "ffn,heads"] if bpw == 4.5 else []))
        assert result.returncode == 0, result.stderr[-2000:]
        assert "bpw over the" in result.stdout
        files[bpw] = path
        files.stderr[bpw] = result.stderr
    return files


def test_every_matrix_gets_an_sfmp_type_at_the_requested_rate(teacher_files):
    for requested, path in teacher_files.items():
        bpw, types = quantized_bpw(path)
        assert abs(bpw - requested) <= 0.02, (requested, bpw)
        matrices = [name for name in types if name.endswith(".weight") and "norm" not in name]
        assert matrices and all(types[name] in BY_ID for name in matrices)  # embeddings included


def test_llama_cli_generates_from_the_converted_teacher(build, teacher_files):
    result = subprocess.run([str(build.tool("llama-cli")), "-m", str(teacher_files[4.5]), "-p", "Once upon a time",
                             "-n", "12", "--single-turn", "--temp", "0", "-t", "2"],
                            stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "Once upon a time" in result.stdout and len(result.stdout.split("Once upon a time", 1)[1].split()) >= 3


def test_perplexity_is_finite_and_falls_as_the_rate_rises(build, teacher_files):
    text = austen_texts().eval_text.read_text(encoding="utf-8")[:24_000]
    ppl = [perplexity(teacher_files[bpw], text, ctx=256, chunks=8)[0] for bpw in RATES]
    assert all(math.isfinite(p) for p in ppl)
    assert ppl[0] > ppl[1] > ppl[2], ppl


def test_report_has_a_row_per_tensor_and_a_heatmap(teacher_files):
    folder = teacher_files[4.5].parent / "report"
    table = (folder / "allocation.md").read_text()
    rows = [line for line in table.splitlines() if line.startswith("| ") and "tensor" not in line]
    assert len(rows) == 30 * 7 + 1  # every block matrix and the (tied) token embedding
    assert all(line.split("|")[3].strip().startswith("sfmp") for line in rows)
    assert (folder / "allocation.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_the_file_records_its_permutation_and_the_report_shows_its_effect(teacher_files):
    from gguf import GGUFReader

    field = GGUFReader(teacher_files[4.5]).fields["sfmp.permuted"]
    assert field.contents() == "ffn,heads"
    table = (teacher_files[4.5].parent / "report" / "allocation.md").read_text()
    assert "channels permuted: ffn, heads." in table
    shares = {m[0]: (float(m[1]), float(m[2])) for m in re.findall(r"^\| (\S+) \|.*\| ([\d.]+)% -> ([\d.]+)% \|", table, re.M)}
    upgraded = [line.split(" | ")[0][2:] for line in table.splitlines() if line.startswith("| blk.") and "| 0% |" not in line]
    assert sorted(shares) == sorted(upgraded) and shares
    moved = {name for name in shares if "ffn_down" in name or "attn_output" in name}  # their columns move
    assert all(before == after for name, (before, after) in shares.items() if name not in moved)
    before, after = np.mean([shares[name] for name in moved], axis=0)
    assert after > before + 5, (before, after)  # the permutation gathers importance where the upgrades fall


def test_a_missing_imatrix_entry_is_a_warning_in_the_summary_and_the_report(teacher_files):
    # llama-imatrix never sees the token embedding multiplied (it is looked up), so it has no entry
    warning = "token_embd.weight: no imatrix entry, so the median importance of the others stands in"
    assert f"- {warning}" in (teacher_files[4.5].parent / "report" / "allocation.md").read_text()
    assert teacher_files.stderr[4.5].strip().splitlines() == [f"warning: {warning}"]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> Path:
    return make_tiny_model(tmp_path_factory.mktemp("tiny") / "model")


def test_conversion_is_deterministic_across_thread_counts(build, tiny, tmp_path):
    a, b = tmp_path / "a.gguf", tmp_path / "b.gguf"
    assert run_convert(tiny, "-o", a, "--bpw", 4.0, "--threads", 1).returncode == 0
    assert run_convert(tiny, "-o", b, "--bpw", 4.0, "--threads", 2).returncode == 0
    assert a.read_bytes() == b.read_bytes()


READS = """
import collections, sys
from pathlib import Path
from sfmp_gguf.model_source import SourceTensor, open_model
reads, load = collections.Counter(), SourceTensor.load
def counted(self):
    reads[self.name] += 1
    return load(self)
SourceTensor.load = counted
from sfmp_gguf.cli.convert import main
assert main(sys.argv[1:]) == 0
print(len(open_model(Path(sys.argv[1])).tensors), len(reads), *sorted(set(reads.values())))
"""


def test_each_tensor_is_read_twice_analysis_then_quantization(build, tiny, tmp_path):
    result = subprocess.run([sys.executable, "-c", READS, str(tiny), "-o", str(tmp_path / "a.gguf"), "--bpw", "4.0",
                             "--sensitivity", "weights"], capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stderr[-2000:]
    tensors, read, *counts = map(int, result.stdout.splitlines()[-1].split())
    assert tensors == read > 10 and counts == [2]


def bad_inputs(tiny: Path, tmp: Path) -> list[tuple[str, list[object], tuple[str, ...]]]:
    no_tensors = tmp / "no-safetensors"
    no_tensors.mkdir()
    shutil.copy(tiny / "config.json", no_tensors / "config.json")
    broken_config = tmp / "broken-config"
    shutil.copytree(tiny, broken_config)
    (broken_config / "config.json").write_text("{not json")
    foreign = make_tiny_model(tmp / "foreign", arch="NoSuchModelForCausalLM")
    nan_model = make_tiny_model(tmp / "nan", nan_in="model.layers.1.mlp.up_proj.weight")
    wrong_names = legacy_imatrix(tmp / "names.dat", {"other.model.weight": np.ones(64)})
    wrong_sizes = legacy_imatrix(tmp / "sizes.dat", {"blk.0.attn_q.weight": np.ones(576)})
    out = tmp / "out" / "model.gguf"
    short_text = tmp / "short.txt"
    short_text.write_text("Too short for one window.", encoding="utf-8")
    latin1_text = tmp / "latin1.txt"
    latin1_text.write_bytes("Caf\u00e9 au lait, ".encode("latin-1") * 2000)
    no_block = make_tiny_model(tmp / "no-block", config_changes={"model_type": "sfmp_unknown"})
    misfit = make_tiny_model(tmp / "misfit", config_changes={"intermediate_size": 96})
    return [
        ("calibration text shorter than a window", [tiny, "-o", out, "--calib", short_text], ("short.txt", "too short")),
        ("calibration text not UTF-8", [tiny, "-o", out, "--calib", latin1_text], ("latin1.txt", "not UTF-8")),
        ("no transformers block", [no_block, "-o", out], ("no-block", "transformers")),
        ("tensors that do not fit the config", [misfit, "-o", out], ("misfit", "mlp.gate_proj.weight", "(96, 64)")),
        ("missing folder", [tmp / "nope", "-o", out], ("nope", "no such file or folder")),
        ("no safetensors", [no_tensors, "-o", out], ("no-safetensors", "no .safetensors")),
        ("unreadable config", [broken_config, "-o", out], ("config.json", "unreadable config")),
        ("unsupported architecture", [foreign, "-o", out], ("NoSuchModelForCausalLM", "not supported")),
        ("NaN weights", [nan_model, "-o", out], ("blk.1.ffn_up.weight", "NaN or Inf")),
        ("bpw too low", [tiny, "-o", out, "--bpw", 1.5], ("--bpw 1.5", "bpw")),
        ("bpw too high", [tiny, "-o", out, "--bpw", 9.5], ("--bpw 9.5",)),
        ("imatrix of another model (names)", [tiny, "-o", out, "--imatrix", wrong_names], ("names.dat", "another model")),
        ("imatrix of another model (sizes)", [tiny, "-o", out, "--imatrix", wrong_sizes],
         ("sizes.dat", "blk.0.attn_q.weight", "576")),
        ("output in a missing folder", [tiny, "-o", tmp / "missing" / "x.gguf"], ("missing", "does not exist")),
    ]


def test_bad_inputs_give_one_line_errors_and_leave_no_file(build, tiny, tmp_path):
    (tmp_path / "out").mkdir()
    for label, args, needles in bad_inputs(tiny, tmp_path):
        result = run_convert(*args)
        assert_one_line_error(result, *needles)
        assert_nothing_written(tmp_path / "out")


def test_a_full_disk_gives_a_one_line_error_and_leaves_no_file(build, tiny, tmp_path):
    result = run_convert(tiny, "-o", tmp_path / "model.gguf", limit_bytes=200_000)
    assert_one_line_error(result, "model.gguf", "no space")
    assert_nothing_written(tmp_path)


@pytest.fixture(scope="module")
def tiny_gguf(tiny, tmp_path_factory) -> Path:
    """The tiny model as an F32 GGUF, made by the pinned llama.cpp's own converter script."""
    from sfmp_gguf.llama.source import llama_tree

    out = tmp_path_factory.mktemp("tiny-gguf") / "tiny-f32.gguf"
    subprocess.run([sys.executable, str(llama_tree() / "convert_hf_to_gguf.py"), str(tiny), "--outtype", "f32",
                    "--outfile", str(out)], check=True, capture_output=True)
    return out


def without_torch(tmp: Path) -> dict[str, str]:
    """An environment in which ``import torch`` fails, as on a machine without it."""
    fake = tmp / "no-torch" / "torch"
    fake.mkdir(parents=True)
    (fake / "__init__.py").write_text("raise ImportError('No module named torch (hidden by the test)')\n")
    return {**os.environ, "PYTHONPATH": str(fake.parent)}


def test_the_default_is_fisher_on_the_built_in_text(build, tiny, tiny_gguf, tmp_path):
    for model in (tiny, tiny_gguf):
        out = tmp_path / f"{model.name}.gguf"
        result = run_convert(model, "-o", out, "--bpw", 4.0)
        assert result.returncode == 0, result.stderr[-2000:]
        assert "fisher sensitivity (the default, on the built-in text)" in result.stdout
        assert "peak RSS" in result.stdout
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(f"{m.name}.gguf" for m in (tiny, tiny_gguf))


def test_without_torch_the_default_is_an_imatrix_from_the_same_text(build, tiny, tiny_gguf, tmp_path):
    env = without_torch(tmp_path)
    out = tmp_path / "out" / "model.gguf"
    out.parent.mkdir()
    result = run_convert(tiny_gguf, "-o", out, "--bpw", 4.0, env=env)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "imatrix sensitivity (on the built-in text, because torch cannot run here" in result.stdout
    assert abs(quantized_bpw(out)[0] - 4.0) <= 0.02
    assert_one_line_error(run_convert(tiny, "-o", out, env=env), str(tiny), "needs torch")
    assert_one_line_error(run_convert(tiny_gguf, "-o", out, "--sensitivity", "fisher", env=env),
                          "tiny-f32.gguf", "--imatrix")


def test_fisher_on_a_gguf_transformers_cannot_load_says_to_use_an_imatrix(build, tmp_path):
    import gguf

    model = tmp_path / "odd.gguf"
    writer = gguf.GGUFWriter(model, "sfmp-odd")
    writer.add_tensor("blk.0.attn_q.weight", np.ones((64, 64), dtype=np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    (tmp_path / "out").mkdir()
    result = run_convert(model, "-o", tmp_path / "out" / "model.gguf", "--sensitivity", "fisher")
    assert_one_line_error(result, "odd.gguf", "transformers cannot load a sfmp-odd GGUF", "--imatrix")
    assert_nothing_written(tmp_path / "out")


def test_fisher_sensitivity_runs_the_model_on_calibration_text(build, tiny, tmp_path):
    calib = tmp_path / "calib.txt"
    calib.write_text(austen_texts().calib_text.read_text(encoding="utf-8")[:30_000], encoding="utf-8")
    out = tmp_path / "fisher.gguf"
    result = run_convert(tiny, "-o", out, "--bpw", 4.0, "--sensitivity", "fisher", "--calib", calib)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "fisher sensitivity" in result.stdout
    assert abs(quantized_bpw(out)[0] - 4.0) <= 0.02
