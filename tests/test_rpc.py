"""llama.cpp's RPC backend serves SFMP tensors: an rpc-server on 127.0.0.1 computes the same tokens and
perplexity as a local run of the same kernels.

The server allocates weights in the CPU backend's default buffer, never in extra buffer types, so its
SFMP matmuls take the per-row kernels (sfmp-cpu.c), as a local run does with ``--no-repack``; that is
the local run compared.
"""

from __future__ import annotations

import re
import socket
from pathlib import Path

import pytest

from sfmp_gguf.llama.rpc import RpcError, rpc_server
from tests.convert_helpers import quantize_with_overrides
from tests.llama_runs import MIXED_OVERRIDES, continuation, eval_text, perplexity

pytestmark = pytest.mark.integration



@pytest.fixture(scope="module")
def sfmp_model(build, tmp_path_factory) -> Path:
    return quantize_with_overrides(build, tmp_path_factory.mktemp("rpc") / "teacher-sfmp.gguf", MIXED_OVERRIDES)


@pytest.fixture(scope="module")
def server(build):
    with rpc_server(build.tool("ggml-rpc-server"), 2) as address:
        yield address


def test_perplexity_through_rpc_equals_the_local_run(build, sfmp_model, server, tmp_path):
    text = eval_text(tmp_path)
    local, _ = perplexity(build.tool("llama-perplexity"), sfmp_model, text, "--no-repack")
    remote, log = perplexity(build.tool("llama-perplexity"), sfmp_model, text, "--rpc", server, "-ngl", "99")
    devices = dict(re.findall(r"layer +(\d+) assigned to device (\w+)", log))
    assert len(devices) > 30 and set(devices.values()) == {"RPC0"}  # the teacher's 30 blocks and its output
    assert 1 < local < 1e3 and remote == local


def test_llama_cli_through_rpc_generates_the_local_tokens(build, sfmp_model, server):
    local = continuation(build.tool("llama-cli"), sfmp_model, "--no-repack")
    assert len(local.strip()) > 5
    assert continuation(build.tool("llama-cli"), sfmp_model, "--rpc", server, "-ngl", "99") == local


def test_the_server_is_gone_after_use_and_a_bad_server_is_one_error(build, tmp_path):
    with rpc_server(build.tool("ggml-rpc-server"), 1) as address:
        host, port = address.split(":")
        socket.create_connection((host, int(port)), timeout=5).close()
    with pytest.raises(OSError):
        socket.create_connection((host, int(port)), timeout=5).close()
    with pytest.raises(RpcError, match="exited with"):
        with rpc_server(build.tool("llama-quantize"), 1):  # not a server: it exits at once
            pass
