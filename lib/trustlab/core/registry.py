"""One way to add a method: register it by name, build it by name.

Every family's pluggable pieces (attention kernels, norms and FFNs, calibration losses,
calibrators, error detectors, fine-tuning objectives) live in a :class:`Registry`::

    LOSSES = Registry("calibration loss")

    @LOSSES.register("focal")
    class FocalLoss(nn.Module):
        '''Focal loss: -(1 - p_y)^gamma log p_y.'''
        def __init__(self, gamma: float = 3.0): ...

    LOSSES.build("focal", gamma=2.0)     # keyword arguments checked against __init__
    LOSSES.describe()                    # {"focal": "Focal loss: -(1 - p_y)^gamma log p_y."}

A params file names a method and its keyword arguments; ``check`` validates both before any
expensive work starts, so a typo fails with the allowed names instead of deep in a run.
Registries hold classes or factory functions alike; a new method is one registered object
in one file, never another ``if kind == ...`` branch.
"""

from __future__ import annotations

import difflib
import inspect
from collections.abc import Callable, Iterator, Mapping
from typing import Any, Generic, TypeVar

from trustlab.core.config import ConfigError

T = TypeVar("T")


def did_you_mean(name: str, choices: list[str]) -> str:
    """`` (did you mean 'x'?)`` for a near miss, else an empty string."""
    close = difflib.get_close_matches(str(name), choices, n=1, cutoff=0.7)
    return f" (did you mean {close[0]!r}?)" if close else ""


class Registry(Generic[T]):
    """Named constructors of one kind of method."""

    def __init__(self, kind: str):
        self.kind = kind
        self._items: dict[str, T] = {}

    # -- adding ---------------------------------------------------------------------------
    def register(self, name: str) -> Callable[[T], T]:
        """Decorator: ``@REGISTRY.register("name")`` on a class or a factory function."""

        def decorator(obj: T) -> T:
            if name in self._items and self._items[name] is not obj:
                raise ValueError(f"{self.kind} {name!r} is already registered")
            self._items[name] = obj
            return obj

        return decorator

    # -- looking up -----------------------------------------------------------------------
    def names(self) -> list[str]:
        return list(self._items)

    def __contains__(self, name: object) -> bool:
        return name in self._items

    def __iter__(self) -> Iterator[str]:
        return iter(self._items)

    def __len__(self) -> int:
        return len(self._items)

    def get(self, name: str) -> T:
        if name not in self._items:
            raise ConfigError(
                f"unknown {self.kind} {name!r}{did_you_mean(name, self.names())}; "
                f"registered: {', '.join(self.names())}"
            )
        return self._items[name]

    def parameters(self, name: str) -> dict[str, inspect.Parameter]:
        """The keyword arguments ``build(name, ...)`` accepts (positional-only and ``*args`` left out)."""
        obj = self.get(name)
        target = obj.__init__ if inspect.isclass(obj) else obj
        params = list(inspect.signature(target).parameters.values())
        if inspect.isclass(obj) and params and params[0].name == "self":
            params = params[1:]
        return {p.name: p for p in params if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)}

    def check(self, name: str, kwargs: Mapping[str, Any] | None = None, *, where: str = "", skip: tuple[str, ...] = ()) -> None:
        """Raise :class:`ConfigError` when ``name`` is unknown or ``kwargs`` names an argument it lacks.

        ``skip`` lists arguments the caller supplies itself (e.g. a model config), which a
        params file may not set.
        """
        self.get(name)
        accepted = {k for k in self.parameters(name) if k not in skip}
        unknown = sorted(set(kwargs or {}) - accepted)
        if unknown:
            prefix = f"{where}: " if where else ""
            raise ConfigError(
                f"{prefix}{self.kind} {name!r} has no parameter {unknown[0]!r}"
                f"{did_you_mean(unknown[0], sorted(accepted))}; allowed: {', '.join(sorted(accepted)) or 'none'}"
            )

    def build(self, name: str, *args: Any, **kwargs: Any) -> Any:
        """Call the registered object; keyword arguments are checked against its signature first."""
        self.check(name, kwargs)
        return self.get(name)(*args, **kwargs)

    def describe(self) -> dict[str, str]:
        """Name -> first line of the docstring (the method's one-line formula or summary)."""
        out = {}
        for name, obj in self._items.items():
            doc = inspect.getdoc(obj) or ""
            out[name] = doc.strip().splitlines()[0] if doc.strip() else ""
        return out
