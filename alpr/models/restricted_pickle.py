"""A ``pickle_module`` for ``torch.load`` that reads pickled model objects without importing their code.

Ultralytics training checkpoints pickle whole ``models.yolo.DetectionModel`` objects, which normally requires the
ultralytics source tree on ``sys.path`` and executes whatever the pickle names. Here every global a pickle refers
to resolves either to a short allow-list of harmless constructors (tensor and parameter rebuilding, ``OrderedDict``,
``set``, dtypes) or to an inert stand-in class that only records the constructor arguments and the state it is
given. A module object therefore comes back as a stand-in whose ``__dict__`` holds its ``_parameters``,
``_buffers`` and ``_modules``, enough to rebuild the state dict; nothing from the pickle runs.
"""

from __future__ import annotations

import _compat_pickle
import collections
import copyreg
import functools
import pickle
import types
from typing import Any, TypeGuard

import torch

_SAFE_GLOBALS: dict[tuple[str, str], Any] = {
    ("collections", "OrderedDict"): collections.OrderedDict,
    ("builtins", "set"): set,
    ("builtins", "frozenset"): frozenset,
    ("builtins", "slice"): slice,
    ("builtins", "object"): object,
    # A private helper, missing from typeshed's copyreg stub.
    ("copyreg", "_reconstructor"): copyreg._reconstructor,  # type: ignore[attr-defined]
    ("torch._utils", "_rebuild_tensor_v2"): torch._utils._rebuild_tensor_v2,
    ("torch._utils", "_rebuild_parameter"): torch._utils._rebuild_parameter,
    ("torch._utils", "_rebuild_parameter_with_state"): torch._utils._rebuild_parameter_with_state,
    ("torch.nn.parameter", "Parameter"): torch.nn.Parameter,
    ("torch._tensor", "Tensor"): torch.Tensor,
    ("torch", "Tensor"): torch.Tensor,
    ("torch", "Size"): torch.Size,
}


class StandIn:
    """An object of a class that was not imported: its constructor arguments and pickled state, nothing more."""

    pickled_module = ""
    pickled_name = ""

    def __new__(cls, *args: Any, **kwargs: Any) -> StandIn:
        instance = super().__new__(cls)
        instance.__dict__["_pickled_args"] = args
        return instance

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        pass

    def __setstate__(self, state: Any) -> None:
        # Objects with __slots__ pickle (dict_state, slot_state); plain objects pickle their __dict__.
        if isinstance(state, tuple) and len(state) == 2 and all(s is None or isinstance(s, dict) for s in state):
            for part in state:
                self.__dict__.update(part or {})
        elif isinstance(state, dict):
            self.__dict__.update(state)
        else:
            self.__dict__["_pickled_state"] = state

    # Containers subclassing dict or list are filled item by item after construction.
    def __setitem__(self, key: Any, value: Any) -> None:
        self.__dict__.setdefault("_pickled_items", {})[key] = value

    def append(self, value: Any) -> None:
        self.__dict__.setdefault("_pickled_list", []).append(value)

    def extend(self, values: Any) -> None:
        self.__dict__.setdefault("_pickled_list", []).extend(values)

    def __repr__(self) -> str:
        return f"<stand-in for {self.pickled_module}.{self.pickled_name}>"


@functools.cache
def stand_in_class(module: str, name: str) -> type[StandIn]:
    """The (cached) stand-in class for the global ``module.name``."""
    return type(name, (StandIn,), {"pickled_module": module, "pickled_name": name, "__module__": __name__})


def _resolve(module: str, name: str) -> Any:
    # Protocol-2 pickles (torch.save's default) name builtins the Python 2 way, e.g. ``__builtin__.set``.
    if (module, name) in _compat_pickle.NAME_MAPPING:
        module, name = _compat_pickle.NAME_MAPPING[module, name]
    elif module in _compat_pickle.IMPORT_MAPPING:
        module = _compat_pickle.IMPORT_MAPPING[module]
    if (module, name) in _SAFE_GLOBALS:
        return _SAFE_GLOBALS[module, name]
    if module == "torch" and isinstance(getattr(torch, name, None), torch.dtype):
        return getattr(torch, name)
    return stand_in_class(module, name)


class Unpickler(pickle.Unpickler):
    """Unpickler that never imports: allow-listed constructors or inert stand-ins."""

    def find_class(self, module: str, name: str) -> Any:
        return _resolve(module, name)


def load(file: Any, **kwargs: Any) -> Any:
    return Unpickler(file, **kwargs).load()


def as_pickle_module() -> types.ModuleType:
    """A module object with ``Unpickler`` and ``load``, for ``torch.load(..., pickle_module=...)``."""
    module = types.ModuleType("alpr_restricted_pickle")
    module.__dict__.update(Unpickler=Unpickler, load=load)
    return module


def is_stand_in(obj: Any, name: str | None = None) -> TypeGuard[StandIn]:
    """Whether ``obj`` is a stand-in (of a class called ``name``, when given)."""
    return isinstance(obj, StandIn) and (name is None or obj.pickled_name == name)


def module_state_dict(module: Any, prefix: str = "") -> dict[str, torch.Tensor]:
    """The state dict of a stand-in ``nn.Module`` tree, in ``nn.Module.state_dict`` order."""
    attributes = module.__dict__
    non_persistent = attributes.get("_non_persistent_buffers_set") or set()
    state: dict[str, torch.Tensor] = {}
    for name, parameter in (attributes.get("_parameters") or {}).items():
        if parameter is not None:
            state[prefix + name] = parameter
    for name, buffer in (attributes.get("_buffers") or {}).items():
        if buffer is not None and name not in non_persistent:
            state[prefix + name] = buffer
    for name, child in (attributes.get("_modules") or {}).items():
        if child is not None:
            state.update(module_state_dict(child, f"{prefix}{name}."))
    for key, value in state.items():
        if not isinstance(value, torch.Tensor):
            raise ValueError(f"checkpoint entry {key} is {type(value).__name__}, not a tensor")
    return state
