"""The patched tools build, start, and carry our code; the cffi library loads."""

from __future__ import annotations

import re
import subprocess

import pytest

from sfmp_gguf import kernels
from sfmp_gguf.llama.build import TOOLS
from sfmp_gguf.format import BY_NAME, FORMAT_VERSION
from sfmp_gguf.llama.patch import FILES_DIR

pytestmark = pytest.mark.integration

USER_TOOLS = [t for t in TOOLS if t.startswith("llama-")]
# llama-quantize prints its usage and exits 1 by design.
HELP_EXIT_CODE = {"llama-quantize": 1}


@pytest.mark.parametrize("tool", USER_TOOLS)
def test_tool_starts(build, tool):
    result = subprocess.run([str(build.tool(tool)), "--help"], capture_output=True, text=True, timeout=60)
    assert result.returncode == HELP_EXIT_CODE.get(tool, 0), result.stderr[-2000:]
    assert "usage" in (result.stdout + result.stderr).lower()


def test_llama_quantize_fns_passes(build):
    result = subprocess.run([str(build.tool("test-quantize-fns"))], capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]


@pytest.mark.parametrize("op", ["GET_ROWS", "MUL_MAT", "MUL_MAT_ID"])
def test_backend_ops_pass_on_cpu_for_sfmp_types(build, op):
    cmd = [str(build.tool("test-backend-ops")), "-b", "CPU", "-o", op, "-p", "sfmp"]
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout[-3000:]
    # Every SFMP type took part, and nothing failed.
    for name in BY_NAME:
        assert f"type_a={name}" in result.stdout or f"type={name}" in result.stdout, name
    assert "FAIL" not in result.stdout


def test_ggml_carries_our_code(build):
    """The patch compiles ggml_patch's files into ggml: our symbols are exported there."""
    library = next(build.bin_dir.glob("libggml-base.so*"))
    symbols = subprocess.run(["nm", "-D", "--defined-only", str(library)], capture_output=True, text=True, check=True)
    assert re.search(r"\bT sfmp_format_version\b", symbols.stdout)
    assert re.search(r"\bT sfmp_quantize_row_sfmp425_k_ref\b", symbols.stdout)


def test_kernel_library_loads_from_the_same_sources(build):
    lib = kernels.load(build.kernel_library)
    types_inc = (FILES_DIR / "ggml/include/ggml-sfmp-types.inc").read_text()
    declared = int(re.search(r"#define SFMP_FORMAT_VERSION (\d+)", types_inc).group(1))
    assert lib.lib.sfmp_format_version() == declared == FORMAT_VERSION
