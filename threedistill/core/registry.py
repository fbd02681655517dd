"""Name -> component tables, filled by a decorator next to each class (threestudio's `register`).

A component class declares its settings as a `Config` dataclass class attribute; registering it
under a name makes `--prior NAME` / `--guidance NAME` / `--representation NAME` choose it and
its `Config` the type of that section of the run configuration (docs/architecture.md):

    @OBJECTIVES.register("sds")
    class SDSGuidance(Guidance):
        Config = SDSConfig

Adding a component is one new module that registers itself; the tables live beside their
contracts (`priors.base.PRIORS`, `core.objective.OBJECTIVES`,
`representations.base.REPRESENTATIONS`) and the packages import their built-in modules.
"""

from __future__ import annotations

from typing import Any, Callable, Generic, Iterator, TypeVar

from .errors import unknown_name

C = TypeVar("C")


class Registry(Generic[C]):
    """Component classes by name; a missing name is a UserError listing the valid ones."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._classes: dict[str, type[C]] = {}
        self._names_by_config: dict[type, str] = {}

    def register(self, name: str) -> Callable[[type[C]], type[C]]:
        """Class decorator: make `cls` (with its `Config` dataclass) selectable as `name`."""

        def add(cls: type[C]) -> type[C]:
            config: Any = getattr(cls, "Config", None)  # the one place a component's declaration is read
            if config is None:
                raise TypeError(f"{cls.__name__} needs a `Config` dataclass class attribute to be registered as {self.kind} '{name}'")
            if name in self._classes:
                raise ValueError(f"{self.kind} '{name}' is registered twice ({self._classes[name].__name__}, {cls.__name__})")
            if config in self._names_by_config:
                raise ValueError(f"{config.__name__} already configures {self.kind} '{self._names_by_config[config]}'; "
                                 f"give {self.kind} '{name}' its own Config subclass")
            self._classes[name] = cls
            self._names_by_config[config] = name
            return cls

        return add

    def __getitem__(self, name: str) -> type[C]:
        if name not in self._classes:
            raise unknown_name(self.kind, name, list(self._classes))
        return self._classes[name]

    def __contains__(self, name: object) -> bool:
        return name in self._classes

    def __iter__(self) -> Iterator[str]:
        return iter(self._classes)

    def names(self) -> list[str]:
        return list(self._classes)

    def config_type(self, name: str) -> type:
        """The `Config` dataclass of component `name`."""
        config: type = getattr(self[name], "Config")
        return config

    def name_of(self, config: object) -> str:
        """The registered name whose `Config` is exactly `type(config)`."""
        name = self._names_by_config.get(type(config))
        if name is None:
            raise KeyError(f"{type(config).__name__} configures no registered {self.kind}")
        return name
