"""A model of another architecture family for checks on models the allocation was not tuned on.

The demo teacher's trained weights in a Gemma 3 text architecture: the embedding input scaled up by
sqrt(hidden), GELU feed-forward, (1 + w) RMSNorm gains, per-head q/k norms and sandwich norms
around each block. The teacher's norm gains carry over (as w = gain - 1). The norms Gemma adds get
the gains that keep the teacher's magnitudes, measured once on the calibration text (the median
token's rms): q/k norms the teacher's q/k rms, and the post-block norms the teacher's block-output
rms times sqrt(hidden), so
the whole residual stream runs sqrt(hidden) times larger than the teacher's, as Gemma's does. It
computes a function near the teacher's but not the same; its quantized files are scored against
its own F32 logits. Written as a Hugging Face folder with the teacher's tokenizer, cached.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from sfmp_gguf.assets.austen import austen_texts
from sfmp_gguf.assets.cache import ensure_artifact, sha256_file
from sfmp_gguf.assets.teacher import teacher

ARTIFACT = "gemma3-variant"
VERSION = "gemma3-variant-3"  # bump when the recipe below changes
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json")
# Teacher norm -> the Gemma norm that plays its part (llama's post_attention_layernorm is the pre-FFN norm).
RENAMED_NORMS = {"post_attention_layernorm": "pre_feedforward_layernorm"}


@dataclass(frozen=True)
class Variant:
    hf_dir: Path


def _config(base: dict) -> dict:
    head_dim = base["hidden_size"] // base["num_attention_heads"]
    return {
        "architectures": ["Gemma3ForCausalLM"], "model_type": "gemma3_text",
        "vocab_size": base["vocab_size"], "hidden_size": base["hidden_size"],
        "intermediate_size": base["intermediate_size"], "num_hidden_layers": base["num_hidden_layers"],
        "num_attention_heads": base["num_attention_heads"], "num_key_value_heads": base["num_key_value_heads"],
        "head_dim": head_dim, "query_pre_attn_scalar": head_dim, "hidden_activation": "gelu_pytorch_tanh",
        "rms_norm_eps": base["rms_norm_eps"], "max_position_embeddings": base["max_position_embeddings"],
        "sliding_window": 512, "rope_theta": base.get("rope_theta", 10000.0), "rope_local_base_freq": 10000.0,
        "tie_word_embeddings": True, "bos_token_id": base.get("bos_token_id"),
        "eos_token_id": base.get("eos_token_id"), "pad_token_id": base.get("pad_token_id"),
        "torch_dtype": "float32",
    }


MEASURE_CHARS, MEASURE_TOKENS = 3000, 256
# teacher module -> the Gemma norm whose gain takes its output rms
MEASURED = {"self_attn.q_proj": "self_attn.q_norm", "self_attn.k_proj": "self_attn.k_norm",
            "self_attn.o_proj": "post_attention_layernorm", "mlp.down_proj": "post_feedforward_layernorm"}


def _teacher_rms(source: Path, text: str) -> dict[str, float]:
    """Layer-qualified Gemma norm name -> the rms of the teacher output it stands for."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(source, dtype=torch.float32)
    ids = AutoTokenizer.from_pretrained(source)(text, return_tensors="pt").input_ids[:, :MEASURE_TOKENS]
    rms: dict[str, float] = {}
    for i, layer in enumerate(model.model.layers):
        for module_name, norm in MEASURED.items():
            def keep(mod, inputs, output, key=f"model.layers.{i}.{norm}.weight"):
                # the typical token's: a few tokens carry huge activations that a norm would give every token
                rms[key] = float(output.pow(2).mean(dim=-1).sqrt().median())
            layer.get_submodule(module_name).register_forward_hook(keep)
    with torch.no_grad():
        model(ids)
    return rms


def _build(folder: Path, source: Path, text: str) -> None:
    from safetensors.numpy import load_file, save_file

    base = json.loads((source / "config.json").read_text())
    config = _config(base)
    (folder / "config.json").write_text(json.dumps(config, indent=1))
    for name in TOKENIZER_FILES:
        shutil.copy(source / name, folder / name)
    tensors = {}
    for name, value in load_file(str(source / "model.safetensors")).items():
        if name.endswith("norm.weight"):
            for old, new in RENAMED_NORMS.items():
                name = name.replace(f".{old}.", f".{new}.")
            value = value - 1.0  # Gemma's RMSNorm scales by (1 + w)
        tensors[name] = value.astype(np.float32)
    hidden, head_dim = config["hidden_size"], config["head_dim"]
    for name, rms in _teacher_rms(source, text).items():
        width, gain = (head_dim, rms) if "self_attn" in name else (hidden, rms * np.sqrt(hidden))
        tensors[name] = np.full(width, gain - 1.0, dtype=np.float32)
    save_file(tensors, str(folder / "model.safetensors"), metadata={"format": "pt"})


def gemma_variant() -> Variant:
    """Build (once, cached) and return the Gemma 3 variant of the demo teacher."""
    source = teacher().hf_dir
    text = austen_texts().calib_text.read_text(encoding="utf-8")[:MEASURE_CHARS]
    recipe = {"teacher_sha256": sha256_file(source / "model.safetensors"), "version": VERSION}
    folder = ensure_artifact(ARTIFACT, recipe, lambda tmp: _build(tmp, source, text))
    return Variant(hf_dir=folder)
