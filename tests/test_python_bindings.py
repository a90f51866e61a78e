"""llama-cpp-python, installed by `python -m sfmp_gguf.llama.build --python-bindings`, runs an SFMP file
on our patched libraries and generates what llama-cli generates."""

from __future__ import annotations

import ctypes
import importlib
import os
import subprocess
import sys
from pathlib import Path

import pytest

from sfmp_gguf.format import BY_NAME
from sfmp_gguf.paths import REPO_ROOT
from tests.convert_helpers import quantize_with_overrides

pytestmark = pytest.mark.integration

PROMPT = "The capital of France is"
N_TOKENS = 12
OVERRIDES = {"ffn_down": "sfmp425_k", "attn_v": "sfmp600_s"}
# llama-cli is a chat client; this template passes the prompt through, so both sides complete the raw text.
RAW_TEMPLATE = "{%- for message in messages -%}{{ message['content'] }}{%- endfor -%}"


def _install(env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "sfmp_gguf.llama.build", "--python-bindings"]
    return subprocess.run(cmd, capture_output=True, text=True, cwd=REPO_ROOT, env=env, timeout=600)


@pytest.fixture(scope="module")
def llama_cpp(build):
    result = _install()
    assert result.returncode == 0, result.stderr[-3000:]
    importlib.invalidate_caches()
    with pytest.MonkeyPatch.context() as patch:
        patch.delenv("LLAMA_CPP_LIB_PATH", raising=False)
        import llama_cpp
    return llama_cpp


@pytest.fixture(scope="module")
def sfmp_model(build, tmp_path_factory) -> Path:
    return quantize_with_overrides(build, tmp_path_factory.mktemp("bindings") / "teacher-sfmp.gguf", OVERRIDES)


def test_a_second_run_finds_everything_in_place(llama_cpp, build):
    result = _install()
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.strip() == f"llama_cpp 0.3.36 already runs {build.bin_dir.resolve()}"


def test_no_build_is_a_one_line_error(tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "SFMP_LLAMA_CPP_DIR"}
    result = _install(dict(env, SFMP_CACHE_DIR=str(tmp_path)))
    assert result.returncode == 1
    assert result.stderr.count("\n") == 1 and result.stderr.startswith("error: ")
    assert "libllama.so: not built" in result.stderr


def test_llama_cpp_loads_the_patched_library(llama_cpp, build):
    lib = llama_cpp.llama_cpp._lib
    assert Path(lib._name).resolve().parent == build.bin_dir.resolve()
    type_name = lib.ggml_type_name
    type_name.argtypes, type_name.restype = [ctypes.c_int], ctypes.c_char_p
    for name in OVERRIDES.values():
        assert type_name(BY_NAME[name].type_id) == name.encode()  # stock ggml says "NONE"


def test_greedy_generation_matches_llama_cli(llama_cpp, build, sfmp_model, tmp_path):
    template = tmp_path / "raw.jinja"
    template.write_text(RAW_TEMPLATE)
    cmd = [str(build.tool("llama-cli")), "-m", str(sfmp_model), "-p", PROMPT, "-n", str(N_TOKENS), "--single-turn",
           "--temp", "0", "-t", "2", "-c", "256", "-fa", "off", "--chat-template-file", str(template)]
    cli = subprocess.run(cmd, capture_output=True, text=True, stdin=subprocess.DEVNULL, timeout=600)
    assert cli.returncode == 0, cli.stderr[-3000:]
    cli_text = cli.stdout.split(PROMPT, 1)[-1].split("[ Prompt:", 1)[0]  # after the echo, before the speed line

    llm = llama_cpp.Llama(model_path=str(sfmp_model), n_ctx=256, n_threads=2, seed=0, verbose=False)
    try:
        out = llm.create_completion(PROMPT, max_tokens=N_TOKENS, temperature=0.0, repeat_penalty=1.0)
    finally:
        llm.close()
    choice = out["choices"][0]
    assert choice["finish_reason"] == "length" and out["usage"]["completion_tokens"] == N_TOKENS
    assert len(choice["text"].strip()) > 5
    assert choice["text"].strip() == cli_text.strip()
