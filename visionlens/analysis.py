"""The analysis protocol and typed, validated analysis configs.

An analysis is any object (or class) with::

    name: str                      # registry key, e.g. "activation_stats"
    summary: str                   # one line for `visionlens plugins`
    Config: type                   # a dataclass; every field typed, with a default
    def supports(self, model) -> tuple[bool, str]    # (False, reason) when it cannot run
    def run(self, model, inputs, config) -> Result

Subclass :class:`Analysis` for defaults. Config fields are validated from their type hints
(``int``, ``float``, ``bool``, ``str``, ``Optional[...]``, ``list[...]`` / ``tuple[..., ...]``,
``Literal[...]``) and from range metadata declared with :func:`option`::

    @dataclass
    class Config:
        top_k: int = option(8, min=1, help="examples kept per unit")
        hooks: list[str] = option(list, help="hook names, aliases or globs")

:func:`make_config` builds a validated config from keyword values; :func:`parse_set_options`
turns CLI ``--set key=value`` strings into typed values.
"""

from __future__ import annotations

import dataclasses
import difflib
import json
import types
import typing
from typing import (
    TYPE_CHECKING,
    Any,
    ClassVar,
    Iterable,
    Literal,
    Mapping,
    Optional,
    Protocol,
    Union,
    runtime_checkable,
)

from .serialize import jsonable as to_jsonable
from .validation import VisionLensError

if TYPE_CHECKING:
    from .hooked_model import HookedVisionModel

__all__ = [
    "Analysis",
    "AnalysisProtocol",
    "ConfigError",
    "EmptyConfig",
    "option",
    "make_config",
    "parse_set_options",
    "parse_value",
    "config_fields",
    "config_to_dict",
    "describe_config",
]


class ConfigError(VisionLensError):
    """An analysis config value that has the wrong type, is out of range, or is unknown."""


_MISSING = dataclasses.MISSING


def option(
    default: Any = _MISSING,
    *,
    help: str = "",
    min: Optional[float] = None,
    max: Optional[float] = None,
    choices: Optional[Iterable[Any]] = None,
    min_len: Optional[int] = None,
) -> Any:
    """A config dataclass field with a default, a help line and range checks.

    ``default`` may be a value or a zero-argument factory (``list``, ``dict`` or any callable
    that is not a type of the field's value) for mutable defaults. ``min`` / ``max`` bound
    numbers (inclusive); ``choices`` restricts values; ``min_len`` bounds list lengths.
    """
    meta = {
        "help": help,
        "min": min,
        "max": max,
        "choices": tuple(choices) if choices is not None else None,
        "min_len": min_len,
    }
    if default is _MISSING:
        return dataclasses.field(metadata=meta)
    if default in (list, dict, set) or (callable(default) and isinstance(default, types.FunctionType)):
        return dataclasses.field(default_factory=default, metadata=meta)
    if isinstance(default, (list, dict, set)):
        initial = default

        def fresh_copy() -> Any:
            return type(initial)(initial)

        return dataclasses.field(default_factory=fresh_copy, metadata=meta)
    return dataclasses.field(default=default, metadata=meta)


@dataclasses.dataclass
class EmptyConfig:
    """The config of an analysis without options."""


@runtime_checkable
class AnalysisProtocol(Protocol):
    """What the registry requires of an analysis object."""

    name: str
    summary: str

    def supports(self, model: HookedVisionModel) -> tuple[bool, str]: ...

    def run(self, model: HookedVisionModel, inputs: Any, config: Any) -> Any: ...


