"""The endpoint's own code/ folder, and its standard-library modules loaded on their own outside the toolkit."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

CODE_DIR = Path(__file__).resolve().parents[1] / "stable-diffusion-custom-inference" / "code"


def standalone(module: str) -> ModuleType:
    """code/<module>.py loaded once under a private name (the toolkit's `sys.path` entry is not needed)."""
    name = f"_endpoint_code_{module}"
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, CODE_DIR / f"{module}.py")
        assert spec is not None and spec.loader is not None
        loaded = importlib.util.module_from_spec(spec)
        sys.modules[name] = loaded  # dataclasses look their module up there
        spec.loader.exec_module(loaded)
    return sys.modules[name]
