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


def write_permuted_copy(model: Path, out: Path, kinds: str, seed: int, record: Path) -> None:
    """``model`` as an F32 GGUF with its channels permuted (kinds: comma list) by a random salience
    (seeded), so that every permuted axis really moves; every tensor's index and inverse go to
    ``record`` (npz). In a child process: it needs the pinned gguf-py."""
    code = """
import sys
from pathlib import Path
import numpy as np
from sfmp_gguf.model_source import use_pinned_gguf_py, open_model
use_pinned_gguf_py()
from sfmp_gguf import analysis, permutation, pipeline
model, out, kinds, seed, record = Path(sys.argv[1]), Path(sys.argv[2]), sys.argv[3], int(sys.argv[4]), sys.argv[5]
source = open_model(model)
shapes = {t.name: t.shape for t in source.tensors}
rng = np.random.default_rng(seed)
def salience(name):
    if not analysis.quantizable(name, shapes[name]):
        return None
    return rng.random(shapes[name][:-2] + shapes[name][-1:])
perm = permutation.plan(source.arch, source.metadata, shapes, salience, tuple(kinds.split(",")))
if perm.skipped:
    sys.exit(f"skipped: {perm.skipped}")
pipeline.write_float(pipeline.permuted(source, perm), out)
undo = perm.inverse()
saved = {}
for name, axes in perm.axes.items():
    for axis in ("rows", "cols"):
        if getattr(axes, axis) is not None:
            saved[f"{name}|{axis}"] = getattr(axes, axis)
            saved[f"{name}|{axis}|inverse"] = getattr(undo.axes[name], axis)
np.savez(record, **saved)
"""
    result = subprocess.run([sys.executable, "-c", code, str(model), str(out), kinds, str(seed), str(record)],
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-3000:]


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


EXPERTS = {"qwen3_moe": 8, "mixtral": 4}
SHAPES = dict(hidden_size=256, intermediate_size=512, num_hidden_layers=2, num_attention_heads=4,
              num_key_value_heads=2, head_dim=64, max_position_embeddings=1024, tie_word_embeddings=False)


def write_moe(folder, family: str):
    from transformers import MixtralConfig, Qwen3MoeConfig

    from sfmp_gguf.assets.synthetic import teacher_vocab, write_hf_model

    if family == "qwen3_moe":
        config = Qwen3MoeConfig(**SHAPES, **teacher_vocab(), num_experts=EXPERTS[family], num_experts_per_tok=2,
                                moe_intermediate_size=256)
    else:
        config = MixtralConfig(**SHAPES, **teacher_vocab(), num_local_experts=EXPERTS[family], num_experts_per_tok=2)
    write_hf_model(config, folder, seed=len(family))
    return folder


def write_dense(folder, family: str):
    """A tiny random dense model of ``family`` ("llama" or "gemma3") with SHAPES' dimensions."""
    from transformers import Gemma3TextConfig, LlamaConfig

    from sfmp_gguf.assets.synthetic import teacher_vocab, write_hf_model

    config = {"llama": LlamaConfig, "gemma3": Gemma3TextConfig}[family](**SHAPES, **teacher_vocab())
    write_hf_model(config, folder, seed=len(family))
    return folder


def quantize_with_overrides(build, out: Path, overrides: dict[str, str], base: str = "Q8_0") -> Path:
    """The F32 teacher through the build's llama-quantize: ``base``, with ``--tensor-type PATTERN=TYPE``
    for each of ``overrides`` (a quick SFMP file of several types)."""
    cmd = [str(build.tool("llama-quantize"))]
    for pattern, type_name in overrides.items():
        cmd += ["--tensor-type", f"{pattern}={type_name}"]
    result = subprocess.run([*cmd, str(teacher().gguf_path), str(out), base, "2"], capture_output=True, text=True,
                            timeout=900)
    assert result.returncode == 0, result.stderr[-3000:]
    return out