class Analysis:
    """Convenience base class for analyses (subclassing is optional; the protocol is what counts).

    Set ``name``, ``summary`` and ``Config``; override :meth:`run` and, when the analysis needs
    something of the model, :meth:`supports`.
    """

    name: ClassVar[str] = ""
    summary: ClassVar[str] = ""
    Config: ClassVar[type] = EmptyConfig

    def supports(self, model: HookedVisionModel) -> tuple[bool, str]:
        """``(True, "")`` when this analysis can run on ``model``, else ``(False, reason)``."""
        return True, ""

    def run(self, model: HookedVisionModel, inputs: Any, config: Any) -> Any:
        """Run on ``model`` over ``inputs`` with a validated ``config``; return a :class:`visionlens.results.Result`."""
        raise NotImplementedError

    def make_config(self, **values: Any) -> Any:
        """A validated ``Config`` from keyword values (defaults for the rest)."""
        return make_config(self.Config, values, owner=self.name)

    def smoke_config(self, model: HookedVisionModel) -> dict[str, Any]:
        """Config values for a quick run on a tiny ``model`` (the contract suite runs every analysis
        with these on the tiny models of :meth:`visionlens.adapters.Adapter.example_source`).

        Override when the defaults are slow or a run needs values without defaults; return ``{}``
        to use the defaults.
        """
        return {}

    def __repr__(self) -> str:
        return f"<analysis {self.name!r}: {self.summary}>"


# ----------------------------------------------------------------------------- types
def _hints(config_cls: type) -> dict[str, Any]:
    try:
        return typing.get_type_hints(config_cls)
    except Exception:  # unresolvable forward refs: fall back to the raw annotations
        return {f.name: f.type for f in dataclasses.fields(config_cls)}


def config_fields(config_cls: type) -> list[tuple[dataclasses.Field, Any]]:
    """``[(field, resolved type)]`` of a config dataclass, in declaration order."""
    if not dataclasses.is_dataclass(config_cls):
        raise TypeError(f"An analysis Config must be a dataclass, got {config_cls!r}")
    hints = _hints(config_cls)
    return [(f, hints.get(f.name, Any)) for f in dataclasses.fields(config_cls) if f.init]


_SINGULAR = {"int": "an integer", "float": "a number", "bool": "a boolean (true/false)", "str": "a string"}
_PLURAL = {"int": "integers", "float": "numbers", "bool": "booleans", "str": "strings"}


def _type_name(tp: Any, plural: bool = False) -> str:
    origin = typing.get_origin(tp)
    if tp is type(None):
        return "None"
    if origin is Literal:
        return "one of " + ", ".join(repr(a) for a in typing.get_args(tp))
    if origin in (Union, types.UnionType):
        return " or ".join(_type_name(a, plural) for a in typing.get_args(tp))
    if origin in (list, tuple, set, frozenset, typing.Sequence):
        args = [a for a in typing.get_args(tp) if a is not Ellipsis]
        inner = _type_name(args[0], plural=True) if args else "values"
        return f"a list of {inner}"
    if isinstance(tp, type):
        return (_PLURAL if plural else _SINGULAR).get(tp.__name__, tp.__name__)
    return str(tp)


class _Mismatch(Exception):
    pass


