"""Split nested state into JSON-able data and a flat ``{name: tensor}`` dict, and join them back.

Theory of operation.  A checkpoint's state is a tree of dicts, lists and
tuples whose leaves are numbers, strings, booleans, None, tensors and NumPy
values.  ``encode`` walks the tree once: JSON-native values stay as they are,
tensors are replaced by ``{"__tensor__": name}`` (the name is the tree path,
``module/net.0.weight``, so ``tensors.pt`` reads like the state it belongs
to), and everything JSON cannot say exactly becomes a *marker*: a dict with a
single ``"__kind__"`` key:

====================  ==============================================
``__tensor__``        a torch tensor (its name in the tensor dict)
``__ndarray__``       a NumPy array (its name; ``dtype`` beside it)
``__tuple__``         a tuple (``torch.Size`` included)
``__items__``         a dict whose keys are not all plain strings
``__float__``         ``"nan"``, ``"inf"``, ``"-inf"``, or ``"nan:0x<bits>"`` for a non-canonical NaN
====================  ==============================================

A user dict with a key starting with ``"__"`` is stored as ``__items__`` too,
so no user data can be mistaken for a marker.  Anything else -- functions,
modules, arbitrary objects -- is refused with the path where it sits: a
checkpoint never pickles code.  ``decode(*encode(x))`` equals ``x``.
"""

from __future__ import annotations

import enum
import math
import re
import struct
from collections.abc import Mapping
from typing import Any

import numpy as np
import torch

from ._errors import CheckpointError

__all__ = ["decode", "encode"]

_MARKERS = ("__tensor__", "__ndarray__", "__tuple__", "__items__", "__float__")
_IDENT = re.compile(r"[A-Za-z_][A-Za-z0-9_]*\Z")
_ADVICE = "keep only numbers, strings, lists, dicts and tensors"


def json_path(parts: tuple[Any, ...]) -> str:
    """``("callbacks", "MyCallback", "fn")`` -> ``$.callbacks.MyCallback.fn``; odd keys in brackets."""
    out = "$"
    for part in parts:
        out += f".{part}" if isinstance(part, str) and _IDENT.match(part) else f"[{part!r}]"
    return out


def _refuse(value: Any, parts: tuple[Any, ...]) -> CheckpointError:
    if callable(value) and not isinstance(value, type) and hasattr(value, "__code__") or \
            type(value).__name__ in ("builtin_function_or_method", "method", "partial"):
        what = "a function"
    elif isinstance(value, type):
        what = f"the class {value.__qualname__}"
    elif isinstance(value, enum.Enum):
        what = f"the enum member {value!r} (store its .value instead)"
    elif isinstance(value, (bytes, bytearray)):
        what = "bytes (store them as a uint8 tensor or a string instead)"
    elif isinstance(value, (set, frozenset)):
        what = "a set (store a sorted list instead)"
    else:
        what = f"a {type(value).__module__}.{type(value).__qualname__} object"
    return CheckpointError(f"{json_path(parts)}: cannot store {what} in a checkpoint; {_ADVICE}.")


