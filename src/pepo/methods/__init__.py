"""The method registry: ``--method NAME`` for the built-ins, ``--method my_module:MyMethod`` for yours.

A method is a :class:`~pepo.methods.base.Method` subclass (see there for what it declares). The
built-ins register themselves below; a user method needs no change to pepo:

* ``--method my_methods.py:TopHalf`` or ``--method my_package.module:TopHalf`` (a class or an
  instance; a module name that is not importable is looked up as ``<name>.py`` in the current
  directory), or
* an entry point in the ``pepo.methods`` group (``[project.entry-points."pepo.methods"]
  top_half = "my_package.module:TopHalf"``), then ``--method top_half``, or
* :func:`register` from Python, before the config is built.
"""

from __future__ import annotations

import importlib
import importlib.util
import sys
import zlib
from importlib.metadata import entry_points
from pathlib import Path

from pepo.methods.base import LossContext, Method, RolloutContext, TokenWeights
from pepo.methods.clip_cov import ClipCov
from pepo.methods.dapo import DAPO
from pepo.methods.grpo import GRPO
from pepo.methods.high_entropy import HighEntropy
from pepo.methods.papo import PAPO_D, PAPO_G
from pepo.methods.pepo import PEPO, PEPO_D, PEPO_G, ExplorationOnly, PerceptionOnly
from pepo.methods.vgpo import VGPO
from pepo.methods.vppo import VPPO

__all__ = ["Method", "LossContext", "RolloutContext", "TokenWeights", "ENTRY_POINT_GROUP", "register", "get_method",
           "builtin_methods", "method_names", "method_table"]

ENTRY_POINT_GROUP = "pepo.methods"
_BUILTIN: dict[str, Method] = {}
_REGISTERED: dict[str, Method] = {}  # register() calls and resolved specs / entry points, by the name used


def _instance(obj: object, spec: str) -> Method:
    method = obj() if isinstance(obj, type) else obj
    if not isinstance(method, Method):
        raise ValueError(f"method={spec!r}: {obj!r} is not a pepo.methods.Method subclass or instance.")
    if not method.name:
        raise ValueError(f"method={spec!r}: {type(method).__name__} has no `name`.")
    return method


def register(obj: type[Method] | Method) -> type[Method] | Method:
    """Register a method (class or instance) under its ``name``; usable as a class decorator."""
    method = _instance(obj, getattr(obj, "name", repr(obj)))
    if method.name in _BUILTIN:
        raise ValueError(f"method name {method.name!r} is a built-in method; choose another name.")
    _REGISTERED[method.name] = method
    return obj


for _cls in (GRPO, DAPO, PEPO, PEPO_G, PEPO_D, PerceptionOnly, ExplorationOnly, HighEntropy, PAPO_G, PAPO_D, VPPO, VGPO, ClipCov):
    _BUILTIN[_cls.name] = _cls()


def builtin_methods() -> dict[str, Method]:
    """The methods pepo ships, by name, in the order of the README's table."""
    return dict(_BUILTIN)


def _entry_points() -> dict[str, object]:
    return {ep.name: ep for ep in entry_points(group=ENTRY_POINT_GROUP)}


def method_names() -> list[str]:
    """Every name ``--method`` accepts without a ``module:Class`` spec."""
    return [*_BUILTIN, *(n for n in _REGISTERED if ":" not in n), *(n for n in _entry_points() if n not in _BUILTIN)]


def _load_module(module: str, spec: str):
    path = Path(module)
    if module.endswith(".py") or (not path.suffix and Path(f"{module}.py").is_file() and
                                  importlib.util.find_spec(module) is None):
        path = path if module.endswith(".py") else Path(f"{module}.py")
        if not path.is_file():
            raise ValueError(f"method={spec!r}: file {path} does not exist.")
        name = f"pepo_user_method_{path.stem}_{zlib.crc32(str(path.resolve()).encode()):08x}"
        loader = importlib.util.spec_from_file_location(name, path)
        mod = importlib.util.module_from_spec(loader)
        sys.modules[name] = mod
        loader.loader.exec_module(mod)
        return mod
    try:
        return importlib.import_module(module)
    except ModuleNotFoundError as err:
        raise ValueError(f"method={spec!r}: cannot import module {module!r} ({err}).") from err


def get_method(spec: str) -> Method:
    """The method named ``spec``: a built-in, a registered name, an entry point, or ``module:Class``.

    Raises:
        ValueError: naming the spec and the known methods.
    """
    if spec in _BUILTIN:
        return _BUILTIN[spec]
    if spec in _REGISTERED:
        return _REGISTERED[spec]
    if isinstance(spec, str) and ":" in spec:
        module, _, attr = spec.rpartition(":")
        mod = _load_module(module, spec)
        if not hasattr(mod, attr):
            raise ValueError(f"method={spec!r}: module {module!r} has no attribute {attr!r}.")
        method = _instance(getattr(mod, attr), spec)
        _REGISTERED[spec] = method
        return method
    points = _entry_points()
    if spec in points:
        method = _instance(points[spec].load(), spec)
        _REGISTERED[spec] = method
        return method
    raise ValueError(f"method={spec!r} is not known; choose one of {sorted(method_names())}, or give your own as "
                     "`module:Class` / `path/to/file.py:Class` (a pepo.methods.Method subclass).")


def method_table() -> str:
    """The README's method table (Markdown), generated from the built-in registry."""
    lines = ["| method | what it does | visual scores | masked forward | preset (fields left unset) |",
             "|---|---|---|---|---|"]
    for name, method in _BUILTIN.items():
        preset = ", ".join(f"{k}={v}" for k, v in method.preset.items()) or "-"
        lines.append(f"| `{name}` | {method.description} | {'yes' if method.needs_visual_scores else '-'} | "
                     f"{'yes' if method.needs_masked_forward else '-'} | {preset} |")
    return "\n".join(lines)
