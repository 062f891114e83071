"""A model bundle as plain files and back: JSON state plus LightGBM's own text model files.

What MLflow stores for every registered model instead of a pickle: ``state.json`` (the fitted
attributes of the bundle and of the estimators in it: calibrator coefficients, learned categories,
typical values, risk bands...) and one ``booster_<n>.txt`` per LightGBM booster, which LightGBM
(any language binding) reads natively. Loading rebuilds only classes from ``engage``, scikit-learn
and LightGBM (an allow-list), never runs code stored in the files, and gives the same predictions
as the bundle that was saved. Pure: callers read and write the files.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import Any

import numpy as np

__all__ = ["FORMAT", "BundleParts", "from_parts", "to_parts"]

FORMAT = "engage-bundle/1"
"""Written into the state; a loader refuses a format it does not know."""
_ALLOWED = ("engage.", "sklearn.", "lightgbm.")
_BOOSTER = "lightgbm.basic.Booster"


@dataclass(frozen=True)
class BundleParts:
    """A bundle taken apart: the JSON-able state, and booster file name -> LightGBM model text."""

    state: dict[str, Any]
    boosters: dict[str, str]


def to_parts(bundle: object) -> BundleParts:
    """The bundle (any object tree of allowed classes, numpy arrays and plain values) as parts."""
    encoder = _Encoder()
    return BundleParts(state={"format": FORMAT, "root": encoder.encode(bundle)}, boosters=encoder.boosters)


def from_parts(parts: BundleParts) -> Any:
    """The object :func:`to_parts` took apart, rebuilt (boosters read back from their text)."""
    if parts.state.get("format") != FORMAT:
        raise ValueError(f"model state format {parts.state.get('format')!r} is not {FORMAT!r}")
    return _Decoder(parts.boosters).decode(parts.state["root"])


def _qualname(cls: type) -> str:
    return f"{cls.__module__}.{cls.__qualname__}"


class _Encoder:
    def __init__(self) -> None:
        self.boosters: dict[str, str] = {}
        self._seen: dict[int, str] = {}

    def encode(self, value: Any) -> Any:
        if value is None or isinstance(value, bool | int | float | str):
            return value
        if isinstance(value, np.generic):
            return {"$scalar": value.dtype.str, "v": value.item()}
        if isinstance(value, np.ndarray):
            return self._array(value)
        if isinstance(value, list):
            return [self.encode(v) for v in value]
        if isinstance(value, tuple):
            return {"$tuple": [self.encode(v) for v in value]}
        if isinstance(value, dict):
            return {"$dict": [[self.encode(k), self.encode(v)] for k, v in value.items()]}
        if isinstance(value, type):
            return {"$type": self._allowed(_qualname(value))}
        return self._object(value)

    def _array(self, value: np.ndarray) -> dict[str, Any]:
        if value.dtype == object:
            return {"$objects": [self.encode(v) for v in value.tolist()], "shape": list(value.shape)}
        return {"$array": value.dtype.str, "shape": list(value.shape), "v": value.ravel().tolist()}

    def _object(self, value: Any) -> dict[str, Any]:
        name = self._allowed(_qualname(type(value)))
        if name == _BOOSTER:
            key = self._seen.get(id(value))
            if key is None:
                key = f"booster_{len(self.boosters)}.txt"
                self._seen[id(value)] = key
                self.boosters[key] = value.model_to_string(num_iteration=-1)
            return {"$booster": key}
        state = value.__getstate__() if hasattr(value, "__getstate__") else value.__dict__
        if not isinstance(state, dict):
            raise TypeError(f"{name}: cannot store an object whose state is a {type(state).__name__}")
        return {"$object": name, "state": {k: self.encode(v) for k, v in state.items()}}

    @staticmethod
    def _allowed(name: str) -> str:
        if not name.startswith(_ALLOWED) or "<locals>" in name:
            raise TypeError(f"{name}: only engage, scikit-learn and LightGBM objects are stored with a model")
        return name


class _Decoder:
    def __init__(self, boosters: dict[str, str]) -> None:
        self._texts = boosters
        self._boosters: dict[str, Any] = {}

    def decode(self, value: Any) -> Any:
        if isinstance(value, list):
            return [self.decode(v) for v in value]
        if not isinstance(value, dict):
            return value
        if "$scalar" in value:
            return np.dtype(value["$scalar"]).type(value["v"])
        if "$array" in value:
            return np.asarray(value["v"], dtype=np.dtype(value["$array"])).reshape(value["shape"])
        if "$objects" in value:
            out = np.empty(len(value["$objects"]), dtype=object)
            out[:] = [self.decode(v) for v in value["$objects"]]
            return out.reshape(value["shape"])
        if "$tuple" in value:
            return tuple(self.decode(v) for v in value["$tuple"])
        if "$dict" in value:
            return {_hashable(self.decode(k)): self.decode(v) for k, v in value["$dict"]}
        if "$type" in value:
            return _class(value["$type"])
        if "$booster" in value:
            return self._booster(value["$booster"])
        if "$object" in value:
            return self._object(value["$object"], value["state"])
        raise ValueError(f"unknown entry in a model state: {sorted(value)[:5]}")

    def _booster(self, key: str) -> Any:
        if key not in self._boosters:
            import lightgbm as lgb

            if key not in self._texts:
                raise ValueError(f"the model state names {key}, which is not among the booster files")
            self._boosters[key] = lgb.Booster(model_str=self._texts[key])
        return self._boosters[key]

    def _object(self, name: str, state: dict[str, Any]) -> Any:
        cls: Any = _class(name)
        obj = cls.__new__(cls)
        decoded = {k: self.decode(v) for k, v in state.items()}
        setter = getattr(obj, "__setstate__", None)
        if setter is not None:
            setter(decoded)
        else:
            obj.__dict__.update(decoded)
        return obj


def _hashable(key: Any) -> Any:
    return key.item() if isinstance(key, np.generic) else key


def _class(name: str) -> type:
    """The class named ``module.Qualname`` from an allowed package."""
    if not name.startswith(_ALLOWED) or "<locals>" in name:
        raise ValueError(f"{name}: a model state may only name engage, scikit-learn or LightGBM classes")
    module_name, _, qualname = name.rpartition(".")
    candidates = [(module_name, qualname)]
    while "." in candidates[-1][0]:  # nested qualnames: Outer.Inner
        head, _, tail = candidates[-1][0].rpartition(".")
        candidates.append((head, f"{tail}.{candidates[-1][1]}"))
    for module_part, attr_path in candidates:
        try:
            obj: Any = importlib.import_module(module_part)
        except ImportError:
            continue
        for attr in attr_path.split("."):
            obj = getattr(obj, attr, None)
        if isinstance(obj, type):
            return obj
    raise ValueError(f"{name}: no such class")