class _Encoder:
    """One walk of the tree; collects tensors and makes their names unique."""

    def __init__(self) -> None:
        self.tensors: dict[str, torch.Tensor] = {}
        self._open: set[int] = set()  # ids of the containers on the current path, to refuse cycles

    def name(self, parts: tuple[Any, ...]) -> str:
        base = "/".join(str(p) for p in parts) or "tensor"
        name, n = base, 1
        while name in self.tensors:  # {"a/b": t, "a": {"b": t}} would otherwise collide
            n += 1
            name = f"{base}#{n}"
        return name

    def tensor(self, value: torch.Tensor, parts: tuple[Any, ...]) -> dict[str, str]:
        if value.layout != torch.strided:
            raise CheckpointError(f"{json_path(parts)}: cannot store a {value.layout} tensor in a checkpoint; "
                                  "convert it with .to_dense() first.")
        value = value.detach()
        if value.untyped_storage().nbytes() > value.numel() * value.element_size():
            value = value.clone()  # a small view would otherwise save its whole base storage
        name = self.name(parts)
        self.tensors[name] = value
        return {"__tensor__": name}

    def ndarray(self, value: np.ndarray, parts: tuple[Any, ...]) -> dict[str, str]:
        if value.dtype.hasobject or value.dtype.kind not in "biufc":
            raise CheckpointError(f"{json_path(parts)}: cannot store a NumPy array of dtype {value.dtype} in a "
                                  f"checkpoint; {_ADVICE}.")
        if not value.dtype.isnative:
            value = value.astype(value.dtype.newbyteorder("="))  # torch holds native byte order only
        name = self.name(parts)
        self.tensors[name] = torch.from_numpy(np.ascontiguousarray(value))
        return {"__ndarray__": name, "dtype": value.dtype.str}

    def walk(self, value: Any, parts: tuple[Any, ...]) -> Any:
        if value is None or type(value) in (bool, str, int):
            return value
        if isinstance(value, (str, int)) and not isinstance(value, enum.Enum):
            return str(value) if isinstance(value, str) else int(value)  # subclasses store as their base
        if isinstance(value, float):
            value = float(value)
            return value if math.isfinite(value) else {"__float__": _nonfinite_name(value)}
        if isinstance(value, torch.Tensor):
            return self.tensor(value, parts)
        if isinstance(value, np.ndarray):
            return self.ndarray(value, parts)
        if isinstance(value, np.generic) and value.dtype.kind in "biuf":
            return self.walk(value.item(), parts)
        if isinstance(value, (list, tuple, Mapping)):
            return self.container(value, parts)
        raise _refuse(value, parts)

    def container(self, value: Any, parts: tuple[Any, ...]) -> Any:
        if id(value) in self._open:
            raise CheckpointError(f"{json_path(parts)}: the state contains itself (a reference cycle); a checkpoint "
                                  "must be a tree. Store the shared part once.")
        self._open.add(id(value))
        try:
            if isinstance(value, list):
                return [self.walk(item, (*parts, i)) for i, item in enumerate(value)]
            if isinstance(value, tuple):
                return {"__tuple__": [self.walk(item, (*parts, i)) for i, item in enumerate(value)]}
            return self.mapping(value, parts)
        finally:
            self._open.discard(id(value))

    def mapping(self, value: Mapping[Any, Any], parts: tuple[Any, ...]) -> Any:
        if all(type(k) is str and not k.startswith("__") for k in value):
            return {k: self.walk(v, (*parts, k)) for k, v in value.items()}
        items = []
        for k, v in value.items():
            if isinstance(k, (torch.Tensor, np.ndarray)):
                raise CheckpointError(f"{json_path(parts)}: cannot use a tensor as a dict key in a checkpoint; "
                                      "use numbers or strings as keys.")
            items.append([self.walk(k, (*parts, "<key>")), self.walk(v, (*parts, k))])
        return {"__items__": items}


def encode(obj: Any) -> tuple[Any, dict[str, torch.Tensor]]:
    """``obj`` as (JSON-able data, ``{name: tensor}``); raises :class:`CheckpointError` naming what cannot be stored."""
    encoder = _Encoder()
    return encoder.walk(obj, ()), encoder.tensors