def _coerce(value: Any, tp: Any, from_string: bool) -> Any:
    """Check (and for strings, convert) ``value`` against type ``tp``; raise _Mismatch."""
    if tp is Any or tp is object:
        return value
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if tp is type(None):
        if value is None or (from_string and isinstance(value, str) and value.lower() in ("none", "null", "")):
            return None
        raise _Mismatch
    if origin in (Union, types.UnionType):
        # None first so that "none" is not read as the string "none" for Optional[str]
        ordered = sorted(args, key=lambda a: a is not type(None))
        for a in ordered:
            try:
                return _coerce(value, a, from_string)
            except _Mismatch:
                continue
        raise _Mismatch
    if origin is Literal:
        for a in args:
            if value == a or (from_string and isinstance(value, str) and str(a) == value):
                return a
        raise _Mismatch
    if origin in (list, tuple, set, frozenset, typing.Sequence) or tp in (list, tuple):
        if from_string and isinstance(value, str):
            text = value.strip()
            if text.startswith("["):
                try:
                    value = json.loads(text)
                except json.JSONDecodeError as exc:
                    raise _Mismatch from exc
                items = list(value)
                item_from_string = False
            else:
                items = [v.strip() for v in text.split(",") if v.strip()]
                item_from_string = True
        elif isinstance(value, (list, tuple, set, frozenset)):
            items, item_from_string = list(value), from_string
        elif isinstance(value, str) and not from_string:
            items, item_from_string = [value], False  # a single name where a list is expected
        else:
            raise _Mismatch
        if origin is tuple and args and Ellipsis not in args:
            if len(items) != len(args):
                raise _Mismatch
            return tuple(_coerce(v, a, item_from_string) for v, a in zip(items, args))
        inner = args[0] if args else Any
        out = [_coerce(v, inner, item_from_string) for v in items]
        return tuple(out) if (origin is tuple or tp is tuple) else out
    if tp is bool:
        if isinstance(value, bool):
            return value
        if from_string and isinstance(value, str):
            low = value.strip().lower()
            if low in ("1", "true", "yes", "on"):
                return True
            if low in ("0", "false", "no", "off"):
                return False
        raise _Mismatch
    if tp is int:
        if isinstance(value, bool):
            raise _Mismatch
        if isinstance(value, int):
            return int(value)
        if isinstance(value, float) and value.is_integer() and not from_string:
            return int(value)
        if from_string and isinstance(value, str):
            try:
                return int(value.strip())
            except ValueError as exc:
                raise _Mismatch from exc
        if hasattr(value, "__index__"):
            return int(value.__index__())
        raise _Mismatch
    if tp is float:
        if isinstance(value, bool):
            raise _Mismatch
        if isinstance(value, (int, float)):
            return float(value)
        if from_string and isinstance(value, str):
            try:
                return float(value.strip())
            except ValueError as exc:
                raise _Mismatch from exc
        try:
            import numpy as np

            if isinstance(value, np.number):
                return float(value)
        except ImportError:  # pragma: no cover
            pass
        raise _Mismatch
    if tp is str:
        if isinstance(value, str):
            return value
        import os

        if isinstance(value, os.PathLike):
            return os.fspath(value)
        raise _Mismatch
    if isinstance(tp, type):
        if isinstance(value, tp):
            return value
        raise _Mismatch
    return value  # an annotation we do not understand: accept as given


def _check_range(owner: str, name: str, value: Any, meta: Mapping[str, Any]) -> None:
    where = f"{owner}: config field {name!r}" if owner else f"config field {name!r}"
    lo, hi, choices, min_len = meta.get("min"), meta.get("max"), meta.get("choices"), meta.get("min_len")
    values = value if isinstance(value, (list, tuple)) else [value]
    if min_len is not None and isinstance(value, (list, tuple)) and len(value) < min_len:
        raise ConfigError(f"{where} expected at least {min_len} item(s), got {len(value)}.")
    for v in values:
        if v is None or isinstance(v, bool):
            continue
        if isinstance(v, (int, float)):
            if v != v:  # NaN
                raise ConfigError(f"{where} expected a number, got NaN.")
            if lo is not None and hi is not None and not lo <= v <= hi:
                raise ConfigError(f"{where} expected a value in [{lo}, {hi}], got {v!r}.")
            if lo is not None and v < lo:
                raise ConfigError(f"{where} expected a value >= {lo}, got {v!r}.")
            if hi is not None and v > hi:
                raise ConfigError(f"{where} expected a value <= {hi}, got {v!r}.")
        if choices is not None and v not in choices:
            raise ConfigError(f"{where} expected one of {', '.join(map(repr, choices))}, got {v!r}.")


def _unknown(owner: str, key: str, known: list[str]) -> ConfigError:
    close = difflib.get_close_matches(key, known, n=3, cutoff=0.5)
    hint = f" Did you mean {', '.join(map(repr, close))}?" if close else ""
    what = f"{owner}: unknown" if owner else "Unknown"
    return ConfigError(f"{what} config key {key!r}.{hint} Valid keys: {', '.join(known) or '(none)'}.")


