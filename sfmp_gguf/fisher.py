"""Fisher sensitivity, SFMP's own signal: squared gradients of the language-model loss on calibration
text, accumulated per weight with torch.

The diagonal Fisher F_i = E[g_i^2] weights each weight's squared error by how much it moves the
loss, across tensors as well as within them (an imatrix only sees a layer's own input).

``streamed_fisher`` holds one decoder block at a time. It runs the model's own forward (transformers'
classes, so every family it provides works) with each decoder block replaced by a stand-in: one
pass records what the model hands each block (masks, rotary tables) and the embedding output;
then each block in turn, loaded alone from the checkpoint, maps the saved inputs of every window
to the next block's inputs. Backward runs in reverse from the loss: the output head (in row
chunks) gives the gradient at the last block's output, and each block, reloaded, recomputes its
forward from its saved input and passes the gradient down. The embedding, in row chunks too,
comes last. Hidden states, gradients and the per-weight sums live in files in a scratch folder,
never memory-mapped, so the resident memory is about one block's weights, gradients and sums.

``whole_model_fisher`` runs the whole model at once; it is the specification the streamed one is
tested against, and the benchmark's comparison.
"""

from __future__ import annotations

import copy
import errno
import functools
import json
import os
import shutil
import struct
import tempfile
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator

import numpy as np

from sfmp_gguf.errors import InputError, is_full_disk
from sfmp_gguf.model_source import ModelSource

# Intel MKL, torch's BLAS on x86, splits some products across threads by the thread count on AVX-512
# CPUs, so Fisher, and with it the file, changed with --threads (a Sapphire Rapids VM; not an AMD
# EPYC). Strict conditional numerical reproducibility makes its GEMMs independent of the thread
# count. MKL reads it when it first runs, after this import; a value the user set is kept.
os.environ.setdefault("MKL_CBWR", "AUTO,STRICT")

CTX = 512
SAMPLES = 16
CHUNK_BYTES = 32 << 20  # rows of the embedding and the output head read at once


def read_text(text: Path) -> str:
    try:
        return text.read_text(encoding="utf-8")
    except UnicodeDecodeError as err:
        raise InputError(f"{text}: calibration text is not UTF-8 (byte {err.start})") from None
    except OSError as err:
        raise InputError(f"{text}: cannot read calibration text ({err.strerror or err})") from None


def calibration_windows(hf_dir: Path, text: Path, samples: int, ctx: int) -> list[Any]:
    """Evenly spaced windows of ``ctx`` token ids (torch, shape (1, ctx)) over the whole text."""
    from transformers import AutoTokenizer

    words = read_text(text)
    ids = AutoTokenizer.from_pretrained(hf_dir)(words, return_tensors="pt", verbose=False).input_ids[0]
    n_windows = len(ids) // ctx
    if n_windows < 1:
        raise InputError(f"{text}: calibration text too short ({len(ids)} tokens, need {ctx})")
    starts = np.linspace(0, (n_windows - 1) * ctx, min(samples, n_windows)).astype(int)
    return [ids[s:s + ctx][None] for s in starts]


def _require_hf(source: ModelSource) -> Path:
    if source.hf_dir is None or source.to_gguf is None:
        raise InputError(f"{source.path}: Fisher needs a Hugging Face folder or a GGUF that transformers can "
                         f"load; use --imatrix FILE or --calib TEXT with --sensitivity imatrix")
    return source.hf_dir


def unavailable(source: ModelSource) -> str | None:
    """Why Fisher cannot run on ``source`` here, or None when it can."""
    try:
        import torch  # noqa: F401
        import transformers  # noqa: F401
    except ImportError as err:
        return f"torch cannot run here ({err})"
    if source.hf_dir is None:
        from transformers.modeling_gguf_pytorch_utils import GGUF_SUPPORTED_ARCHITECTURES

        if source.arch not in GGUF_SUPPORTED_ARCHITECTURES:
            return f"transformers cannot load a {source.arch} GGUF"
    return None


def hf_view(source: ModelSource, folder: Path) -> ModelSource:
    """A GGUF input as a Hugging Face folder under ``folder``: transformers' config and tokenizer
    read from the GGUF, and each tensor in its own safetensors file under transformers' name (read,
    renamed and un-permuted one at a time, in the GGUF's float type). ``to_gguf`` maps a per-weight
    array back: the renaming is inverted, and the un-permutation by running it on indices."""
    hf_dir = folder / "hf"
    hf_dir.mkdir()
    with disk_errors(folder):
        return _hf_view(source, hf_dir)


