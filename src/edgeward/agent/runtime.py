"""Pick and load a TFLite runtime: LiteRT (ai_edge_litert) or tflite-runtime.

LiteRT applies XNNPACK to int8 models by default, which made a small int8
conv model about 6 times faster than tflite-runtime 2.14 on an x86 core, so
"auto" prefers it. The two can differ by a few LSB on int8 outputs: compare
results only against the same runtime.
"""

from __future__ import annotations

import importlib
import logging
from typing import Any

from edgeward.errors import ConfigError

log = logging.getLogger(__name__)

RUNTIME_MODULES = {
    "litert": "ai_edge_litert.interpreter",
    "tflite-runtime": "tflite_runtime.interpreter",
}


def resolve_runtime(name: str) -> str:
    """Return the runtime that `name` selects; "auto" picks LiteRT when it is installed."""
    if name != "auto":
        _import_interpreter(name)
        return name
    for candidate in ("litert", "tflite-runtime"):
        try:
            _import_interpreter(candidate)
        except ConfigError:
            continue
        return candidate
    raise ConfigError(
        "runtime.tflite: no TFLite runtime is installed; install ai-edge-litert or tflite-runtime==2.14.0"
    )


def interpreter_class(name: str) -> Any:
    """Return the Interpreter class of a runtime chosen by resolve_runtime()."""
    return _import_interpreter(name)


def installed_runtimes() -> list[str]:
    """Return the names of the runtimes that import on this machine."""
    found = []
    for name in RUNTIME_MODULES:
        try:
            _import_interpreter(name)
        except ConfigError:
            continue
        found.append(name)
    return found


def _import_interpreter(name: str) -> Any:
    module_name = RUNTIME_MODULES.get(name)
    if module_name is None:
        allowed = ", ".join(["auto", *RUNTIME_MODULES])
        raise ConfigError(f"runtime.tflite: unknown runtime {name!r}; expected one of {allowed}")
    try:
        module = importlib.import_module(module_name)
    except ImportError as error:
        raise ConfigError(f"runtime.tflite: {name} is not installed ({error})") from error
    return module.Interpreter
