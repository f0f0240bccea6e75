"""Lazy re-exports for a package's `__init__`: a name is imported from its module only when first used (PEP 562),
so that importing the package (and `python -m knrecall --help`) never loads torch."""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping


def lazy_exports(package: str, exports: Mapping[str, str]) -> tuple[Callable[[str], object], Callable[[], list[str]]]:
    """(`__getattr__`, `__dir__`) for `package`, where `exports` maps a public name to the module that defines it
    (`"module"`), or to a module and the name it has there (`"module:name"`)."""
    namespace = importlib.import_module(package).__dict__

    def __getattr__(name: str) -> object:
        if name not in exports:
            raise AttributeError(f"module '{package}' has no attribute '{name}'")
        module, _, attribute = exports[name].partition(":")
        value = getattr(importlib.import_module(module), attribute or name)
        namespace[name] = value  # later look-ups skip __getattr__
        return value

    def __dir__() -> list[str]:
        return sorted({*namespace, *exports})

    return __getattr__, __dir__
