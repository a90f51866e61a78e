"""Synthetic Llama-architecture Hugging Face folders at chosen sizes: random heavy-tailed weights
(Student-t, 4 degrees of freedom), the demo teacher's tokenizer, nothing downloaded. For cost and
memory benchmarks: a model's quantization error against its own F32 is still a valid measure.

Written one decoder block per safetensors file, so making one holds a block, not the model.

    python -m sfmp_gguf.assets.synthetic 0.5B OUT_FOLDER

``write_hf_model`` writes any architecture transformers knows from its config alone (the
mixture-of-experts benchmark model, the tests' tiny Qwen3-MoE and Mixtral): transformers names the
checkpoint's tensors, so experts are stored one matrix each, as published checkpoints are.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from sfmp_gguf.assets.cache import ensure_artifact
from sfmp_gguf.assets.teacher import teacher

VERSION = "synthetic-llama-1"
MOE_VERSION = "synthetic-moe-2"


@dataclass(frozen=True)
class Shape:
    hidden: int
    ffn: int
    layers: int
    heads: int
    kv_heads: int

    @property
    def head_dim(self) -> int:
        return self.hidden // self.heads

    def block_tensors(self) -> dict[str, tuple[int, ...]]:
        h, kv = self.hidden, self.kv_heads * self.head_dim
        return {"self_attn.q_proj.weight": (h, h), "self_attn.k_proj.weight": (kv, h),
                "self_attn.v_proj.weight": (kv, h), "self_attn.o_proj.weight": (h, h),
                "mlp.gate_proj.weight": (self.ffn, h), "mlp.up_proj.weight": (self.ffn, h),
                "mlp.down_proj.weight": (h, self.ffn), "input_layernorm.weight": (h,),
                "post_attention_layernorm.weight": (h,)}

    def block_parameters(self) -> int:
        return sum(int(np.prod(s)) for s in self.block_tensors().values())

    def parameters(self, vocab: int) -> int:
        return self.layers * self.block_parameters() + 2 * vocab * self.hidden + self.hidden


# Rows are multiples of 256, so every stock llama.cpp type applies in full.
SIZES = {
    "0.25B": Shape(hidden=1024, ffn=2816, layers=16, heads=16, kv_heads=4),
    "0.25B-deep": Shape(hidden=1024, ffn=2816, layers=32, heads=16, kv_heads=4),  # same blocks, twice the depth
    "0.5B": Shape(hidden=1536, ffn=4096, layers=14, heads=12, kv_heads=4),
    "1B": Shape(hidden=2048, ffn=5632, layers=18, heads=16, kv_heads=4),
}
# A Qwen3-MoE with 4 of 32 experts active per token: the shape of Qwen3-30B-A3B, scaled down.
MOE = {"hidden_size": 1024, "moe_intermediate_size": 512, "intermediate_size": 2048, "num_experts": 32,
       "num_experts_per_tok": 4, "num_hidden_layers": 4, "num_attention_heads": 16, "num_key_value_heads": 4,
       "head_dim": 64}
# Llama-3-8B, for extrapolating measurements
LLAMA3_8B = Shape(hidden=4096, ffn=14336, layers=32, heads=32, kv_heads=8)
LLAMA3_VOCAB = 128256


def _heavy_tailed(rng: np.random.Generator, shape: tuple[int, ...]) -> np.ndarray:
    fan_in = shape[-1]
    return (rng.standard_t(4, size=shape) * (0.5 / np.sqrt(fan_in))).astype(np.float32)


def write_model(shape: Shape, folder: Path, seed: int = 0) -> None:
    """A synthetic Llama model in ``folder`` (which must not exist yet)."""
    from safetensors.numpy import save_file

    folder.mkdir(parents=True)
    source = teacher().hf_dir
    config = json.loads((source / "config.json").read_text())
    vocab = config["vocab_size"]
    config.update(architectures=["LlamaForCausalLM"], model_type="llama", hidden_size=shape.hidden,
                  intermediate_size=shape.ffn, num_hidden_layers=shape.layers, num_attention_heads=shape.heads,
                  num_key_value_heads=shape.kv_heads, head_dim=shape.head_dim, tie_word_embeddings=False,
                  torch_dtype="float32")
    (folder / "config.json").write_text(json.dumps(config, indent=1))
    for name in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"):
        shutil.copy(source / name, folder / name)
    rng = np.random.default_rng(seed)
    weight_map = {}

    def shard(file: str, tensors: dict[str, np.ndarray]) -> None:
        save_file(tensors, str(folder / file))
        weight_map.update(dict.fromkeys(tensors, file))

    shard("embed.safetensors", {"model.embed_tokens.weight": _heavy_tailed(rng, (vocab, shape.hidden))})
    for i in range(shape.layers):
        shard(f"block-{i:03d}.safetensors", {
            f"model.layers.{i}.{name}": (np.ones(s, np.float32) if len(s) == 1 else _heavy_tailed(rng, s))
            for name, s in shape.block_tensors().items()})
    shard("head.safetensors", {"model.norm.weight": np.ones(shape.hidden, np.float32),
                               "lm_head.weight": _heavy_tailed(rng, (vocab, shape.hidden))})
    (folder / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))


def write_hf_model(config: Any, folder: Path, seed: int = 0) -> None:
    """Random heavy-tailed weights for the transformers ``config`` (norms 1), with the demo teacher's
    tokenizer, one safetensors file per decoder block, in ``folder`` (which must not exist yet)."""
    import torch
    from safetensors.numpy import save_file
    from transformers import AutoModelForCausalLM
    from transformers.core_model_loading import revert_weight_conversion

    folder.mkdir(parents=True)
    source = teacher().hf_dir
    for name in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"):
        shutil.copy(source / name, folder / name)
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config)
    stored = revert_weight_conversion(model, dict(model.state_dict()))  # the checkpoint's names and shapes
    config.architectures = [type(model).__name__]  # what converters read to pick the model class
    config.save_pretrained(folder)
    rng = np.random.default_rng(seed)
    weight_map: dict[str, str] = {}
    by_file: dict[str, list[str]] = {}
    for key in sorted(stored):
        block = next((part for part in key.split(".") if part.isdecimal()), None)
        by_file.setdefault("other" if block is None else f"block-{int(block):03d}", []).append(key)
    for file, keys in by_file.items():
        tensors = {k: np.ones(tuple(stored[k].shape), np.float32) if stored[k].ndim == 1
                   else _heavy_tailed(rng, tuple(stored[k].shape)) for k in keys}
        save_file(tensors, str(folder / f"{file}.safetensors"))
        weight_map.update(dict.fromkeys(keys, f"{file}.safetensors"))
    (folder / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))


def teacher_vocab() -> dict[str, int]:
    """The demo teacher's vocabulary size and special tokens, for configs built around its tokenizer."""
    config = json.loads((teacher().hf_dir / "config.json").read_text())
    return {k: config[k] for k in ("vocab_size", "bos_token_id", "eos_token_id")}