def _hf_view(source: ModelSource, hf_dir: Path) -> ModelSource:
    import torch
    from safetensors.torch import save_file
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer
    from transformers.modeling_gguf_pytorch_utils import (TENSOR_PROCESSORS, TensorProcessor,
                                                          get_gguf_hf_weights_map, load_gguf_checkpoint)

    try:
        config = AutoConfig.from_pretrained(source.path.parent, gguf_file=source.path.name)
        AutoTokenizer.from_pretrained(source.path.parent, gguf_file=source.path.name).save_pretrained(hf_dir)
        parsed = load_gguf_checkpoint(source.path)
    except (ValueError, KeyError, NotImplementedError, OSError) as err:
        raise InputError(f"{source.path}: transformers cannot load this GGUF ({str(err).splitlines()[0]}); "
                         f"use --imatrix FILE") from None
    config.save_pretrained(hf_dir)
    with torch.device("meta"):
        skeleton = AutoModelForCausalLM.from_config(config)
    processor = TENSOR_PROCESSORS.get(source.arch, TensorProcessor)(config=parsed["config"])
    hf_name_of = get_gguf_hf_weights_map(skeleton, processor)
    shapes = {name: tuple(p.shape) for name, p in skeleton.state_dict().items()}
    gguf_of: dict[str, tuple[str, tuple[int, ...]]] = {}
    weight_map = {}
    for k, tensor in enumerate(source.tensors):
        kept = processor.process(weights=tensor.load(), name=tensor.name, tensor_key_mapping=hf_name_of,
                                 parsed_parameters=parsed)
        name = hf_name_of.get(kept.name)
        if name is None or kept.weights is None:
            continue
        if name not in shapes or tuple(kept.weights.shape) != shapes[name]:
            raise InputError(f"{source.path}: tensor {tensor.name} is {tensor.shape}, which the config does not fit")
        file = f"{k:05d}.safetensors"
        stored = {"F16": torch.float16, "BF16": torch.bfloat16}.get(tensor.stored, torch.float32)
        save_file({name: torch.from_numpy(np.array(kept.weights)).to(stored)}, str(hf_dir / file))  # exact
        weight_map[name] = file
        gguf_of[name] = (tensor.name, tensor.shape)
    (hf_dir / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))

    def to_gguf(name: str, data: Any) -> list[tuple[str, np.ndarray]]:
        if name not in gguf_of:
            return []
        gguf_name, shape = gguf_of[name]
        order = processor.process(weights=np.arange(int(np.prod(shape))).reshape(shape), name=gguf_name,
                                  tensor_key_mapping=hf_name_of, parsed_parameters=parsed).weights
        values = np.empty(int(np.prod(shape)), dtype=np.float32)
        values[order.ravel()] = np.asarray(data, dtype=np.float32).ravel()
        return [(gguf_name, values.reshape(shape))]

    return replace(source, hf_dir=hf_dir, to_gguf=to_gguf)


def _whole_model(hf_dir: Path, threads: int):
    import torch
    from transformers import AutoModelForCausalLM

    torch.set_num_threads(threads)
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(hf_dir, dtype=torch.float32)
    model.eval()
    return model


def _to_gguf(source: ModelSource, per_param: Iterable[tuple[str, Any]], shapes: dict[str, tuple[int, int]],
             what: str, keep: Callable[[str, np.ndarray], None]) -> None:
    """Every HF tensor through the converter's renaming; ``keep`` gets each GGUF tensor in ``shapes``."""
    found = set()
    for name, total in per_param:
        for gguf_name, values in source.to_gguf(name, total):
            if gguf_name in shapes and values.shape == shapes[gguf_name]:
                keep(gguf_name, values)
                found.add(gguf_name)
    missing = sorted(set(shapes) - found)
    if missing:
        raise InputError(f"{source.hf_dir}: no {what} for {missing[0]} (and {len(missing) - 1} more)")


def _in_memory(source, per_param, shapes, what) -> dict[str, np.ndarray]:
    out: dict[str, np.ndarray] = {}
    _to_gguf(source, per_param, shapes, what, out.__setitem__)
    return out