def make_config(
    config_cls: type, values: Optional[Mapping[str, Any]] = None, *, owner: str = "", from_strings: bool = False
) -> Any:
    """Build and validate an instance of the dataclass ``config_cls``.

    ``values`` override the defaults; with ``from_strings`` each value may be a CLI string
    (``"8"``, ``"true"``, ``"a,b"``, ``"[1, 2]"``, ``"none"``). Raises :class:`ConfigError`
    naming the field and what was expected for unknown keys, wrong types, out-of-range values
    and missing required fields. An existing ``config_cls`` instance is re-validated.
    """
    if isinstance(values, config_cls):
        values = config_to_dict(values, jsonable=False)
    values = dict(values or {})
    fields = config_fields(config_cls)
    known = [f.name for f, _ in fields]
    for key in values:
        if key not in known:
            raise _unknown(owner, key, known)
    kwargs: dict[str, Any] = {}
    where = f"{owner}: " if owner else ""
    for f, tp in fields:
        if f.name in values:
            raw = values[f.name]
            try:
                value = _coerce(raw, tp, from_strings)
            except _Mismatch:
                raise ConfigError(
                    f"{where}config field {f.name!r} expected {_type_name(tp)}, got {raw!r} ({type(raw).__name__})."
                ) from None
        elif f.default is not _MISSING:
            value = f.default
        elif f.default_factory is not _MISSING:  # type: ignore[misc]
            value = f.default_factory()  # type: ignore[misc]
        else:
            raise ConfigError(f"{where}config field {f.name!r} is required ({_type_name(tp)}).")
        _check_range(owner, f.name, value, f.metadata)
        kwargs[f.name] = value
    try:
        return config_cls(**kwargs)
    except ConfigError:
        raise
    except (ValueError, TypeError) as exc:  # a __post_init__ check
        raise ConfigError(f"{where}{exc}") from exc


def parse_value(config_cls: type, key: str, text: str, owner: str = "") -> Any:
    """The typed value of one ``key=text`` CLI option for ``config_cls``."""
    return getattr(make_config(config_cls, {key: text}, owner=owner, from_strings=True), key)


def parse_set_options(config_cls: type, items: Iterable[str], owner: str = "") -> dict[str, Any]:
    """``["top_k=5", "hooks=a,b"]`` -> ``{"top_k": 5, "hooks": ["a", "b"]}`` typed by ``config_cls``.

    Raises :class:`ConfigError` for items without ``=``, unknown keys and bad values.
    """
    raw: dict[str, str] = {}
    for item in items:
        if "=" not in item:
            raise ConfigError(f"Expected --set KEY=VALUE, got {item!r}.")
        key, text = item.split("=", 1)
        raw[key.strip().replace("-", "_")] = text
    cfg = make_config(config_cls, raw, owner=owner, from_strings=True)
    return {k: getattr(cfg, k) for k in raw}


def config_to_dict(config: Any, jsonable: bool = True) -> dict[str, Any]:
    """A config instance as a plain dict (JSON-safe with ``jsonable``)."""
    if not dataclasses.is_dataclass(config):
        return dict(config or {})
    out = {f.name: getattr(config, f.name) for f in dataclasses.fields(config)}
    if jsonable:
        out = to_jsonable(out)
    return out


def describe_config(config_cls: type) -> list[dict[str, Any]]:
    """``[{name, type, default, help}]`` for help texts."""
    rows = []
    for f, tp in config_fields(config_cls):
        if f.default is not _MISSING:
            default: Any = f.default
        elif f.default_factory is not _MISSING:  # type: ignore[misc]
            default = f.default_factory()  # type: ignore[misc]
        else:
            default = "(required)"
        rows.append({"name": f.name, "type": _type_name(tp), "default": default, "help": f.metadata.get("help", "")})
    return rows


def analysis_config_class(analysis: Any) -> type:
    """The ``Config`` dataclass of an analysis object (``EmptyConfig`` when it declares none)."""
    cls = getattr(analysis, "Config", None)
    return cls if isinstance(cls, type) and dataclasses.is_dataclass(cls) else EmptyConfig
