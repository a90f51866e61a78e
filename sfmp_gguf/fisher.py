"""Fisher sensitivity, SFMP's own signal: squared gradients of the language-model loss on calibration
text, accumulated per weight with torch.

The diagonal Fisher F_i = E[g_i^2] weights each weight's squared error by how much it moves the
loss, across tensors as well as within them (an imatrix only sees a layer's own input). It needs the
Hugging Face folder (the model runs in transformers, on the CPU, in float32) and memory for one
float32 copy of the weights plus their gradients.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from sfmp_gguf.errors import InputError
from sfmp_gguf.model_source import ModelSource

CTX = 512
SAMPLES = 16


def _calibration(source: ModelSource, text: Path, samples: int, ctx: int, threads: int):
    """The model in float32 eval mode, its token ids and the evenly spaced window starts."""
    if source.hf_dir is None or source.to_gguf is None:
        raise InputError(f"{source.path}: this sensitivity needs a Hugging Face folder (it runs the model in torch)")
    try:
        words = text.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as err:
        raise InputError(f"{text}: cannot read calibration text ({err})") from None
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch.set_num_threads(threads)
    torch.manual_seed(0)
    tokenizer = AutoTokenizer.from_pretrained(source.hf_dir)
    model = AutoModelForCausalLM.from_pretrained(source.hf_dir, dtype=torch.float32)
    model.eval()
    ids = tokenizer(words, return_tensors="pt").input_ids[0]
    n_windows = len(ids) // ctx
    if n_windows < 1:
        raise InputError(f"{text}: calibration text too short ({len(ids)} tokens, need {ctx})")
    # evenly spaced windows, so a short budget still sees the whole text
    starts = np.linspace(0, (n_windows - 1) * ctx, min(samples, n_windows)).astype(int)
    return model, ids, starts


def _to_gguf(source: ModelSource, per_param: dict, shapes: dict[str, tuple[int, int]], what: str) -> dict[str, np.ndarray]:
    out: dict[str, np.ndarray] = {}
    for name, total in per_param.items():
        for gguf_name, values in source.to_gguf(name, total):
            if gguf_name in shapes and values.shape == shapes[gguf_name]:
                out[gguf_name] = values
    missing = sorted(set(shapes) - set(out))
    if missing:
        raise InputError(f"{source.hf_dir}: no {what} for {missing[0]} (and {len(missing) - 1} more)")
    return out


def output_gradient_energy(source: ModelSource, text: Path, shapes: dict[str, tuple[int, int]], threads: int,
                           samples: int = SAMPLES, ctx: int = CTX, progress=iter) -> dict[str, np.ndarray]:
    """GGUF tensor name -> (rows,) mean squared loss gradient of each output of the layer, E[delta_i^2].

    With the imatrix's per-column E[x_j^2] this is the factored diagonal Fisher E[delta_i^2] E[x_j^2]:
    a per-row scale that puts a layer's output error in loss units. Only activations carry gradients,
    so memory is one float32 model plus one window's activations."""
    import torch

    model, ids, starts = _calibration(source, text, samples, ctx, threads)
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
    for start in progress(starts):
        window = ids[start:start + ctx][None]
        hidden = embed(window).detach().requires_grad_(True)
        model(inputs_embeds=hidden, labels=window).loss.backward()
        n_tokens += window.numel()
    for hook in hooks:
        hook.remove()
    per_param = {name: (total / n_tokens)[:, None].expand(weights[name].shape).contiguous()
                 for name, total in sums.items()}
    return {name: values[:, 0].copy() for name, values in
            _to_gguf(source, per_param, shapes, "output gradient").items()}


def fisher_importance(source: ModelSource, text: Path, shapes: dict[str, tuple[int, int]], threads: int,
                      samples: int = SAMPLES, ctx: int = CTX, progress=iter) -> dict[str, np.ndarray]:
    """GGUF tensor name -> per-weight importance (rows, row length) for every tensor in ``shapes``."""
    import torch

    model, ids, starts = _calibration(source, text, samples, ctx, threads)
    params = {name: p for name, p in model.named_parameters() if p.ndim == 2}
    sums = {name: torch.zeros_like(p) for name, p in params.items()}
    for start in progress(starts):
        window = ids[start:start + ctx][None]
        model.zero_grad(set_to_none=True)
        model(window, labels=window).loss.backward()
        for name, p in params.items():
            if p.grad is not None:
                sums[name] += p.grad.detach() ** 2
    return _to_gguf(source, {name: (total / len(starts)).detach() for name, total in sums.items()}, shapes,
                    "Fisher information")