def output_gradient_energy(source: ModelSource, text: Path, shapes: dict[str, tuple[int, int]], threads: int,
                           samples: int = SAMPLES, ctx: int = CTX, progress=iter) -> dict[str, np.ndarray]:
    """GGUF tensor name -> (rows,) mean squared loss gradient of each output of the layer, E[delta_i^2].

    With the imatrix's per-column E[x_j^2] this is the factored diagonal Fisher E[delta_i^2] E[x_j^2]:
    a per-row scale that puts a layer's output error in loss units. Only activations carry gradients,
    so memory is one float32 model plus one window's activations."""
    import torch

    hf_dir = _require_hf(source)
    windows = calibration_windows(hf_dir, text, samples, ctx)
    model = _whole_model(hf_dir, threads)
    for p in model.parameters():
        p.requires_grad_(False)
    weights = {name: p for name, p in model.named_parameters() if p.ndim == 2}
    name_of = {id(p): name for name, p in weights.items()}  # a tied output head finds the embedding's name
    sums: dict[str, torch.Tensor] = {}
    hooks = []
    for module in model.modules():
        if isinstance(module, torch.nn.Linear) and id(module.weight) in name_of:
            def keep(mod, grad_in, grad_out, key=name_of[id(module.weight)]):
                g = grad_out[0].detach().reshape(-1, grad_out[0].shape[-1])
                sums[key] = sums.get(key, 0) + (g * g).sum(dim=0)
            hooks.append(module.register_full_backward_hook(keep))
    embed = model.get_input_embeddings()
    n_tokens = 0
    for window in progress(windows):
        hidden = embed(window).detach().requires_grad_(True)
        model(inputs_embeds=hidden, labels=window).loss.backward()
        n_tokens += window.numel()
    for hook in hooks:
        hook.remove()
    per_param = ((name, (total / n_tokens)[:, None].expand(weights[name].shape).contiguous())
                 for name, total in sums.items())
    return {name: values[:, 0].copy() for name, values in
            _in_memory(source, per_param, shapes, "output gradient").items()}


def whole_model_sums(hf_dir: Path, windows: list[Any], threads: int, progress=iter) -> Iterator[tuple[str, Any]]:
    """(checkpoint tensor name, per-weight Fisher) of every matrix, the whole model in memory at once."""
    import torch

    from transformers.core_model_loading import revert_weight_conversion

    model = _whole_model(hf_dir, threads)
    params = {name: p for name, p in model.named_parameters() if p.ndim >= 2}
    sums = {name: torch.zeros_like(p) for name, p in params.items()}
    for window in progress(windows):
        model.zero_grad(set_to_none=True)
        model(window, labels=window).loss.backward()
        for name, p in params.items():
            if p.grad is not None:
                sums[name] += p.grad.detach() ** 2
    for name, total in sums.items():  # under the checkpoint's names, as the converter reads them
        yield from revert_weight_conversion(model, {name: (total / len(windows)).detach()}).items()


def whole_model_fisher(source: ModelSource, text: Path, shapes: dict[str, tuple[int, int]], threads: int,
                       samples: int = SAMPLES, ctx: int = CTX, progress=iter) -> dict[str, np.ndarray]:
    """GGUF tensor name -> per-weight Fisher (rows, row length); the specification of streamed_fisher."""
    hf_dir = _require_hf(source)
    windows = calibration_windows(hf_dir, text, samples, ctx)
    return _in_memory(source, whole_model_sums(hf_dir, windows, threads, progress), shapes, "Fisher information")


# ---- streamed ---------------------------------------------------------------------------------------

class Records:
    """Fixed-size float32 records in one file, read and written with pread/pwrite (no mmap, so they
    never count towards resident memory)."""

    def __init__(self, path: Path, shape: tuple[int, ...]):
        self.path, self.shape = path, shape
        self.size = int(np.prod(shape)) * 4
        self.fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o600)

    def write(self, index: int, values: np.ndarray, row: int = 0) -> None:
        data = np.ascontiguousarray(values, dtype=np.float32).tobytes()
        offset = index * self.size + row * self.size // self.shape[0]
        if os.pwrite(self.fd, data, offset) != len(data):
            raise OSError(errno.ENOSPC, "No space left on device (short write)", str(self.path))

    def read(self, index: int, rows: tuple[int, int] | None = None) -> np.ndarray:
        start, stop = rows or (0, self.shape[0])
        row_bytes = self.size // self.shape[0]
        out = np.empty((stop - start, *self.shape[1:]), dtype=np.float32)  # read straight into it: no copy
        if os.preadv(self.fd, [memoryview(out).cast("B")], index * self.size + start * row_bytes) != out.nbytes:
            raise OSError(errno.EIO, "short read", str(self.path))
        return out

    def close(self) -> None:
        os.close(self.fd)
        self.path.unlink(missing_ok=True)