class _Decoder:
    def __init__(self, tensors: Mapping[str, torch.Tensor]) -> None:
        self.tensors = tensors
        self.used: set[str] = set()

    def take(self, name: Any, parts: tuple[Any, ...]) -> torch.Tensor:
        if not isinstance(name, str) or name not in self.tensors:
            raise CheckpointError(f"{json_path(parts)}: the state refers to tensor {_short(name)}, which the tensor "
                                  "file does not hold; the checkpoint is damaged. Use an earlier checkpoint.")
        if name in self.used:  # the writer names every tensor once; two references would alias one tensor
            raise CheckpointError(f"{json_path(parts)}: the state refers to tensor {name!r} a second time; the "
                                  "state file was edited or damaged. Use an earlier checkpoint.")
        self.used.add(name)
        return self.tensors[name]

    def ndarray(self, value: dict[str, Any], parts: tuple[Any, ...]) -> np.ndarray:
        tensor = self.take(value["__ndarray__"], parts)
        try:
            dtype = np.dtype(value["dtype"])
            if not isinstance(value["dtype"], str) or dtype.hasobject or dtype.kind not in "biufc":
                raise TypeError(f"dtype {value['dtype']!r} is not one the writer stores")
            return tensor.numpy().view(dtype)
        except (TypeError, ValueError, RuntimeError) as exc:  # an unknown dtype, or one the bytes do not fit
            raise CheckpointError(f"{json_path(parts)}: {_short(value)} is not a NumPy array this checkpoint can "
                                  f"hold ({exc}); the state file was edited or damaged.") from None

    def walk(self, value: Any, parts: tuple[Any, ...]) -> Any:
        if isinstance(value, list):
            return [self.walk(item, (*parts, i)) for i, item in enumerate(value)]
        if not isinstance(value, dict):
            return value
        marker = next((k for k in value if k.startswith("__")), None)
        if marker is None:
            return {k: self.walk(v, (*parts, k)) for k, v in value.items()}
        return self.marker(marker, value, parts)

    def marker(self, marker: str, value: dict[str, Any], parts: tuple[Any, ...]) -> Any:
        payload = value[marker]
        if marker == "__tensor__" and len(value) == 1:
            return self.take(payload, parts)
        if marker == "__ndarray__" and set(value) == {"__ndarray__", "dtype"}:
            return self.ndarray(value, parts)
        if marker == "__tuple__" and len(value) == 1 and isinstance(payload, list):
            return tuple(self.walk(item, (*parts, i)) for i, item in enumerate(payload))
        if marker == "__float__" and len(value) == 1 and isinstance(payload, str):
            return _nonfinite_value(payload, parts)
        if marker == "__items__" and len(value) == 1 and isinstance(payload, list):
            return self.items(payload, parts)
        raise CheckpointError(f"{json_path(parts)}: {_short(value)} is not valid checkpoint data (unknown or malformed "
                              f"marker {marker!r}; markers are {', '.join(_MARKERS)}); the state file was edited or "
                              "damaged.")

    def items(self, payload: list[Any], parts: tuple[Any, ...]) -> dict[Any, Any]:
        out = {}
        for pair in payload:
            if not (isinstance(pair, list) and len(pair) == 2):
                raise CheckpointError(f"{json_path(parts)}: __items__ entries must be [key, value] pairs, got "
                                      f"{_short(pair)}; the state file was edited or damaged.")
            key = self.walk(pair[0], (*parts, "<key>"))
            if not _is_key(key):
                raise CheckpointError(f"{json_path(parts)}: {_short(key)} cannot be a dict key (keys are numbers, "
                                      "strings, booleans, None and tuples of them); the state file was edited or "
                                      "damaged.")
            out[key] = self.walk(pair[1], (*parts, key))
        return out


def decode(data: Any, tensors: Mapping[str, torch.Tensor]) -> Any:
    """The object ``encode`` split into ``data`` and ``tensors``; every tensor must be used exactly as named."""
    decoder = _Decoder(tensors)
    obj = decoder.walk(data, ())
    unused = sorted(set(tensors) - decoder.used)
    if unused:
        raise CheckpointError(f"the tensor file holds {len(unused)} tensor(s) the state never refers to (first: "
                              f"{unused[0]!r}); the checkpoint is damaged or was assembled by hand. Use an earlier "
                              "checkpoint.")
    return obj


def _is_key(key: Any) -> bool:
    """What ``encode`` writes as a dict key: hashable plain values (tensors and containers are refused there)."""
    if isinstance(key, tuple):
        return all(_is_key(k) for k in key)
    return key is None or isinstance(key, (bool, int, float, str))


def _short(value: Any, limit: int = 120) -> str:
    """``repr(value)``, cut short: a damaged file's value may be megabytes long."""
    try:
        text = repr(value)
    except ValueError:  # an int of more digits than repr converts
        text = f"<{type(value).__name__} too large to print>"
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _nonfinite_name(value: float) -> str:
    """``inf``/``-inf``/``nan`` -- or a NaN's exact bits (``nan:0x...``) when it is not the canonical one."""
    if not math.isnan(value) or struct.pack(">d", value) == struct.pack(">d", math.nan):
        return repr(value)
    return f"nan:0x{struct.unpack('>Q', struct.pack('>d', value))[0]:016x}"


def _nonfinite_value(name: str, parts: tuple[Any, ...]) -> float:
    if name in ("nan", "inf", "-inf"):
        return float(name)
    if name.startswith("nan:0x"):
        try:
            return struct.unpack(">d", struct.pack(">Q", int(name[6:], 16)))[0]
        except (ValueError, struct.error):
            pass
    raise CheckpointError(f"{json_path(parts)}: {name!r} is not a non-finite float (expected 'nan', 'inf', '-inf' or "
                          "'nan:0x<16 hex digits>'); the state file was edited or damaged.")
