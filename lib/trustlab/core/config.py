"""Typed, validated configuration loaded from ``params.yaml``.

``params.yaml`` is the single source of truth. Each stage or family owns one top-level
section and one frozen dataclass (a :class:`Section`) that describes it. ``from_dict``
checks unknown keys, types and ranges and raises one :class:`ConfigError` that names the
key, the value and what is allowed, before any expensive work starts.

Profiles (``profiles/<name>.yaml``) are partial overrides deep-merged on top of
``params.yaml``; ``smoke`` makes every stage tiny and is what the tests use.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import types
import typing
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal, TypeVar, Union, get_args, get_origin, get_type_hints

import yaml

from trustlab.core.paths import repo_root

S = TypeVar("S", bound="Section")

PROFILE_ENV = "TRUSTLAB_PROFILE"
DVC_STAGE_ENV = "DVC_STAGE"  # set by DVC for every stage command


class ConfigError(ValueError):
    """A parameter is unknown, has the wrong type or is out of range."""


def _type_name(tp: Any) -> str:
    origin = get_origin(tp)
    if origin is Literal:
        return "one of " + ", ".join(repr(a) for a in get_args(tp))
    if origin in (Union, types.UnionType):
        return " or ".join(_type_name(a) for a in get_args(tp))
    if origin is not None:
        args = ", ".join(_type_name(a) for a in get_args(tp))
        return f"{getattr(origin, '__name__', str(origin))}[{args}]"
    if tp is type(None):
        return "null"
    if isinstance(tp, type) and issubclass(tp, Section):
        return f"a mapping ({tp.__name__})"
    return getattr(tp, "__name__", str(tp))


def _coerce(value: Any, tp: Any, where: str) -> Any:
    """Return ``value`` checked (and minimally coerced) against the annotation ``tp``."""
    origin = get_origin(tp)
    if tp is Any:
        return value
    if origin is Literal:
        allowed = get_args(tp)
        if value not in allowed:
            raise ConfigError(f"{where} = {value!r} is not allowed: choose one of {', '.join(map(repr, allowed))}")
        return value
    if origin in (Union, types.UnionType):
        errors = []
        for arg in get_args(tp):
            try:
                return _coerce(value, arg, where)
            except ConfigError as exc:
                errors.append(str(exc))
        raise ConfigError(f"{where} = {value!r} has the wrong type: expected {_type_name(tp)}")
    if tp is type(None):
        if value is not None:
            raise ConfigError(f"{where} = {value!r} has the wrong type: expected null")
        return None
    if origin in (list, tuple):
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{where} = {value!r} has the wrong type: expected a list ({_type_name(tp)})")
        args = get_args(tp)
        if origin is tuple and args and args[-1] is not Ellipsis:
            if len(args) != len(value):
                raise ConfigError(f"{where} = {value!r} must have exactly {len(args)} items")
            return tuple(_coerce(v, a, f"{where}[{i}]") for i, (v, a) in enumerate(zip(value, args)))
        item = args[0] if args else Any
        items = [_coerce(v, item, f"{where}[{i}]") for i, v in enumerate(value)]
        return tuple(items) if origin is tuple else items
    if origin in (dict, Mapping) or tp is dict:
        if not isinstance(value, Mapping):
            raise ConfigError(f"{where} = {value!r} has the wrong type: expected a mapping")
        kt, vt = (get_args(tp) + (Any, Any))[:2] if get_args(tp) else (Any, Any)
        return {_coerce(k, kt, f"{where} key"): _coerce(v, vt, f"{where}.{k}") for k, v in value.items()}
    if isinstance(tp, type) and issubclass(tp, Section):
        if isinstance(value, tp):
            return value
        if not isinstance(value, Mapping):
            raise ConfigError(f"{where} = {value!r} has the wrong type: expected a mapping of {tp.__name__} keys")
        return tp.from_dict(value, where=where)
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{where} = {value!r} has the wrong type: expected true or false")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{where} = {value!r} has the wrong type: expected an integer")
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            # YAML reads 1e-3 (no dot) as a string; accept numeric strings explicitly.
            if isinstance(value, str):
                try:
                    return float(value)
                except ValueError:
                    pass
            raise ConfigError(f"{where} = {value!r} has the wrong type: expected a number")
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(f"{where} = {value!r} has the wrong type: expected a string")
        return value
    if isinstance(value, tp):
        return value
    raise ConfigError(f"{where} = {value!r} has the wrong type: expected {_type_name(tp)}")


@dataclasses.dataclass(frozen=True)
class Section:
    """Base class of every params section.

    Subclasses are frozen dataclasses with a default for every field, and override
    :meth:`validate` to check ranges with :meth:`check_range`, :meth:`check_choice`
    and :meth:`check_subset`.
    """

    @classmethod
    def from_dict(cls: type[S], data: Mapping[str, Any] | None, where: str | None = None) -> S:
        where = where or cls.section_name()
        data = dict(data or {})
        hints = get_type_hints(cls)
        fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
        unknown = sorted(set(data) - set(fields))
        if unknown:
            import difflib

            close = difflib.get_close_matches(unknown[0], sorted(fields), n=1, cutoff=0.7)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise ConfigError(
                f"{where}: unknown key{'s' if len(unknown) > 1 else ''} {', '.join(map(repr, unknown))}{hint}; "
                f"allowed keys are {', '.join(sorted(fields))}"
            )
        kwargs = {k: _coerce(v, hints[k], f"{where}.{k}") for k, v in data.items()}
        obj = cls(**kwargs)
        object.__setattr__(obj, "_where", where)
        obj.validate()
        return obj

    @classmethod
    def section_name(cls) -> str:
        return getattr(cls, "SECTION", cls.__name__)

    def validate(self) -> None:
        """Check ranges and cross-field constraints; raise ConfigError."""

    def to_dict(self) -> dict[str, Any]:
        def plain(v: Any) -> Any:
            if isinstance(v, Section):
                return v.to_dict()
            if isinstance(v, (list, tuple)):
                return [plain(x) for x in v]
            if isinstance(v, dict):
                return {k: plain(x) for k, x in v.items()}
            return v

        return {f.name: plain(getattr(self, f.name)) for f in dataclasses.fields(self) if f.init}

    def replace(self: S, **changes: Any) -> S:
        merged = {**self.to_dict(), **changes}
        return type(self).from_dict(merged, where=self._path())

    # -- validation helpers -------------------------------------------------------
    def _path(self) -> str:
        return getattr(self, "_where", self.section_name())

    def fail(self, key: str, allowed: str) -> typing.NoReturn:
        value = getattr(self, key, None)
        raise ConfigError(f"{self._path()}.{key} = {value!r} is not allowed: {allowed}")

    def check_range(
        self,
        key: str,
        lo: float | None = None,
        hi: float | None = None,
        *,
        lo_open: bool = False,
        hi_open: bool = False,
        value: Any = None,
    ) -> None:
        """Require ``lo <= value <= hi`` (``<`` on an open end); lists are checked item by item."""
        v = getattr(self, key) if value is None else value
        values = v if isinstance(v, (list, tuple)) else [v]
        for x in values:
            if x is None:
                continue
            bad = (lo is not None and (x <= lo if lo_open else x < lo)) or (
                hi is not None and (x >= hi if hi_open else x > hi)
            )
            if bad:
                left = "" if lo is None else f"{lo} {'<' if lo_open else '<='} "
                right = "" if hi is None else f" {'<' if hi_open else '<='} {hi}"
                raise ConfigError(f"{self._path()}.{key} = {v!r} is out of range: allowed {left}{key}{right}")

    def check_choice(self, key: str, allowed: typing.Iterable[str]) -> None:
        allowed = list(allowed)
        v = getattr(self, key)
        if v not in allowed:
            raise ConfigError(f"{self._path()}.{key} = {v!r} is not allowed: choose one of {', '.join(map(repr, allowed))}")

    def check_subset(self, key: str, allowed: typing.Iterable[str], *, nonempty: bool = True) -> None:
        allowed = list(allowed)
        v = list(getattr(self, key))
        bad = [x for x in v if x not in allowed]
        if bad:
            raise ConfigError(
                f"{self._path()}.{key} = {v!r}: unknown {', '.join(map(repr, bad))}; "
                f"allowed values are {', '.join(map(repr, allowed))}"
            )
        if nonempty and not v:
            raise ConfigError(f"{self._path()}.{key} is empty: give at least one of {', '.join(map(repr, allowed))}")


# -- loading params.yaml and profiles ---------------------------------------------------


def deep_merge(base: Mapping[str, Any], override: Mapping[str, Any]) -> dict[str, Any]:
    """Recursively merge ``override`` into a copy of ``base`` (mappings merge, all else replaces)."""
    out = dict(base)
    for k, v in override.items():
        if isinstance(v, Mapping) and isinstance(out.get(k), Mapping):
            out[k] = deep_merge(out[k], v)
        else:
            out[k] = v
    return out


def _read_yaml(path: Path) -> dict[str, Any]:
    try:
        with open(path) as fh:
            data = yaml.safe_load(fh) or {}
    except FileNotFoundError:
        raise ConfigError(f"params file {path} does not exist") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"params file {path} is not valid YAML: {exc}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"params file {path} must hold a mapping of sections, not {type(data).__name__}")
    return data


def available_profiles(root: Path | None = None) -> list[str]:
    root = root or repo_root()
    return sorted(p.stem for p in (root / "profiles").glob("*.yaml"))


def load_params(
    path: str | os.PathLike | None = None,
    profile: str | None = None,
) -> dict[str, Any]:
    """Read ``params.yaml`` and deep-merge the named profile's overrides on top.

    ``profile`` defaults to ``$TRUSTLAB_PROFILE``, then to the ``profile`` key of
    ``params.yaml``. Under DVC (a stage command, ``$DVC_STAGE`` set) the profile comes from
    ``params.yaml`` alone, since that is what ``dvc.lock`` records: a ``$TRUSTLAB_PROFILE``
    that disagrees with it is an error, not an override.
    """
    root = repo_root()
    path = Path(path) if path is not None else root / "params.yaml"
    params = _read_yaml(path)
    env_profile = os.environ.get(PROFILE_ENV)
    if profile is None and env_profile and os.environ.get(DVC_STAGE_ENV) and env_profile != params.get("profile", "cpu"):
        raise ConfigError(
            f"{PROFILE_ENV}={env_profile} disagrees with profile = {params.get('profile', 'cpu')!r} in {path.name}: "
            f"under DVC the profile comes from params.yaml (dvc.lock records it); set it there "
            f"(or `dvc exp run -S profile={env_profile}`) and unset {PROFILE_ENV}"
        )
    profile = profile or env_profile or params.get("profile") or "cpu"
    profile_file = path.parent / "profiles" / f"{profile}.yaml"
    if not profile_file.exists():
        profile_file = root / "profiles" / f"{profile}.yaml"
    if profile_file.exists():
        params = deep_merge(params, _read_yaml(profile_file))
    elif profile != "cpu":
        import difflib

        allowed = ["cpu", *[p for p in available_profiles(root) if p != "cpu"]]
        close = difflib.get_close_matches(str(profile), allowed, n=1, cutoff=0.5)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        raise ConfigError(f"profile = {profile!r} is not allowed{hint}: choose one of {', '.join(map(repr, allowed))} "
                          f"(a profile is a file profiles/<name>.yaml)")
    params["profile"] = profile
    return params


def load_section(
    cls: type[S],
    overrides: Mapping[str, Any] | None = None,
    *,
    params: Mapping[str, Any] | None = None,
    path: str | os.PathLike | None = None,
    profile: str | None = None,
) -> S:
    """Load and validate one section: ``params.yaml`` (+ profile), then ``overrides`` on top."""
    name = cls.section_name()
    if params is None:
        params = load_params(path, profile)
    raw = dict(params.get(name) or {})
    if overrides:
        raw = deep_merge(raw, overrides)
    return cls.from_dict(raw, where=name)


def digest(obj: Any) -> str:
    """A short stable sha256 of a JSON-serialisable object (for provenance)."""
    blob = json.dumps(obj, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:16]