class FisherStore:
    """Per-weight Fisher of every GGUF tensor, one file each in a scratch folder; read one at a time.
    Removed by ``close`` (the converter calls it on every exit path)."""

    def __init__(self, folder: Path):
        self.folder = folder
        self.names: list[str] = []

    def put(self, name: str, values: np.ndarray) -> None:
        np.save(self.folder / f"{len(self.names)}.npy", np.ascontiguousarray(values, dtype=np.float32))
        self.names.append(name)

    def __getitem__(self, name: str) -> np.ndarray:
        return np.load(self.folder / f"{self.names.index(name)}.npy")

    def __contains__(self, name: str) -> bool:
        return name in self.names

    def close(self) -> None:
        shutil.rmtree(self.folder, ignore_errors=True)


class _Checkpoint:
    """The safetensors tensors of a Hugging Face folder, read one tensor (or row range) at a time with
    plain file reads: safetensors' own reader maps the files, and every page it touches would then
    count towards resident memory until the end, the whole model by the last block."""

    DTYPES = {"F32": "float32", "F16": "float16", "BF16": "bfloat16"}

    def __init__(self, hf_dir: Path):
        index = hf_dir / "model.safetensors.index.json"
        files = sorted({hf_dir / f for f in json.loads(index.read_text())["weight_map"].values()}) \
            if index.is_file() else sorted(hf_dir.glob("*.safetensors"))
        self.hf_dir = hf_dir
        self.entries: dict[str, tuple[Path, str, tuple[int, ...], int]] = {}
        for path in files:
            try:
                with open(path, "rb") as f:
                    size = struct.unpack("<Q", f.read(8))[0]
                    header = json.loads(f.read(size))
                for key, info in header.items():
                    if key != "__metadata__":
                        self.entries[key] = (path, info["dtype"], tuple(info["shape"]), 8 + size + info["data_offsets"][0])
            except (OSError, ValueError, KeyError, struct.error) as err:
                raise InputError(f"{path}: not a readable safetensors file ({err})") from None

    def check(self, key: str, shape: tuple[int, ...]) -> tuple[Path, str, tuple[int, ...], int]:
        entry = self.entries.get(key)
        if entry is None:
            raise InputError(f"{self.hf_dir}: no tensor {key}, which its config.json implies")
        if entry[2] != tuple(shape):
            raise InputError(f"{self.hf_dir}: tensor {key} is {entry[2]}, but its config.json implies {tuple(shape)}")
        if entry[1] not in self.DTYPES:
            raise InputError(f"{entry[0]}: tensor {key} is {entry[1]}; Fisher reads F32, F16 and BF16")
        return entry

    def get(self, key: str, shape: tuple[int, ...], rows: tuple[int, int] | None = None):
        import torch

        path, dtype, full, start = self.check(key, shape)
        torch_dtype = getattr(torch, self.DTYPES[dtype])
        row_bytes = int(np.prod(full[1:], dtype=np.int64)) * torch.empty(0, dtype=torch_dtype).element_size()
        first, stop = rows or (0, full[0])
        with open(path, "rb") as f:
            f.seek(start + first * row_bytes)
            data = bytearray(f.read((stop - first) * row_bytes))
        if len(data) != (stop - first) * row_bytes:
            raise InputError(f"{path}: tensor {key} is cut short")
        return torch.frombuffer(data, dtype=torch_dtype).reshape(stop - first, *full[1:]).to(torch.float32)


