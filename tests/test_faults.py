"""Converter fault injection: a read-only folder, corrupt safetensors, SIGKILL at random moments.

Required for each: a one-line error (or, for a kill, no partial file at the final path), no output
file left behind, and the input untouched.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from sfmp_gguf.gguf_io import PARTIAL_MARK
from sfmp_gguf.paths import CONVERTER
from tests.convert_helpers import assert_nothing_written, assert_one_line_error, make_tiny_model, run_convert

pytestmark = pytest.mark.integration


def _digest(folder: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.iterdir())}


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> Path:
    return make_tiny_model(tmp_path_factory.mktemp("faults") / "model", seed=5)


@pytest.fixture(scope="module")
def reference(build, tiny, tmp_path_factory) -> bytes:
    out = tmp_path_factory.mktemp("reference") / "model.gguf"
    assert run_convert(tiny, "-o", out, "--bpw", 4.0).returncode == 0
    return out.read_bytes()


def test_read_only_output_folder(build, tiny, tmp_path):
    folder = tmp_path / "read-only"
    folder.mkdir()
    folder.chmod(0o555)
    # As an ordinary user inside a user namespace, so the folder's permissions apply even to root.
    prefix = ("unshare", "--user", "--map-user=1000", "--map-group=1000") if os.geteuid() == 0 else ()
    result = run_convert(tiny, "-o", folder / "model.gguf", "--bpw", 4.0, prefix=prefix)
    assert_one_line_error(result, "read-only", "not writable")
    assert_nothing_written(folder)


def _copy_with_safetensors(tiny: Path, dest: Path, edit) -> Path:
    shutil.copytree(tiny, dest)
    path = dest / "model.safetensors"
    path.write_bytes(edit(path.read_bytes()))
    return dest


def _truncate(data: bytes) -> bytes:
    return data[:len(data) // 2]


def _lying_offsets(data: bytes) -> bytes:
    """Rewrite the header so that one tensor's data runs far past the end of the file."""
    length = int.from_bytes(data[:8], "little")
    header = json.loads(data[8:8 + length])
    name = "model.layers.1.mlp.down_proj.weight"
    start, end = header[name]["data_offsets"]
    header[name]["data_offsets"] = [start + 10**9, end + 10**9]
    raw = json.dumps(header).encode()
    return len(raw).to_bytes(8, "little") + raw + data[8 + length:]


@pytest.mark.parametrize("edit", [_truncate, _lying_offsets], ids=["truncated", "lying-offsets"])
def test_corrupt_safetensors(build, tiny, tmp_path, edit):
    model = _copy_with_safetensors(tiny, tmp_path / "corrupt", edit)
    before = _digest(model)
    (tmp_path / "out").mkdir()
    result = run_convert(model, "-o", tmp_path / "out" / "model.gguf")
    assert_one_line_error(result, str(model))
    assert_nothing_written(tmp_path / "out")
    assert _digest(model) == before


def test_a_killed_runs_partial_file_goes_at_start_up_even_if_the_run_then_fails(build, tiny, tmp_path):
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    out = tmp_path / "model.gguf"
    stale = tmp_path / f".{out.name}{PARTIAL_MARK}{dead.pid}"
    stale.write_bytes(b"GGUF, cut short")
    alive = tmp_path / f".{out.name}{PARTIAL_MARK}{os.getpid()}"  # a run still going: left alone
    alive.write_bytes(b"GGUF, being written")
    bad_imatrix = tmp_path / "imatrix.dat"
    bad_imatrix.write_bytes(b"not an imatrix")
    result = run_convert(tiny, "-o", out, "--imatrix", bad_imatrix)
    assert_one_line_error(result, str(bad_imatrix))
    assert not stale.exists() and alive.exists() and not out.exists()


def test_sigkill_never_leaves_a_partial_file_at_the_final_path(build, tiny, reference, tmp_path):
    out = tmp_path / "model.gguf"
    before = _digest(tiny)
    rng = random.Random(7)
    killed = set()
    for attempt in range(4):
        proc = subprocess.Popen([sys.executable, str(CONVERTER), str(tiny), "-o", str(out), "--bpw", "4.0"],
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        time.sleep(rng.uniform(1.0, 6.0))
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        killed.add(proc.pid)
        # The final path holds nothing or the complete file, never part of one.
        assert not out.exists() or out.read_bytes() == reference
        # Every leftover is recognisably a killed run's partial file or scratch folder (Fisher's
        # stores). A run killed before its start-up clean-up has not yet removed an earlier run's
        # leftovers, so those may be there too.
        leftovers = [p.name for p in tmp_path.iterdir() if p != out]
        recognisable = {f".{out.name}{PARTIAL_MARK}{kind}{pid}" for pid in killed for kind in ("", "scratch-")}
        assert all(name in recognisable for name in leftovers), leftovers
        out.unlink(missing_ok=True)
    result = run_convert(tiny, "-o", out, "--bpw", 4.0)
    assert result.returncode == 0, result.stderr[-2000:]
    assert out.read_bytes() == reference
    assert [p.name for p in tmp_path.iterdir()] == [out.name]  # the next run removed the leftovers
    assert _digest(tiny) == before


def _calibrating(tiny: Path, out: Path, tmp: Path, *extra: str) -> list[str]:
    """A conversion that writes llama-imatrix's temporary model copy into ``tmp`` (its TMPDIR)."""
    tmp.mkdir(exist_ok=True)
    return [sys.executable, str(CONVERTER), str(tiny), "-o", str(out), "--bpw", "4.0", "--sensitivity", "imatrix", *extra]


def _env(tmp: Path) -> dict[str, str]:
    return {**os.environ, "TMPDIR": str(tmp)}


def test_temporary_files_go_after_success_and_after_an_error(build, tiny, tmp_path):
    out, tmp = tmp_path / "out" / "model.gguf", tmp_path / "tmp"
    out.parent.mkdir()
    ok = subprocess.run(_calibrating(tiny, out, tmp), capture_output=True, text=True, env=_env(tmp), timeout=900)
    assert ok.returncode == 0, ok.stderr[-2000:]
    assert list(tmp.iterdir()) == [] and [p.name for p in out.parent.iterdir()] == [out.name]
    out.unlink()
    short = tmp_path / "short.txt"
    short.write_text("Too short to calibrate on.")
    failed = subprocess.run(_calibrating(tiny, out, tmp, "--calib", str(short)), capture_output=True, text=True,
                            env=_env(tmp), timeout=900)
    assert_one_line_error(failed, "llama-imatrix failed")
    assert list(tmp.iterdir()) == [] and list(out.parent.iterdir()) == []


def _default_sigint() -> None:
    """In the child: SIGINT's default action. A job a non-interactive shell starts in the background
    inherits SIGINT ignored, and Python then installs no KeyboardInterrupt handler."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def test_temporary_files_go_after_sigint(build, tiny, tmp_path):
    out, tmp = tmp_path / "out" / "model.gguf", tmp_path / "tmp"
    out.parent.mkdir()
    proc = subprocess.Popen(_calibrating(tiny, out, tmp), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=_env(tmp), preexec_fn=_default_sigint)
    deadline = time.monotonic() + 300
    while not any(p.is_file() for p in tmp.rglob("*")) and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)  # until the temporary model copy exists
    assert proc.poll() is None, "the conversion ended before its temporary files appeared"
    proc.send_signal(signal.SIGINT)
    _, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 130 and stderr.strip().splitlines()[-1] == "error: interrupted", stderr[-2000:]
    assert list(tmp.iterdir()) == [] and list(out.parent.iterdir()) == []
