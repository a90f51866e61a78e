"""Model input: a Hugging Face folder or an F32/F16/BF16 GGUF, as GGUF metadata plus lazily loaded tensors.

A Hugging Face folder goes through the pinned llama.cpp's own converter classes (``conversion``
next to ``convert_hf_to_gguf.py``): they map the architecture, the metadata and the tokenizer, and
hand out tensors lazily, so nothing is written to disk and one tensor at a time is in memory. We
never rewrite that mapping. The converter needs its own ``gguf-py``, which is the same package as
the installed ``gguf`` at a newer commit, so the CLI makes sure that copy is the one imported
(``use_pinned_gguf_py``; ``gguf_package`` tells why and when).
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np

from sfmp_gguf import gguf_package
from sfmp_gguf.errors import InputError


def use_pinned_gguf_py() -> None:
    """Make ``import gguf`` load the pinned tree's gguf-py; call before anything imports gguf. The
    tree must be on disk (the build fetches it): this never downloads."""
    gguf_package.require_pinned()


@dataclass(frozen=True)
class SourceTensor:
    name: str
    shape: tuple[int, ...]  # numpy order: (rows, row length) for a matrix
    read: Callable[[], np.ndarray]  # float32 values, read on demand
    origin: Path
    stored: str = "F32"  # the float type a GGUF input holds it in: F32, F16 or BF16

    def load(self) -> np.ndarray:
        """The values; a damaged file (truncated, lying offsets) gives an InputError naming it."""
        try:
            data = self.read()
        except InputError:
            raise
        except Exception as err:  # safetensors, torch, numpy and mmap each raise their own
            detail = str(err).splitlines()[0] if str(err) else type(err).__name__
            raise InputError(f"{self.origin}: cannot read tensor {self.name}: {detail}") from None
        if data.size != self.n_elements:
            raise InputError(f"{self.origin}: tensor {self.name} holds {data.size} values, expected {self.n_elements}")
        return data.reshape(self.shape)

    @property
    def n_elements(self) -> int:
        return int(np.prod(self.shape))


@dataclass(frozen=True)
class ModelSource:
    path: Path
    arch: str
    metadata: dict[str, Any]  # key -> gguf.GGUFValue, ready for GGUFWriter.kv_data
    tensors: tuple[SourceTensor, ...]
    hf_dir: Path | None  # the Hugging Face folder, when the input was one (fisher needs it)
    # For a Hugging Face input: an HF tensor (name, torch data) -> its GGUF tensors, through the
    # converter's own renaming and reshaping (e.g. the q/k row permutation of llama models).
    to_gguf: Callable[[str, Any], list[tuple[str, np.ndarray]]] | None = None


def open_model(path: Path) -> ModelSource:
    """The model at ``path``; InputError (one line, naming the file) on anything unusable."""
    if not path.exists():
        raise InputError(f"{path}: no such file or folder")
    if path.is_dir():
        return _open_hf(path)
    if path.suffix != ".gguf":
        raise InputError(f"{path}: not a Hugging Face folder or a .gguf file")
    return _open_gguf(path)


# ---- Hugging Face folder ------------------------------------------------------------------------

def _check_hf_folder(model_dir: Path) -> dict[str, Any]:
    config = model_dir / "config.json"
    try:
        hparams = json.loads(config.read_text())
    except FileNotFoundError:
        raise InputError(f"{model_dir}: no config.json (not a Hugging Face model folder)") from None
    except PermissionError:
        raise InputError(f"{config}: not readable") from None
    except (OSError, ValueError) as err:
        raise InputError(f"{config}: unreadable config ({err})") from None
    if not any(model_dir.glob("*.safetensors")):
        raise InputError(f"{model_dir}: no .safetensors files")
    return hparams


def _open_hf(model_dir: Path) -> ModelSource:
    _check_hf_folder(model_dir)
    gguf_package.select()
    import gguf
    try:
        import torch
    except ImportError as err:
        raise InputError(f"{model_dir}: reading a Hugging Face folder needs torch ({err}); "
                         f"convert it to an F16 GGUF elsewhere, or install torch") from None
    from conversion import ModelBase, ModelType, get_model_architecture, get_model_class

    logging.getLogger().setLevel(logging.ERROR)  # the converter logs every tensor and its guesses
    try:
        hparams = ModelBase.load_hparams(model_dir, False)
        arch = get_model_architecture(hparams, ModelType.TEXT)
    except (ValueError, KeyError) as err:
        raise InputError(f"{model_dir}: {err}") from None
    try:
        model_class = get_model_class(arch)
    except NotImplementedError:
        raise InputError(f"{model_dir}: architecture {arch} is not supported by the pinned llama.cpp converter") from None
    try:
        with torch.inference_mode():
            model = model_class(model_dir, gguf.LlamaFileType.ALL_F32, model_dir / "unused.gguf", eager=False)
            model.prepare_tensors()
            model.prepare_metadata(vocab_only=False)
    except InputError:
        raise
    except Exception as err:  # the converter raises anything from safetensors, tokenizers, torch
        raise InputError(f"{model_dir}: the pinned converter failed: {type(err).__name__}: {err}".splitlines()[0]) from None

    writer = model.gguf_writer
    tensors = []
    for shard in writer.tensors:
        for name, info in shard.items():
            lazy = info.tensor
            tensors.append(SourceTensor(name, tuple(int(n) for n in info.shape),
                                        lambda lazy=lazy: _eager_f32(lazy), model_dir))
    metadata = dict(writer.kv_data[0])

    def to_gguf(name: str, data: Any) -> list[tuple[str, np.ndarray]]:
        # the block id as the converter's prepare_tensors finds it: the first number in the name
        bid = next((int(part) for part in name.split(".") if part.isdecimal()), None)
        return [(new_name, np.asarray(t.numpy(), dtype=np.float32)) for new_name, t in model.modify_tensors(data, name, bid)]

    return ModelSource(model_dir, writer.arch, metadata, tuple(tensors), model_dir, to_gguf)


def _eager_f32(lazy: Any) -> np.ndarray:
    return np.asarray(_evaluate(lazy), dtype=np.float32)


def _evaluate(lazy: Any) -> Any:
    """The value of a lazy tensor, computed afresh. gguf's own ``to_eager`` keeps every result on the
    lazy objects, which the model holds, so the whole model would stay in memory once read."""
    from gguf.lazy import LazyBase

    def value(node: LazyBase) -> Any:
        if node._func is None:
            return node._data
        return node._func(*LazyBase._recurse_apply(node._args, value), **node._kwargs)

    return LazyBase._recurse_apply(lazy, value)


# ---- GGUF -----------------------------------------------------------------------------------------

_FLOAT_TYPES = ("F32", "F16", "BF16")


def _open_gguf(path: Path) -> ModelSource:
    gguf_package.select()
    import gguf

    try:
        reader = gguf.GGUFReader(path)
    except PermissionError:
        raise InputError(f"{path}: not readable") from None
    except (OSError, ValueError, IndexError) as err:
        raise InputError(f"{path}: not a valid GGUF file ({err})") from None
    arch_field = reader.fields.get("general.architecture")
    if arch_field is None:
        raise InputError(f"{path}: no general.architecture (not a model GGUF)")
    metadata = {}
    for key, field in reader.fields.items():
        if key.startswith("GGUF.") or key == "general.architecture":
            continue  # written by GGUFWriter itself
        sub_type = field.types[-1] if field.types[0] == gguf.GGUFValueType.ARRAY else None
        metadata[key] = gguf.GGUFValue(field.contents(), field.types[0], sub_type)
    tensors = []
    for t in reader.tensors:
        if t.tensor_type.name not in _FLOAT_TYPES:
            raise InputError(f"{path}: tensor {t.name} is {t.tensor_type.name}; the input must be F32, F16 or BF16")
        shape = tuple(int(n) for n in reversed(t.shape.tolist()))
        tensors.append(SourceTensor(t.name, shape, lambda t=t: _gguf_f32(path, t), path, t.tensor_type.name))
    return ModelSource(path, str(arch_field.contents()), metadata, tuple(tensors), None)


def _gguf_f32(path: Path, tensor: Any) -> np.ndarray:
    """A tensor's values, read into memory of our own: values read through the reader's map of the
    whole file would stay resident, so memory would grow with the model."""
    import gguf

    raw = np.fromfile(path, dtype=np.uint8, count=int(tensor.n_bytes), offset=int(tensor.data_offset))
    if tensor.tensor_type == gguf.GGMLQuantizationType.F32:
        return raw.view(np.float32)
    if tensor.tensor_type == gguf.GGMLQuantizationType.F16:
        return raw.view(np.float16).astype(np.float32)
    return gguf.quants.dequantize(raw, tensor.tensor_type).astype(np.float32).ravel()
