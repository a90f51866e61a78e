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


def fisher_importance(source: ModelSource, text: Path, shapes: dict[str, tuple[int, int]], threads: int,
                      samples: int = SAMPLES, ctx: int = CTX, progress=iter) -> dict[str, np.ndarray]:
    """GGUF tensor name -> per-weight importance (rows, row length) for every tensor in ``shapes``."""
    if source.hf_dir is None or source.to_gguf is None:
        raise InputError(f"{source.path}: --sensitivity fisher needs a Hugging Face folder (it runs the model in torch)")
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
    params = {name: p for name, p in model.named_parameters() if p.ndim == 2}
    sums = {name: torch.zeros_like(p) for name, p in params.items()}
    for start in progress(starts):
        window = ids[start:start + ctx][None]
        model.zero_grad(set_to_none=True)
        model(window, labels=window).loss.backward()
        for name, p in params.items():
            if p.grad is not None:
                sums[name] += p.grad.detach() ** 2
    out: dict[str, np.ndarray] = {}
    for name, total in sums.items():
        for gguf_name, values in source.to_gguf(name, (total / len(starts)).detach()):
            if gguf_name in shapes and values.shape == shapes[gguf_name]:
                out[gguf_name] = values
    missing = sorted(set(shapes) - set(out))
    if missing:
        raise InputError(f"{source.hf_dir}: no Fisher information for {missing[0]} (and {len(missing) - 1} more)")
    return out