class _CheckpointNames:
    """Model parameters against checkpoint tensors, through transformers' own conversion mapping: a
    mixture-of-experts checkpoint holds one matrix per expert, which transformers fuses into one
    parameter per block when it loads (and splits again when it saves)."""

    def __init__(self, model: Any, ckpt: _Checkpoint):
        import torch
        from transformers.conversion_mapping import get_model_conversion_mapping
        from transformers.core_model_loading import (WeightConverter, WeightRenaming, rename_source_key,
                                                     revert_weight_conversion)

        self.model, self.ckpt, self._revert = model, ckpt, revert_weight_conversion
        transforms = get_model_conversion_mapping(model)
        renamings = [t for t in transforms if isinstance(t, WeightRenaming)]
        converters = [t for t in transforms if isinstance(t, WeightConverter)]
        self.converter_of = {pattern: c for c in converters for pattern in c.source_patterns}
        self.sources: dict[str, list[tuple[str, str | None]]] = {}  # parameter -> (checkpoint key, pattern)
        for key in ckpt.entries:
            target, pattern = rename_source_key(key, renamings, converters)
            self.sources.setdefault(target, []).append((key, pattern))
        # Every tensor the config implies, at its shape, now rather than blocks later.
        expected = {name: torch.empty(p.shape, device="meta") for name, p in model.named_parameters()}
        for key, meta in revert_weight_conversion(model, expected).items():
            ckpt.check(key, tuple(meta.shape))

    def key(self, name: str) -> str:
        """The checkpoint key of a parameter stored as it is (possibly renamed)."""
        sources = self.sources.get(name, [])
        if len(sources) != 1 or sources[0][1] is not None:
            raise InputError(f"{self.ckpt.hf_dir}: parameter {name} is not stored as one tensor")
        return sources[0][0]

    def load(self, name: str, shape: tuple[int, ...]):
        sources = self.sources.get(name)
        if sources is None:
            raise InputError(f"{self.ckpt.hf_dir}: no tensor for {name}, which its config.json implies")
        if sources[0][1] is None:
            return self.ckpt.get(self.key(name), shape)
        converter = copy.deepcopy(self.converter_of[sources[0][1]])
        for key, pattern in sources:
            converter.add_tensor(name, key, pattern, self.ckpt.get(key, self.ckpt.entries[key][2]))
        value = converter.convert(name, model=self.model, config=self.model.config)[name]
        value = value[0] if isinstance(value, list) else value
        if tuple(value.shape) != tuple(shape):
            raise InputError(f"{self.ckpt.hf_dir}: tensors for {name} make {tuple(value.shape)}, not {tuple(shape)}")
        return value

    def to_checkpoint(self, name: str, values: Any) -> Iterator[tuple[str, Any]]:
        """Per-weight values of a parameter under the checkpoint's names (a fused parameter split)."""
        yield from self._revert(self.model, {name: values}).items()


def _hidden_of(out):
    """A decoder block's output hidden states (older transformers return them in a tuple)."""
    return out[0] if isinstance(out, tuple) else out


@functools.lru_cache(maxsize=1)
def _libc():
    import ctypes
    import ctypes.util

    name = ctypes.util.find_library("c")
    return ctypes.CDLL(name) if name else None


def _trim_heap() -> None:
    """Give freed memory back to the system: a block's weights, gradients and sums are freed as a
    whole, but glibc keeps the pages for reuse, so each block would otherwise add to the peak."""
    libc = _libc()
    if libc is not None and hasattr(libc, "malloc_trim"):
        libc.malloc_trim(0)


class _Stop(Exception):
    """Ends the model's forward once the stand-in for block 0 has what it needs."""


def _stand_in_class():
    import torch

    class StandIn(torch.nn.Module):
        """Takes the place of decoder block ``index`` in the model's forward; ``run`` decides what it does."""

        def __init__(self, index: int, block: Any, run: Callable):
            super().__init__()
            self.index = index
            object.__setattr__(self, "block", block)  # not a submodule: its meta weights stay out of sight
            object.__setattr__(self, "run", run)

        def __getattr__(self, name: str):  # attributes the model's loop reads from its blocks
            try:
                return super().__getattr__(name)
            except AttributeError:
                return getattr(self.__dict__["block"], name)

        def forward(self, hidden_states, *args, **kwargs):
            return self.run(self.index, hidden_states, args, kwargs)

    return StandIn


