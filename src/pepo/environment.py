"""What a result was computed on: machine, thread count and library versions, recorded with every run.

RL on CPU is deterministic only for a fixed machine (CPU kernels), thread count and library versions, so
every ``results.json`` carries them and every results table names them.
"""

from __future__ import annotations

import platform
from importlib import metadata
from typing import Any

__all__ = ["environment", "environment_line"]

_PACKAGES = ("torch", "transformers", "trl", "accelerate", "datasets", "tokenizers", "numpy", "pillow")


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def environment() -> dict[str, Any]:
    """Machine and versions: ``{"cpu", "cpu_capability", "cores", "torch_threads", "python", <package>: version}``."""
    import os

    import torch

    out: dict[str, Any] = {
        "cpu": _cpu_model(),
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "cores": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "python": platform.python_version(),
    }
    for name in _PACKAGES:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = None
    return out


def environment_line(env: dict[str, Any]) -> str:
    """One Markdown-ready line naming the machine and versions of :func:`environment`'s dict."""
    device = env.get("gpu") or f"{env.get('cpu')} ({env.get('cores')} cores, {env.get('cpu_capability')} kernels)"
    libs = ", ".join(f"{k} {env[k]}" for k in _PACKAGES if env.get(k))
    return f"{device}, {env.get('torch_threads')} torch thread(s); Python {env.get('python')}, {libs}"
