"""Helpers for the converter tests: running the CLI, a tiny model, and the checks on failures."""

from __future__ import annotations

import json
import resource
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
from gguf import GGUFReader

from sfmp_gguf import gguf_types
from sfmp_gguf.assets.teacher import teacher
from sfmp_gguf.format import BY_ID
from sfmp_gguf.paths import CONVERTER


def run_convert(*args: object, limit_bytes: int | None = None, prefix: tuple[str, ...] = (),
                env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    def limit_file_size() -> None:  # a write that fails part way, like a full disk
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit_bytes, limit_bytes))

    return subprocess.run([*prefix, sys.executable, str(CONVERTER), *map(str, args)], capture_output=True, text=True,
                          timeout=900, preexec_fn=limit_file_size if limit_bytes else None, env=env)


def write_float_copy(model: Path, out: Path, half: bool = False) -> None:
    """``pipeline.write_float`` of ``model`` (in a child process: it needs the pinned gguf-py)."""
    code = ("import sys; from pathlib import Path; from sfmp_gguf.model_source import use_pinned_gguf_py, open_model;"
            "use_pinned_gguf_py(); from sfmp_gguf import pipeline;"
            "pipeline.write_float(open_model(Path(sys.argv[1])), Path(sys.argv[2]), half=sys.argv[3] == 'half')")
    subprocess.run([sys.executable, "-c", code, str(model), str(out), "half" if half else "f32"], check=True,
                   capture_output=True)


def quantized_bpw(path: Path) -> tuple[float, dict[str, int]]:
    """Average bpw over the SFMP tensors of a file, and the type id of every tensor."""
    gguf_types.register()
    reader = GGUFReader(path)
    bits = weights = 0
    types = {}
    for t in reader.tensors:
        types[t.name] = int(t.tensor_type)
        if int(t.tensor_type) in BY_ID:
            bits += 8 * t.n_bytes
            weights += t.n_elements
    return bits / weights, types


def make_tiny_model(folder: Path, seed: int = 0, arch: str = "LlamaForCausalLM", nan_in: str | None = None,
                    config_changes: dict | None = None) -> Path:
    """A 2-layer llama with the teacher's tokenizer and random weights (rows of 64 and 128);
    ``config_changes`` are written into config.json after the weights are made."""
    from safetensors.numpy import save_file

    folder.mkdir(parents=True)
    config = json.loads((teacher().hf_dir / "config.json").read_text())
    config.update(architectures=[arch], hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                  num_attention_heads=4, num_key_value_heads=2)
    (folder / "config.json").write_text(json.dumps(config))
    for name in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"):
        shutil.copy(teacher().hf_dir / name, folder / name)
    rng = np.random.default_rng(seed)
    shapes = {"model.embed_tokens.weight": (config["vocab_size"], 64), "model.norm.weight": (64,)}
    for i in range(2):
        p = f"model.layers.{i}."
        shapes.update({p + "self_attn.q_proj.weight": (64, 64), p + "self_attn.k_proj.weight": (32, 64),
                       p + "self_attn.v_proj.weight": (32, 64), p + "self_attn.o_proj.weight": (64, 64),
                       p + "mlp.gate_proj.weight": (128, 64), p + "mlp.up_proj.weight": (128, 64),
                       p + "mlp.down_proj.weight": (64, 128), p + "input_layernorm.weight": (64,),
                       p + "post_attention_layernorm.weight": (64,)})
    tensors = {name: (rng.standard_normal(shape) * 0.05).astype(np.float32) for name, shape in shapes.items()}
    if nan_in:
        tensors[nan_in][0, 3] = np.nan
    save_file(tensors, str(folder / "model.safetensors"))
    if config_changes:
        (folder / "config.json").write_text(json.dumps({**config, **config_changes}))
    return folder


def assert_one_line_error(result: subprocess.CompletedProcess, *needles: str) -> None:
    assert result.returncode == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr[-2000:]
    assert "Traceback" not in result.stderr
    for needle in needles:
        assert needle in lines[0], (needle, lines[0])


def assert_nothing_written(folder: Path) -> None:
    assert not list(folder.glob("*.gguf")) and not list(folder.glob(".*sfmp-partial*")), list(folder.iterdir())


def legacy_imatrix(path: Path, entries: dict[str, np.ndarray]) -> Path:
    data = bytearray(np.int32(len(entries)).tobytes())
    for name, values in entries.items():
        raw = name.encode()
        data += np.int32(len(raw)).tobytes() + raw + np.int32(1).tobytes() + np.int32(values.size).tobytes()
        data += values.astype("<f4").tobytes()
    path.write_bytes(bytes(data))
    return path