def _skeleton(hf_dir: Path, threads: int):
    """The model on the meta device (no memory) with its small modules (norms, rotary tables) loaded."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    torch.set_num_threads(threads)
    try:
        config = AutoConfig.from_pretrained(hf_dir)
        with torch.device("meta"):
            model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    except (ValueError, KeyError) as err:
        raise InputError(f"{hf_dir}: transformers has no causal-LM blocks for this model "
                         f"({str(err).splitlines()[0]})") from None
    model.eval()
    return model


def _find_blocks(model) -> tuple[Any, str]:
    import torch

    decoder = model.get_decoder() if hasattr(model, "get_decoder") else None
    layers = getattr(decoder, "layers", None)
    if not isinstance(layers, torch.nn.ModuleList):
        raise InputError(f"{type(model).__name__}: no list of decoder blocks that the streamed Fisher can run")
    prefix = next(name for name, m in model.named_modules() if m is layers)
    return layers, prefix + "."


class _Streamed:
    def __init__(self, hf_dir: Path, windows: list[Any], scratch: Path, threads: int, progress: Callable):
        import torch

        self.torch = torch
        self.windows = windows
        self.scratch = scratch
        self.progress = progress
        self.ckpt = _Checkpoint(hf_dir)
        self.model = _skeleton(hf_dir, threads)
        self.layers, self.prefix = _find_blocks(self.model)
        self.embed = self.model.get_input_embeddings()
        head = self.model.get_output_embeddings()
        names = {id(m): n for n, m in self.model.named_modules()}
        self.embed_key = names[id(self.embed)] + ".weight"
        self.tied = head.weight is self.embed.weight
        self.head_key = self.embed_key if self.tied else names[id(head)] + ".weight"
        if not isinstance(head, torch.nn.Linear) or head.bias is not None:
            raise InputError(f"{hf_dir}: the output head is not a plain linear map; the streamed Fisher needs one")
        owner_name, _, attr = names[id(head)].rpartition(".")
        self.head_owner, self.head_attr = self.model.get_submodule(owner_name), attr
        self.vocab, self.hidden = head.weight.shape
        self.vocab_in = self.embed.weight.shape[0]
        self.names = _CheckpointNames(self.model, self.ckpt)
        self.embed_file_key = self.names.key(self.embed_key)
        self.head_file_key = self.names.key(self.head_key)
        self._load_small()
        stand_in = _stand_in_class()
        self.blocks = list(self.layers)
        for i, block in enumerate(self.blocks):
            self.layers[i] = stand_in(i, block, self._run)
        self.mode = "capture"
        self.kwargs: dict[int, dict] = {}
        self.grabbed = None
        self.inject = None
        self._head_whole = None

    # -- loading --
    def _load_small(self) -> None:
        """Load every weight outside the blocks, the embedding and the head; build meta buffers."""
        torch = self.torch
        skip = (self.prefix, self.embed_key, self.head_key)
        for name, param in list(self.model.named_parameters()):
            if name.startswith(self.prefix) or name in skip:
                continue
            owner_name, _, attr = name.rpartition(".")
            owner = self.model.get_submodule(owner_name)
            setattr(owner, attr, torch.nn.Parameter(self.names.load(name, param.shape), requires_grad=False))
        for name, module in self.model.named_modules():
            if name.startswith(self.prefix):
                continue
            if any(b.is_meta for b in module.buffers(recurse=False)):
                module.to_empty(device="cpu", recurse=False)
                self.model._init_weights(module)

    def _load_block(self, i: int):
        block = self.blocks[i]
        block.to_empty(device="cpu")
        for name, _ in block.named_buffers():  # computed, not stored (before the weights: init overwrites them)
            self.model._init_weights(block.get_submodule(name.rpartition(".")[0]))
        for name, param in block.named_parameters():
            param.data.copy_(self.names.load(f"{self.prefix}{i}.{name}", param.shape))
        return block

    def _free_block(self, i: int) -> None:
        self.blocks[i].zero_grad(set_to_none=True)
        self.blocks[i].to(device="meta")
        _trim_heap()

    # -- the stand-ins' behaviour --
    def _run(self, index: int, hidden, args, kwargs):
        if self.mode == "capture":
            if index == 0:
                self.grabbed = hidden
            self.kwargs.setdefault(index, dict(kwargs))
            return hidden
        if self.mode == "grab":
            self.grabbed = hidden
            raise _Stop
        if self.mode == "head" and index == len(self.blocks) - 1:
            return self.inject
        return hidden

    def _forward(self, **kwargs):
        try:
            return self.model(**kwargs, use_cache=False)  # a cache would keep every window's keys
        except _Stop:
            return None

    def _embedded(self, window, requires_grad: bool):
        """The embedding module's output for ``window``, with its weight swapped for the table of the
        windows' rows (a lookup only ever reads those)."""
        torch = self.torch
        sub_ids = torch.tensor([[self.token_rows[t] for t in window[0].tolist()]])
        weight = torch.nn.Parameter(self.token_table, requires_grad=requires_grad)
        pad = self.embed.padding_idx
        self.embed.weight = weight
        self.embed.padding_idx = self.token_rows.get(pad) if pad is not None else None
        try:
            return self.embed(sub_ids), weight
        finally:
            self.embed.padding_idx = pad

    def _row_chunks(self, n_rows: int) -> list[tuple[int, int]]:
        """Row ranges of a (n_rows, hidden) tensor, CHUNK_BYTES of float32 each."""
        step = max(1, CHUNK_BYTES // (self.hidden * 4))
        return [(a, min(a + step, n_rows)) for a in range(0, n_rows, step)]

    def head_chunks(self) -> Iterator[tuple[tuple[int, int], Any]]:
        """(row range, weight rows) of the output head; kept in memory when one chunk holds it."""
        shape = (self.vocab, self.hidden)
        chunks = self._row_chunks(self.vocab)
        if len(chunks) == 1:
            if self._head_whole is None:
                self._head_whole = self.ckpt.get(self.head_file_key, shape)
            yield chunks[0], self._head_whole
            return
        for rows in chunks:
            yield rows, self.ckpt.get(self.head_file_key, shape, rows)

    def _rows(self, key: str, n_rows: int, wanted: np.ndarray):
        """Rows ``wanted`` (sorted) of a (n_rows, hidden) checkpoint tensor, read in chunks."""
        torch = self.torch
        parts = []
        for a, b in self._row_chunks(n_rows):
            inside = wanted[(wanted >= a) & (wanted < b)]
            if inside.size:
                parts.append(self.ckpt.get(key, (n_rows, self.hidden), (a, b))[torch.from_numpy(inside - a)])
        return torch.cat(parts)

    # -- the passes --
    def run(self) -> dict[str, Records]:
        torch = self.torch
        n_w, ctx, n_blocks = len(self.windows), self.windows[0].shape[1], len(self.blocks)
        hidden = lambda i: Records(self.scratch / f"hidden-{i}.f32", (ctx, self.hidden))  # noqa: E731
        sums: dict[str, Records] = {}

        tokens = np.unique(np.concatenate([w[0].numpy() for w in self.windows]))
        self.token_rows = {int(t): k for k, t in enumerate(tokens)}
        self.token_table = self._rows(self.embed_file_key, self.vocab_in, tokens)
        states = [hidden(0)]
        head_stub = _HeadStub(self)
        setattr(self.head_owner, self.head_attr, head_stub)
        steps = self.progress(range(2 * n_blocks + 2))
        step = iter(steps)
        with torch.no_grad():
            for w, window in enumerate(self.windows):
                self.mode = "capture"
                embedded, _ = self._embedded(window, False)
                head_stub.mode = "skip"
                self._forward(inputs_embeds=embedded)
                states[0].write(w, self.grabbed[0])
            next(step, None)
            for i in range(n_blocks):
                block = self._load_block(i)
                states.append(hidden(i + 1))
                for w in range(n_w):
                    out = block(torch.from_numpy(states[i].read(w))[None], **self.kwargs[i])
                    states[i + 1].write(w, _hidden_of(out)[0])
                self._free_block(i)
                next(step, None)

        grads = Records(self.scratch / "grad-top.f32", (ctx, self.hidden))
        head_sums = sums.setdefault(self.head_key, Records(self.scratch / "sum-head.f32", (self.vocab, self.hidden)))
        os.ftruncate(head_sums.fd, head_sums.size)
        self.cross = Records(self.scratch / "head-at-window-rows.f32", (ctx, self.hidden)) if self.tied else None
        for w, window in enumerate(self.windows):
            self.inject = torch.from_numpy(states[n_blocks].read(w))[None].requires_grad_(True)
            self.mode = "head"
            head_stub.mode = "logits"
            self._forward(inputs_embeds=torch.zeros(1, ctx, self.hidden), labels=window).loss.backward()
            head_stub.backward(w, window, head_sums)
            grads.write(w, self.inject.grad[0])
        states.pop().close()
        _trim_heap()
        next(step, None)

        for i in reversed(range(n_blocks)):
            block = self._load_block(i)
            params = {name: p for name, p in block.named_parameters() if p.ndim >= 2}
            block_sums = {name: torch.zeros_like(p) for name, p in params.items()}
            below = Records(self.scratch / f"grad-{i}.f32", (ctx, self.hidden))
            for w in range(n_w):
                x = torch.from_numpy(states[i].read(w))[None].requires_grad_(True)
                block.zero_grad(set_to_none=True)
                out = block(x, **self.kwargs[i])
                torch.autograd.backward(_hidden_of(out),
                                        torch.from_numpy(grads.read(w))[None])
                for name, p in params.items():
                    block_sums[name] += p.grad ** 2
                below.write(w, x.grad[0])
            for name, total in block_sums.items():
                key = f"{self.prefix}{i}.{name}"
                sums[key] = Records(self.scratch / f"sum-{len(sums)}.f32", tuple(total.shape))
                sums[key].write(0, total.numpy())
            grads.close()
            grads = below
            if i > 0:
                states.pop().close()
            self._free_block(i)
            next(step, None)

        self._embedding_pass(states[0], grads, sums)
        states[0].close()
        grads.close()
        if self.cross is not None:
            self.cross.close()
        next(step, None)
        return sums

    def _embedding_pass(self, inputs: Records, grads: Records, sums: dict[str, Records]) -> None:
        torch = self.torch
        if self.embed_key not in sums:
            sums[self.embed_key] = Records(self.scratch / "sum-embed.f32", (self.vocab_in, self.hidden))
            os.ftruncate(sums[self.embed_key].fd, sums[self.embed_key].size)
        total = torch.zeros_like(self.token_table)
        for w, window in enumerate(self.windows):
            self.mode = "grab"
            embedded, weight = self._embedded(window, True)
            self._forward(inputs_embeds=embedded)
            torch.autograd.backward(self.grabbed, torch.from_numpy(grads.read(w))[None])
            g = weight.grad
            if self.cross is not None:  # a tied head's own gradient at this window's rows: (a+b)^2 = a^2 + 2ab + b^2
                rows = np.unique(window[0].numpy())
                at = torch.from_numpy(np.array([self.token_rows[int(t)] for t in rows]))
                head_part = torch.from_numpy(self.cross.read(w, (0, len(rows))))
                total[at] += 2 * head_part * g[at]
            total += g ** 2
        store = sums[self.embed_key]
        for k, token in enumerate(self.token_rows):
            store.write(0, store.read(0, (token, token + 1)) + total[k].numpy()[None], row=token)


class _HeadStub:
    """Takes the output head's place: logits from the head's weight in row chunks, no weight kept."""

    def __new__(cls, owner: _Streamed):
        import torch

        class HeadStub(torch.nn.Module):
            def __init__(self):
                super().__init__()
                object.__setattr__(self, "owner", owner)
                self.mode = "skip"

            def forward(self, x):
                o = self.owner
                if self.mode == "skip":
                    return torch.zeros(*x.shape[:-1], 1)
                self.x = x
                xd = x.detach()
                logits = torch.empty(*x.shape[:-1], o.vocab)
                for (a, b), weight in o.head_chunks():
                    logits[..., a:b] = xd @ weight.T
                self.logits = logits.requires_grad_(True)
                return self.logits

            def backward(self, w: int, window, head_sums: Records) -> None:
                o = self.owner
                g = self.logits.grad[0]  # (ctx, vocab): dloss/dlogits
                self.logits = None  # only its gradient is needed from here on
                xd = self.x.detach()[0]
                dx = torch.zeros_like(xd)
                for (a, b), weight in o.head_chunks():
                    dx += g[:, a:b] @ weight
                    head_sums.write(0, head_sums.read(0, (a, b)) + ((g[:, a:b].T @ xd) ** 2).numpy(), row=a)
                if o.cross is not None:
                    rows = np.unique(window[0].numpy())
                    o.cross.write(w, (g[:, torch.from_numpy(rows)].T @ xd).numpy())
                torch.autograd.backward(self.x, dx[None])

        return HeadStub()


def streamed_sums(hf_dir: Path, windows: list[Any], scratch: Path, threads: int,
                  progress=iter) -> Iterator[tuple[str, Any]]:
    """(checkpoint tensor name, per-weight Fisher) of every matrix, one decoder block in memory at a time;
    each tensor is read back from ``scratch`` as it is handed out."""
    import torch

    streamed = _Streamed(hf_dir, windows, scratch, threads, progress)
    for key, records in streamed.run().items():
        values = records.read(0)
        values /= len(windows)
        yield from streamed.names.to_checkpoint(key, torch.from_numpy(values))
        records.close()


def streamed_fisher(source: ModelSource, text: Path, shapes: dict[str, tuple[int, int]], threads: int,
                    scratch: Path | None = None, samples: int = SAMPLES, ctx: int = CTX,
                    progress=iter) -> FisherStore:
    """Per-weight Fisher of every tensor in ``shapes`` (GGUF names) into a FisherStore in a new folder
    under ``scratch``. The caller closes the store; on an error it is already gone."""
    hf_dir = _require_hf(source)
    windows = calibration_windows(hf_dir, text, samples, ctx)
    folder = Path(tempfile.mkdtemp(prefix=".sfmp-fisher-", dir=scratch))
    store = FisherStore(folder)
    try:
        with disk_errors(folder):
            _to_gguf(source, streamed_sums(hf_dir, windows, folder, threads, progress), shapes,
                     "Fisher information", store.put)
    except BaseException:
        store.close()
        raise
    return store


@contextmanager
def disk_errors(folder: Path) -> Iterator[None]:
    """A full disk (or file-size limit) while writing temporary files, as a one-line InputError."""
    try:
        yield
    except OSError as err:
        if is_full_disk(err):
            raise InputError(f"{folder}: no space left for temporary files ({err.strerror})") from None
        raise
