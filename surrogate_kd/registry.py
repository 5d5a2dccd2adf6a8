"""Name -> entry tables for sources, models and augmentation regimes (timm-style).

Each entry registers itself beside its definition, with `@TABLE.register("name")` above a
function or `TABLE.register("name", value)` right after a value. The tables live here, apart
from what fills them, so a module can register without importing its package's `__init__`
(no import cycle, no dependence on import order). A table is full once its package is
imported: use `surrogate_kd.sources.SOURCES`, `surrogate_kd.models.MODELS` and
`surrogate_kd.augment.REGIMES`, not these names directly.
"""

from typing import Any, Callable, Generic, Iterator, TypeVar, overload

from .errors import UserError

T = TypeVar("T")


class Registry(Generic[T]):
    """A named table of functions or values; `get` fails with the list of valid names."""

    def __init__(self, kind: str):
        self.kind = kind
        self._entries: dict[str, T] = {}

    @overload
    def register(self, name: str) -> Callable[[T], T]: ...
    @overload
    def register(self, name: str, value: T) -> T: ...

    def register(self, name: str, value: Any = None) -> Any:
        """Add `value` under `name` and return it; without a value, a decorator that adds what it decorates."""
        if value is None:
            return lambda entry: self.register(name, entry)
        if name in self._entries:
            raise ValueError(f"{self.kind} '{name}' registered twice")
        self._entries[name] = value
        return value

    def get(self, name: str) -> T:
        try:
            return self._entries[name]
        except KeyError:
            raise UserError(f"unknown {self.kind} '{name}'; valid: {', '.join(self.names())}") from None

    __getitem__ = get

    def names(self) -> list[str]:
        """Sorted, so listings do not depend on the order in which modules were imported."""
        return sorted(self._entries)

    def items(self) -> list[tuple[str, T]]:
        return [(name, self._entries[name]) for name in self.names()]

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())

    def __len__(self) -> int:
        return len(self._entries)

    def __contains__(self, name: object) -> bool:
        return name in self._entries


# Image sources: fn(seed, indices, size, channels, device, **params) -> uint8 (N, channels, size, size).
SOURCES: Registry[Callable[..., Any]] = Registry("source")
# Networks: fn(num_classes, in_channels) -> nn.Module taking normalised (B, C, H, W) floats; the
# families `torchvision:<name>` and `timm:<name>` also take name= (models/external.py).
MODELS: Registry[Callable[..., Any]] = Registry("model")
# Augmentation recipes: `augment.Regime` values.
REGIMES: Registry[Any] = Registry("augmentation regime")