def synthetic_moe() -> Path:
    """The cached synthetic mixture-of-experts model (Qwen3-MoE, shape MOE)."""
    from transformers import Qwen3MoeConfig

    def write(tmp: Path) -> None:
        write_hf_model(Qwen3MoeConfig(**MOE, **teacher_vocab(), tie_word_embeddings=False,
                                      max_position_embeddings=4096), tmp / "hf")

    return ensure_artifact("synthetic-qwen3moe", {"shape": MOE, "version": MOE_VERSION}, write) / "hf"


def synthetic_model(size: str) -> Path:
    """The cached synthetic model of ``size`` (a key of SIZES)."""
    shape = SIZES[size]
    folder = ensure_artifact(f"synthetic-llama-{size}", {"shape": shape.__dict__, "version": VERSION},
                             lambda tmp: write_model(shape, tmp / "hf"))
    return folder / "hf"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("size", choices=sorted(SIZES))
    parser.add_argument("output", type=Path)
    args = parser.parse_args(argv)
    if args.output.exists():
        print(f"error: {args.output}: already exists", file=sys.stderr)
        return 1
    write_model(SIZES[args.size], args.output)
    print(f"wrote {args.output}: {SIZES[args.size].parameters(49152) / 1e9:.2f}B parameters")
    return 0


if __name__ == "__main__":
    sys.exit(main())
