"""Build (or verify from the cache) every demo and test asset, and print where they are."""

from sfmp_gguf.assets.austen import austen_texts
from sfmp_gguf.assets.teacher import teacher

if __name__ == "__main__":
    texts = austen_texts()
    model = teacher()
    print(f"teacher GGUF: {model.gguf_path}")
    print(f"teacher HF:   {model.hf_dir}")
    print(f"eval text:    {texts.eval_text}")
    print(f"calib text:   {texts.calib_text}")
