"""Typed dataclass settings: every field states its default and its one-line reason once.

``knob(default, reason)`` is a dataclass field whose reason lives in ``metadata["help"]``; the
command line builds its flags (type, choices, default, help) from these fields
(:mod:`audiomaepp.cli.config_flags`), so ``--help`` and ``--print-config`` show the config itself.

:class:`ConfigTree` gives a dataclass config JSON round trips over nested sections (a field whose
type is itself a ``ConfigTree``, declared with :func:`section`). Leaf names are unique across one
tree, so ``from_dict`` and ``replace`` also take a section's field by its own name ("flat"): the
form in which configs of earlier versions were stored, and a short way to change one field.
"""

from __future__ import annotations

import copy
import dataclasses
import functools
import json
import typing
from pathlib import Path
from typing import Any, TypeVar

__all__ = ["ConfigTree", "knob", "section", "reason", "literal_choices"]

T = TypeVar("T", bound="ConfigTree")


def knob(default: Any, reason: str, *, flag: str | None = None, metavar: str | None = None) -> Any:
    """A dataclass field with its reason (``metadata["help"]``); mutable defaults are copied.

    ``flag``: the command-line flag when it is not ``--field-name`` (e.g. ``--out`` for
    ``out_dir``); ``metavar``: the name of its value in ``--help``.
    """
    meta = {"help": reason}
    if flag is not None:
        meta["flag"] = flag
    if metavar is not None:
        meta["metavar"] = metavar
    if isinstance(default, (dict, list)):
        return dataclasses.field(default_factory=lambda: copy.deepcopy(default), metadata=meta)
    return dataclasses.field(default=default, metadata=meta)


def section(cls: type, reason: str) -> Any:
    """A nested config (a :class:`ConfigTree` dataclass) built from its own defaults."""
    return dataclasses.field(default_factory=cls, metadata={"help": reason})


def reason(f: dataclasses.Field) -> str:
    """A field's one-line reason ('' when it has none)."""
    return str(f.metadata.get("help", ""))


def literal_choices(tp: Any) -> tuple[Any, ...] | None:
    """The values a ``Literal[...]`` (or ``Literal[...] | None``) type allows; None for others."""
    if typing.get_origin(tp) is typing.Literal:
        return typing.get_args(tp)
    args = typing.get_args(tp)
    if type(None) in args:
        inner = [literal_choices(a) for a in args if a is not type(None)]
        if len(inner) == 1 and inner[0] is not None:
            return (*inner[0], None)
    return None


@functools.cache
def _hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


class ConfigTree:
    """Nested JSON round trips, flat field names and ``Literal`` checks for a dataclass config."""

    @classmethod
    def field_types(cls) -> dict[str, Any]:
        """Each field's resolved type annotation."""
        hints = _hints(cls)
        return {f.name: hints[f.name] for f in dataclasses.fields(cls)}  # type: ignore[arg-type]

    @classmethod
    def sections(cls) -> dict[str, type[ConfigTree]]:
        """The nested sections: field name -> its ConfigTree class."""
        return {
            name: tp
            for name, tp in cls.field_types().items()
            if isinstance(tp, type) and issubclass(tp, ConfigTree)
        }

    @classmethod
    def flat_names(cls) -> dict[str, str | None]:
        """Every leaf field name -> the section that holds it (None: this class itself)."""
        out: dict[str, str | None] = {}
        subs = cls.sections()
        for f in dataclasses.fields(cls):  # type: ignore[arg-type]
            names = subs[f.name].flat_names() if f.name in subs else {f.name: None}
            for name in names:
                if name in out:
                    raise TypeError(f"{cls.__name__}: field name {name!r} is used twice")
                out[name] = f.name if f.name in subs else None
        return out

    def check_choices(self) -> None:
        """Raise ``ValueError`` for a ``Literal``-typed field holding another value."""
        for name, tp in self.field_types().items():
            allowed = literal_choices(tp)
            if allowed is not None and getattr(self, name) not in allowed:
                raise ValueError(
                    f"{type(self).__name__}.{name}={getattr(self, name)!r}; choose from {allowed}"
                )

    # ---- dicts and JSON -------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        """Plain JSON data: sections as nested objects, tuples as lists."""
        fields = dataclasses.fields(self)  # type: ignore[arg-type]
        return {f.name: _plain(getattr(self, f.name)) for f in fields}

    @classmethod
    def from_dict(cls: type[T], d: dict[str, Any]) -> T:
        """Build from (a subset of) the fields; missing ones keep their defaults.

        A section's fields may be given nested (``{"loop": {"epochs": 3}}``) or flat
        (``{"epochs": 3}``, how earlier versions stored them), not both for one field.
        """
        values, nested = cls._split(d)
        subs = cls.sections()
        for name, sub in subs.items():
            given = values.pop(name, None)
            if given is not None and not isinstance(given, dict):
                raise ValueError(f"{cls.__name__}.{name}: expected an object of fields")
            given = dict(given or {})
            twice = set(given) & set(nested.get(name, {}))
            if twice:
                raise ValueError(f"{cls.__name__}: {sorted(twice)} given both flat and in {name}")
            if given or name in nested:
                values[name] = sub.from_dict({**given, **nested.get(name, {})})
        return cls(**values)

    @classmethod
    def _split(cls, d: dict[str, Any]) -> tuple[dict[str, Any], dict[str, dict[str, Any]]]:
        """``d`` -> (own fields, {section: its fields given flat}); unknown names raise."""
        own = {f.name for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
        index = cls.flat_names()
        values: dict[str, Any] = {}
        nested: dict[str, dict[str, Any]] = {}
        unknown = []
        for key, value in d.items():
            if key in own:
                values[key] = value
            elif key in index:
                nested.setdefault(str(index[key]), {})[key] = value
            else:
                unknown.append(key)
        if unknown:
            raise ValueError(f"unknown {cls.__name__} field(s): {sorted(unknown)}")
        return values, nested

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True)

    @classmethod
    def from_json(cls: type[T], path: str | Path) -> T:
        """Read a JSON file of (a subset of) the fields, nested or flat (see :meth:`from_dict`)."""
        try:
            d = json.loads(Path(path).read_text())
        except json.JSONDecodeError as exc:
            raise ValueError(f"{path}: not valid JSON ({exc})") from exc
        if not isinstance(d, dict):
            raise ValueError(f"{path}: expected a JSON object of {cls.__name__} fields")
        try:
            return cls.from_dict(d)
        except (ValueError, TypeError) as exc:
            raise ValueError(f"{path}: {exc}") from exc

    def replace(self: T, **changes: Any) -> T:
        """A copy with some fields changed (validated); a section's fields may be named flat."""
        values, nested = self._split(changes)
        for name, sub_changes in nested.items():
            current = values.get(name, getattr(self, name))
            values[name] = current.replace(**sub_changes)
        return dataclasses.replace(self, **values)  # type: ignore[type-var]


def _plain(value: Any) -> Any:
    if isinstance(value, ConfigTree):
        return value.to_dict()
    if isinstance(value, tuple):
        return [_plain(v) for v in value]
    if isinstance(value, list):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    return value
