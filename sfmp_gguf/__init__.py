"""sfmp-gguf: fine-grained, search-free mixed-precision quantization for llama.cpp.

``import sfmp_gguf`` registers the SFMP types with gguf-py (``gguf_types``), so that
``gguf.GGUFReader`` reads SFMP files and ``gguf.quants.dequantize`` works on their tensors. The
package import itself stays light: it registers at once if ``gguf`` is already imported, else the
moment ``gguf`` is first imported, and not at all where gguf is not installed. So it imports neither
numpy nor gguf, and leaves the choice of gguf copy (``gguf_package``) to whoever imports gguf first.
"""

from __future__ import annotations

import importlib
import sys

__version__ = "0.1.0"


def _register_with_gguf() -> None:
    if "sfmp_gguf.gguf_types" in sys.modules:
        return  # imported, or being imported: it registers at the end of its import
    try:
        importlib.import_module("sfmp_gguf.gguf_types")
    except Exception as err:  # never break a program's own use of gguf
        import warnings

        warnings.warn(f"sfmp_gguf: the SFMP types are not registered with gguf: {err}", stacklevel=2)


class _RegisteringLoader:
    """Runs gguf's own loader, hands it back the module, then registers the SFMP types."""

    def __init__(self, loader) -> None:
        self.loader = loader

    def __getattr__(self, name: str):
        return getattr(self.loader, name)

    def create_module(self, spec):
        return self.loader.create_module(spec)

    def exec_module(self, module) -> None:
        module.__loader__ = module.__spec__.loader = self.loader
        self.loader.exec_module(module)
        if _AFTER_GGUF in sys.meta_path:
            sys.meta_path.remove(_AFTER_GGUF)
        _register_with_gguf()


class _AfterGgufImport:
    """A meta-path finder for the top-level ``gguf`` only: the usual finders find it, and its loader
    is wrapped so that the SFMP types are registered once the package has loaded."""

    def find_spec(self, name: str, path=None, target=None):
        if name != "gguf":
            return None
        for finder in sys.meta_path:
            if finder is self or not hasattr(finder, "find_spec"):
                continue
            spec = finder.find_spec(name, path, target)
            if spec is not None:
                if spec.loader is not None and hasattr(spec.loader, "exec_module"):
                    spec.loader = _RegisteringLoader(spec.loader)
                return spec
        return None


_AFTER_GGUF = _AfterGgufImport()
if "gguf" in sys.modules:
    _register_with_gguf()
else:
    sys.meta_path.insert(0, _AFTER_GGUF)
